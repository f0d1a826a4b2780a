"""The journal writer: every run's step records, group-committed, and fenced by the lease.

Runs hand it operations (a run to create, a step attempt to record or close, a run to release,
or a callable for anything else) and, for those that must be durable before the run goes on,
await them. One writer thread takes everything queued, and in one transaction:

1. checks the fence: each operation carries the lease epoch its run was claimed with; the
   runs' current epochs are read (``FOR UPDATE`` on PostgreSQL, so no claim can slip in
   before the commit; SQLite's single writer gives the same). An operation of a run whose
   lease was taken over fails with :class:`LeaseLost` and writes nothing;
2. writes the rest with one ``executemany`` per statement (inserts of several rows as one
   ``COPY`` on PostgreSQL), in an order that keeps foreign keys happy (runs, then work, then
   step inserts, step updates, run updates);
3. commits, and only then resolves the waiters (one wake-up per event loop per batch).

On SQLite, a batch with no WORK operation (the usual one: step records, run releases, audit
rows) runs on a connection the writer thread keeps for its whole life, with ``BEGIN
IMMEDIATE`` and ``COMMIT`` sent to the driver directly: no pool checkout, no SQLAlchemy
transaction, no event dispatch, thousands of times a second. A batch with WORK (a callable
given an SQLAlchemy connection) takes the ordinary transaction.

If a batch fails because of one operation, each is retried alone so only its caller sees the
error (the same rule as :mod:`quell.store.group_commit`). Operations without a waiter are
"queued": they become durable with the next commit, in order, and a crash before that loses
them. The engine queues what replaying would recompute (a decision, a read's result) and the
successes of writes (a lost one is reconciled); every later write of the same run is committed
after them and is awaited, and a queued write that fails stops its run (:class:`WriteLost`:
replayed after an outage; :class:`WriteRefused`: failed, when the database refused the data).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, case, cast, literal_column, null, or_
from sqlalchemy import update as sql_update
from sqlalchemy.exc import OperationalError

from quell.engine.states import RunStatus
from quell.errors import QuellError, StorageUnavailable
from quell.governance.audit import pack_outbox
from quell.store.bulk import BulkStatement, bulk_insert, bulk_update
from quell.store.database import Backend, Database
from quell.store.group_commit import BatchWriter, Outcome, Waiter, settle
from quell.store.schema import audit_outbox, run_steps, runs

log = structlog.get_logger(__name__)

AUDIT_COLUMNS = ("id", "at", "actor", "action", "subject", "detail")
RUN_COLUMNS = (
    "id", "playbook_version_id", "playbook_id", "status", "dry_run", "inputs", "variables",
    "error", "trigger", "trigger_ref", "dedupe_key", "parent_run_id", "parent_key",
    "root_run_id", "created_by", "created_at", "updated_at", "started_at", "finished_at",
    "deadline", "wake_at", "control", "owner", "lease_epoch", "lease_expires",
)  # fmt: skip
STEP_COLUMNS = (
    "run_id", "key", "attempt", "seq", "step_id", "kind", "status", "action", "idempotency_key",
    "inputs", "output", "error", "assigned", "simulated", "started_at", "finished_at", "due_at",
)  # fmt: skip
STEP_UPDATE = ("status", "output", "error", "assigned", "finished_at", "due_at")
RUN_RELEASE = (
    "status", "variables", "error", "finished_at", "wake_at", "updated_at", "owner",
    "lease_expires",
)  # fmt: skip


_WAITING = RunStatus.WAITING.value
_PAUSED = RunStatus.PAUSED.value


class LeaseLost(QuellError):
    """The run's lease was taken over by another worker; this worker must drop the run."""


class WriteLost(LeaseLost):
    """A queued (not awaited) write of the run failed: the run stops here, its lease runs out
    and it is replayed from what was committed, rather than going on past a hole."""


class WriteRefused(QuellError):
    """A queued write of the run was refused by the database for what it holds (a value it
    cannot store): replaying would fail the same way, so the run fails."""


class JournalStopped(RuntimeError):
    """The journal writer is not running (stopping, or its thread died)."""


class OpKind(IntEnum):
    """Operations, in the order a batch applies them."""

    INSERT_RUN = 0
    WORK = 1
    INSERT_STEP = 2
    UPDATE_STEP = 3
    RELEASE_RUN = 4
    AUDIT = 5  # an audit_outbox row (AUDIT_COLUMNS): an action call, chained later (a batch's
    # calls go as one row: quell.governance.audit.pack_outbox)


@dataclass(slots=True)
class Op:
    """One journal operation of one run."""

    kind: OpKind
    run_id: str
    epoch: int | None  # the lease epoch to check; None: not fenced
    values: Any  # a row tuple, or a callable(conn) for WORK
    waiter: Waiter | None = None


