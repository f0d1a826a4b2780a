"""The staging pool survives the death of its worker processes and loses no record."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import orjson
import pytest

from quell.ingest.staging import StagedBatch, StagingPool, StagingSpec
from quell.store.database import Backend

SPEC = StagingSpec(
    source="hook",
    format="json",
    parser_options={"fields": {"title": "title", "time": "ts", "src.ip": "src"}},
    fingerprint=("source", "title"),
    correlate_on=("src_ip",),
    max_record_bytes=65_536,
    backend=Backend.SQLITE,
)
RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _records(count: int) -> list[bytes]:
    return [
        orjson.dumps(
            {"title": f"scan {n}", "ts": "2026-03-01T11:59:00Z", "src": f"10.0.{n % 250}.9"}
        )
        for n in range(count)
    ]


@pytest.fixture
def pool() -> Iterator[StagingPool]:
    staging = StagingPool(1)
    yield staging
    staging.close()


def _wait(condition: Callable[[], bool], what: str) -> None:
    for _ in range(3000):  # bounded: 30 s
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_workers(pool: StagingPool) -> list[int]:
    pids = pool.pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_a_worker_killed_while_idle_is_replaced(pool: StagingPool) -> None:
    assert len(pool.submit(SPEC, _records(10), RECEIVED, ()).result(60).staged) == 10
    _kill_workers(pool)
    batch = pool.submit(SPEC, _records(20), RECEIVED, ()).result(60)
    assert len(batch.staged) == 20
    assert batch.dead == []
    assert pool.replaced == 1


def test_a_batch_whose_worker_dies_is_staged_again(pool: StagingPool) -> None:
    future = pool.submit(SPEC, _records(60_000), RECEIVED, ())
    _wait(lambda: bool(pool.pids()), "the worker to start")
    _kill_workers(pool)
    batch = future.result(120)
    assert len(batch.staged) == 60_000
    assert pool.replaced == 1


def test_a_batch_that_loses_its_worker_twice_becomes_dead_letters(pool: StagingPool) -> None:
    records = _records(60_000)
    future = pool.submit(SPEC, records, RECEIVED, ())
    _wait(lambda: bool(pool.pids()), "the worker to start")
    first = _kill_workers(pool)
    _wait(lambda: pool.replaced == 1 and bool(pool.pids()) and pool.pids() != first, "a new pool")
    _kill_workers(pool)
    batch: StagedBatch = future.result(120)
    assert batch.staged == []
    assert [dead.index for dead in batch.dead] == list(range(60_000))
    assert batch.dead[5].raw == records[5]
    assert "stopped its worker process twice" in batch.dead[0].reason
    # The pool still works for the next batch.
    assert len(pool.submit(SPEC, _records(5), RECEIVED, ()).result(60).staged) == 5


def test_workers_run_with_the_collector_tuned_for_ingest(pool: StagingPool) -> None:
    import gc

    from quell.aio import GC_THRESHOLDS

    assert len(pool.submit(SPEC, _records(5), RECEIVED, ()).result(60).staged) == 5
    # Asked of the worker process itself (the pool's executor runs any picklable callable).
    assert pool._pool.submit(gc.get_threshold).result(60) == GC_THRESHOLDS
    assert pool._pool.submit(gc.get_freeze_count).result(60) > 0
