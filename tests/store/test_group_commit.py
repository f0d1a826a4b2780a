"""Group commit on both backends: shared commits, acknowledged only once durable."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future, wait
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import IntegrityError

from quell.errors import StorageUnavailable
from quell.store.database import Database
from quell.store.group_commit import GroupCommitter

scratch = MetaData()
journal = Table(
    "scratch_journal",
    scratch,
    Column("id", Integer, primary_key=True),
    Column("note", String(64), nullable=False),
)
ledger = Table(
    "scratch_ledger",
    scratch,
    Column("id", Integer, primary_key=True),
    Column("ref", Integer, nullable=False, unique=True),
)


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    scratch.create_all(database.engine)
    yield database
    scratch.drop_all(database.engine)


def _count(db: Database, table: Table) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_concurrent_writers_share_commits_and_every_write_lands(db: Database) -> None:
    writers, per_writer = 8, 250
    start = threading.Barrier(writers)
    futures: list[Future[None]] = []
    lock = threading.Lock()
    statement = insert(journal)

    def writer(index: int) -> None:
        start.wait()
        mine = [
            committer.execute(statement, {"id": index * per_writer + n, "note": f"w{index}"})
            for n in range(per_writer)
        ]
        with lock:
            futures.extend(mine)

    with GroupCommitter(db) as committer:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done, not_done = wait(futures, timeout=60)
        assert not not_done
        for future in done:
            future.result()
    assert _count(db, journal) == writers * per_writer
    assert committer.stats.writes == writers * per_writer
    assert committer.stats.batches < committer.stats.writes
    assert committer.stats.largest_batch > 1


def test_a_failing_write_fails_alone(db: Database) -> None:
    statement = insert(ledger)
    with GroupCommitter(db) as committer:
        gate = threading.Event()
        # Hold the writer on a first item so that the next ones pile into one batch.
        blocker = committer.submit(lambda conn: gate.wait(10))
        good = [committer.execute(statement, {"id": n, "ref": n}) for n in range(1, 6)]
        duplicate = committer.execute(statement, {"id": 99, "ref": 3})
        more = [committer.execute(statement, {"id": n, "ref": n}) for n in range(6, 9)]
        gate.set()
        blocker.result(10)
        for future in good + more:
            assert future.result(10) is None
        with pytest.raises(IntegrityError):
            duplicate.result(10)
    assert _count(db, ledger) == 8
    assert committer.stats.isolated_retries >= 1
    assert committer.stats.failed_writes == 1


def test_a_write_is_acknowledged_only_after_it_is_visible_to_others(db: Database) -> None:
    seen_by_another_connection: list[int] = []

    def check(_: Future[None]) -> None:
        seen_by_another_connection.append(_count(db, journal))

    with GroupCommitter(db) as committer:
        future = committer.execute(insert(journal), {"id": 1, "note": "durable"})
        future.add_done_callback(check)
        future.result(10)
    assert seen_by_another_connection == [1]


def test_work_callables_return_their_result(db: Database) -> None:
    def insert_and_count(conn: Connection) -> int:
        conn.execute(insert(journal).values(id=7, note="seven"))
        return int(conn.execute(select(func.count()).select_from(journal)).scalar_one())

    with GroupCommitter(db) as committer:
        assert committer.submit(insert_and_count).result(10) == 1


def test_async_callers_await_without_holding_a_thread(db: Database) -> None:
    async def main(committer: GroupCommitter) -> None:
        statement = insert(journal)
        await asyncio.gather(
            *(committer.execute_async(statement, {"id": n, "note": "a"}) for n in range(200))
        )
        assert await committer.run(lambda conn: 42) == 42

    with GroupCommitter(db) as committer:
        asyncio.run(main(committer))
    assert _count(db, journal) == 200


def test_close_commits_what_was_queued_and_refuses_more(db: Database) -> None:
    committer = GroupCommitter(db).start()
    futures = [committer.execute(insert(journal), {"id": n, "note": "q"}) for n in range(50)]
    committer.close()
    assert all(future.done() and future.exception() is None for future in futures)
    assert _count(db, journal) == 50
    with pytest.raises(RuntimeError, match="closed"):
        committer.execute(insert(journal), {"id": 99, "note": "late"})


def test_submitting_before_start_is_an_error(db: Database) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        GroupCommitter(db).submit(lambda conn: None)


def test_a_submitted_write_lands_even_if_its_waiter_is_cancelled(db: Database) -> None:
    gate = threading.Event()

    async def main(committer: GroupCommitter) -> None:
        blocker = committer.submit(lambda conn: gate.wait(10))
        task = asyncio.create_task(
            committer.execute_async(insert(journal), {"id": 1, "note": "kept"})
        )
        await asyncio.sleep(0)  # let the task submit its write
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wrap_future(blocker)
        await committer.run(lambda conn: None)  # a barrier: everything before it is committed

    with GroupCommitter(db) as committer:
        asyncio.run(main(committer))
    assert _count(db, journal) == 1


def test_a_failing_async_write_raises_in_its_awaiting_task(db: Database) -> None:
    async def main(committer: GroupCommitter) -> None:
        statement = insert(ledger)
        await committer.execute_async(statement, {"id": 1, "ref": 1})
        results = await asyncio.gather(
            committer.execute_async(statement, {"id": 2, "ref": 1}),
            committer.execute_async(statement, {"id": 3, "ref": 3}),
            return_exceptions=True,
        )
        assert isinstance(results[0], IntegrityError)
        assert results[1] is None

    with GroupCommitter(db) as committer:
        asyncio.run(main(committer))
    assert _count(db, ledger) == 2


def test_writes_of_one_statement_with_different_keys_keep_every_column(db: Database) -> None:
    statement = insert(journal)
    with GroupCommitter(db) as committer:
        gate = threading.Event()
        blocker = committer.submit(lambda conn: gate.wait(10))
        first = committer.execute(statement, {"id": 1, "note": "first"})
        # Same statement, another key set: it must not ride the first one's executemany.
        second = committer.execute(insert(journal).values(note="from values"), {"id": 2})
        third = committer.execute(statement, {"id": 3, "note": "third"})
        gate.set()
        for future in (blocker, first, second, third):
            future.result(10)
    with db.read() as conn:
        rows = dict(conn.execute(select(journal.c.id, journal.c.note)).all())
    assert rows == {1: "first", 2: "from values", 3: "third"}


def test_same_statement_with_a_missing_key_is_not_batched_with_full_rows(db: Database) -> None:
    optional = Table(
        "scratch_optional",
        scratch,
        Column("id", Integer, primary_key=True),
        Column("note", String(64), nullable=True),
        extend_existing=True,
    )
    optional.create(db.engine)
    try:
        statement = insert(optional)
        with GroupCommitter(db) as committer:
            gate = threading.Event()
            blocker = committer.submit(lambda conn: gate.wait(10))
            sparse = committer.execute(statement, {"id": 1})
            full = committer.execute(statement, {"id": 2, "note": "must be kept"})
            gate.set()
            for future in (blocker, sparse, full):
                future.result(10)
        with db.read() as conn:
            rows = dict(conn.execute(select(optional.c.id, optional.c.note)).all())
        assert rows == {1: None, 2: "must be kept"}
    finally:
        optional.drop(db.engine)
        scratch.remove(optional)


def test_racing_submitters_and_close_leave_no_future_unsettled(db: Database) -> None:
    statement = insert(journal)
    committer = GroupCommitter(db).start()
    accepted: list[Future[None]] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def submitter(base: int) -> None:
        start.wait()
        for n in range(400):
            try:
                future = committer.execute(statement, {"id": base + n, "note": "r"})
            except RuntimeError:
                return
            with lock:
                accepted.append(future)

    threads = [threading.Thread(target=submitter, args=(i * 1000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    committer.close()
    for thread in threads:
        thread.join()
    done, not_done = wait(accepted, timeout=30)
    assert not not_done
    assert _count(db, journal) == sum(1 for f in done if f.exception() is None)


class _Fatal(BaseException):
    """Stands for what kills a thread: not an Exception."""


def test_a_dead_writer_fails_queued_writes_and_refuses_new_ones(db: Database) -> None:
    committer = GroupCommitter(db).start()
    gate = threading.Event()

    def fatal(conn: Connection) -> None:
        gate.wait(10)
        raise _Fatal

    killer = committer.submit(fatal)
    queued = committer.execute(insert(journal), {"id": 1, "note": "queued behind"})
    gate.set()
    with pytest.raises(_Fatal):
        killer.result(10)
    with pytest.raises((RuntimeError, _Fatal)):
        queued.result(10)
    committer._thread.join(10)
    with pytest.raises(RuntimeError, match=r"closed|stopped"):
        committer.execute(insert(journal), {"id": 2, "note": "late"})


def test_a_locked_database_fails_the_batch_at_once_without_per_write_retries(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'locked.db'}", busy_timeout_ms=200)
    scratch.create_all(db.engine)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with GroupCommitter(db) as committer:
            gate = threading.Event()
            blocker = committer.submit(lambda conn: gate.wait(10))
            writes = [committer.execute(insert(journal), {"id": n, "note": "x"}) for n in range(20)]
            gate.set()
            with pytest.raises(StorageUnavailable):
                blocker.result(30)
            for future in writes:
                with pytest.raises(StorageUnavailable, match="locked"):
                    future.result(30)
        assert committer.stats.isolated_retries == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        db.dispose()