class JournalWriter(BatchWriter[Op]):
    """One writer thread that batches the journal operations of many runs."""

    stopped = JournalStopped
    what = "the journal writer"

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 2048,
        name: str = "quell-journal",
    ) -> None:
        super().__init__(db, max_batch=max_batch, name=name)
        self.insert_run = bulk_insert(db, runs, RUN_COLUMNS)
        self.insert_step = bulk_insert(db, run_steps, STEP_COLUMNS)
        self.update_step = _step_update(db)
        self.release_run = bulk_update(db, runs, RUN_RELEASE, key="id")
        self.release_waiting = _release_waiting(db)
        self.release_paused = _release_paused(db)
        self.insert_audit = bulk_insert(db, audit_outbox, AUDIT_COLUMNS)
        # The fence reads current epochs with one statement per batch size, rendered once.
        self._fence_sql: dict[int, str] = {}
        self._postgres = db.backend is Backend.POSTGRESQL
        self.batches = 0
        self.operations = 0
        # Runs with a queued write that failed, and how: their later writes raise that
        # (WriteLost after an outage: replayed; WriteRefused for the data: failed).
        self._lost: dict[str, type[QuellError]] = {}
        self._sqlite = db.backend is Backend.SQLITE
        self._held: Any = None  # the writer thread's own SQLite connection (pool-proxied)

    # -- submitting -----------------------------------------------------------------------------

    def forget(self, run_id: str) -> None:
        """The run left this engine: a later claim of it starts clean."""
        self._lost.pop(run_id, None)

    def queue(self, op: Op) -> None:
        """Queue ``op`` without waiting for it."""
        lost = self._lost.get(op.run_id) if op.epoch is not None else None
        if lost is not None:
            raise lost(f"an earlier write of run {op.run_id} failed")
        self._put(op)

    async def write(self, op: Op) -> Any:
        """Queue ``op`` and wait until it is committed (its WORK result, else None)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        op.waiter = (loop, future)
        self.queue(op)
        return await future

    async def write_all(self, ops: Sequence[Op]) -> None:
        """Queue several operations and wait until the last is committed (one commit)."""
        if not ops:
            return
        for op in ops[:-1]:
            self.queue(op)
        await self.write(ops[-1])

    # -- the writer thread ----------------------------------------------------------------------

    def _commit(self, batch: list[Op]) -> None:
        try:
            if self._sqlite and not any(op.kind is OpKind.WORK for op in batch):
                results, fenced = self._apply_direct(batch)
            else:
                with self.db.write() as conn:
                    results, fenced = self._apply(conn, batch)
        except Exception as exc:  # noqa: BLE001 - whatever one operation raises goes to its caller
            if _transient(exc):  # the database is away: nothing of the batch is anyone's fault
                away = (
                    exc
                    if isinstance(exc, StorageUnavailable)
                    else StorageUnavailable(
                        f"the {self.db.backend.value} database is unavailable: {exc}",
                        backend=self.db.backend.value,
                    )
                )
                self._lose([op for op in batch if op.waiter is None], away, WriteLost)
                settle([(op.waiter, None, away) for op in batch if op.waiter is not None])
                return
            if len(batch) == 1:
                if batch[0].waiter is not None:
                    settle([(batch[0].waiter, None, exc)])
                else:
                    self._lose(batch, exc, WriteRefused)
                return
            for op in batch:  # nothing was committed: each alone, so only the culprit fails
                self._commit([op])
            return
        self.batches += 1
        self.operations += len(batch)
        outcomes: list[Outcome] = []
        for op, result in zip(batch, results, strict=True):
            if op.waiter is None:
                continue
            if op.run_id in fenced and op.epoch is not None:
                outcomes.append((op.waiter, None, LeaseLost(f"run {op.run_id} has a new owner")))
            else:
                outcomes.append((op.waiter, result, None))
        settle(outcomes)

    def _lose(self, ops: list[Op], exc: BaseException, kind: type[QuellError]) -> None:
        """Queued writes nobody waits for failed: their runs must not go on past them."""
        for op in ops:
            if op.epoch is not None:
                self._lost.setdefault(op.run_id, kind)
            log.error("journal_write_failed", run=op.run_id, error=type(exc).__name__)

    def _apply_direct(self, batch: list[Op]) -> tuple[list[Any], set[str]]:
        """The batch in one transaction on the writer's own SQLite connection (no WORK).

        The connection is the writer thread's: a batch committed from another thread (a test
        calling ``_commit``) gets one of its own, given back at the end. The driver's errors
        at BEGIN and COMMIT (a lock held too long, a full disk, a read-only file) are outages,
        as the SQLAlchemy transaction reports them: StorageUnavailable."""
        own = threading.current_thread() is self._thread
        held = self._held if own else None
        if held is None:
            try:
                held = self.db.engine.raw_connection()
            except (OperationalError, sqlite3.OperationalError) as exc:
                raise _outage(exc) from exc
            if own:
                self._held = held
        cursor = held.cursor()
        try:
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _outage(exc) from exc
            try:
                outcome = self._apply_on(None, cursor, batch)
                try:
                    cursor.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    raise _outage(exc) from exc
            except BaseException:
                try:
                    held.rollback()
                except Exception:  # noqa: BLE001 - the connection is no good: a new one next
                    if own:
                        self._drop_held()
                raise
        finally:
            cursor.close()
            if not own:
                held.close()
        return outcome

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.invalidate()
            except Exception:  # it is being thrown away
                log.debug("journal_connection_drop_failed", exc_info=True)

    def _finish(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.close()  # back to the pool
            except Exception:  # the writer is ending either way
                log.debug("journal_connection_close_failed", exc_info=True)

    def _apply(self, conn: Connection, batch: list[Op]) -> tuple[list[Any], set[str]]:
        cursor = conn.connection.cursor()  # the transaction's own DBAPI connection
        try:
            return self._apply_on(conn, cursor, batch)
        finally:
            cursor.close()

    def _apply_on(
        self, conn: Connection | None, cursor: Any, batch: list[Op]
    ) -> tuple[list[Any], set[str]]:
        fenced = self._fence(cursor, batch)
        results: list[Any] = [None] * len(batch)
        run_rows: list[Any] = []
        works: list[int] = []
        step_rows: list[Any] = []
        step_updates: list[Any] = []
        releases: list[Any] = []
        waiting: list[Any] = []
        paused: list[Any] = []
        audits: list[Any] = []
        # One pass sorts the batch by kind (OpKind's order), each kind in the order queued.
        for index, op in enumerate(batch):
            if fenced and op.epoch is not None and op.run_id in fenced:
                continue
            kind = op.kind
            if kind is OpKind.INSERT_STEP:
                step_rows.append(op.values)
            elif kind is OpKind.UPDATE_STEP:
                step_updates.append(op.values)
            elif kind is OpKind.AUDIT:
                audits.append(op.values)
            elif kind is OpKind.INSERT_RUN:
                run_rows.append(op.values)
            elif kind is OpKind.WORK:
                works.append(index)
            elif op.values[0] == _WAITING:
                waiting.append(op.values)
            elif op.values[0] == _PAUSED:
                paused.append(op.values)
            else:
                releases.append(op.values)
        self.insert_run.run_cursor(cursor, run_rows)  # before work that may refer to them
        for index in works:
            assert conn is not None  # batches with WORK run in an SQLAlchemy transaction
            results[index] = batch[index].values(conn)
        self.insert_step.run_cursor(cursor, step_rows)
        self.update_step.run_cursor(cursor, step_updates)
        self.release_run.run_cursor(cursor, releases)
        self.release_waiting.run_cursor(cursor, waiting)
        self.release_paused.run_cursor(cursor, paused)
        if len(audits) > 1:
            audits = [pack_outbox(audits)]
        self.insert_audit.run_cursor(cursor, audits)
        return results, fenced

    def _fence_query(self, count: int) -> str:
        sql = self._fence_sql.get(count)
        if sql is None:
            lock = " FOR UPDATE" if self._postgres else ""  # no claim slips in before commit
            marks = _placeholders(count, self._postgres)  # only placeholders go in
            sql = self._fence_sql[count] = (
                f"SELECT id, lease_epoch FROM runs WHERE id IN ({marks}){lock}"  # noqa: S608
            )
        return sql

    def _fence(self, cursor: Any, batch: list[Op]) -> set[str]:
        """The runs of this batch whose lease epoch is not the one their operations carry."""
        wanted: dict[str, int] = {}
        mixed: set[str] = set()  # runs whose operations carry two epochs: one is stale
        for op in batch:
            epoch = op.epoch
            if epoch is not None and wanted.setdefault(op.run_id, epoch) != epoch:
                mixed.add(op.run_id)
        if not wanted:
            return set()
        ids = sorted(wanted)
        current: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cursor.execute(self._fence_query(len(chunk)), tuple(chunk))
            current.update(cursor.fetchall())
        fenced: set[str] = set()
        created: set[str] | None = None
        for run_id, epoch in wanted.items():
            held = current.get(run_id)
            if held is None:
                # A run that is not there yet is fine when this batch creates it.
                if created is None:
                    created = {op.run_id for op in batch if op.kind is OpKind.INSERT_RUN}
                if run_id not in created:
                    fenced.add(run_id)
            elif held != epoch or run_id in mixed:
                fenced.add(run_id)
        return fenced


def _step_update(db: Database) -> BulkStatement:
    """UPDATE run_steps SET STEP_UPDATE... WHERE (run_id, key, attempt) = (...)."""
    statement = (
        sql_update(run_steps)
        .values({name: bindparam(f"set_{name}") for name in STEP_UPDATE})
        .where(
            run_steps.c.run_id == bindparam("w_run_id"),
            run_steps.c.key == bindparam("w_key"),
            run_steps.c.attempt == bindparam("w_attempt"),
        )
    )
    params = [(f"set_{name}", name) for name in STEP_UPDATE] + [
        ("w_run_id", "run_id"),
        ("w_key", "key"),
        ("w_attempt", "attempt"),
    ]
    return BulkStatement(db, run_steps, params, statement)


def _outage(exc: BaseException) -> StorageUnavailable:
    """The SQLite driver's error as the outage it is."""
    orig = getattr(exc, "orig", None) or exc
    reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return StorageUnavailable(f"the sqlite database is unavailable: {reason}", backend="sqlite")


