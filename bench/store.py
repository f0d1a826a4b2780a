"""Group commit: durable small writes per second, against one commit per write.

Workload: small rows (an int and ~200 bytes of text, a journal checkpoint's size). Each writer
waits for its write to be durable (committed) before it issues the next, as an engine step
must. Three ways to write, on each backend:

  floor      the raw driver (sqlite3 / psycopg), one transaction per write, one writer:
             what peer-bench/asyncio/sqlite_commits.py measures, the floor of any Python code
  per-write  Quell's Database.write(), one transaction per write, one writer
  group      Quell's GroupCommitter, 32 concurrent asyncio writers sharing commits

Backends: SQLite with synchronous=NORMAL (safe against a process crash), SQLite with
synchronous=FULL (safe against power loss: an fsync per commit), and PostgreSQL when
QUELL_BENCH_POSTGRES_URL or QUELL_TEST_POSTGRES_URL is set. Figures are ratios within one run;
the machine is noisy, absolute numbers are not comparable across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, insert, text

from bench.report import emit, table
from quell.settings import SqliteSynchronous
from quell.store.database import Database
from quell.store.group_commit import GroupCommitter

PAYLOAD = "x" * 200
CONCURRENCY = 32

metadata = MetaData()
writes = Table(
    "bench_writes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("step", Integer, nullable=False),
    Column("ctx", Text, nullable=False),
)


def _sqlite_floor(path: Path, sync: str, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("CREATE TABLE IF NOT EXISTS floor(id INTEGER PRIMARY KEY, step INTEGER, ctx TEXT)")
    started = time.perf_counter()
    for step in range(count):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO floor(step, ctx) VALUES(?, ?)", (step, PAYLOAD))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def _postgres_floor(url: str, count: int) -> float:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS floor(id serial PRIMARY KEY, step int, ctx text)")
        conn.commit()
        started = time.perf_counter()
        for step in range(count):
            conn.execute("INSERT INTO floor(step, ctx) VALUES(%s, %s)", (step, PAYLOAD))
            conn.commit()
        return count / (time.perf_counter() - started)


def _per_write(db: Database, count: int) -> float:
    statement = insert(writes)
    started = time.perf_counter()
    for step in range(count):
        with db.write() as conn:
            conn.execute(statement, {"step": step, "ctx": PAYLOAD})
    return count / (time.perf_counter() - started)


def _group(db: Database, count: int) -> tuple[float, float]:
    statement = insert(writes)
    per_writer = count // CONCURRENCY

    async def writer(committer: GroupCommitter, index: int) -> None:
        for step in range(per_writer):
            await committer.execute_async(
                statement, {"step": index * per_writer + step, "ctx": PAYLOAD}
            )

    async def run(committer: GroupCommitter) -> None:
        await asyncio.gather(*(writer(committer, i) for i in range(CONCURRENCY)))

    with GroupCommitter(db) as committer:
        started = time.perf_counter()
        asyncio.run(run(committer))
        elapsed = time.perf_counter() - started
    done = per_writer * CONCURRENCY
    return done / elapsed, done / max(committer.stats.batches, 1)


def _measure(
    label: str,
    floor: Callable[[int], float],
    make_db: Callable[[], Database],
    counts: tuple[int, int],
) -> dict[str, Any]:
    per_commit_count, group_count = counts
    floor_rate = floor(per_commit_count)
    db = make_db()
    metadata.create_all(db.engine)
    try:
        per_write_rate = _per_write(db, per_commit_count)
        group_rate, mean_batch = _group(db, group_count)
    finally:
        metadata.drop_all(db.engine)
        db.dispose()
    return {
        "label": label,
        "floor": floor_rate,
        "per_write": per_write_rate,
        "group": group_rate,
        "mean_batch": mean_batch,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--writes", type=int, default=20_000, help="writes per group-commit run")
    parser.add_argument("--workdir", type=Path, default=Path(".bench/store"), help="SQLite files")
    args = parser.parse_args(argv)
    if not 100 <= args.writes <= 1_000_000:
        parser.error("--writes must be between 100 and 1,000,000")
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    results = []
    for sync in SqliteSynchronous:
        # An fsync per commit makes one-commit-per-write slow: measure it on fewer writes.
        per_commit = (
            args.writes if sync is SqliteSynchronous.NORMAL else max(args.writes // 10, 100)
        )
        results.append(
            _measure(
                f"sqlite_{sync.value}",
                lambda n, s=sync: _sqlite_floor(
                    workdir / f"floor_{s.value}.db", s.value.upper(), n
                ),
                lambda s=sync: Database(
                    f"sqlite:///{workdir / f'quell_{s.value}.db'}", sqlite_synchronous=s
                ),
                (per_commit, args.writes),
            )
        )

    pg_url = os.environ.get("QUELL_BENCH_POSTGRES_URL") or os.environ.get("QUELL_TEST_POSTGRES_URL")
    if pg_url:
        if pg_url.startswith("postgresql://"):
            pg_url = "postgresql+psycopg://" + pg_url.removeprefix("postgresql://")
        schema = f"bench_{secrets.token_hex(4)}"
        admin = create_engine(pg_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        scoped = f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}"
        try:
            results.append(
                _measure(
                    "postgres",
                    lambda n: _postgres_floor(scoped, n),
                    lambda: Database(scoped),
                    (max(args.writes // 4, 100), args.writes),
                )
            )
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    shutil.rmtree(workdir, ignore_errors=True)

    table(
        f"Durable small writes per second ({args.writes:,} writes; group: {CONCURRENCY} writers)",
        ["backend", "floor/s", "per-write/s", "group/s", "mean batch", "group/floor"],
        [
            [
                r["label"],
                r["floor"],
                r["per_write"],
                r["group"],
                r["mean_batch"],
                f"{r['group'] / r['floor']:.1f}x",
            ]
            for r in results
        ],
    )
    figures: dict[str, Any] = {"writes": args.writes, "concurrency": CONCURRENCY}
    for r in results:
        for key in ("floor", "per_write", "group"):
            figures[f"{r['label']}_{key}_per_s"] = round(r[key])
        figures[f"{r['label']}_group_vs_floor"] = round(r["group"] / r["floor"], 2)
        figures[f"{r['label']}_mean_batch"] = round(r["mean_batch"], 1)
    emit(figures)
    return 0
