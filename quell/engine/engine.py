"""The engine of one process: it claims runs, executes them, renews their leases, and wakes
waiting runs whose time has come.

``quell serve`` runs one inside the API process (embedded mode); ``quell worker`` runs one on
its own (cluster mode, many processes on one PostgreSQL). A run started in this process is
created already held by it (status ``running``, this owner, a fresh lease) and starts at once,
with no claim query; the database remains the truth if the process dies. Other runs are
claimed in short transactions (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): those ``ready``,
and those ``running`` whose lease expired because their worker died. Every lease is renewed in
one statement per interval; the renewal also reads cancel and pause requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from quell.clock import Clock
from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.engine.actions import ActionRunner, DataPolicy, EnvSecrets
from quell.engine.cacao import CredentialStore
from quell.engine.containment import ContainmentService
from quell.engine.execution import Execution, Outcome, RunInfo, callback_secret
from quell.engine.guardrails import Guardrails, GuardrailService
from quell.engine.journal import (
    RUN_COLUMNS,
    JournalStopped,
    JournalWriter,
    LeaseLost,
    Op,
    OpKind,
)
from quell.engine.limits import SharedLimits
from quell.engine.states import RunStatus
from quell.engine.store import Claimed, PlaybookStore, RunStore, run_status_is
from quell.errors import StorageUnavailable
from quell.ids import new_id
from quell.sdk.http import OutboundPolicy
from quell.store.database import Database

if TYPE_CHECKING:
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)

_RUN_ROW = operator.itemgetter(*RUN_COLUMNS)  # a runs row's values, in RUN_COLUMNS order
_CREATED_AT = RUN_COLUMNS.index("created_at")
_DEADLINE = RUN_COLUMNS.index("deadline")

CLAIM_STOP_WAIT = 10.0  # seconds a stopping engine waits for the claim it has in flight


def worker_name() -> str:
    """This process's owner name for leases: host, pid and a random tail."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{new_id('wkr')[-6:]}"


