"""Waits hold no memory: ``--runs`` (10,000) runs waiting on approval, then approvals one by one.

One engine serves in this process on SQLite (``synchronous=NORMAL``), as a worker does, and the
benchmark measures this process:

1. startup and warm-up: ``--warmup`` (100) runs go through the whole path (start, wait, approve,
   resume, finish); then the baseline resident memory (VmRSS);
2. ``--runs`` runs of a playbook whose first step waits on an approval, started 64 at a time,
   until every one of them is ``waiting``; then VmRSS again: the growth is what the waiting runs
   cost the worker (the target is under 50 MB for 10,000);
3. ``--approve`` (200) of them approved one at a time, as an API call in the serving process does
   (the decision's ``on_change`` wakes the engine): latency from the call to the run's end, as
   ``Engine.watch`` reports it (the target is a p95 under 200 ms);
4. ``--approve-polled`` (50) more approved the way ``quell approval approve`` does from another
   process: nothing wakes the engine, which finds the run at its next poll.

``--trace`` also prints the biggest allocation sites that grew between the two memory readings
(tracemalloc: slower, and its own bookkeeping adds to RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.report import emit, table

PLAYBOOK = """
id: bench-approval
name: Block an address once someone approves
inputs: {ip: {type: string, required: true}}
vars: {outcome: pending}
steps:
  - id: ask
    wait: approval
    prompt: "Block {{ ip }}?"
    approvers: [approver]
  - id: done
    set: {outcome: approved}
