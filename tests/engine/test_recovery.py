"""A worker that dies mid-run loses nothing, and no write reaches the peer twice."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from quell.clock import ManualClock
from quell.engine.engine import Engine
from quell.engine.journal import Op, OpKind, WriteRefused
from quell.engine.states import RunStatus
from quell.engine.store import RunStore
from quell.errors import StorageUnavailable
from quell.runtime import Runtime
from quell.store.database import Backend
from quell.store.schema import run_steps, runs
from tests.engine.harness import ENDED, Harness, bare_engine, register, statuses
from tests.engine.peer import Peer
from tests.fixtures.plans import explain, statements

CONTAIN = """
id: contain
name: Contain
inputs: {host: {type: string, required: true}, hold: {type: boolean}, hold_after: {type: boolean}}
steps:
  - {id: look, action: test.read, with: {value: "{{ host }}"}}
  - id: isolate
    action: test.{action}
    with: {target: "{{ host }}", hold: "{{ hold }}", hold_after: "{{ hold_after }}"}
  - {id: after, action: core.log, with: {message: "isolated {{ host }}"}}
"""


def _step_row(runtime: Runtime, run_id: str, key: str, output: object = None) -> tuple[object, ...]:
    """A finished core.noop attempt of ``key`` (STEP_COLUMNS order), as a journal row."""
    now = runtime.clock.now()
    return (
        run_id, key, 1, 1, key, "action", "succeeded", "core.noop", None,
        None, {} if output is None else output, None, None, False, now, now, None,
    )  # fmt: skip


async def _write_running_run(engine: Engine, version: str, run_id: str, playbook: str) -> None:
    """Journal a running run of ``version`` held by ``engine`` (epoch 1), and wait for it."""
    row = engine.run_row(
        run_id, version, playbook, {}, status=RunStatus.RUNNING, owner=engine.owner, epoch=1
    )
    await engine.journal.write(Op(OpKind.INSERT_RUN, run_id, None, row))


async def _crash_mid_call(runtime: Runtime, clock: ManualClock, action: str, **holds: bool) -> str:
    """Start the playbook, kill the worker inside the write's call, return the run id."""
    Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
    first = Harness(runtime, lease=5, owner="worker-a")
    await first.__aenter__()
    run_id = await first.start(CONTAIN.replace("{action}", action), {"host": "ws-7", **holds})
    await asyncio.wait_for(Peer.entered.wait(), 10)
    await first.crash()
    Peer.release.set()  # whatever was blocked may go on: nobody is listening any more
    clock.advance(timedelta(seconds=6))  # the dead worker's lease runs out
    return run_id


def test_a_write_that_landed_before_the_crash_is_not_repeated(
    runtime: Runtime, clock: ManualClock
) -> None:
    async def scenario() -> None:
        run_id = await _crash_mid_call(runtime, clock, "contain", hold=False, hold_after=True)
        assert len(Peer.applied) == 1
        async with Harness(runtime, owner="worker-b") as second:
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert Peer.calls["contain:ws-7"] == 1  # reconcile said it landed: no second call
        isolate = [s for s in done.steps if s.key == "isolate"]
        assert [(s.attempt, s.status) for s in isolate] == [(1, "succeeded")]
        assert isolate[0].output["reconciled"] is True
        assert [s.attempt for s in done.steps if s.key == "look"] == [1]  # replayed, not re-read

    asyncio.run(scenario())


def test_a_write_that_never_landed_is_attempted_again(runtime: Runtime, clock: ManualClock) -> None:
    async def scenario() -> None:
        run_id = await _crash_mid_call(runtime, clock, "contain", hold=True, hold_after=False)
        assert Peer.applied == {}
        async with Harness(runtime, owner="worker-b") as second:
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        isolate = [(s.attempt, s.status) for s in done.steps if s.key == "isolate"]
        assert isolate == [(1, "superseded"), (2, "succeeded")]
        assert Peer.calls["contain:ws-7"] == 1
        assert list(Peer.applied) == [f"{run_id}:isolate:2"]

    asyncio.run(scenario())