class Engine:
    """Runs of this process: started here or claimed, executed, journaled, released."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        secret_key: bytes,
        registry: Registry | None = None,
        actions: ActionRunner | None = None,
        playbooks: PlaybookStore | None = None,
        owner: str | None = None,
        concurrency: int = 256,
        lease: timedelta = timedelta(seconds=30),
        poll: float = 0.5,
        tick: float = 1.0,
        roots: Sequence[str] | None = None,
        outbound: OutboundPolicy | None = None,
        public_url: str = "http://127.0.0.1:8470",
        instances: InstanceService | None = None,
        data_policy: DataPolicy | None = None,
        credentials: CredentialStore | None = None,
        organization_domains: Sequence[str] = (),
    ) -> None:
        self.db = db
        # Sealed credentials imported CACAO playbooks carried (None: steps that name one fail).
        self.credentials = credentials
        # Where TLP:RED / AMBER+STRICT playbook data may go besides private addresses.
        self.organization_domains = tuple(organization_domains)
        self.clock = clock
        self.owner = owner or worker_name()
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.tick = tick
        self.roots = list(roots) if roots is not None else None
        # One writer thread on both backends: the database's own work (SQLite's inserts and
        # commit, PostgreSQL's round trips) runs outside the GIL while the loop goes on. (Inline
        # commits on the loop were faster while every step waited for its commit; now that
        # only a run's writes and end wait, the thread wins by 10-15% on SQLite.)
        self.journal = JournalWriter(db)
        self.runs = RunStore(db, clock)
        self.playbooks = playbooks or PlaybookStore(db, clock)
        self.actions = actions or ActionRunner(
            registry or Registry.discover(),
            secrets=EnvSecrets(),
            outbound=outbound,
            limits=SharedLimits(db, clock, self.owner),
            instances=instances,
            data_policy=data_policy,
        )
        self.guardrails = Guardrails(GuardrailService(db, clock))
        self.containments = ContainmentService(db, clock)
        self.callback_secret = callback_secret(secret_key)
        self.public_url = public_url.rstrip("/")  # how callback links reach the API
        self.active: dict[str, Execution] = {}
        # Compiled templates of IR values, by identity (kept with the value, so a freed IR's
        # id reused by another object is never mistaken for it).
        self.compiled: dict[int, tuple[Any, Any]] = {}
        self.finished: dict[str, set[asyncio.Future[RunStatus]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._by_run: dict[str, asyncio.Task[Any]] = {}  # the task executing each run here
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._full = False

    @classmethod
    def for_runtime(cls, runtime: Runtime, **options: Any) -> Engine:
        """An engine on the runtime's database, clock, key and settings."""
        settings = runtime.settings
        registry = options.pop("registry", None) or Registry.discover(settings.plugins)
        options.setdefault("outbound", OutboundPolicy.parse(settings.outbound_allow))
        options.setdefault("lease", timedelta(seconds=settings.engine_lease_seconds))
        options.setdefault("concurrency", settings.engine_concurrency)
        options.setdefault("public_url", settings.public_url)
        if "actions" not in options:
            options.setdefault(
                "instances",
                InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry),
            )
            options.setdefault("data_policy", runtime.data_policy)
        options.setdefault(
            "credentials", CredentialStore(runtime.db, runtime.secret_box, runtime.clock)
        )
        options.setdefault("organization_domains", settings.organization_domains)
        return cls(
            runtime.db,
            runtime.clock,
            secret_key=runtime.secret_key.reveal().encode(),
            registry=registry,
            playbooks=runtime.playbooks,
            **options,
        )

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The executions in flight."""
        return frozenset(self._tasks)

    # -- starting runs ----------------------------------------------------------------------------

    def run_row(
        self,
        run_id: str,
        version_id: str,
        playbook_id: str,
        inputs: dict[str, Any],
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        trigger_ref: str | None = None,
        parent_run_id: str | None = None,
        parent_key: str | None = None,
        root_run_id: str | None = None,
        dedupe_key: str | None = None,
        created_by: str | None = None,
        status: RunStatus = RunStatus.READY,
        owner: str | None = None,
        epoch: int = 0,
        deadline: datetime | None = None,
    ) -> tuple[Any, ...]:
        """A ``runs`` row in RUN_COLUMNS order."""
        now = self.clock.now()
        if deadline is None:
            timeout = self.playbooks.ir(version_id).timeout
            deadline = now + timedelta(seconds=timeout) if timeout else None
        values = {
            "id": run_id,
            "playbook_version_id": version_id,
            "playbook_id": playbook_id,
            "status": str(status),
            "dry_run": dry_run,
            "inputs": inputs,
            "variables": None,
            "error": None,
            "trigger": trigger,
            "trigger_ref": trigger_ref,
            "dedupe_key": dedupe_key,
            "parent_run_id": parent_run_id,
            "parent_key": parent_key,
            "root_run_id": root_run_id or run_id,
            "created_by": created_by,
            "created_at": now,
            "updated_at": now,
            "started_at": now if owner else None,
            "finished_at": None,
            "deadline": deadline,
            "wake_at": None,
            "control": None,
            "owner": owner,
            "lease_epoch": epoch,
            "lease_expires": now + self.lease if owner else None,
        }
        row: tuple[Any, ...] = _RUN_ROW(values)
        return row

    async def start(
        self,
        version_id: str,
        inputs: dict[str, Any],
        *,
        dry_run: bool = False,
        trigger: str = "manual",
        trigger_ref: str | None = None,
        created_by: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Create a run held by this engine and start it as soon as it is durable."""
        run_id = run_id or new_id("run")
        playbook = self.playbooks.ir(version_id)
        row = self.run_row(
            run_id,
            version_id,
            playbook.id,
            inputs,
            dry_run=dry_run,
            trigger=trigger,
            trigger_ref=trigger_ref,
            created_by=created_by,
            status=RunStatus.RUNNING,
            owner=self.owner,
            epoch=1,
        )
        created = Op(OpKind.INSERT_RUN, run_id, None, row)
        info = RunInfo(
            id=run_id,
            epoch=1,
            playbook_version_id=version_id,
            playbook_id=playbook.id,
            inputs=inputs,
            dry_run=dry_run,
            root_run_id=run_id,
            parent_run_id=None,
            parent_key=None,
            created_at=row[_CREATED_AT],
            deadline=row[_DEADLINE],
            trigger=trigger,
            created_by=created_by,
        )
        # The run's own records queue behind its creation, so it may start at once; the
        # caller hears of the run only once it is committed.
        self._spawn(self._execute_fresh(info), run_id)
        await self.journal.write(created)
        return run_id

    def watch(self, run_id: str) -> asyncio.Future[RunStatus]:
        """A future that resolves when this engine sees the run end (one per caller: a caller
        that gives up, cancelling its future, leaves the others watching)."""
        future: asyncio.Future[RunStatus] = asyncio.get_running_loop().create_future()
        self.finished.setdefault(run_id, set()).add(future)
        future.add_done_callback(functools.partial(self._unwatch, run_id))
        return future

    def _unwatch(self, run_id: str, future: asyncio.Future[RunStatus]) -> None:
        watchers = self.finished.get(run_id)
        if watchers is not None:
            watchers.discard(future)
            if not watchers:
                del self.finished[run_id]

    # -- the loops ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for claimable runs now (thread-safe)."""
        loop, event = self._loop, self._wakeup
        if loop is None or event is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                event.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(event.set)

    async def __aenter__(self) -> Engine:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self.journal.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def serve(self, stop: asyncio.Event) -> None:
        """Claim, run and renew until ``stop`` is set, then shut down."""
        if self._loop is None:
            await self.__aenter__()
        from quell.engine.notify import listen

        halt = asyncio.Event()  # the claim loop's own stop (set after ``stop``, or on cancel)
        claiming = asyncio.create_task(self._claim_loop(halt), name="engine-claim")
        loops = [
            asyncio.create_task(self._renew_loop(stop), name="engine-renew"),
            asyncio.create_task(self._tick_loop(stop), name="engine-tick"),
            asyncio.create_task(self._revert_loop(stop), name="engine-revert"),
            asyncio.create_task(listen(self.db, self.wake, stop), name="engine-listen"),
        ]
        try:
            await stop.wait()
        finally:
            for task in loops:
                task.cancel()
            # The claim loop is not cancelled: a claim already sent on its thread would commit
            # anyway, after the engine stopped and handed its runs back, and hold those runs
            # for nobody until their leases ran out. It ends after the claim in flight, whose
            # runs are in its tasks (and handed back by shutdown).
            halt.set()
            self.wake()
            _done, late = await asyncio.wait({claiming}, timeout=CLAIM_STOP_WAIT)
            for task in late:  # a database that does not answer: its lease will tell
                task.cancel()
            await asyncio.gather(claiming, *loops, return_exceptions=True)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop executing: what is in flight is cancelled and its runs handed back."""
        self._stopping = True
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.to_thread(self._hand_back)
        await asyncio.to_thread(self.journal.close)
        await self.actions.aclose()

    def _hand_back(self) -> None:
        """Runs this engine still holds go back to ready, so another worker takes them now."""
        from sqlalchemy import update

        from quell.store.schema import runs

        try:
            with self.db.write() as conn:
                conn.execute(
                    update(runs)
                    .where(runs.c.owner == self.owner, run_status_is(RunStatus.RUNNING))
                    .values(status=RunStatus.READY.value, owner=None, lease_expires=None)
                )
        except Exception as exc:  # noqa: BLE001 - the leases expire anyway
            log.warning("hand_back_failed", error=type(exc).__name__)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        assert self._wakeup is not None
        while not stop.is_set():
            self._wakeup.clear()
            free = self.concurrency - len(self._tasks)
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await asyncio.to_thread(
                        self.runs.claim, self.owner, min(free, 256), self.lease, roots=self.roots
                    )
                except Exception as exc:  # noqa: BLE001 - the database may be back next time
                    log.warning("claim_failed", error=type(exc).__name__)
            if stop.is_set() and claimed:
                # Claimed as the engine stops: not started (a write begun now would be cut off
                # mid-call); shutdown hands them back at once.
                claimed = []
            for item in claimed:
                stale = self._by_run.get(item.id)
                if stale is None or stale.done():
                    self._spawn(self._execute_claimed(item), item.id)
                else:
                    self._spawn(self._take_over(stale, item), item.id)
            if len(self._tasks) >= self.concurrency:
                self._full = True  # _done wakes us once half of these have ended
            elif claimed and len(claimed) >= min(free, 256):
                continue  # there may be more, and there is room for them
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.poll)

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        interval = max(0.2, self.lease.total_seconds() / 3)
        while not stop.is_set():
            await asyncio.sleep(interval)
            if not self.active:
                continue
            try:
                held = await asyncio.to_thread(
                    self.runs.renew, self.owner, self.lease, list(self.active)
                )
            except Exception as exc:  # noqa: BLE001 - try again next interval
                log.warning("renew_failed", error=type(exc).__name__)
                continue
            for run_id, execution in list(self.active.items()):
                control = held.get(run_id, "lost")
                if control is not None and control != "lost":
                    execution.control = control
                elif control is None and execution.control == "pause":
                    execution.control = None  # the pause was withdrawn (resumed) in time

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        from quell.engine.waits import WaitService
        from quell.governance.audit import AuditLog

        waits = WaitService(self.db, self.clock)
        audit = AuditLog(self.db, self.clock)
        while not stop.is_set():
            try:
                woken = await asyncio.to_thread(self.runs.wake_due)
                expired = await asyncio.to_thread(waits.expire_due)
                await asyncio.to_thread(audit.drain)  # the action calls, onto the chain
                if woken or expired:
                    self.wake()
                await self.on_tick()
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.warning("tick_failed", error=type(exc).__name__)
            await asyncio.sleep(self.tick)

    async def _revert_loop(self, stop: asyncio.Event) -> None:
        """Revert containments past their expiry (and retry failed reverts), on a loop of its
        own: a slow peer delays reverts, never timers, expiries or schedules."""
        while not stop.is_set():
            try:
                await self.containments.revert_due(self.actions)
            except Exception as exc:  # noqa: BLE001 - the next turn tries again
                log.warning("revert_loop_failed", error=type(exc).__name__)
            await asyncio.sleep(self.tick)

    async def on_tick(self) -> None:
        """Hook for the trigger dispatcher (set by the process that runs triggers)."""

    # -- executing ----------------------------------------------------------------------------

    def _spawn(self, coroutine: Any, run_id: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        self._by_run[run_id] = task
        task.add_done_callback(functools.partial(self._done, run_id))

    def _done(self, run_id: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._by_run.get(run_id) is task:
            del self._by_run[run_id]
        # Full a moment ago and half empty now: look for more work without waiting for a poll.
        if self._full and len(self._tasks) <= self.concurrency // 2 and self._wakeup is not None:
            self._full = False
            self._wakeup.set()

    async def _take_over(self, stale: asyncio.Task[Any], claimed: Claimed) -> None:
        """This engine claimed a run it is still executing: the lease ran out under that
        execution (a loop stalled, or renewals failed, for a whole lease). Its writes are fenced
        off now, so it is stopped as a crash would stop it, and the run goes on from its
        journal under the new claim (a write that was in flight is reconciled, as after a
        crash). Ignoring the claim would leave the run held by nobody until its new lease ran
        out."""
        log.warning("run_reclaimed", run=claimed.id)
        stale.cancel()
        await asyncio.gather(stale, return_exceptions=True)
        await self._execute_claimed(claimed)

    async def _execute_claimed(self, claimed: Claimed) -> None:
        journal: list[Any] = []
        if claimed.fresh:  # the claim returned the row, and there is no journal to replay
            row = claimed.row
        else:
            try:
                row, journal = await asyncio.to_thread(self.runs.load, claimed.id)
            except Exception as exc:  # noqa: BLE001 - its lease expires and it is claimed again
                log.error("run_load_failed", run=claimed.id, error=type(exc).__name__)
                return
        info = RunInfo.from_row(row, claimed.epoch)
        await self._execute(info, journal, control=row.control)

    async def _execute_fresh(self, info: RunInfo) -> None:
        await self._execute(info, [], control=None)

    async def _execute(self, info: RunInfo, journal: list[Any], *, control: str | None) -> None:
        try:
            playbook = self.playbooks.ir(info.playbook_version_id)
        except Exception as exc:  # noqa: BLE001 - a run whose playbook is gone fails
            log.error("run_playbook_missing", run=info.id, error=type(exc).__name__)
            return
        self.journal.forget(info.id)  # a write lost after this engine last dropped it
        execution = Execution(self, info, playbook, journal)
        execution.control = control
        self.active[info.id] = execution
        status = RunStatus.FAILED
        try:
            outcome = await self._bounded(execution, info)
            await execution.release(outcome)
            status = outcome.status
        except LeaseLost:
            log.warning("run_lease_lost", run=info.id)
            return
        except asyncio.CancelledError:
            raise
        except (StorageUnavailable, JournalStopped) as exc:
            # The database is away (or this engine is stopping): the run's journal is intact
            # up to here; its lease expires (it is no longer renewed) and a worker replays it.
            log.warning("run_dropped", run=info.id, error=type(exc).__name__)
            return
        except Exception as exc:
            # A bug in Quell (not in a step: steps fail on their own) must not bounce the run
            # between workers forever: it fails, with the cause in the log. If even that write
            # fails (the database is away), the lease expires and another worker tries again.
            log.error("run_crashed", run=info.id, error=type(exc).__name__, exc_info=exc)
            error = {"code": "engine_error", "message": f"the engine failed: {type(exc).__name__}"}
            try:
                # Its variables as JSON can hold them: the failure may be a value that is not
                # JSON, and a release that fails on it again would leave the run to be replayed
                # into the same failure forever.
                variables = orjson.loads(
                    orjson.dumps(execution.variables, default=repr, option=orjson.OPT_NON_STR_KEYS)
                )
                await execution.release(Outcome(RunStatus.FAILED, variables, error))
            except Exception as again:  # noqa: BLE001 - logged; the lease takes over
                log.error("run_crash_unrecorded", run=info.id, error=type(again).__name__)
                return
        finally:
            self.active.pop(info.id, None)
            self.journal.forget(info.id)
        if status.finished:
            for future in list(self.finished.get(info.id, ())):
                if not future.done():
                    future.set_result(status)  # _unwatch forgets it

    async def _bounded(self, execution: Execution, info: RunInfo) -> Outcome:
        if info.deadline is None:
            return await execution.execute()
        remaining = (info.deadline - self.clock.now()).total_seconds()
        # Past its deadline already (woken for it while it waited), a run ends here. Run
        # again, a replay that reaches its wait without awaiting anything would never give a
        # timeout of zero the chance to fire, and it would wait again, forever.
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    return await execution.execute()
            except TimeoutError:
                pass
        error = {"code": "run_timeout", "message": "the run reached its timeout"}
        await execution.handle_timeout(error)
        return Outcome(RunStatus.FAILED, execution.variables, error)


__all__ = ["Engine", "worker_name"]