def _transient(exc: BaseException) -> bool:
    """The database is unavailable (not: it refused this data). The writer runs statements on
    the driver's cursor, so the driver's own errors arrive here unwrapped."""
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return any(
            word in message
            for word in ("locked", "busy", "disk i/o", "unable to open", "is full", "readonly")
        )
    # Looked up, not imported: a process on SQLite never loads the PostgreSQL driver, and an
    # error cannot be the driver's unless the driver is loaded.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def _release_waiting(db: Database) -> BulkStatement:
    """A release to ``waiting`` that turns into ``ready`` when a decision came meanwhile.

    A wait can be decided (approved, completed, called back) between the moment the run opened
    it and the moment the run is released: the decision finds the run still running and only
    sets its ``wake_at`` (nothing else sets it while a run is held: claims clear it). Releasing
    such a run as waiting would strand it; it is released ready instead, in the same statement.
    So is a run someone asked to cancel or pause meanwhile (``control``, set while it was
    running): released waiting, it would wait for its decision before anyone acted on the ask;
    ready, the next claim carries the control and the run stops at its first step.
    """
    return _ready_when(db, or_(runs.c.wake_at.is_not(None), runs.c.control.is_not(None)))


def _release_paused(db: Database) -> BulkStatement:
    """A release to ``paused`` that turns into ``ready`` when the pause is no longer asked.

    The run stopped for a pause it heard while it ran; by the time it is released, a resume
    may have withdrawn the pause (cleared ``control``): it is released ready and goes on, as
    the resume said. A cancel asked meanwhile (``control`` is ``cancel``) is released ready
    too: the next claim carries it and the run stops, rather than sit paused until a resume
    that would erase the cancel. One statement: nothing can come between the look and the
    write.
    """
    cancel: Any = literal_column("'cancel'")
    return _ready_when(db, or_(runs.c.control.is_(None), runs.c.control == cancel))


