"""Running one playbook run: the IR interpreted step by step, every step journaled.

An :class:`Execution` is built from the run's row, its pinned IR and its journal. It walks the
IR from the start; at each step it first looks in the journal:

- a finished attempt is *replayed*: its recorded output, error and variable assignments are
  applied and nothing is called again (so a run resumed by another worker after a crash goes
  through its finished steps in microseconds and continues where it stopped);
- a write whose attempt was committed as ``started`` but never finished may or may not have
  reached the peer: the connector's ``reconcile`` hook decides (landed: take its answer;
  not landed: a new attempt; unknown: a person decides, through a ``reconcile`` wait);
- a wait that is still pending suspends the branch.

Anything new is journaled before the run moves on: a write's attempt is committed as
``started`` (with its idempotency key) *before* the call and closed after it; a read is
committed with its result; a decision (``if``, ``switch``, ``while``, ``for_each`` items,
``set``) is recorded so a replay takes the same path. Step keys name the path to a step
(``poll#2/bump``: the ``bump`` of the third ``poll`` iteration; ``isolate[4]``: the fifth item;
``fan|1/left``: branch 1 of ``fan``), so each execution of a step has its own record.

When every branch that can go on has gone as far as it can and some wait, the run is
suspended: it becomes rows only, with ``wake_at`` set for the earliest timer.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import math
import random
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import structlog
from sqlalchemy import Connection, select, update

from quell.engine.actions import sent_inputs
from quell.engine.containment import ContainmentService
from quell.engine.guardrails import Ruling, recheck_at
from quell.engine.journal import Op, OpKind, release_params
from quell.engine.markings import RESTRICTED, destination, inherited_tlp, inside, max_tlp
from quell.engine.notify import notify_ready
from quell.engine.states import RunStatus, StepStatus, WaitStatus
from quell.engine.store import resume_decided
from quell.errors import NotFound
from quell.governance.approvals import CRITICAL_APPROVALS, Initiator, Requirement, describe
from quell.ids import new_id
from quell.playbooks.expressions import (
    ExpressionError,
    compile_expression,
    compile_value,
    render_value,
)
from quell.playbooks.ir import ExpiryOutcome, Playbook, Step, StepKind, WaitKind
from quell.sdk import ActionContext, ActionError, Landed, PermanentError, Reconciliation
from quell.sdk.actions import RiskLevel
from quell.sdk.secret import SecretValue
from quell.store.dialect import insert_ignore
from quell.store.schema import (
    incident_events,
    incident_tasks,
    incidents,
    playbook_versions,
    run_steps,
    runs,
    waits,
)

if TYPE_CHECKING:
    from quell.connectors.registry import ActionDef
    from quell.engine.engine import Engine

log = structlog.get_logger(__name__)

IN_PROCESS_WAIT = 2.0  # seconds: shorter backoffs and timers sleep in the worker, not as rows
# seconds the playbook's exception step may run after the run reached its timeout
EXCEPTION_GRACE = 300.0


# A failed attempt with a due time is one whose retry was scheduled: not the step's end.
_RETRIED = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT})


def idempotency_key(run_id: str, key: str, attempt: int) -> str:
    """An attempt's idempotency key: ``run:step:attempt``, the step part hashed when long. The
    step's part never depends on the attempt, so a connector can tell what an earlier attempt
    of the step made (``ActionContext.step_idempotency_key``)."""
    text = f"{run_id}:{key}:{attempt}"
    if len(text) <= 150:
        return text
    step = hashlib.sha256(f"{run_id}:{key}".encode()).hexdigest()[:40]
    return f"{run_id}:{step}:{attempt}"


class StepFailed(Exception):
    """A step failed; ``error`` is what the journal recorded."""

    def __init__(self, key: str, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "step failed"))
        self.key = key
        self.error = error


class Suspended(Exception):
    """A branch cannot go on until something outside the run happens."""

    def __init__(self, wake_at: datetime | None = None) -> None:
        super().__init__("suspended")
        self.wake_at = wake_at


class Interrupted(Exception):
    """The run was asked to stop (cancel) or to pause."""

    def __init__(self, control: str) -> None:
        super().__init__(control)
        self.control = control


@dataclass(frozen=True)
class RunInfo:
    """What an execution needs to know about its run."""

    id: str
    epoch: int
    playbook_version_id: str
    playbook_id: str
    inputs: dict[str, Any]
    dry_run: bool
    root_run_id: str
    parent_run_id: str | None
    parent_key: str | None
    created_at: datetime
    deadline: datetime | None
    trigger: str = "manual"
    created_by: str | None = None

    @classmethod
    def from_row(cls, row: Any, epoch: int) -> RunInfo:
        """From a ``runs`` row."""
        return cls(
            id=row.id,
            epoch=epoch,
            playbook_version_id=row.playbook_version_id,
            playbook_id=row.playbook_id,
            inputs=dict(row.inputs or {}),
            dry_run=bool(row.dry_run),
            root_run_id=row.root_run_id,
            parent_run_id=row.parent_run_id,
            parent_key=row.parent_key,
            created_at=row.created_at,
            deadline=row.deadline,
            trigger=row.trigger,
            created_by=row.created_by,
        )


@dataclass(slots=True)
class Record:
    """The latest attempt of one step key, from the journal."""

    key: str
    attempt: int
    status: StepStatus
    output: Any = None
    error: dict[str, Any] | None = None
    assigned: dict[str, Any] | None = None
    due_at: datetime | None = None
    inputs: Any = None
    idempotency_key: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Record:
        """From a ``run_steps`` row."""
        return cls(
            key=row.key,
            attempt=row.attempt,
            status=StepStatus(row.status),
            output=row.output,
            error=row.error,
            assigned=row.assigned,
            due_at=row.due_at,
            inputs=row.inputs,
            idempotency_key=row.idempotency_key,
        )


@dataclass
class Frame:
    """Where a branch runs: its key prefix, the steps it sees, and its loop names."""

    prefix: str
    steps: dict[str, dict[str, Any]]
    names: dict[str, Any] = field(default_factory=dict)

    def child(self, prefix: str, **names: Any) -> Frame:
        """A nested frame: it sees what this one sees, and adds its own."""
        return Frame(prefix, dict(self.steps), {**self.names, **names})


@dataclass
class Outcome:
    """How an execution ended."""

    status: RunStatus
    variables: dict[str, Any]
    error: dict[str, Any] | None = None
    wake_at: datetime | None = None


def _error(exc: BaseException, **extra: Any) -> dict[str, Any]:
    if isinstance(exc, ActionError):
        data: dict[str, Any] = {
            "code": exc.code,
            "message": exc.message,
            "retryable": exc.retryable,
        }
        if exc.retry_after is not None:
            data["retry_after"] = exc.retry_after
    elif isinstance(exc, ExpressionError):
        data = {"code": "expression", "message": exc.message, "retryable": False}
    else:
        data = {"code": "internal", "message": type(exc).__name__, "retryable": False}
    data.update(extra)
    return data


EARLY_EVENT = "callback"  # requested_by of a wait row an event made before its wait opened


def callback_secret(secret_key: bytes) -> bytes:
    """The key callback tokens are signed with, derived from the server's secret key."""
    return hmac.new(secret_key, b"quell:callbacks", hashlib.sha256).digest()


def callback_token(secret: bytes, run_id: str, key: str) -> str:
    """The one-time token of an event wait: the run and step it belongs to, signed. Only its
    hash is stored; the signature lets a callback that arrives before the run reaches its wait
    be recognised as genuine and kept for it."""
    ident = urlsafe_b64encode(f"{run_id}\n{key}".encode()).decode().rstrip("=")
    digest = hmac.new(secret, f"callback:{run_id}:{key}".encode(), hashlib.sha256).digest()
    return f"{ident}.{urlsafe_b64encode(digest).decode().rstrip('=')}"


