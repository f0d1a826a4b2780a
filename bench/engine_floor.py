"""The engine benchmark's floor: the same flow as a hand-written durable loop, no engine at all.

``python -m bench.engine_floor MODE --data DIR --firewall URL [--inflight 32]`` prints one JSON
line with the figures ``bench.engine_quell`` prints. It is the loop the peer harness measured
(``../shared/peer-bench/asyncio/engine.py``), written again here, and it is what the issue's
"floor for a durable engine in Python" figures are: one asyncio process, SQLite in WAL mode,
each flow's state written as a checkpoint row after every step, an alert's result written with
its last checkpoint. Modes:

- ``normal``: ``synchronous=NORMAL``, one commit per checkpoint, in the event loop (the issue's
  2,578 runs/s);
- ``full-batched``: ``synchronous=FULL``, one writer task committing the checkpoints of every
  flow that waits on one, in one transaction (the issue's 1,887 runs/s).

A flow waits for its checkpoint's commit before its next step, as Quell's steps wait for their
journal rows. It has nothing Quell has beyond that: no leases or fencing, no audit, no
expressions, no retries, no idempotency keys, no limits. So its runs/s on a given machine is an
upper bound for any durable engine in Python there, and the ratio of Quell's figure to it is
comparable across machines where absolute figures are not. It runs on asyncio's own event loop,
as the harness did, with the same aiohttp client (one session, ``--inflight`` connections), and
with the standard library's ``json`` for the alert and the checkpoints, as the harness: the
issue's floor figures were measured that way, and the benchmark scales the issue's targets by
this floor over those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.engine_quell import (
    _alerts,
    _cpu_seconds,
    _own_peak_rss_mb,
    _warmup_alert,
    leg_figures,
)

_SCHEMA = (
    "CREATE TABLE flows (id TEXT PRIMARY KEY, step INTEGER NOT NULL, state TEXT NOT NULL,"
    " submitted REAL NOT NULL, completed REAL)",
    "CREATE TABLE results (id TEXT PRIMARY KEY, src_ip TEXT NOT NULL,"
    " malicious INTEGER NOT NULL, action TEXT NOT NULL, completed REAL NOT NULL)",
)
_CHECKPOINT = "UPDATE flows SET step = ?, state = ? WHERE id = ?"

Statement = tuple[str, tuple[Any, ...]]


class Store:
    """The flows' checkpoints in one SQLite file, committed one by one or in shared batches."""

    def __init__(self, path: Path, *, synchronous: str, batched: bool) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        for statement in _SCHEMA:
            self.db.execute(statement)
        self.batched = batched
        self.commits = 0
        self._queue: asyncio.Queue[tuple[list[Statement], asyncio.Future[None]]] | None = None
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.batched:
            self._queue = asyncio.Queue()
            self._writer = asyncio.create_task(self._write_batches())

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self.db.close()

    def _commit(self, statements: list[Statement]) -> None:
        self.db.execute("BEGIN")
        for sql, params in statements:
            self.db.execute(sql, params)
        self.db.execute("COMMIT")
        self.commits += 1

    async def _write_batches(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._commit([statement for statements, _ in batch for statement in statements])
            for _, done in batch:
                done.set_result(None)

    async def persist(self, statements: list[Statement]) -> None:
        """Return once ``statements`` are committed."""
        if self._queue is None:
            self._commit(statements)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((statements, done))
        await done


class Flow:
    """One alert's five steps, each followed by its checkpoint."""

    def __init__(self, store: Store, http: aiohttp.ClientSession, firewall: str) -> None:
        self.store, self.http, self.firewall = store, http, firewall
        self.iocs: frozenset[str] = frozenset()
        self.steps = 0

    async def checkpoint(
        self, flow: str, step: int, state: dict[str, Any], *extra: Statement
    ) -> None:
        self.steps += 1
        await self.store.persist([(_CHECKPOINT, (step, json.dumps(state), flow)), *extra])

    async def run(self, flow: str, raw: bytes) -> None:
        submitted = time.time()
        await self.store.persist(
            [("INSERT INTO flows VALUES (?, 0, ?, ?, NULL)", (flow, raw.decode(), submitted))]
        )
        alert = json.loads(raw)  # 1. parse, pick the source address
        state: dict[str, Any] = {
            "alert_id": alert["alert_id"],
            "src_ip": alert["network"]["src_ip"],
            "severity": alert["severity"],
        }
        await self.checkpoint(flow, 1, state)
        state["malicious"] = state["src_ip"] in self.iocs  # 2. look it up
        await self.checkpoint(flow, 2, state)
        state["action"] = "block" if state["malicious"] else "none"  # 3. branch
        await self.checkpoint(flow, 3, state)
        if state["action"] == "block":  # 4. contain
            body = {"ip": state["src_ip"], "alert": flow}
            async with self.http.post(self.firewall, json=body) as response:
                await response.read()
                state["firewall_status"] = response.status
            await self.checkpoint(flow, 4, state)
        now = time.time()  # 5. the result record, with the last checkpoint
        await self.checkpoint(
            flow,
            5,
            state,
            (
                "INSERT INTO results VALUES (?, ?, ?, ?, ?)",
                (flow, state["src_ip"], int(state["malicious"]), state["action"], now),
            ),
            ("UPDATE flows SET completed = ? WHERE id = ?", (now, flow)),
        )


async def _measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    full = args.mode == "full-batched"
    store = Store(workdir / "floor.db", synchronous="FULL" if full else "NORMAL", batched=full)
    store.start()
    lines = (args.data / "alerts.jsonl").read_bytes().splitlines()[: args.alerts]
    alerts = [(orjson.loads(line)["alert_id"], line) for line in lines]  # the file's own bytes
    warmup = orjson.dumps(_warmup_alert(_alerts(args.data, 1)))
    iocs = (args.data / "ioc.txt").read_text(encoding="utf-8").split()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=args.inflight)
    async with aiohttp.ClientSession(connector=connector) as http:
        flows = Flow(store, http, args.firewall)
        flows.iocs = frozenset(iocs)

        async def client(queue: Iterator[tuple[str, bytes]]) -> None:
            for flow, raw in queue:
                begun = time.perf_counter()
                await flows.run(flow, raw)
                latencies.append(time.perf_counter() - begun)

        async with asyncio.timeout(120):
            await flows.run("WARMUP", warmup)
        flows.steps = 0
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        pending = iter(alerts)
        async with asyncio.timeout(600):  # the load, bounded
            await asyncio.gather(*(client(pending) for _ in range(args.inflight)))
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
    results = store.db.execute("SELECT count(*) FROM results WHERE id != 'WARMUP'").fetchone()[0]
    await store.stop()
    return {
        **leg_figures(latencies, elapsed, flows.steps, cpu, _own_peak_rss_mb()),
        "failed": len(latencies) - int(results),
        "commits": store.commits,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.engine_floor")
    parser.add_argument("mode", choices=["normal", "full-batched"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--firewall", required=True)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="quell-bench-floor-"))
    try:
        result = asyncio.run(_measure(args, workdir))  # asyncio's own loop, as the harness
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["event_loop"] = "asyncio"
    print(orjson.dumps({"mode": args.mode, **result}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