"""

STARTING = 64  # runs being started at once
RSS_TARGET_MB = 50.0
RESUME_TARGET_MS = 200.0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _rss_mb() -> float:
    gc.collect()
    return _status_kb("VmRSS") / 1024


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import func, select

    from quell.engine.engine import Engine
    from quell.engine.states import RunStatus
    from quell.engine.waits import WaitService
    from quell.ids import new_id
    from quell.logs import configure_logging
    from quell.playbooks.compiler import parse_playbook
    from quell.runtime import Runtime
    from quell.settings import LogFormat, LogLevel, load_settings
    from quell.store.schema import runs

    configure_logging(LogFormat.HUMAN, LogLevel.WARNING)
    with Runtime.open(load_settings()) as runtime:
        engine = Engine.for_runtime(runtime)
        playbook = parse_playbook(PLAYBOOK, "waits.yaml", actions=engine.actions.registry)
        version = runtime.playbooks.register(playbook).id
        in_process = WaitService(runtime.db, runtime.clock, on_change=engine.wake)
        elsewhere = WaitService(runtime.db, runtime.clock)  # as another process's CLI

        def count(status: RunStatus) -> int:
            with runtime.db.read() as conn:
                query = select(func.count()).select_from(runs).where(runs.c.status == status.value)
                return int(conn.execute(query).scalar_one())

        async def start(number: int) -> None:
            slots = asyncio.Semaphore(STARTING)

            async def one(index: int) -> None:
                async with slots:
                    ip = f"198.51.{index // 250 % 250}.{index % 250 + 1}"
                    await engine.start(version, {"ip": ip}, trigger="bench", run_id=new_id("run"))

            await asyncio.gather(*(one(index) for index in range(number)))

        async def until_waiting(number: int) -> float:
            begun = time.perf_counter()
            for _ in range(6000):  # 10 minutes at most
                if await asyncio.to_thread(count, RunStatus.WAITING) >= number:
                    return time.perf_counter() - begun
                await asyncio.sleep(0.1)
            raise RuntimeError(f"fewer than {number} runs waiting after 10 minutes")

        async def approve(service: WaitService, number: int) -> list[float]:
            latencies = []
            for wait in await asyncio.to_thread(service.list_all, kind="approval", limit=number):
                finished = engine.watch(wait.run_id)
                begun = time.perf_counter()
                await asyncio.to_thread(service.approve, wait.id, "bench", "admin", "bench")
                status = await asyncio.wait_for(finished, timeout=30)
                latencies.append(time.perf_counter() - begun)
                if status is not RunStatus.SUCCEEDED:
                    raise RuntimeError(f"run {wait.run_id} ended {status}")
                engine.finished.pop(wait.run_id, None)  # the bench's own future, not the engine's
            return latencies

        stop = asyncio.Event()
        async with engine:
            serving = asyncio.create_task(engine.serve(stop))
            try:
                await start(args.warmup)
                await until_waiting(args.warmup)
                await approve(in_process, args.warmup)
                await asyncio.sleep(1.0)
                if args.trace:
                    tracemalloc.start(10)
                    before = tracemalloc.take_snapshot()
                baseline = _rss_mb()

                begun = time.perf_counter()
                await start(args.runs)
                started_in = time.perf_counter() - begun
                await until_waiting(args.runs)
                waiting_in = time.perf_counter() - begun
                await asyncio.sleep(1.0)  # anything the engine does after, it has done
                after = _rss_mb()
                waiting = await asyncio.to_thread(count, RunStatus.WAITING)
                held = {
                    "active_executions": len(engine.active),
                    "tasks": len(engine.tasks),
                    "finished_futures": len(engine.finished),
                    "compiled_templates": len(engine.compiled),
                }
                if args.trace:
                    growth = tracemalloc.take_snapshot().compare_to(before, "lineno")
                    tracemalloc.stop()
                    print("\nbiggest allocation growth while the runs started and waited:")
                    for stat in growth[:12]:
                        print(f"  {stat}")

                resumed = await approve(in_process, args.approve)
                polled = await approve(elsewhere, args.approve_polled)
                peak = _status_kb("VmHWM") / 1024
                succeeded = await asyncio.to_thread(count, RunStatus.SUCCEEDED)
            finally:
                stop.set()
                await serving
    db_file = Path(os.environ["QUELL_DATA_DIR"]) / "quell.db"
    return {
        "waiting_runs": waiting,
        "warmup_runs": args.warmup,
        "start_runs_per_s": round(args.runs / started_in, 1),
        "all_waiting_s": round(waiting_in, 2),
        "rss_baseline_mb": round(baseline, 1),
        "rss_after_mb": round(after, 1),
        "rss_growth_mb": round(after - baseline, 1),
        "rss_growth_kb_per_run": round((after - baseline) * 1024 / max(1, args.runs), 2),
        "rss_peak_mb": round(peak, 1),
        "approved": len(resumed),
        "resume_p50_ms": round(_quantile(resumed, 0.5) * 1000, 1),
        "resume_p95_ms": round(_quantile(resumed, 0.95) * 1000, 1),
        "resume_max_ms": round(max(resumed, default=0.0) * 1000, 1),
        "approved_polled": len(polled),
        "resume_polled_p50_ms": round(_quantile(polled, 0.5) * 1000, 1),
        "resume_polled_p95_ms": round(_quantile(polled, 0.95) * 1000, 1),
        "succeeded_runs": succeeded,
        "engine_holds_while_waiting": held,
        "database_mb": round(db_file.stat().st_size / 1e6, 1) if db_file.exists() else None,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench waits", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--approve", type=int, default=200)
    parser.add_argument("--approve-polled", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="500 runs, 50 + 5 approvals")
    parser.add_argument("--trace", action="store_true", help="tracemalloc the memory growth")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.approve, args.approve_polled, args.warmup = 500, 50, 5, 20
    args.approve = min(args.approve, args.runs)
    args.approve_polled = min(args.approve_polled, args.runs - args.approve)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quell-bench-waits-"))
    for name in list(os.environ):
        if name.startswith("QUELL_") and name != "QUELL_LOG_LEVEL":
            del os.environ[name]  # this benchmark's settings only: SQLite, NORMAL
    os.environ["QUELL_DATA_DIR"] = str(workdir / "data")
    try:
        figures = asyncio.run(_measure(args))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    table(
        f"{figures['waiting_runs']:,} runs waiting on approval (SQLite NORMAL, one engine)",
        ["figure", "value", "target"],
        [
            ["RSS after warm-up (MB)", figures["rss_baseline_mb"], ""],
            ["RSS with the runs waiting (MB)", figures["rss_after_mb"], ""],
            ["RSS growth (MB)", figures["rss_growth_mb"], f"< {RSS_TARGET_MB:.0f}"],
            ["RSS growth per run (KB)", figures["rss_growth_kb_per_run"], ""],
            ["runs started/s", figures["start_runs_per_s"], ""],
            ["approve to end, p50 (ms)", figures["resume_p50_ms"], ""],
            ["approve to end, p95 (ms)", figures["resume_p95_ms"], f"< {RESUME_TARGET_MS:.0f}"],
            ["same, found by polling, p95 (ms)", figures["resume_polled_p95_ms"], ""],
        ],
    )
    figures["rss_target_met"] = figures["rss_growth_mb"] < RSS_TARGET_MB * args.runs / 10_000
    figures["resume_target_met"] = figures["resume_p95_ms"] < RESUME_TARGET_MS
    emit({"benchmark": "waits", "runs": args.runs, **figures})
    return 0