def read_callback_token(secret: bytes, token: str) -> tuple[str, str] | None:
    """The (run id, step key) a genuine token names; None for anything else."""
    ident, dot, _signature = token.partition(".")
    if not dot or len(token) > 2048:
        return None
    try:
        text = urlsafe_b64decode(ident + "=" * (-len(ident) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    run_id, newline, key = text.partition("\n")
    if not newline:
        return None
    if not hmac.compare_digest(callback_token(secret, run_id, key), token):
        return None
    return run_id, key


def _digest_of(value: Any) -> str:
    """SHA-256 of a value's canonical JSON."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


def token_hash(token: str) -> str:
    """How a callback token is looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Origin:
    """Who is behind a run: for approval rules (the initiator) and for separation of duties
    (the requester and the author may not approve its writes)."""

    initiator: Initiator
    requester: str | None  # who started the (root) run by hand
    author: str | None  # who added the playbook version

    @property
    def excluded(self) -> list[str]:
        """Who may not decide this run's approvals."""
        return [name for name in dict.fromkeys((self.requester, self.author)) if name]


# A StrEnum member's text, without the enum's ``value`` property (a Python call each time):
# rows are built with these thousands of times a second.
_TEXT: dict[StrEnum, str] = {
    member: member.value for kind in (StepKind, StepStatus, RunStatus) for member in kind
}

_AUTOMATED = frozenset({"alert.created", "incident.created", "incident.updated", "schedule"})


class Execution:
    """One run, from its journal to its next suspension or its end."""

    def __init__(
        self, engine: Engine, run: RunInfo, playbook: Playbook, journal: list[Any]
    ) -> None:
        self.engine = engine
        self.run = run
        self.playbook = playbook
        self._origin: Origin | None = None
        self.records: dict[str, Record] = {}
        self.seq = max((row.seq for row in journal), default=0)
        for row in journal:  # oldest first: the last attempt of each key wins
            record = Record.from_row(row)
            known = self.records.get(row.key)
            if known is None or record.attempt >= known.attempt:
                self.records[row.key] = record
        self.variables: dict[str, Any] = {}
        self.missing: str | None = None  # a required input the run was started without
        for name, variable in playbook.variables.items():
            if variable.external:  # an input given as null is not given: its default holds
                given = run.inputs.get(name)
                if given is None:
                    self.variables[name] = variable.value
                    if variable.required and variable.value is None and self.missing is None:
                        self.missing = name
                else:
                    self.variables[name] = given
            else:
                self.variables[name] = variable.value
        self.control: str | None = None  # "cancel" or "pause", set by the worker
        self.root: Frame | None = None  # the top frame, once execute began: the steps it saw
        self._tlp: tuple[str | None] | None = None  # the data's marking, once looked up
        self.wakes: list[datetime] = []
        self.run_view = {
            "id": run.id,
            "playbook": run.playbook_id,
            "dry_run": run.dry_run,
            "started": run.created_at,
        }

    # -- journal helpers --------------------------------------------------------------------------

    @property
    def journal(self) -> Any:
        return self.engine.journal

    def now(self) -> datetime:
        return self.engine.clock.now()

    def _op(self, kind: OpKind, values: Any) -> Op:
        return Op(kind, self.run.id, self.run.epoch, values)

    def _row(
        self,
        key: str,
        step: Step,
        attempt: int,
        status: StepStatus,
        *,
        inputs: Any = None,
        output: Any = None,
        error: Any = None,
        assigned: Any = None,
        idempotency_key: str | None = None,
        simulated: bool = False,
        finished: bool = True,
        due_at: datetime | None = None,
        started_at: datetime | None = None,
    ) -> tuple[str, tuple[Any, ...]]:
        now = self.now()
        self.seq += 1
        values = (
            self.run.id, key, attempt, self.seq, step.id, _TEXT[step.kind], _TEXT[status],
            step.action, idempotency_key, inputs, output, error, assigned, simulated,
            started_at or now, now if finished else None, due_at,
        )  # fmt: skip
        self.records[key] = Record(
            key, attempt, status, output, error, assigned, due_at, inputs, idempotency_key
        )
        return key, values

    def next_attempt(self, key: str) -> int:
        """The attempt number a new record of ``key`` gets."""
        known = self.records.get(key)
        return 1 if known is None else known.attempt + 1

    async def record(self, key: str, step: Step, status: StepStatus, **fields: Any) -> str:
        """Insert a finished record and wait for its commit."""
        attempt = fields.pop("attempt", None) or self.next_attempt(key)
        row_id, values = self._row(key, step, attempt, status, **fields)
        await self.journal.write(self._op(OpKind.INSERT_STEP, values))
        return row_id

    def note(self, key: str, step: Step, status: StepStatus, **fields: Any) -> None:
        """Insert a record without waiting (a decision a replay would recompute)."""
        attempt = fields.pop("attempt", None) or self.next_attempt(key)
        _row_id, values = self._row(key, step, attempt, status, **fields)
        self.journal.queue(self._op(OpKind.INSERT_STEP, values))

    async def close(
        self,
        record: Record,
        status: StepStatus,
        *,
        output: Any = None,
        error: Any = None,
        assigned: Any = None,
        due_at: datetime | None = None,
    ) -> None:
        """Finish an attempt recorded earlier (started or waiting) and wait for the commit."""
        await self.journal.write(self._closing(record, status, output, error, assigned, due_at))

    def close_later(
        self, record: Record, status: StepStatus, *, output: Any = None, assigned: Any = None
    ) -> None:
        """Finish an attempt without waiting (later writes of the run commit after it)."""
        self.journal.queue(self._closing(record, status, output, None, assigned, None))

    def _closing(
        self,
        record: Record,
        status: StepStatus,
        output: Any,
        error: Any,
        assigned: Any,
        due_at: datetime | None,
    ) -> Op:
        record.status = status
        record.output = output
        record.error = error
        record.assigned = assigned
        record.due_at = due_at
        values = (
            _TEXT[status], output, error, assigned, self.now(), due_at,
            self.run.id, record.key, record.attempt,
        )  # fmt: skip
        return self._op(OpKind.UPDATE_STEP, values)

    # -- scope --------------------------------------------------------------------------------

    def scope(self, frame: Frame, step: Step | None = None, **extra: Any) -> dict[str, Any]:
        """The names an expression sees."""
        names: dict[str, Any] = dict(self.run.inputs)
        names.update(self.variables)
        names.update(frame.names)
        names["steps"] = frame.steps
        names["inputs"] = self.run.inputs
        names["vars"] = self.variables
        names["run"] = self.run_view
        names["callback_url"] = functools.partial(self.callback_url, frame.prefix)
        if step is not None and step.variables:
            local = dict(names)
            for name, value in step.variables.items():
                names[name] = render_value(
                    compile_value(value, f"vars.{name}"), local, now=self.now
                )
            # ``vars`` shows the step's own variables too, shadowing the playbook's (CACAO's
            # scoping; its references are written ``vars['__name__']``).
            names["vars"] = {**self.variables, **{n: names[n] for n in step.variables}}
        names.update(extra)
        return names

    def callback_url(self, prefix: str, step_id: str) -> str:
        """The one-time link that resumes ``step_id`` (a ``wait: event`` step of this frame):
        a playbook sends it out (in a ticket, a message) before it reaches that step."""
        step = self.playbook.steps.get(step_id) if isinstance(step_id, str) else None
        if step is None or step.wait is None or step.wait.kind is not WaitKind.EVENT:
            raise ExpressionError(f"callback_url: {step_id!r} is not a wait: event step")
        key = prefix + step_id
        return f"{self.engine.public_url}/api/callbacks/{self.event_token(key)}"

    def _incident_task(self, conn: Connection, key: str, prompt: str | None, now: datetime) -> None:
        """A manual step of a run about an incident is also a task on that incident (in the
        wait's transaction): completing either completes both (quell.cases.cases)."""
        inputs = self.run.inputs
        incident = inputs.get("incident")
        alert = inputs.get("alert")
        incident_id = (incident.get("id") if isinstance(incident, dict) else None) or (
            alert.get("incident_id") if isinstance(alert, dict) else None
        )
        if not isinstance(incident_id, str) or not incident_id:
            return
        found = conn.execute(select(incidents.c.id).where(incidents.c.id == incident_id)).first()
        if found is None:
            return
        task_id = new_id("tsk")
        by = f"playbook:{self.run.playbook_id}"
        title = (prompt or key).strip()[:512] or key[:512]
        conn.execute(
            incident_tasks.insert().values(
                id=task_id, incident_id=incident_id, title=title, status="open",
                created_by=by, created_at=now, run_id=self.run.id, step_key=key,
            )
        )  # fmt: skip
        conn.execute(
            incident_events.insert().values(
                id=new_id("iev"), incident_id=incident_id, kind="task_added", at=now, actor=by,
                data={"task_id": task_id, "title": title, "run_id": self.run.id},
            )
        )  # fmt: skip
        conn.execute(update(incidents).where(incidents.c.id == incident_id).values(updated_at=now))

    def event_token(self, key: str) -> str:
        """An event wait's token: one per run and step, so that the link a peer was given
        still reaches the step when a retry opens it again (each opening takes one event)."""
        return callback_token(self.engine.callback_secret, self.run.id, key)

    def render(self, value: Any, where: str, scope: Mapping[str, Any]) -> Any:
        if isinstance(value, str):
            return render_value(compile_value(value, where), scope, now=self.now)
        if not isinstance(value, dict | list) or not value:
            return value
        # A step's inputs are compiled once per process (the IR never changes).
        cache = self.engine.compiled
        compiled = cache.get(id(value))
        if compiled is None or compiled[0] is not value:
            compiled = cache[id(value)] = (value, compile_value(value, where))
        return render_value(compiled[1], scope, now=self.now)

    def assign(self, values: Mapping[str, Any] | None) -> None:
        if values:
            self.variables.update(values)

    # -- running ------------------------------------------------------------------------------

    async def execute(self) -> Outcome:
        """Run until the end or a suspension."""
        if self.missing is not None and not self.records:
            # Started by a trigger (or a parent) that does not give it: each step would see
            # null where the playbook promised a value. It fails here, saying which (before
            # its first step: a run that got further, begun before this check, goes on).
            given = ", ".join(sorted(self.run.inputs)) or "nothing"
            error = {
                "code": "missing_input",
                "message": f"the playbook needs the input {self.missing!r}; its run was given "
                f"{given}",
                "retryable": False,
            }
            return Outcome(RunStatus.FAILED, self.variables, error)
        frame = self.root = Frame("", {})
        try:
            await self.branch(self.playbook.start, frame)
        except Suspended as suspended:
            return Outcome(RunStatus.WAITING, self.variables, None, self._wake(suspended))
        except StepFailed as failure:
            try:
                await self.handle_exception(frame, failure)
            except Interrupted as stop:  # cancelled or paused in the handler: as anywhere else
                return self._interrupted(stop)
            return Outcome(RunStatus.FAILED, self.variables, failure.error)
        except Interrupted as stop:
            return self._interrupted(stop)
        return Outcome(RunStatus.SUCCEEDED, self.variables)

    def _interrupted(self, stop: Interrupted) -> Outcome:
        if stop.control == "pause":
            return Outcome(RunStatus.PAUSED, self.variables)
        return Outcome(
            RunStatus.CANCELED, self.variables, {"code": "canceled", "message": "canceled"}
        )

    def _wake(self, suspended: Suspended) -> datetime | None:
        times = [t for t in [suspended.wake_at, *self.wakes, self.run.deadline] if t is not None]
        return min(times) if times else None

    async def handle_exception(self, frame: Frame, failure: StepFailed) -> None:
        handler = self.playbook.on_exception
        if handler is None:
            return
        handler_frame = frame.child("!exception/", error=failure.error)
        try:
            await self.branch(handler, handler_frame)
        except (StepFailed, Suspended) as exc:
            log.warning("exception_handler_failed", run=self.run.id, error=type(exc).__name__)

    async def handle_timeout(self, error: dict[str, Any]) -> None:
        """Run the playbook's exception step for a run that reached its timeout.

        CACAO's ``workflow_exception`` runs whenever a playbook does not end successfully, and
        a timeout is such an end. The handler sees the steps this execution got through
        (none when the run was woken already past its deadline) and gets
        :data:`EXCEPTION_GRACE` seconds of its own; its journaled steps replay like any others,
        so a crash in it repeats no action.
        """
        if self.playbook.on_exception is None:
            return
        frame = self.root or Frame("", {})
        try:
            async with asyncio.timeout(EXCEPTION_GRACE):
                await self.handle_exception(frame, StepFailed("", error))
        except TimeoutError:
            log.warning("exception_handler_timed_out", run=self.run.id, after=EXCEPTION_GRACE)
        except Interrupted as stop:  # cancelled meanwhile: the run still ends as timed out
            log.warning("exception_handler_interrupted", run=self.run.id, control=stop.control)

    def checkpoint(self) -> None:
        """Stop here if the run was asked to."""
        if self.control in ("cancel", "pause"):
            raise Interrupted(self.control)

    async def branch(self, start: str | None, frame: Frame) -> Any:
        """Run a branch from ``start`` to its end; the last step's output."""
        current = start
        last: Any = None
        while current:
            step = self.playbook.steps[current]
            self.checkpoint()
            try:
                last = await self.step(step, frame)
            except StepFailed:
                following = step.on_failure or step.on_completion
                if following is None:
                    raise
                current = following
                continue
            if step.kind is StepKind.END:
                break
            current = step.on_success or step.on_completion
        return last

    async def step(self, step: Step, frame: Frame) -> Any:
        key = frame.prefix + step.id
        if step.delay:
            await self.timer(f"{key}~delay", step, step.delay, frame)
        kind = step.kind
        if kind is StepKind.ACTION:
            output = await self.action(step, key, frame)
        elif kind is StepKind.SET:
            output = await self.set(step, key, frame)
        elif kind in (StepKind.IF, StepKind.SWITCH):
            output = await self.choose(step, key, frame)
        elif kind is StepKind.WHILE:
            output = await self.loop(step, key, frame)
        elif kind is StepKind.PARALLEL:
            output = await self.parallel(step, key, frame)
        elif kind is StepKind.FOR_EACH:
            output = await self.for_each(step, key, frame)
        elif kind is StepKind.WAIT:
            output = await self.wait(step, key, frame)
        elif kind is StepKind.PLAYBOOK:
            output = await self.child(step, key, frame)
        elif kind is StepKind.FAIL:
            output = await self.fail(step, key, frame)
        else:
            output = None
        frame.steps[step.id] = {"status": "succeeded", "output": output}
        return output

    def replayed(self, step: Step, frame: Frame, record: Record) -> Any:
        """Apply a finished record; raise StepFailed for a failed one."""
        assigned = record.assigned
        if assigned is None and step.out and record.status is StepStatus.SUCCEEDED:
            # Closed from outside (a decision, a child run): ``out`` is computed here, from
            # the recorded output, the same way on every replay.
            assigned = self.out(step, frame, record.output)
        self.assign(assigned)
        if record.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            frame.steps[step.id] = {"status": record.status.value, "output": record.output}
            return record.output
        error = record.error or {"code": "failed", "message": "failed"}
        frame.steps[step.id] = {"status": record.status.value, "output": None, "error": error}
        raise StepFailed(frame.prefix + step.id, error)

    def failed(self, step: Step, frame: Frame, key: str, error: dict[str, Any]) -> StepFailed:
        frame.steps[step.id] = {"status": "failed", "output": None, "error": error}
        return StepFailed(key, error)

    def out(self, step: Step, frame: Frame, output: Any) -> dict[str, Any] | None:
        """The variables ``out`` assigns from ``output``."""
        if not step.out:
            return None
        scope = self.scope(frame, step, output=output)
        return {name: self.render(value, f"out.{name}", scope) for name, value in step.out.items()}

    # -- actions ------------------------------------------------------------------------------

    async def credential(self, step: Step, params: Any) -> dict[str, SecretValue] | None:
        """The secrets of the stored credential the step names (a CACAO authentication info
        an import sealed for this playbook), for a call that goes where the credential was
        given for; PermanentError otherwise, or when it is gone."""
        if step.credential is None:
            return None
        store = self.engine.credentials
        if store is None:
            raise PermanentError(
                f"{step.id}: needs the stored credential {step.credential}, and this engine "
                "has no credential store",
                code="credential_missing",
            )
        try:
            found = await asyncio.to_thread(store.record, step.credential)
        except NotFound as exc:
            raise PermanentError(str(exc), code="credential_missing") from None
        if found.playbook_id != self.run.playbook_id:  # never another playbook's
            raise PermanentError(
                f"{step.id}: the credential {step.credential} is not this playbook's",
                code="credential_refused",
            )
        url = getattr(params, "url", None)
        if url is not None:  # an HTTP call: only to the host(s) the credential was given for
            host = (urlsplit(str(url)).hostname or "").lower()
            if host not in found.hosts:
                raise PermanentError(
                    f"{step.id}: the credential of this step is for "
                    f"{', '.join(found.hosts) or 'no host'}, not {host or 'this URL'}",
                    code="credential_refused",
                )
        return await asyncio.to_thread(store.get, step.credential)

    async def tlp(self) -> str | None:
        """The TLP of the run's data: its playbook's marking, or the marking of a run that
        called it as a sub-playbook (what a parent hands down keeps the parent's marking)."""
        if self._tlp is not None:
            return self._tlp[0]
        level = self.playbook.tlp
        if self.run.parent_run_id is not None:
            inherited = await asyncio.to_thread(
                inherited_tlp, self.engine.db, self.run.parent_run_id
            )
            level = max_tlp(level, inherited)
        self._tlp = (level,)
        return level

    async def check_marking(self, definition: ActionDef, step: Step, params: Any) -> None:
        """Refuse a call that would take TLP:RED (or AMBER+STRICT) data outside."""
        resolved = await self.engine.actions.resolve(definition, step.instance)
        host = destination(definition.connector.name, params, resolved.config)
        if not inside(host, self.engine.organization_domains):
            raise PermanentError(
                f"{definition.key}: not sent to {host or 'a destination it cannot tell'}: the "
                f"playbook's data is {await self.tlp()}, for the organization only",
                code="tlp_withheld",
            )

    def idempotency_key(self, key: str, attempt: int) -> str:
        return idempotency_key(self.run.id, key, attempt)

    async def action(self, step: Step, key: str, frame: Frame) -> Any:
        record = self.records.get(key)
        approved: Any = None  # the inputs a person approved: exactly those are sent
        if step.approval and (record is None or not record.status.terminal):
            skipped = await self.approval_gate(step, key, frame)
            if skipped:
                frame.steps[step.id] = {"status": StepStatus.SKIPPED.value, "output": None}
                return None
            gate = self.records.get(f"{key}#approval")
            approved = gate.inputs if gate is not None else None
        attempt = 0
        if record is not None:
            attempt = record.attempt
            retrying = record.due_at is not None and record.status in _RETRIED
            if record.status.terminal and not retrying:
                return self.replayed(step, frame, record)
            if retrying and record.due_at is not None:  # a retry was due when the run stopped
                remaining = (record.due_at - self.now()).total_seconds()
                if remaining > 0:
                    await self.pause_for(remaining)
            elif record.status is StepStatus.STARTED:
                landed = await self.reconcile(step, key, frame, record)
                if landed is not None:
                    return landed
            elif record.status is StepStatus.WAITING_RECONCILE:
                raise Suspended()
        try:
            definition = self.engine.actions.action(step.action or "")
        except Exception as exc:  # noqa: BLE001 - an unknown action fails its step
            error = {"code": "unknown_action", "message": str(exc), "retryable": False}
            await self.record(key, step, StepStatus.FAILED, error=error, attempt=attempt + 1)
            raise self.failed(step, frame, key, error) from None
        while True:
            previous = self.records.get(key)
            if (
                previous is not None
                and (
                    previous.status is StepStatus.TIMED_OUT
                    # a timed-out attempt that `run retry` superseded keeps its error
                    or (
                        previous.status is StepStatus.SUPERSEDED
                        and (previous.error or {}).get("code") == "timeout"
                    )
                )
                and not definition.is_read
                and definition.meta.reconcile is not None
            ):
                # The last attempt was cut off without an answer: it may have landed. As after
                # a crash, the peer is asked before any new attempt (landed: done; unknown: a
                # person decides); only a write that did not land is tried again.
                landed = await self.reconcile(step, key, frame, previous)
                if landed is not None:
                    return landed
            attempt += 1
            try:
                if approved is not None:
                    inputs = approved
                else:
                    inputs = self.render(step.inputs, "with", self.scope(frame, step))
                params = self.engine.actions.validate(definition, inputs)
            except (ActionError, ExpressionError) as exc:
                error = _error(exc)
                await self.record(key, step, StepStatus.FAILED, error=error, attempt=attempt)
                raise self.failed(step, frame, key, error) from None
            ikey = self.idempotency_key(key, attempt)
            guarded = not definition.is_read and not self.run.dry_run
            if (
                guarded
                and self.engine.guardrails.nothing_set()
                and key + "#guard" not in self.records
            ):
                guarded = False  # no policy is set: nothing to check (and no hold to release)
            if guarded and await self.guard(step, key, frame, definition, inputs, attempt):
                frame.steps[step.id] = {"status": StepStatus.SKIPPED.value, "output": None}
                return None
            if self.run.dry_run and not definition.is_read:
                try:  # a write that could not run for real (no instance, a disabled one) fails
                    await self.engine.actions.resolve(definition, step.instance)
                except ActionError as exc:
                    error = _error(exc)
                    await self.record(key, step, StepStatus.FAILED, error=error, attempt=attempt)
                    raise self.failed(step, frame, key, error) from None
                output = {"simulated": True, "action": definition.key}
                assigned = self.out(step, frame, output)
                self.assign(assigned)
                await self.record(
                    key, step, StepStatus.SUCCEEDED, inputs=inputs, output=output,
                    assigned=assigned, idempotency_key=ikey, simulated=True, attempt=attempt,
                )  # fmt: skip
                return output
            try:
                if await self.tlp() in RESTRICTED:
                    await self.check_marking(definition, step, params)
                ctx = await self.engine.actions.context(
                    definition,
                    run_id=self.run.id,
                    step_key=key,
                    attempt=attempt,
                    idempotency_key=ikey,
                    dry_run=self.run.dry_run,
                    instance=step.instance,
                    extra_secrets=await self.credential(step, params),
                )
            except ActionError as exc:  # its instance is missing, disabled or ambiguous
                error = _error(exc)
                await self.record(key, step, StepStatus.FAILED, error=error, attempt=attempt)
                raise self.failed(step, frame, key, error) from None
            started: Record | None = None
            begun: datetime | None = None  # a read's start, for its one record
            if not definition.is_read:  # committed before the call: a crash can be reconciled
                await self.record(
                    key, step, StepStatus.STARTED, inputs=inputs, idempotency_key=ikey,
                    attempt=attempt, finished=False,
                )  # fmt: skip
                started = self.records[key]
            else:
                begun = self.now()
            try:
                output = await self.engine.actions.call(definition, params, ctx, limit=step.timeout)
                assigned = self.out(step, frame, output)
            except (ActionError, ExpressionError) as exc:
                error = _error(exc)
                status = (
                    StepStatus.TIMED_OUT if error.get("code") == "timeout" else StepStatus.FAILED
                )
                retry = self.backoff(step, attempt, exc)
                due = self.now() + timedelta(seconds=retry) if retry is not None else None
                if started is not None:
                    await self.close(started, status, error=error, due_at=due)
                else:
                    await self.record(
                        key, step, status, inputs=inputs, error=error, idempotency_key=ikey,
                        attempt=attempt, due_at=due, started_at=begun,
                    )  # fmt: skip
                self.audit_call(definition.key, key, attempt, status, ikey, ctx.instance,
                                inputs, None, error)  # fmt: skip
                if retry is None:
                    raise self.failed(step, frame, key, error) from None
                await self.pause_for(retry)
                continue
            self.assign(assigned)
            if definition.meta.reverts is not None:  # before the success: see containment
                planned = sent_inputs(params, inputs)
                await self.record_containment(definition, key, planned, output, ctx.instance)
            # A success is queued, not waited for: every later write of this run (the next
            # write's started record, the run's release) is committed after it, in order, and
            # waits. Lost in a crash, a read is simply read again, and a write's started record
            # is reconciled.
            if started is not None:
                self.close_later(started, StepStatus.SUCCEEDED, output=output, assigned=assigned)
            else:
                self.note(
                    key, step, StepStatus.SUCCEEDED, inputs=inputs, output=output,
                    assigned=assigned, idempotency_key=ikey, attempt=attempt, started_at=begun,
                )  # fmt: skip
            self.audit_call(definition.key, key, attempt, StepStatus.SUCCEEDED, ikey,
                            ctx.instance, inputs, output, None)  # fmt: skip
            return output

    def audit_call(
        self,
        action: str,
        key: str,
        attempt: int,
        status: StepStatus,
        idempotency_key: str,
        instance: str | None,
        inputs: Any,
        output: Any,
        error: dict[str, Any] | None,
    ) -> None:
        """Queue an action call's audit event with the journal (committed with the run's next
        writes, chained by the tick: :meth:`AuditLog.drain`). What was sent and received is
        kept as SHA-256 digests (the journal holds the values); an error by its code only."""
        detail: dict[str, Any] = {
            "run_id": self.run.id,
            "playbook": self.run.playbook_id,
            "step": key,
            "attempt": attempt,
            "status": _TEXT[status],
            "instance": instance,
            "idempotency_key": idempotency_key,
            "dry_run": self.run.dry_run,
            "inputs_sha256": _digest_of(inputs),
        }
        if output is not None:
            detail["output_sha256"] = _digest_of(output)
        if error is not None:
            detail["error"] = error.get("code")
        row = (new_id("aob"), self.now(), f"run:{self.run.id}", "action.call", action, detail)
        # Not fenced by the lease: the call was made, whoever holds the run now.
        self.journal.queue(Op(OpKind.AUDIT, self.run.id, None, row))

    async def guard(
        self,
        step: Step,
        key: str,
        frame: Frame,
        definition: ActionDef,
        inputs: Any,
        attempt: int,
    ) -> bool:
        """Check a write against the guardrails (see :mod:`quell.engine.guardrails`): go on,
        wait (kill switch, open circuit: a ``<key>#guard`` record says why), fail the step (an
        hourly limit), or ask a person (a protected asset). True when the write is skipped (its
        approval expired with ``on_expiry: skip``)."""
        verdict = await self.engine.guardrails.check(
            action=definition.key,
            risk=definition.meta.risk,
            inputs=inputs,
            run_id=self.run.id,
            playbook_id=self.run.playbook_id,
            initiator=self.initiator,
            approved=self.approved(key),
        )
        gate = f"{key}#guard"
        held = self.records.get(gate)
        holding = held is not None and held.status is StepStatus.WAITING_TIMER
        if verdict.outcome is not Ruling.ALLOW and not holding:
            await asyncio.to_thread(
                self.engine.guardrails.service.audit.record,
                f"run:{self.run.id}",
                f"guardrail.{verdict.outcome.value}",
                f"{self.run.id}/{key}",
                {"rule": verdict.code, "message": verdict.message, "action": definition.key},
            )
        if verdict.outcome is Ruling.HOLD:
            wake = recheck_at(self.now())
            if not holding:
                await self.record(
                    gate, step, StepStatus.WAITING_TIMER, error=verdict.error,
                    finished=False, due_at=wake,
                )  # fmt: skip
            raise Suspended(wake)
        if holding and held is not None:
            self.close_later(held, StepStatus.SUCCEEDED, output={"released": True})
        if verdict.outcome is Ruling.REFUSE:
            await self.record(
                key, step, StepStatus.FAILED, inputs=inputs, error=verdict.error, attempt=attempt
            )
            raise self.failed(step, frame, key, verdict.error)
        if verdict.outcome is Ruling.APPROVE:
            approval = self.records.get(f"{key}#approval")
            if approval is None or approval.status is not StepStatus.SUCCEEDED:
                return await self.approval_gate(
                    step, key, frame, reason=verdict.message, requirement=verdict.requirement
                )
        return False

    def approved(self, key: str) -> bool:
        """Whether people approved the write of step ``key`` (its approval succeeded)."""
        gate = self.records.get(f"{key}#approval")
        return gate is not None and gate.status is StepStatus.SUCCEEDED

    async def origin(self) -> Origin:
        """Who is behind this run (read once, when an approval needs it)."""
        if self._origin is None:
            root, version_id = self.run.root_run_id, self.run.playbook_version_id

            own = (self.run.trigger, self.run.created_by) if root == self.run.id else None

            def read() -> Origin:
                # A run may start before its own row commits, so its trigger and creator come
                # from memory; a child's root (running long before) and the version are read.
                with self.engine.db.read() as conn:
                    started = own or tuple(
                        conn.execute(
                            select(runs.c.trigger, runs.c.created_by).where(runs.c.id == root)
                        ).first()
                        or ("playbook", None)
                    )
                    author = conn.execute(
                        select(playbook_versions.c.created_by).where(
                            playbook_versions.c.id == version_id
                        )
                    ).scalar()
                trigger, creator = started
                if trigger in _AUTOMATED or trigger != "manual" or not creator:
                    return Origin(Initiator.AUTOMATION, None, author)
                return Origin(Initiator.PERSON, creator, author)

            self._origin = await asyncio.to_thread(read)
        return self._origin

    async def initiator(self) -> Initiator:
        """Who started the run: automation or a person."""
        return (await self.origin()).initiator

    async def record_containment(
        self,
        definition: ActionDef,
        key: str,
        inputs: dict[str, Any],
        output: dict[str, Any],
        instance: str,
    ) -> None:
        """Queue the active containment a write left (see :mod:`quell.engine.containment`),
        ahead of the step's success: if the run stops between the two, the step is reconciled
        and recorded again, which adds no second containment (one per run and step)."""
        try:
            row = await self.engine.actions.containment_row(
                definition, inputs, output, instance=instance, run_id=self.run.id,
                step_key=key, created_by=f"run:{self.run.id}", now=self.now(),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the write landed: never fail the run now
            log.warning("containment_unrecorded", run=self.run.id, step=key, error=repr(exc))
            return
        if row is not None:
            self.journal.queue(
                self._op(OpKind.WORK, functools.partial(ContainmentService.insert, row=row))
            )

    async def approval_gate(
        self,
        step: Step,
        key: str,
        frame: Frame,
        *,
        reason: str | None = None,
        requirement: Requirement | None = None,
    ) -> bool:
        """Hold an ``approval: true`` action until a person approves it (True: skip it).

        The approval is its own journal record, ``<key>#approval``: waiting, then approved
        (the action runs), rejected (the step fails with the decision) or skipped by expiry.
        In a dry run a write is only simulated, so it asks nobody.
        """
        try:
            risk: RiskLevel | None = self.engine.actions.action(step.action or "").meta.risk
        except Exception:  # noqa: BLE001 - an unknown action fails in the step itself
            risk = None
        if self.run.dry_run and risk is not RiskLevel.READ:
            return False
        gate = f"{key}#approval"
        record = self.records.get(gate)
        if record is not None and record.status.terminal:
            if record.status is StepStatus.SUCCEEDED:
                return False
            if record.status is StepStatus.SKIPPED:
                return True
            error = record.error or {"code": "rejected", "message": "the approval was refused"}
            raise self.failed(step, frame, gate, error)
        if record is not None and record.status is not StepStatus.SUPERSEDED:
            raise Suspended()  # still waiting for a decision (a retry supersedes a refusal)
        try:
            inputs = self.render(step.inputs, "with", self.scope(frame, step))
            shown = orjson.dumps(inputs, default=str).decode()
        except ExpressionError as exc:
            inputs, shown = None, f"(inputs could not be rendered: {exc.message})"
        if requirement is None and risk is not None and risk is not RiskLevel.READ:
            requirement = await self.engine.guardrails.requirement(
                action=step.action or "", risk=risk, inputs=inputs, initiator=self.initiator
            )
        if requirement is None:
            requirement = Requirement(rule=None)
        if risk is RiskLevel.CRITICAL:
            requirement = requirement.at_least(CRITICAL_APPROVALS)
        prompt = f"Run {step.action} ({step.id}) with {shown[:500]}"
        if reason:
            prompt = f"{prompt} ({reason})"
        if requirement.rule or requirement.approvals > 1:
            prompt = f"{prompt} [{describe(requirement)}]"
        now = self.now()
        expires = (
            now + timedelta(seconds=requirement.expires_after)
            if requirement.expires_after
            else None
        )
        _row_id, values = self._row(
            gate, step, self.next_attempt(gate), StepStatus.WAITING_APPROVAL, finished=False,
            inputs=inputs,
        )  # fmt: skip
        await self.open_wait(
            self.records[gate], gate, WaitKind.APPROVAL.value, StepStatus.WAITING_APPROVAL,
            prompt, expires, requirement.on_expiry if expires else None, requirement.roles,
            insert=values, requirement=requirement, excluded=(await self.origin()).excluded,
        )  # fmt: skip
        raise Suspended()

    def backoff(self, step: Step, attempt: int, exc: BaseException) -> float | None:
        """Seconds before the next attempt, or None when the failure is final."""
        retryable = getattr(exc, "retryable", False)
        if not retryable or attempt >= step.retry.max_attempts:
            return None
        policy = step.retry
        ceiling = min(policy.maximum, policy.initial * policy.multiplier ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None and math.isfinite(float(retry_after)):
            # A peer's wait is honoured, up to a day (a durable timer; the run holds nothing).
            delay = max(delay, min(float(retry_after), 86_400.0))
        return delay

    async def pause_for(self, seconds: float) -> None:
        """Wait before a retry: in the worker when short, else as a durable timer."""
        if seconds <= IN_PROCESS_WAIT:
            await asyncio.sleep(seconds)
            return
        raise Suspended(self.now() + timedelta(seconds=seconds))

    async def reconcile(self, step: Step, key: str, frame: Frame, record: Record) -> Any:
        """A write that started and never finished: find out whether it landed."""
        definition = self.engine.actions.action(step.action or "")
        params = None
        if record.inputs is not None:
            try:
                params = self.engine.actions.validate(definition, record.inputs)
            except ActionError:
                params = None
        ctx: ActionContext | None = None
        try:
            if await self.tlp() in RESTRICTED:
                await self.check_marking(definition, step, params)
            ctx = await self.engine.actions.context(
                definition,
                run_id=self.run.id,
                step_key=key,
                attempt=record.attempt,
                idempotency_key=record.idempotency_key or self.idempotency_key(key, record.attempt),
                dry_run=False,
                instance=step.instance,  # the peer the write went to, not the default
                extra_secrets=await self.credential(step, params),
            )
        except ActionError as exc:  # no instance to ask: a person decides
            answer = Reconciliation(Landed.UNKNOWN, detail=f"cannot reconcile: {exc.message}")
        else:
            answer = await self.engine.actions.reconcile(definition, params, ctx)
        log.info("reconciled", run=self.run.id, step=key, state=answer.state.value)
        if answer.state is Landed.LANDED:
            output = answer.output or {}
            assigned = self.out(step, frame, output)
            self.assign(assigned)
            if definition.meta.reverts is not None and record.inputs is not None:
                await self.record_containment(
                    definition, key, dict(record.inputs), output, ctx.instance if ctx else ""
                )  # fmt: skip
            await self.close(
                record,
                StepStatus.SUCCEEDED,
                output={**output, "reconciled": True},
                assigned=assigned,
            )
            frame.steps[step.id] = {"status": "succeeded", "output": output}
            return output
        if answer.state is Landed.NOT_LANDED:
            error = {"code": "not_landed", "message": answer.detail or "did not land"}
            await self.close(record, StepStatus.SUPERSEDED, error=error)
            return None
        # Unknown: a person decides; never a blind repeat.
        prompt = (
            f"Did {definition.key} (attempt {record.attempt}, key {record.idempotency_key}) "
            f"reach the peer? {answer.detail}".strip()
        )
        await self.open_wait(
            record, key, "reconcile", StepStatus.WAITING_RECONCILE, prompt, None, None, ()
        )
        raise Suspended()

    # -- decisions ----------------------------------------------------------------------------

    async def set(self, step: Step, key: str, frame: Frame) -> Any:
        record = self.records.get(key)
        if record is not None and record.status.terminal:
            return self.replayed(step, frame, record)
        try:
            values = self.render(step.assign, "set", self.scope(frame, step))
        except ExpressionError as exc:
            error = _error(exc)
            await self.record(key, step, StepStatus.FAILED, error=error)
            raise self.failed(step, frame, key, error) from None
        self.assign(values)
        self.note(key, step, StepStatus.SUCCEEDED, output=values, assigned=values)
        return values

    async def decide(self, step: Step, key: str, frame: Frame, compute: Callable[[], Any]) -> Any:
        """A recorded decision: the journal's on replay, else computed and noted."""
        record = self.records.get(key)
        if record is not None and record.status.terminal:
            if record.status is StepStatus.FAILED:
                self.replayed(step, frame, record)
            return record.output
        try:
            value = compute()
        except ExpressionError as exc:
            error = _error(exc)
            await self.record(key, step, StepStatus.FAILED, error=error)
            raise self.failed(step, frame, key, error) from None
        self.note(key, step, StepStatus.SUCCEEDED, output=value)
        return value

    async def choose(self, step: Step, key: str, frame: Frame) -> Any:
        scope = self.scope(frame, step)
        if step.kind is StepKind.IF:
            condition = compile_expression(step.condition or "false", "if")
            taken = await self.decide(
                step,
                key,
                frame,
                lambda: {"branch": "then" if condition.truthy(scope, now=self.now) else "else"},
            )
            start = step.on_true if taken["branch"] == "then" else step.on_false
        else:
            selector = compile_expression(step.switch or "none", "switch")

            def pick() -> dict[str, Any]:
                value = selector.evaluate(scope, now=self.now)
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                case = text if text in step.cases else None
                return {"value": value, "case": case}

            taken = await self.decide(step, key, frame, pick)
            start = step.cases.get(taken["case"]) if taken["case"] is not None else step.default
        if start is None:
            return taken
        inner = frame.child(f"{key}/")
        result = await self.branch(start, inner)
        frame.steps.update(inner.steps)
        return result

    async def loop(self, step: Step, key: str, frame: Frame) -> Any:
        condition = compile_expression(step.condition or "false", "while")
        bound = step.max_iterations or 1
        result: Any = None
        iteration = 0
        while True:
            scope = self.scope(frame, step)

            def holds(scope: dict[str, Any] = scope) -> dict[str, Any]:
                return {"continue": condition.truthy(scope, now=self.now)}

            again = await self.decide(step, f"{key}#{iteration}", frame, holds)
            if not again["continue"]:
                return result
            if iteration >= bound:
                error = {
                    "code": "loop_bound",
                    "message": f"while {step.id!r} reached max_iterations ({bound})",
                    "retryable": False,
                }
                await self.record(f"{key}#bound", step, StepStatus.FAILED, error=error)
                raise self.failed(step, frame, key, error)
            inner = frame.child(f"{key}#{iteration}/", index=iteration)
            result = await self.branch(step.on_true, inner)
            frame.steps.update(inner.steps)
            iteration += 1
            self.checkpoint()

    async def gather(self, jobs: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
        """Run branches concurrently (at most ``limit`` at once) until each ends or waits."""
        semaphore = asyncio.Semaphore(max(1, limit))

        async def one(job: Callable[[], Awaitable[Any]]) -> Any:
            async with semaphore:
                return await job()

        results = await asyncio.gather(*(one(job) for job in jobs), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, StepFailed)), None)
        interrupted = next((r for r in results if isinstance(r, Interrupted)), None)
        suspended = [r for r in results if isinstance(r, Suspended)]
        other = next(
            (
                r
                for r in results
                if isinstance(r, BaseException)
                and not isinstance(r, StepFailed | Suspended | Interrupted)
            ),
            None,
        )
        if other is not None:
            raise other
        if interrupted is not None:
            raise interrupted
        if failure is not None:
            raise failure
        if suspended:
            self.wakes.extend(s.wake_at for s in suspended if s.wake_at is not None)
            raise Suspended(min((s.wake_at for s in suspended if s.wake_at), default=None))
        return list(results)

    async def parallel(self, step: Step, key: str, frame: Frame) -> Any:
        frames = [frame.child(f"{key}|{index}/") for index in range(len(step.branches))]
        jobs = [
            functools.partial(self.branch, start, inner)
            for start, inner in zip(step.branches, frames, strict=True)
        ]
        try:
            return await self.gather(jobs, len(jobs))
        finally:
            for inner in frames:
                frame.steps.update(inner.steps)

    async def for_each(self, step: Step, key: str, frame: Frame) -> Any:
        def items() -> list[Any]:
            value = self.render(step.items, "for_each", self.scope(frame, step))
            if value is None:
                return []
            if not isinstance(value, list):
                raise ExpressionError(f"for_each: expected a list, got {type(value).__name__}")
            return value

        listed = await self.decide(step, f"{key}[]", frame, items)
        frames = [
            frame.child(f"{key}[{index}]/", **{step.item_name: item, "index": index})
            for index, item in enumerate(listed)
        ]
        jobs = [functools.partial(self.branch, step.body, inner) for inner in frames]
        try:
            return await self.gather(jobs, step.concurrency)
        finally:
            for inner in frames:
                frame.steps.update({k: v for k, v in inner.steps.items() if k != step.body})

    async def fail(self, step: Step, key: str, frame: Frame) -> Any:
        record = self.records.get(key)
        if record is not None and record.status.terminal:
            return self.replayed(step, frame, record)
        try:
            message = self.render(step.message or "failed", "fail", self.scope(frame, step))
        except ExpressionError as exc:
            message = exc.message
        error = {"code": "fail_step", "message": str(message), "retryable": False}
        await self.record(key, step, StepStatus.FAILED, error=error)
        raise self.failed(step, frame, key, error)

    # -- waits --------------------------------------------------------------------------------

    async def timer(
        self, key: str, step: Step, seconds: float | None, frame: Frame, until: Any = None
    ) -> None:
        record = self.records.get(key)
        if record is not None and record.status.terminal:
            return
        now = self.now()
        if record is None or record.status is StepStatus.SUPERSEDED:  # a retry waits anew
            due = until if until is not None else now + timedelta(seconds=seconds or 0)
            if due - now <= timedelta(seconds=IN_PROCESS_WAIT):
                await asyncio.sleep(max(0.0, (due - now).total_seconds()))
                self.note(key, step, StepStatus.SUCCEEDED, output={"due": due.isoformat()})
                return
            await self.record(key, step, StepStatus.WAITING_TIMER, due_at=due, finished=False)
            raise Suspended(due)
        if record.due_at is not None and record.due_at > now:
            raise Suspended(record.due_at)
        await self.close(
            record,
            StepStatus.SUCCEEDED,
            output={"due": record.due_at.isoformat() if record.due_at else None},
        )

    async def wait(self, step: Step, key: str, frame: Frame) -> Any:
        spec = step.wait
        assert spec is not None
        record = self.records.get(key)
        if record is not None and record.status.terminal:
            return self.replayed(step, frame, record)
        if spec.kind is WaitKind.TIMER:
            until = None
            if spec.until is not None:
                from quell.playbooks.expressions import to_datetime

                try:
                    until = to_datetime(self.render(spec.until, "until", self.scope(frame, step)))
                except ExpressionError as exc:
                    error = _error(exc)
                    await self.record(key, step, StepStatus.FAILED, error=error)
                    raise self.failed(step, frame, key, error) from None
            await self.timer(key, step, spec.duration, frame, until)
            record = self.records.get(key)
            return record.output if record else None
        if record is not None and record.status is not StepStatus.SUPERSEDED:
            raise Suspended()  # still pending (a superseded one, by a retry, opens anew)
        try:
            prompt = (
                self.render(spec.prompt, "prompt", self.scope(frame, step)) if spec.prompt else None
            )
        except ExpressionError as exc:
            prompt = f"(prompt failed: {exc.message})"
        status = {
            WaitKind.APPROVAL: StepStatus.WAITING_APPROVAL,
            WaitKind.TASK: StepStatus.WAITING_TASK,
            WaitKind.EVENT: StepStatus.WAITING_EVENT,
        }[spec.kind]
        expires = self.now() + timedelta(seconds=spec.expires_in) if spec.expires_in else None
        _row_id, values = self._row(key, step, self.next_attempt(key), status, finished=False)
        record = self.records[key]
        excluded = (await self.origin()).excluded if spec.kind is WaitKind.APPROVAL else None
        await self.open_wait(
            record, key, spec.kind.value, status, prompt, expires, spec.on_expiry, spec.approvers,
            insert=values, excluded=excluded,
        )  # fmt: skip
        raise Suspended()

    async def open_wait(
        self,
        record: Record,
        key: str,
        kind: str,
        status: StepStatus,
        prompt: str | None,
        expires: datetime | None,
        on_expiry: ExpiryOutcome | None,
        approvers: tuple[str, ...],
        *,
        insert: tuple[Any, ...] | None = None,
        requirement: Requirement | None = None,
        excluded: list[str] | None = None,
    ) -> None:
        """Record the step as waiting and the wait itself, in one commit (an approval with
        what it takes: how many people, who may not decide, when it escalates)."""
        wait_id = new_id("wai")
        token = self.event_token(key) if kind == "event" else None
        now = self.now()
        run_id = self.run.id
        insert_step = self.journal.insert_step
        backend = self.engine.db.backend
        record.status = status

        def work(conn: Connection) -> None:
            if insert is not None:
                insert_step.run(conn, [insert])
            else:
                conn.execute(
                    update(run_steps)
                    .where(
                        run_steps.c.run_id == run_id,
                        run_steps.c.key == record.key,
                        run_steps.c.attempt == record.attempt,
                    )
                    .values(status=status.value, finished_at=None)
                )
            row: dict[str, Any] = {
                "id": wait_id,
                "run_id": run_id,
                "step_key": key,
                "kind": kind,
                "status": WaitStatus.PENDING.value,
                "prompt": prompt,
                "approvers": list(approvers) or None,
                "token_hash": token_hash(token) if token else None,
                "expires_at": expires,
                "on_expiry": on_expiry.value if on_expiry else None,
                "requested_by": f"playbook:{self.run.playbook_id}",
                "created_at": now,
                "excluded": excluded or None,
            }
            if requirement is not None:
                row["required"] = requirement.approvals
                row["rule"] = requirement.rule
                if requirement.escalate_to:
                    row["escalate_to"] = list(requirement.escalate_to)
                if requirement.escalate_after:
                    row["escalate_at"] = now + timedelta(seconds=requirement.escalate_after)
            if token is None:
                conn.execute(waits.insert().values(row))
                if kind == "task":
                    self._incident_task(conn, key, prompt, now)
                return
            hashed = row["token_hash"]
            for _ in range(2):  # a callback may take the token between our look and our insert
                held = conn.execute(
                    select(
                        waits.c.id, waits.c.status, waits.c.decision, waits.c.requested_by
                    ).where(waits.c.token_hash == hashed)
                ).first()
                if held is not None and held.requested_by == EARLY_EVENT:
                    # The peer called back before the run got here: the step takes that event
                    # now, and the run goes on (once it is released).
                    conn.execute(
                        update(run_steps)
                        .where(
                            run_steps.c.run_id == run_id,
                            run_steps.c.key == record.key,
                            run_steps.c.attempt == record.attempt,
                        )
                        .values(
                            status=StepStatus.SUCCEEDED.value,
                            output=held.decision,
                            finished_at=now,
                        )
                    )
                    conn.execute(  # taken: it is this opening's wait from now on
                        update(waits)
                        .where(waits.c.id == held.id)
                        .values(requested_by=row["requested_by"])
                    )
                    resume_decided(conn, run_id, now)
                    return
                if held is not None:
                    if held.status == WaitStatus.PENDING.value:
                        raise RuntimeError(f"step {key} of run {run_id} already waits for an event")
                    # An earlier opening of this step (before a retry): its token moves here.
                    conn.execute(update(waits).where(waits.c.id == held.id).values(token_hash=None))
                opened = conn.execute(
                    insert_ignore(backend, waits, keys=["token_hash"])
                    .values(row)
                    .returning(waits.c.id)  # rowcount is not told for an INSERT on every driver
                ).first()
                if opened is not None:
                    return
            raise RuntimeError(f"the callback token of step {key} of run {run_id} is in use")

        await self.journal.write(self._op(OpKind.WORK, work))

    async def child(self, step: Step, key: str, frame: Frame) -> Any:
        record = self.records.get(key)
        if record is not None and record.status is not StepStatus.SUPERSEDED:
            if record.status.terminal:
                return self.replayed(step, frame, record)
            raise Suspended()  # its child runs (a retry supersedes a step that started none)
        try:
            # A run calls published versions only (a draft runs only in a dry run).
            cacao = step.extensions.get("cacao")
            tag = cacao.get("playbook_version") if isinstance(cacao, dict) else None
            version = self.engine.playbooks.resolve(
                step.playbook or "", step.version, published_only=not self.run.dry_run,
                cacao_version=tag if isinstance(tag, str) else None,
            )  # fmt: skip
            inputs = self.render(step.inputs, "with", self.scope(frame, step))
        except Exception as exc:  # noqa: BLE001 - an unknown playbook fails the step
            message = getattr(exc, "message", type(exc).__name__)
            error = {"code": "sub_playbook", "message": message, "retryable": False}
            await self.record(key, step, StepStatus.FAILED, error=error)
            raise self.failed(step, frame, key, error) from None
        child_id = new_id("run")
        attempt = self.next_attempt(key)
        _row_id, values = self._row(
            key, step, attempt, StepStatus.WAITING_CHILD,
            inputs=inputs, output={"run_id": child_id}, finished=False,
        )  # fmt: skip
        dedupe = f"child:{self.run.id}:{key}" + (f"#{attempt}" if attempt > 1 else "")
        child_row = self.engine.run_row(
            child_id,
            version.id,
            version.playbook_id,
            inputs,
            dry_run=self.run.dry_run,
            trigger="playbook",
            trigger_ref=self.run.id,
            parent_run_id=self.run.id,
            parent_key=key,
            root_run_id=self.run.root_run_id,
            dedupe_key=dedupe,
        )
        await self.journal.write_all(
            [
                Op(OpKind.INSERT_RUN, child_id, None, child_row),
                self._op(OpKind.INSERT_STEP, values),
                Op(OpKind.WORK, child_id, None, notify_ready),
            ]
        )
        self.engine.wake()
        raise Suspended()

    # -- the end ------------------------------------------------------------------------------

    async def release(self, outcome: Outcome) -> None:
        """Write how the run ended (or why it waits), fenced by the lease."""
        now = self.now()
        finished = now if outcome.status.finished else None
        params = release_params(
            self.run.id,
            status=_TEXT[outcome.status],
            variables=outcome.variables,
            error=outcome.error,
            finished_at=finished,
            wake_at=outcome.wake_at,
            updated_at=now,
        )
        run_id = self.run.id
        canceled = outcome.status is RunStatus.CANCELED

        # A run that reached its timeout may have stopped in a wait: closed with it too.
        timed_out = (outcome.error or {}).get("code") == "run_timeout"
        closing = canceled or timed_out

        def close(conn: Connection) -> None:  # with the release: no wait outlives its run
            from quell.engine.waits import close_canceled  # waits imports this module

            if timed_out:
                close_canceled(conn, run_id, now, by="timeout", result="the run timed out")
            else:
                close_canceled(conn, run_id, now)

        if not outcome.status.finished or self.run.parent_run_id is None:
            paused = outcome.status is RunStatus.PAUSED  # released ready if resumed meanwhile
            release = self._op(OpKind.RELEASE_RUN, params)
            ops = [self._op(OpKind.WORK, close), release] if closing else [release]
            await self.journal.write_all(ops)
            if outcome.status is RunStatus.WAITING or paused:
                self.engine.wake()  # a decision (or a resume) that came meanwhile: ready again
            return
        parent_id, parent_key = self.run.parent_run_id, self.run.parent_key
        succeeded = outcome.status is RunStatus.SUCCEEDED
        child_output = {
            "run_id": self.run.id,
            "status": outcome.status.value,
            "variables": outcome.variables,
        }
        release = self.journal.release_run

        def work(conn: Connection) -> None:
            release.run(conn, [params])
            if closing:
                close(conn)
            conn.execute(
                update(run_steps)
                .where(run_steps.c.run_id == parent_id, run_steps.c.key == parent_key)
                .where(run_steps.c.status == StepStatus.WAITING_CHILD.value)
                .values(
                    status=(StepStatus.SUCCEEDED if succeeded else StepStatus.FAILED).value,
                    output=child_output,
                    error=None if succeeded else (outcome.error or {"code": "child_failed"}),
                    finished_at=now,
                )
            )
            resume_decided(conn, parent_id, now)

        await self.journal.write(self._op(OpKind.WORK, work))
        self.engine.wake()


__all__ = [
    "Execution",
    "Frame",
    "Interrupted",
    "Outcome",
    "RunInfo",
    "StepFailed",
    "Suspended",
    "callback_token",
    "token_hash",
]