def _ready_when(db: Database, condition: Any) -> BulkStatement:
    """A release (RUN_RELEASE) that writes ``ready``, and no wake time, where ``condition``
    holds of the run's row, and the release's own status and wake time elsewhere."""
    wake_at: Any = bindparam("set_wake_at")
    if db.backend is Backend.POSTGRESQL:  # a CASE of NULL and a bare parameter has no type
        wake_at = cast(wake_at, runs.c.wake_at.type)
    values: dict[str, Any] = {name: bindparam(f"set_{name}") for name in RUN_RELEASE}
    values["status"] = case(
        (condition, literal_column(f"'{RunStatus.READY.value}'")), else_=bindparam("set_status")
    )
    values["wake_at"] = case((condition, null()), else_=wake_at)
    statement = sql_update(runs).values(values).where(runs.c.id == bindparam("where_id"))
    params = [(f"set_{name}", name) for name in RUN_RELEASE] + [("where_id", "id")]
    return BulkStatement(db, runs, params, statement)


def _placeholders(count: int, postgres: bool) -> str:
    return ", ".join(["%s" if postgres else "?"] * count)


def release_params(
    run_id: str,
    *,
    status: str,
    variables: Any,
    error: Any,
    finished_at: Any,
    wake_at: Any,
    updated_at: Any,
) -> tuple[Any, ...]:
    """The row of a RELEASE_RUN operation (RUN_RELEASE, then the run id): no owner, no lease."""
    return (status, variables, error, finished_at, wake_at, updated_at, None, None, run_id)


Work = Callable[[Connection], Any]

__all__ = [
    "RUN_COLUMNS",
    "STEP_COLUMNS",
    "JournalStopped",
    "JournalWriter",
    "LeaseLost",
    "Op",
    "OpKind",
    "WriteLost",
    "WriteRefused",
    "release_params",
]