def test_a_write_nobody_can_reconcile_waits_for_a_person(
    runtime: Runtime, clock: ManualClock
) -> None:
    async def scenario() -> None:
        run_id = await _crash_mid_call(runtime, clock, "blind", hold=False, hold_after=True)
        async with Harness(runtime, owner="worker-b") as second:
            waiting = await second.settle(run_id)
            assert waiting.status == "waiting"
            assert statuses(waiting)["isolate"] == "waiting_reconcile"
            (task,) = second.waits.list_all(kind="reconcile")
            assert "test.blind" in (task.prompt or "")
            second.waits.complete(task.id, "oncall", "checked the console", landed=True)
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert len(Peer.applied) == 1  # never blindly repeated

    asyncio.run(scenario())


TIMED_WRITE = """
id: timed-write
name: A write that times out
steps:
  - id: isolate
    action: test.{action}
    with: {target: ws-1, hold_after: true}
    timeout: 200ms
    retry: {attempts: 3, backoff: 50ms}
"""


def test_a_write_cut_off_by_its_timeout_is_reconciled_before_any_retry(
    runtime: Runtime,
) -> None:
    """The peer applied it, then the answer never came: the retry used to call again (the
    peer applied it three times). Now the peer is asked first, as after a crash."""

    async def scenario() -> None:
        Peer.release = asyncio.Event()  # never set: every call hangs after it applied
        async with Harness(runtime) as harness:
            done = await harness.run(TIMED_WRITE.replace("{action}", "contain"))
        assert done.status == "succeeded", done.error
        assert Peer.calls["contain:ws-1"] == 1
        attempts = [(s.attempt, s.status) for s in done.steps if s.key == "isolate"]
        assert attempts == [(1, "succeeded")]
        (step,) = [s for s in done.steps if s.key == "isolate"]
        assert step.output is not None
        assert step.output["reconciled"] is True

    asyncio.run(scenario())


