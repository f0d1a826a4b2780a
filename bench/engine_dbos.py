"""DBOS Transact's side of the engine benchmark: the 5-step flow as a workflow of DBOS steps.

``python -m bench.engine_dbos --data DIR --firewall URL --workdir DIR [--inflight 32]`` runs in
one process, as DBOS does: the system database is SQLite (a fresh file under ``--workdir``),
every step's output is checkpointed there, and ``--inflight`` threads each run one workflow at a
time (a closed loop, as for the other legs). Prints one JSON line. The branch is the workflow's
own Python, so the firewall step runs only for malicious alerts, as in Quell's playbook. DBOS's
own SQLite settings are kept (it opens IMMEDIATE transactions with a 30 s busy timeout and leaves
the journal mode at SQLite's default); nothing is tuned for it or against it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dbos import DBOS, DBOSConfig

from bench.engine_quell import _own_peak_rss_mb, leg_figures

_local = threading.local()
_steps = [0]
_steps_lock = threading.Lock()


@cache
def _iocs() -> frozenset[str]:
    return frozenset(Path(os.environ["QUELL_BENCH_IOC"]).read_text(encoding="utf-8").split())


def _count_step() -> None:
    with _steps_lock:
        _steps[0] += 1


def _post(url: str, body: bytes) -> int:
    """POST on this thread's keep-alive connection."""
    target = urlsplit(url)
    for attempt in (1, 2):
        try:
            conn = getattr(_local, "conn", None)
            if conn is None:
                conn = _local.conn = http.client.HTTPConnection(
                    target.hostname or "127.0.0.1", target.port or 80, timeout=5
                )
            conn.request(
                "POST", target.path, body=body, headers={"content-type": "application/json"}
            )
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            _local.conn = None
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@DBOS.step()
def parse(raw: str) -> dict[str, Any]:
    """(1) Parse the alert, pick its source IP."""
    _count_step()
    alert = json.loads(raw)
    return {"alert_id": alert["alert_id"], "src_ip": alert["network"]["src_ip"]}


@DBOS.step()
def lookup(ip: str) -> bool:
    """(2) Look it up in the local IOC set."""
    _count_step()
    return ip in _iocs()


@DBOS.step()
def decide(malicious: bool) -> str:
    """(3) Branch on the result."""
    _count_step()
    return "block" if malicious else "none"


@DBOS.step()
def block(firewall: str, ip: str, alert_id: str) -> int:
    """(4) POST to the firewall stand-in."""
    _count_step()
    return _post(firewall, json.dumps({"ip": ip, "alert": alert_id}).encode())


@DBOS.step()
def record(ctx: dict[str, Any]) -> dict[str, Any]:
    """(5) The result record (checkpointed as the step's output)."""
    _count_step()
    return {**ctx, "completed": time.time()}


@DBOS.workflow()
def playbook(raw: str, firewall: str) -> dict[str, Any]:
    """The five steps, the fourth only for a malicious alert."""
    ctx = parse(raw)
    ctx["malicious"] = lookup(ctx["src_ip"])
    ctx["action"] = decide(ctx["malicious"])
    if ctx["action"] == "block":
        ctx["firewall_status"] = block(firewall, ctx["src_ip"], ctx["alert_id"])
    return record(ctx)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.engine_dbos")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--firewall", required=True)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=32)
    args = parser.parse_args(argv)
    os.environ["QUELL_BENCH_IOC"] = str(args.data / "ioc.txt")
    _iocs()
    lines = (args.data / "alerts.jsonl").read_text(encoding="utf-8").splitlines()[: args.alerts]
    workdir = Path(tempfile.mkdtemp(prefix="dbos-", dir=args.workdir))
    config: DBOSConfig = {
        "name": "quell-bench",
        "system_database_url": f"sqlite:///{workdir / 'dbos.sqlite'}",
        "sys_db_pool_size": args.inflight + 10,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        warmup = json.loads(lines[0])
        warmup["network"]["src_ip"] = "192.0.2.1"  # a benign copy: no firewall call
        playbook(json.dumps(warmup), args.firewall)
        _steps[0] = 0
        latencies: list[float] = []

        def one(raw: str) -> None:
            begun = time.perf_counter()
            playbook(raw, args.firewall)
            latencies.append(time.perf_counter() - begun)

        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.inflight) as pool:
            for future in [pool.submit(one, raw) for raw in lines]:
                future.result(timeout=600)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
    finally:
        DBOS.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "mode": "dbos",
        **leg_figures(latencies, elapsed, _steps[0], cpu, _own_peak_rss_mb()),
        "system_database": "sqlite",
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
