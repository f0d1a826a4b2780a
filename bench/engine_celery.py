"""Celery's side of the engine benchmark: the 5-step flow as a chain of 5 tasks on Redis.

``python -m bench.engine_celery --data DIR --firewall URL --redis-url URL [--inflight 32]``
starts a Celery worker (prefork, ``--concurrency`` 2 processes: the peer harness's setting on
this machine) in a subprocess, waits until it answers a ping and has run one flow, then keeps
``--inflight`` chains in flight from this process and prints one JSON line.

Redis (``--redis-url``, one database number) is both the broker and the result backend; every
task's result is stored there, and the last task also pushes a completion record onto a list
that the load generator pops (the peer harness's instrumentation). Celery chains cannot branch,
so the containment task runs for every alert and only POSTs for malicious ones.

Peak RSS and CPU are the worker's and its pool's (not Redis's, nor the load generator's).
Celery acknowledges a task when it starts (its default) and Redis, as the peer harness ran it and
as this machine's runs it, has ``appendonly no``: this leg is not durable step by step as the
others are, which only flatters it.

This module is also the worker's app (``celery -A bench.engine_celery worker``); the worker
reads ``QUELL_BENCH_REDIS_URL``, ``QUELL_BENCH_IOC`` and ``QUELL_BENCH_FIREWALL``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, chain
from celery.signals import worker_init

from bench.engine_quell import die_with_parent, leg_figures

DONE_LIST = "quell-bench:done"
REDIS_URL = os.environ.get("QUELL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

app = Celery("quell_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@cache
def _iocs() -> frozenset[str]:
    path = Path(os.environ["QUELL_BENCH_IOC"])
    return frozenset(path.read_text(encoding="utf-8").split())


@worker_init.connect
def _preload(**_: Any) -> None:
    """Load the IOC set in the worker's parent, before it forks its pool."""
    _iocs()


class _Firewall:
    """One keep-alive connection per worker process."""

    conn: http.client.HTTPConnection | None = None

    @classmethod
    def post(cls, body: bytes) -> int:
        target = urlsplit(os.environ["QUELL_BENCH_FIREWALL"])
        for attempt in (1, 2):
            try:
                if cls.conn is None:
                    cls.conn = http.client.HTTPConnection(
                        target.hostname or "127.0.0.1", target.port or 80, timeout=5
                    )
                cls.conn.request(
                    "POST", target.path, body=body, headers={"content-type": "application/json"}
                )
                response = cls.conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                cls.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@cache
def _redis() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


@app.task(name="quell_bench.parse")
def parse(raw: str, submitted: float) -> dict[str, Any]:
    """(1) Parse the alert, pick its source IP."""
    alert = json.loads(raw)
    return {
        "alert_id": alert["alert_id"],
        "src_ip": alert["network"]["src_ip"],
        "submitted": submitted,
    }


@app.task(name="quell_bench.lookup")
def lookup(ctx: dict[str, Any]) -> dict[str, Any]:
    """(2) Look it up in the local IOC set."""
    ctx["malicious"] = ctx["src_ip"] in _iocs()
    return ctx


@app.task(name="quell_bench.decide")
def decide(ctx: dict[str, Any]) -> dict[str, Any]:
    """(3) Branch on the result."""
    ctx["action"] = "block" if ctx["malicious"] else "none"
    return ctx


@app.task(name="quell_bench.contain")
def contain(ctx: dict[str, Any]) -> dict[str, Any]:
    """(4) If malicious, POST to the firewall stand-in."""
    if ctx["action"] == "block":
        body = json.dumps({"ip": ctx["src_ip"], "alert": ctx["alert_id"]}).encode()
        ctx["firewall_status"] = _Firewall.post(body)
    return ctx


@app.task(name="quell_bench.record")
def record(ctx: dict[str, Any]) -> dict[str, Any]:
    """(5) The result record: this task's stored result, and a completion for the load generator."""
    ctx["completed"] = time.time()
    _redis().lpush(DONE_LIST, json.dumps([ctx["alert_id"], ctx["submitted"], ctx["completed"]]))
    return ctx


def _submit(raw: str) -> None:
    flow = chain(parse.s(raw, time.time()), lookup.s(), decide.s(), contain.s(), record.s())
    flow.apply_async(ignore_result=False)


def _tree(root: int) -> list[int]:
    """``root`` and its children (the prefork pool)."""
    found = [root]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == root:
            found.append(int(entry.name))
    return found


def _tree_peak_rss_mb(root: int) -> float:
    """Sum of the peak RSS (VmHWM) of ``root`` and its children."""
    total = 0.0
    for pid in _tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def _tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) of ``root`` and its children so far."""
    total = 0.0
    for pid in _tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _start_worker(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "QUELL_BENCH_REDIS_URL": args.redis_url,
        "QUELL_BENCH_IOC": str(args.data / "ioc.txt"),
        "QUELL_BENCH_FIREWALL": args.firewall,
    }
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "bench.engine_celery", "worker",
            "--pool", "prefork", "--concurrency", str(args.concurrency),
            "--loglevel", "WARNING", "--hostname", f"quell-bench-{os.getpid()}@%h",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so its pool goes with it
        preexec_fn=die_with_parent,
    )  # fmt: skip


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def _wait_ready(worker: subprocess.Popen[bytes], raw: str, redis: Any) -> None:
    for _ in range(60):  # a minute at most
        if worker.poll() is not None:
            raise RuntimeError(f"the celery worker exited at startup ({worker.returncode})")
        if app.control.ping(timeout=1.0):
            break
    else:
        raise RuntimeError("the celery worker did not answer a ping within a minute")
    _submit(raw)  # one flow through every task, so the pool is warm
    if redis.blpop(DONE_LIST, timeout=60) is None:
        raise RuntimeError("the warm-up flow did not finish within a minute")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.engine_celery")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--firewall", required=True)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    if args.redis_url != REDIS_URL:  # the app was made at import: point it at this database
        app.conf.update(broker_url=args.redis_url, result_backend=args.redis_url)
    import redis as redis_module

    redis = redis_module.Redis.from_url(args.redis_url, socket_timeout=180)
    lines = (args.data / "alerts.jsonl").read_text(encoding="utf-8").splitlines()[: args.alerts]
    warmup = json.loads(lines[0])
    warmup["network"]["src_ip"] = "192.0.2.1"  # a benign copy: no firewall call
    worker = _start_worker(args)
    try:
        _wait_ready(worker, json.dumps(warmup), redis)
        redis.delete(DONE_LIST)
        latencies: list[float] = []
        submitted = 0
        cpu_before = _tree_cpu_seconds(worker.pid)
        started = time.perf_counter()
        while submitted < min(args.inflight, len(lines)):
            _submit(lines[submitted])
            submitted += 1
        for _ in range(len(lines)):  # one completion per alert
            popped = redis.blpop(DONE_LIST, timeout=120)
            if popped is None:
                raise RuntimeError("no flow finished within 120 s")
            _alert, begun, ended = json.loads(popped[1])
            latencies.append(ended - begun)
            if submitted < len(lines):
                _submit(lines[submitted])
                submitted += 1
        elapsed = time.perf_counter() - started
        cpu = _tree_cpu_seconds(worker.pid) - cpu_before
        rss = _tree_peak_rss_mb(worker.pid)
    finally:
        _stop_worker(worker)
    result = {
        "mode": "celery",
        **leg_figures(latencies, elapsed, 5 * len(latencies), cpu, rss),
        "concurrency": args.concurrency,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