def test_a_run_retried_after_its_write_timed_out_asks_the_peer_first(runtime: Runtime) -> None:
    """``quell run retry`` supersedes the failed attempt: the write was made again, unasked."""
    text = TIMED_WRITE.replace("{action}", "contain").replace(
        "    retry: {attempts: 3, backoff: 50ms}\n", ""
    )

    async def scenario() -> None:
        Peer.release = asyncio.Event()
        async with Harness(runtime) as harness:
            failed = await harness.run(text)
            assert failed.status == "failed"
            harness.runs.retry(failed.id)
            done = await harness.settle(failed.id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert Peer.calls["contain:ws-1"] == 1

    asyncio.run(scenario())


def test_a_timed_out_write_without_a_reconcile_hook_is_retried_as_its_step_says(
    runtime: Runtime,
) -> None:
    async def scenario() -> None:
        Peer.release = asyncio.Event()
        async with Harness(runtime) as harness:
            done = await harness.run(TIMED_WRITE.replace("{action}", "blind"))
        assert done.status == "failed"
        assert [s.status for s in done.steps if s.key == "isolate"] == ["timed_out"] * 3

    asyncio.run(scenario())


def test_a_worker_that_lost_its_lease_cannot_write(runtime: Runtime, clock: ManualClock) -> None:
    text = """
id: fenced
name: Fenced
steps:
  - {id: slow, action: test.read, with: {value: 1, hold: true}}
  - {id: next, action: core.log, with: {message: next}}
"""

    async def scenario() -> None:
        Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
        # A long lease, so that worker-a's first renewal (a third of it, in real seconds) comes
        # after the test: worker-a stalls past its lease as a hung process would.
        async with Harness(runtime, lease=60, owner="worker-a") as first:
            run_id = await first.start(text)
            await asyncio.wait_for(Peer.entered.wait(), 10)
            clock.advance(timedelta(seconds=61))  # worker-a stalls past its lease
            Peer.entered = asyncio.Event()
            async with Harness(runtime, owner="worker-b") as second:
                await asyncio.wait_for(Peer.entered.wait(), 10)  # worker-b took the run over
                Peer.release.set()  # both calls return; only worker-b may record
                done = await second.settle(run_id, until=ENDED)
                await asyncio.sleep(0.3)
        assert done.status == "succeeded", done.error
        final = second.runs.get(run_id)
        assert [(s.key, s.attempt, s.status) for s in final.steps] == [
            ("slow", 1, "succeeded"), ("next", 1, "succeeded")
        ]  # fmt: skip
        assert final.owner is None

    asyncio.run(scenario())


def test_a_worker_that_claims_its_own_stalled_run_goes_on_with_it(
    runtime: Runtime, clock: ManualClock
) -> None:
    """The lease ran out under a run this very engine still executes (a stalled loop): its
    claim loop takes the run again. The stale execution is stopped and the run goes on under
    the new claim at once, instead of being held by nobody until the new lease runs out."""
    text = """
id: stalled
name: Stalled
steps:
  - {id: slow, action: test.read, with: {value: 1, hold: true}}
  - {id: write, action: test.contain, with: {target: ws-9}}
"""

    async def scenario() -> None:
        Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
        async with Harness(runtime, lease=60, owner="worker-a") as only:
            run_id = await only.start(text)
            await asyncio.wait_for(Peer.entered.wait(), 10)
            Peer.entered = asyncio.Event()
            clock.advance(timedelta(seconds=61))  # the lease runs out under the call
            await asyncio.wait_for(Peer.entered.wait(), 10)  # the same engine took it again
            Peer.release.set()
            done = await only.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        key = f"{run_id}:slow"
        assert Peer.calls[key] == 2  # a read, simply read again under the new claim
        assert [(s.key, s.attempt, s.status) for s in done.steps] == [
            ("slow", 1, "succeeded"), ("write", 1, "succeeded")
        ]  # fmt: skip
        assert list(Peer.applied.values()) == ["ws-9"]
        with runtime.db.read() as conn:
            epoch = conn.execute(select(runs.c.lease_epoch).where(runs.c.id == run_id)).scalar()
        assert epoch == 2

    asyncio.run(scenario())


def test_a_failed_queued_write_stops_its_run_instead_of_leaving_a_hole(runtime: Runtime) -> None:
    """A success is queued, not awaited; if its write fails, the run may not go on past it."""

    def queue(key: str) -> None:
        engine.journal.queue(
            Op(OpKind.INSERT_STEP, "run_hole", 1, _step_row(runtime, "run_hole", key))
        )

    async def refused() -> WriteRefused | None:
        for _ in range(100):  # the duplicate fails in a commit of its own; then:
            await asyncio.sleep(0.02)
            try:
                queue("b")
            except WriteRefused as exc:
                return exc
        return None

    engine = bare_engine(runtime)

    async def scenario() -> None:
        async with engine:
            version = register(
                runtime, engine, "id: hole\nname: Hole\nsteps: [{id: a, action: core.noop}]\n"
            )
            await _write_running_run(engine, version, "run_hole", "hole")
            await engine.journal.write(
                Op(OpKind.INSERT_STEP, "run_hole", 1, _step_row(runtime, "run_hole", "a"))
            )
            queue("a")  # the same attempt again: its insert fails, and nobody waits for it
            assert await refused() is not None
            engine.journal.forget("run_hole")  # the run left this engine: a new claim is clean
            queue("c")

    asyncio.run(scenario())


def test_a_worker_renews_only_the_runs_it_is_executing(
    runtime: Runtime, clock: ManualClock
) -> None:
    engine = bare_engine(runtime)
    version = register(runtime, engine, "id: r\nname: R\nsteps: [{id: a, action: core.noop}]\n")
    rows = [
        engine.run_row(
            run_id, version, "r", {}, status=RunStatus.RUNNING, owner="worker-z", epoch=1
        )
        for run_id in ("run_busy", "run_dropped")
    ]
    with runtime.db.write() as conn:
        engine.journal.insert_run.run(conn, rows)
    clock.advance(timedelta(seconds=25))  # both leases (30 s) still good: renew the busy one
    held = RunStore(runtime.db, clock).renew("worker-z", timedelta(seconds=30), ["run_busy"])
    clock.advance(timedelta(seconds=10))
    assert held == {"run_busy": None}
    with runtime.db.read() as conn:
        leases = {row.id: row.lease_expires for row in conn.execute(select(runs))}
    assert leases["run_busy"] > clock.now()
    assert leases["run_dropped"] < clock.now()  # left to expire, so another worker takes it


def test_the_journal_tells_an_outage_from_data_the_database_refuses() -> None:
    import sqlite3

    import psycopg

    from quell.engine.journal import _transient
    from quell.errors import StorageUnavailable

    assert _transient(StorageUnavailable("gone"))
    assert _transient(sqlite3.OperationalError("database is locked"))
    assert _transient(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert not _transient(sqlite3.OperationalError("no such table: runs"))
    assert not _transient(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not _transient(psycopg.errors.UntranslatableCharacter("\\u0000 cannot be converted"))


def test_a_bad_write_in_a_batch_of_several_fails_alone(runtime: Runtime) -> None:
    """The journal writes a batch's inserts together (one COPY per table on PostgreSQL): a
    write the database refuses fails the whole statement, nothing of the batch is kept, and
    each write is then tried alone, so only the bad one's caller hears of it."""
    engine = bare_engine(runtime)
    version = register(
        runtime, engine, "id: batch\nname: Batch\nsteps: [{id: a, action: core.noop}]\n"
    )
    row = engine.run_row(
        "run_batch", version, "batch", {}, status=RunStatus.RUNNING, owner=engine.owner, epoch=1
    )

    def step_row(key: str, note: str) -> tuple[object, ...]:
        return _step_row(runtime, "run_batch", key, {"note": note})

    def op(kind: OpKind, values: tuple[object, ...]) -> tuple[Op, Future[object]]:
        waiter: Future[object] = Future()
        return Op(kind, "run_batch", 1 if kind is not OpKind.INSERT_RUN else None, values,
                  waiter), waiter  # fmt: skip

    created, created_done = op(OpKind.INSERT_RUN, row)
    first, first_done = op(OpKind.INSERT_STEP, step_row("a", "first"))
    engine.journal._commit([created, first])  # what the writer thread does with a batch
    assert created_done.result(5) is None
    assert first_done.result(5) is None

    batch = [
        op(OpKind.INSERT_STEP, step_row("b", "b")),
        op(OpKind.INSERT_STEP, step_row("a", "again")),  # the same attempt: refused
        op(OpKind.INSERT_STEP, step_row("c", "c")),
    ]
    engine.journal._commit([item for item, _ in batch])
    outcomes = [waiter.exception(5) for _, waiter in batch]
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert "run_steps" in str(outcomes[1])  # the duplicate's own error, naming its table
    with runtime.db.read() as conn:
        stored = conn.execute(
            select(run_steps.c.key, run_steps.c.output)
            .where(run_steps.c.run_id == "run_batch")
            .order_by(run_steps.c.key)
        ).all()
    assert [(key, output["note"]) for key, output in stored] == [
        ("a", "first"), ("b", "b"), ("c", "c"),
    ]  # fmt: skip


def _runs_in_every_state(runtime: Runtime, clock: ManualClock) -> dict[str, str]:
    """Runs made a second apart, oldest first: finished ones, two ready, one running with a
    lease that ran out, one running with a good lease, one waiting on a timer that is due."""
    engine = bare_engine(runtime)
    version = register(runtime, engine, "id: s\nname: S\nsteps: [{id: a, action: core.noop}]\n")
    made = {}
    rows = []
    for name, status, owner in [
        ("done1", RunStatus.SUCCEEDED, None), ("expired", RunStatus.RUNNING, "worker-x"),
        ("ready1", RunStatus.READY, None), ("done2", RunStatus.FAILED, None),
        ("ready2", RunStatus.READY, None), ("waiting", RunStatus.WAITING, None),
    ]:  # fmt: skip
        made[name] = run_id = f"run_{name}"
        rows.append(engine.run_row(run_id, version, "s", {}, status=status, owner=owner, epoch=1))
        clock.advance(timedelta(seconds=1))
    with runtime.db.write() as conn:
        engine.journal.insert_run.run(conn, rows)
        conn.execute(runs.update().where(runs.c.id == "run_waiting").values(wake_at=clock.now()))
    clock.advance(engine.lease)  # the lease of "expired" ran out
    made["held"] = "run_held"
    row = engine.run_row("run_held", version, "s", {}, status=RunStatus.RUNNING, owner="w", epoch=1)
    with runtime.db.write() as conn:
        engine.journal.insert_run.run(conn, [row])
    return made


def test_claims_take_ready_runs_and_lapsed_leases_oldest_first(
    runtime: Runtime, clock: ManualClock
) -> None:
    made = _runs_in_every_state(runtime, clock)
    store = RunStore(runtime.db, clock)
    first = store.claim("worker-b", 2, timedelta(seconds=30))  # the two oldest it may take
    assert {c.id: c.epoch for c in first} == {made["expired"]: 2, made["ready1"]: 2}
    assert [c.id for c in store.claim("worker-b", 5, timedelta(seconds=30))] == [made["ready2"]]
    assert store.claim("worker-b", 5, timedelta(seconds=30)) == []  # "held" keeps its lease
    assert store.wake_due() == 1
    assert [c.id for c in store.claim("worker-b", 5, timedelta(seconds=30))] == [made["waiting"]]


def test_claims_and_wakes_search_the_partial_indexes_not_every_run(
    runtime: Runtime, clock: ManualClock
) -> None:
    """Finished runs pile up: a claim (several a second) and a wake (every tick), both under
    the write lock, must reach the few runs in their state through its partial index. SQLite
    only does when the query names the status itself and has no OR across two of them (its
    half failed before the queries did; PostgreSQL's planner used the indexes already)."""
    _runs_in_every_state(runtime, clock)
    store = RunStore(runtime.db, clock)
    updates = statements(runtime.db, lambda sql: sql.lstrip().upper().startswith("UPDATE RUNS"))
    with updates as ran:
        assert [c.id for c in store.claim("worker-b", 1, timedelta(seconds=30))] == ["run_expired"]
        by_root = store.claim("worker-b", 5, timedelta(seconds=30), roots=["run_ready2"])
        assert [c.id for c in by_root] == ["run_ready2"]  # not ready1, the older one
        assert store.wake_due() == 1
    assert len(ran) == 3
    # The claims read both partial indexes (ready runs, running runs by lease), the wake its own.
    wanted = [{"ix_runs_ready", "ix_runs_running_lease"}] * 2 + [{"ix_runs_waiting_wake"}]
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a seq scan only if need be
        for statement, indexes in zip(ran, wanted, strict=True):
            plan = explain(conn, runtime.db.backend, statement)
            if runtime.db.backend is Backend.SQLITE:
                runs_read = [step for step in plan if step.split(" ")[:2][-1] == "runs"]
                # Each read of runs goes through an index: the row updated by its key, the
                # candidates through the partial indexes (a bare "SCAN runs" reads them all).
                assert runs_read, plan
                assert all(" USING " in step for step in runs_read), plan
                assert all(any(index in step for step in plan) for index in indexes), plan
            else:
                assert not any("Seq Scan on runs" in step for step in plan), plan
                # PostgreSQL may as well read the runs not succeeded by status (the list's
                # index): that too reaches only the runs in the state asked for.
                used = set(
                    re.findall(r"(?:Index Scan|Index Only Scan) (?:using|on) (\w+)", " ".join(plan))
                )
                assert used - {"pk_runs"}, plan  # the candidates through a state's index
                assert used <= indexes | {"ix_runs_not_succeeded", "pk_runs"}, plan


@pytest.mark.parametrize("backend", ["sqlite"])  # the writer's own connection is SQLite's
def test_a_locked_sqlite_database_fails_a_batch_as_an_outage_and_the_next_commits(
    runtime: Runtime, tmp_path: Path
) -> None:
    """On SQLite the journal commits its batches on a connection its thread keeps. A lock
    another process holds past the busy timeout fails the batch as an outage (nobody's data
    is at fault); once the lock is gone the same writer commits the next batch, and when the
    engine stops the connection goes back to the pool."""
    runtime.db.busy_timeout_ms = 50  # connections made from here on wait 50 ms for a lock
    runtime.db.dispose()
    engine = bare_engine(runtime)
    version = register(runtime, engine, "id: lk\nname: Lk\nsteps: [{id: a, action: core.noop}]\n")

    def step_row(key: str) -> tuple[object, ...]:
        return _step_row(runtime, "run_lock", key)

    async def scenario() -> None:
        async with engine:
            await _write_running_run(engine, version, "run_lock", "lk")
            other = sqlite3.connect(runtime.db.url.database or "", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(StorageUnavailable, match="unavailable"):
                    await engine.journal.write(Op(OpKind.INSERT_STEP, "run_lock", 1, step_row("a")))
            finally:
                other.execute("ROLLBACK")
                other.close()
            await engine.journal.write(Op(OpKind.INSERT_STEP, "run_lock", 1, step_row("b")))
            assert engine.journal._held is not None  # the writer's own connection did it

    asyncio.run(scenario())
    assert runtime.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with runtime.db.read() as conn:
        keys = conn.execute(select(run_steps.c.key).where(run_steps.c.run_id == "run_lock"))
        assert sorted(keys.scalars()) == ["b"]


@pytest.mark.parametrize("backend", ["sqlite"])  # the writer's own connection is SQLite's
def test_a_full_disk_is_an_outage_for_the_journal_not_bad_data(runtime: Runtime) -> None:
    """SQLite says "database or disk is full" while a batch is written or committed (in WAL
    mode the pages are written at COMMIT): an outage, whose runs are replayed once the disk
    has room, not data the database refused (which would fail the runs for good)."""
    engine = bare_engine(runtime)
    version = register(runtime, engine, "id: fd\nname: Fd\nsteps: [{id: a, action: core.noop}]\n")

    def step_row(key: str, size: int) -> tuple[object, ...]:
        return _step_row(runtime, "run_full", key, {"blob": "x" * size})

    async def scenario() -> None:
        async with engine:
            await _write_running_run(engine, version, "run_full", "fd")
            held = engine.journal._held.driver_connection  # the writer thread's connection
            pages = held.execute("PRAGMA page_count").fetchone()[0]
            held.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page
            with pytest.raises(StorageUnavailable, match="database or disk is full"):
                await engine.journal.write(
                    Op(OpKind.INSERT_STEP, "run_full", 1, step_row("a", 200_000))
                )
            held.execute("PRAGMA max_page_count = 1073741823")  # room again
            await engine.journal.write(Op(OpKind.INSERT_STEP, "run_full", 1, step_row("b", 10)))

    asyncio.run(scenario())
    with runtime.db.read() as conn:
        keys = conn.execute(select(run_steps.c.key).where(run_steps.c.run_id == "run_full"))
        assert sorted(keys.scalars()) == ["b"]
