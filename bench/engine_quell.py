"""Quell's side of the engine benchmark, run as its own process per mode.

``python -m bench.engine_quell MODE --data DIR --firewall URL [--inflight 32]`` prints one JSON
line. Modes:

- ``sqlite-normal`` / ``sqlite-full``: embedded, one process (as ``quell serve`` runs it): the
  load generator starts runs in the process's engine, which journals them to SQLite with
  ``synchronous=NORMAL`` or ``FULL``;
- ``postgres``: cluster, ``--workers`` ``quell worker`` processes on one PostgreSQL; the load
  generator inserts ready runs and NOTIFYs, the workers claim them.

Each mode first runs one benign warm-up alert (per worker), which the figures leave out. Latency
is from submission to the run's end, as the load generator sees it (through ``Engine.watch``
when embedded, by polling the ``runs`` table every 2 ms on PostgreSQL). ``steps_per_s`` counts
journal rows (step attempts: 4 for a benign alert, 5 for a malicious one); ``cpu_ms_per_run`` is
the CPU time of the process(es) running the engine (the load generator included when embedded,
PostgreSQL's own processes never); ``peak_rss_mb`` is their peak resident memory (summed over
the workers on PostgreSQL). Both modes run on the event loop Quell's own processes take
(``QUELL_EVENT_LOOP``, default ``auto``: uvloop where installed); ``event_loop`` names it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

PLAYBOOK = Path(__file__).with_name("playbook.yaml")


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: the child gets SIGTERM when this process dies (Linux), so
    a benchmark killed by its timeout leaves no worker behind."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _env(data: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "QUELL_PLUGINS": "bench.engine_actions",
        "QUELL_OUTBOUND_ALLOW": "127.0.0.1",
        "QUELL_BENCH_IOC": str(data / "ioc.txt"),
        "QUELL_LOG_LEVEL": "warning",
        **extra,
    }


def _alerts(data: Path, limit: int) -> list[dict[str, Any]]:
    lines = (data / "alerts.jsonl").read_bytes().splitlines()[:limit]
    return [orjson.loads(line) for line in lines]


def _warmup_alert(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """A benign copy of the first alert (no firewall call), to warm the engine up."""
    alert = orjson.loads(orjson.dumps(alerts[0]))
    alert["alert_id"] = "WARMUP"
    alert["network"]["src_ip"] = "192.0.2.1"
    return dict(alert)


def leg_figures(
    latencies: list[float], elapsed: float, steps: int, cpu: float, rss_mb: float
) -> dict[str, Any]:
    """The figures every leg reports, from its latencies (s), the load's wall time (s), the
    steps that ran, the CPU seconds of the processes that ran the flows and their peak RSS."""
    runs = len(latencies)
    return {
        "runs": runs,
        "runs_per_s": runs / elapsed,
        "steps_per_s": steps / elapsed,
        "p50_ms": _quantile(latencies, 0.5) * 1000,
        "p95_ms": _quantile(latencies, 0.95) * 1000,
        "peak_rss_mb": rss_mb,
        "cpu_ms_per_run": cpu * 1000 / max(1, runs),
    }


def _own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _embedded(args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    os.environ.update(_env(args.data, {"QUELL_DATA_DIR": data_dir}))
    os.environ["QUELL_SQLITE_SYNCHRONOUS"] = "full" if args.mode == "sqlite-full" else "normal"
    from quell.engine.engine import Engine
    from quell.engine.states import RunStatus
    from quell.ids import new_id
    from quell.logs import configure_logging
    from quell.playbooks.compiler import parse_playbook
    from quell.runtime import Runtime
    from quell.settings import LogFormat, LogLevel, load_settings

    configure_logging(LogFormat.HUMAN, LogLevel.WARNING)
    alerts = _alerts(args.data, args.alerts)
    with Runtime.open(load_settings()) as runtime:
        engine = Engine.for_runtime(runtime, concurrency=10_000)
        playbook = parse_playbook(
            PLAYBOOK.read_bytes(), str(PLAYBOOK), actions=engine.actions.registry
        )
        version = runtime.playbooks.register(playbook)
        latencies: list[float] = []
        failed = 0
        async with engine:

            async def one(alert: dict[str, Any]) -> None:
                nonlocal failed
                begun = time.perf_counter()
                run_id = new_id("run")
                finished = engine.watch(run_id)  # before it starts: it cannot be missed
                inputs = {"alert": alert, "firewall": args.firewall}
                await engine.start(version.id, inputs, trigger="bench", run_id=run_id)
                status = await finished  # bounded by the timeout around the whole load
                latencies.append(time.perf_counter() - begun)
                failed += status is not RunStatus.SUCCEEDED

            async def client(queue: Iterator[dict[str, Any]]) -> None:
                """One of ``--inflight`` closed-loop clients: an alert, its run, the next."""
                for alert in queue:
                    await one(alert)

            async with asyncio.timeout(120):
                await one(_warmup_alert(alerts))
            latencies.clear()
            failed = 0
            steps_before = _count_steps(runtime)
            cpu_before = _cpu_seconds()
            started = time.perf_counter()
            pending = iter(alerts)
            async with asyncio.timeout(600):  # the load, bounded
                await asyncio.gather(*(client(pending) for _ in range(args.inflight)))
            elapsed = time.perf_counter() - started
            cpu = _cpu_seconds() - cpu_before
        steps = _count_steps(runtime) - steps_before
    return {
        **leg_figures(latencies, elapsed, steps, cpu, _own_peak_rss_mb()),
        "failed": failed,
    }


def _count_steps(runtime: Any) -> int:
    from sqlalchemy import func, select

    from quell.store.schema import run_steps

    with runtime.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(run_steps)).scalar_one())


def _fresh_schema(url: str) -> tuple[str, str]:
    """A new, empty schema in ``url``'s database, named for this process.

    Returns the schema and a URL whose connections use it (``search_path``) and carry an
    ``application_name`` of their own, by which the benchmark tells its workers' connections
    from anyone else's. A schema, not a database: it needs only the right to create in the
    database (as CI's test role has), not CREATEDB.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"quell_bench_{os.getpid()}"
    target = make_url(url)
    admin = target.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    query = {**target.query, "options": f"-csearch_path={schema}", "application_name": schema}
    return schema, target.set(query=query).render_as_string(hide_password=False)


def _psycopg_url(url: str) -> str:
    """``url`` (an SQLAlchemy URL) as libpq takes it."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _listening(runtime: Any, name: str) -> int:
    """How many of this benchmark's workers LISTEN (a ``quell worker`` does once it serves)."""
    from sqlalchemy import text

    with runtime.db.read() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = :name AND query LIKE 'LISTEN%'"
        )
        return int(conn.execute(query, {"name": name}).scalar_one())


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _process_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres(args: argparse.Namespace, url: str, schema: str, data_dir: str) -> dict[str, Any]:
    os.environ.update(_env(args.data, {"QUELL_DATA_DIR": data_dir, "QUELL_DATABASE_URL": url}))
    import psycopg
    from sqlalchemy import text

    from quell.engine.engine import Engine
    from quell.engine.states import RunStatus
    from quell.ids import new_id
    from quell.logs import configure_logging
    from quell.playbooks.compiler import parse_playbook
    from quell.runtime import Runtime
    from quell.settings import LogFormat, LogLevel, load_settings

    configure_logging(LogFormat.HUMAN, LogLevel.WARNING)
    alerts = _alerts(args.data, args.alerts)
    ended = [RunStatus.SUCCEEDED.value, RunStatus.FAILED.value, RunStatus.CANCELED.value]
    with Runtime.open(load_settings()) as runtime:
        engine = Engine.for_runtime(runtime)
        playbook = parse_playbook(
            PLAYBOOK.read_bytes(), str(PLAYBOOK), actions=engine.actions.registry
        )
        version = runtime.playbooks.register(playbook)
        insert = engine.journal.insert_run

        def submit(batch: list[dict[str, Any]], submitted: dict[str, float]) -> None:
            rows = []
            for alert in batch:
                run_id = new_id("run")
                inputs = {"alert": alert, "firewall": args.firewall}
                rows.append(
                    engine.run_row(run_id, version.id, playbook.id, inputs, trigger="bench")
                )
                submitted[run_id] = time.perf_counter()
            with runtime.db.write() as conn:
                insert.run(conn, rows)
                conn.execute(text("NOTIFY quell_runs"))

        # The load generator's poll, on a connection of its own: one prepared statement by
        # primary key, so that polling every 2 ms costs the two cores Quell shares with it as
        # little as Celery's blocking pop does. A fresh schema has no statistics yet and its
        # runs table bloats with updates, so the planner would scan it whole each time.
        poll = psycopg.connect(_psycopg_url(url), autocommit=True)  # closed with the workers
        poll.execute("SET enable_seqscan = off")
        poll_sql = "SELECT id, status FROM runs WHERE id = ANY(%s) AND status = ANY(%s)"

        def finished(submitted: dict[str, float]) -> list[tuple[str, str]]:
            rows = poll.execute(poll_sql, (list(submitted), ended), prepare=True).fetchall()
            return [(run_id, status) for run_id, status in rows]

        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "quell", "worker"],
                env=os.environ.copy(),
                preexec_fn=die_with_parent,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(args.workers)
        ]
        try:
            for _ in range(600):  # the workers import, connect and LISTEN (60 s at most)
                if _listening(runtime, schema) >= args.workers:
                    break
                if any(worker.poll() is not None for worker in workers):
                    raise RuntimeError("a quell worker exited at startup")
                time.sleep(0.1)
            else:
                raise RuntimeError("the quell workers did not start listening within 60 s")
            # Warm-up: one benign run per worker, so each has loaded the playbook and connector.
            warm: dict[str, float] = {}
            submit([_warmup_alert(alerts)] * (2 * args.workers), warm)
            for _ in range(3000):  # 60 s at most
                for run_id, _status in finished(warm):
                    warm.pop(run_id)
                if not warm:
                    break
                time.sleep(0.02)
            else:
                raise RuntimeError("the warm-up runs did not finish within 60 s")

            submitted: dict[str, float] = {}
            latencies: list[float] = []
            failed = 0
            pending = list(reversed(alerts))
            steps_before = _count_steps(runtime)
            cpu_before = sum(_process_cpu_seconds(worker.pid) for worker in workers)
            own_cpu_before = _cpu_seconds()
            started = time.perf_counter()
            deadline = started + 600
            while (pending or submitted) and time.perf_counter() < deadline:
                room = args.inflight - len(submitted)
                if room > 0 and pending:
                    submit([pending.pop() for _ in range(min(room, len(pending)))], submitted)
                time.sleep(0.002)
                done = finished(submitted)
                now = time.perf_counter()
                for run_id, status in done:
                    latencies.append(now - submitted.pop(run_id))
                    failed += status != RunStatus.SUCCEEDED.value
            if pending or submitted:
                raise RuntimeError(f"{len(pending) + len(submitted)} runs unfinished after 600 s")
            elapsed = time.perf_counter() - started
            cpu = sum(_process_cpu_seconds(worker.pid) for worker in workers) - cpu_before
            own_cpu = _cpu_seconds() - own_cpu_before
            steps = _count_steps(runtime) - steps_before
            rss = sum(_peak_rss_mb(worker.pid) for worker in workers)
        finally:
            poll.close()
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    return {
        **leg_figures(latencies, elapsed, steps, cpu, rss),
        "failed": failed,
        "load_generator_cpu_ms_per_run": own_cpu * 1000 / max(1, len(latencies)),
        "workers": args.workers,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.engine_quell")
    parser.add_argument("mode", choices=["sqlite-normal", "sqlite-full", "postgres"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--firewall", required=True)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/quell")
    args = parser.parse_args(argv)
    data_dir = tempfile.mkdtemp(prefix="quell-bench-")
    from quell import aio
    from quell.settings import EventLoop

    loop = EventLoop(os.environ.get("QUELL_EVENT_LOOP", "auto"))
    try:
        if args.mode == "postgres":
            schema, url = _fresh_schema(args.postgres_url)
            try:
                result = _postgres(args, url, schema, data_dir)
            finally:
                _drop_schema(args.postgres_url, schema)
        else:
            # On the loop `quell serve` runs on (uvicorn takes uvloop where installed), as
            # `quell worker` does in the PostgreSQL mode.
            result = aio.run(_embedded(args, data_dir), loop)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    result["event_loop"] = aio.loop_name(loop)
    print(orjson.dumps({"mode": args.mode, **result}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
