"""Resolving what waiting runs wait for: approvals, manual tasks, callbacks, expiries.

Each decision is one transaction: the wait row records who decided what and why, the waiting
step's journal record is closed with the decision as its output (or as its error), and the run
becomes ``ready`` for a worker to pick up, where the replay goes past the step. Nothing about
the waiting run is in any process's memory; a decision works the same whether the run's last
worker is alive or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from quell.clock import Clock
from quell.engine.execution import EARLY_EVENT, read_callback_token, token_hash
from quell.engine.states import RunStatus, StepStatus, WaitStatus
from quell.engine.store import resume_decided
from quell.errors import Conflict, NotFound, PermissionDenied
from quell.ids import new_id
from quell.store.database import Database
from quell.store.dialect import insert_ignore
from quell.store.schema import (
    incident_events,
    incident_tasks,
    incidents,
    run_steps,
    runs,
    waits,
)

PRIVILEGED = frozenset({"admin"})  # may decide any approval


def _close_incident_task(
    conn: Connection, row: Any, actor: str, comment: str | None, now: datetime
) -> None:
    """The incident task a manual step made (quell.engine.execution) ends with the step."""
    end_incident_tasks(conn, row.run_id, row.step_key, actor, now, status="done", result=comment)


def end_incident_tasks(
    conn: Connection,
    run_id: str,
    step_key: str | None,
    actor: str,
    now: datetime,
    *,
    status: str,
    result: str | None,
) -> None:
    """End the open incident tasks of a run's manual step (or of all its steps), on the
    incident's timeline too."""
    query = select(incident_tasks.c.id, incident_tasks.c.incident_id).where(
        incident_tasks.c.run_id == run_id, incident_tasks.c.status == "open"
    )
    if step_key is not None:
        query = query.where(incident_tasks.c.step_key == step_key)
    for task_id, incident_id in conn.execute(query).all():
        conn.execute(
            update(incident_tasks)
            .where(incident_tasks.c.id == task_id)
            .values(status=status, completed_by=actor, completed_at=now, result=result)
        )
        conn.execute(
            incident_events.insert().values(
                id=new_id("iev"), incident_id=incident_id, kind=f"task_{status}", at=now,
                actor=actor, data={"task_id": task_id, "run_id": run_id},
            )
        )  # fmt: skip
        conn.execute(update(incidents).where(incidents.c.id == incident_id).values(updated_at=now))


@dataclass(frozen=True)
class Wait:
    """A wait, as people see it."""

    id: str
    run_id: str
    step_key: str
    kind: str
    status: str
    prompt: str | None
    approvers: list[str]
    expires_at: datetime | None
    on_expiry: str | None
    requested_by: str | None
    decision: dict[str, Any] | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API and the CLI."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "step": self.step_key,
            "kind": self.kind,
            "status": self.status,
            "prompt": self.prompt,
            "approvers": self.approvers,
            "expires_at": self.expires_at,
            "on_expiry": self.on_expiry,
            "requested_by": self.requested_by,
            "decision": self.decision,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "comment": self.comment,
            "created_at": self.created_at,
        }


def _wait(row: Any) -> Wait:
    return Wait(
        row.id,
        row.run_id,
        row.step_key,
        row.kind,
        row.status,
        row.prompt,
        list(row.approvers or []),
        row.expires_at,
        row.on_expiry,
        row.requested_by,
        row.decision,
        row.decided_by,
        row.decided_at,
        row.comment,
        row.created_at,
    )


class WaitService:
    """List and resolve waits."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        on_change: Callable[[], None] | None = None,
        callback_secret: bytes | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_change = on_change
        # To recognise a genuine callback that comes before its wait opens (None: it is 404).
        self.callback_secret = callback_secret

    def list_all(
        self, *, kind: str | None = None, status: str | None = WaitStatus.PENDING.value,
        run_id: str | None = None, limit: int = 200, offset: int = 0,
        kinds: Sequence[str] | None = None,
    ) -> list[Wait]:  # fmt: skip
        """Waits, oldest first; ``kinds`` takes several kinds at once, ``offset`` pages."""
        query = (
            select(waits)
            .order_by(waits.c.created_at, waits.c.id)
            .limit(min(limit, 10_000))
            .offset(max(offset, 0))
        )
        if kind is not None:
            query = query.where(waits.c.kind == kind)
        if kinds is not None:
            query = query.where(waits.c.kind.in_(list(kinds)))
        if status is not None:
            query = query.where(waits.c.status == status)
        if run_id is not None:
            query = query.where(waits.c.run_id == run_id)
        with self.db.read() as conn:
            return [_wait(row) for row in conn.execute(query)]

    def get(self, wait_id: str) -> Wait:
        """One wait."""
        with self.db.read() as conn:
            row = conn.execute(select(waits).where(waits.c.id == wait_id)).first()
        if row is None:
            raise NotFound(f"no wait {wait_id!r}", field="id", value=wait_id)
        return _wait(row)

    # -- decisions --------------------------------------------------------------------------

    def approve(self, wait_id: str, actor: str, role: str, comment: str | None = None) -> Wait:
        """Approve an approval: the step succeeds and the run goes on."""
        return self._decide(wait_id, actor, role, comment, approved=True)

    def reject(self, wait_id: str, actor: str, role: str, comment: str | None = None) -> Wait:
        """Reject an approval: the step fails (its on_failure, if any, runs)."""
        return self._decide(wait_id, actor, role, comment, approved=False)

    def _decide(
        self, wait_id: str, actor: str, role: str, comment: str | None, *, approved: bool
    ) -> Wait:
        now = self.clock.now()
        with self.db.write() as conn:
            row = self._pending(conn, wait_id, ("approval",))
            allowed = list(row.approvers or [])
            if allowed and role not in allowed and role not in PRIVILEGED:
                raise PermissionDenied(
                    f"this approval needs one of the roles {', '.join(allowed)}; you are {role}",
                    required=allowed,
                )
            decision = {"approved": approved, "by": actor, "comment": comment, "at": now}
            status = WaitStatus.APPROVED if approved else WaitStatus.REJECTED
            self._settle(conn, row, status, actor, comment, decision, now)
            if approved:
                self._close_step(conn, row, StepStatus.SUCCEEDED, output=decision)
            else:
                error = {
                    "code": "rejected",
                    "message": f"rejected by {actor}" + (f": {comment}" if comment else ""),
                    "retryable": False,
                }
                self._close_step(conn, row, StepStatus.FAILED, output=decision, error=error)
            self._ready(conn, row.run_id, now)
        self._changed()
        return self.get(wait_id)

    def complete(
        self,
        wait_id: str,
        actor: str,
        comment: str | None = None,
        data: dict[str, Any] | None = None,
        *,
        landed: bool | None = None,
    ) -> Wait:
        """Complete a manual task; for a reconcile wait, say whether the write landed."""
        now = self.clock.now()
        with self.db.write() as conn:
            row = self._pending(conn, wait_id, ("task", "reconcile"))
            decision: dict[str, Any] = {
                "by": actor, "comment": comment, "data": data or {}, "at": now,
            }  # fmt: skip
            if row.kind == "reconcile":
                if landed is None:
                    raise Conflict("say whether the write landed (landed or not landed)")
                decision["landed"] = landed
                status = StepStatus.SUCCEEDED if landed else StepStatus.SUPERSEDED
                self._close_step(conn, row, status, output={"reconciled": True, **decision})
            else:
                self._close_step(conn, row, StepStatus.SUCCEEDED, output=decision)
                _close_incident_task(conn, row, actor, comment, now)
            self._settle(conn, row, WaitStatus.DONE, actor, comment, decision, now)
            self._ready(conn, row.run_id, now)
        self._changed()
        return self.get(wait_id)

    def callback(self, token: str, payload: Any) -> Wait:
        """An external event arrived at its one-time callback URL.

        A genuine token (signed by this server) whose run has not reached its wait yet keeps
        the event: the wait takes it when the run gets there. Anything else is NotFound.
        """
        now = self.clock.now()
        hashed = token_hash(token)
        with self.db.write() as conn:
            row = conn.execute(select(waits).where(waits.c.token_hash == hashed)).first()
            if row is None:
                early = self._early(conn, token, hashed, payload, now)
                if early is not None:
                    kept = early  # the wait takes it when the run gets there
                else:  # not genuine, over, or the wait opened meanwhile
                    row = conn.execute(select(waits).where(waits.c.token_hash == hashed)).first()
                    if row is None:
                        raise NotFound("no callback for this token", field="token")
            if row is not None:
                if row.status != WaitStatus.PENDING.value:
                    raise Conflict(f"this callback was already {row.status}")
                if row.expires_at is not None and row.expires_at <= now:
                    raise Conflict("this callback expired")  # the tick settles it as declared
                decision = {"payload": payload, "at": now}
                self._settle(conn, row, WaitStatus.DONE, "callback", None, decision, now)
                self._close_step(conn, row, StepStatus.SUCCEEDED, output=decision)
                self._ready(conn, row.run_id, now)
                kept = row.id
        self._changed()
        return self.get(kept)

    def _early(
        self, conn: Connection, token: str, hashed: str, payload: Any, now: datetime
    ) -> str | None:
        """Keep an event that came before its wait opened; its wait id (None: not genuine,
        or its run is over, or the wait opened meanwhile)."""
        named = read_callback_token(self.callback_secret, token) if self.callback_secret else None
        if named is None:
            return None
        run_id, key = named
        status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
        if status is None or RunStatus(status).finished:
            return None
        reached = conn.execute(
            select(run_steps.c.status).where(
                run_steps.c.run_id == run_id,
                run_steps.c.key == key,
                run_steps.c.status != StepStatus.SUPERSEDED.value,
            )
        ).first()
        if reached is not None:  # the step was reached and settled: nothing would take it
            return None
        wait_id = new_id("wai")
        decision = _json_safe({"payload": payload, "at": now, "early": True})
        kept = conn.execute(
            insert_ignore(self.db.backend, waits, keys=["token_hash"]).values(
                id=wait_id, run_id=run_id, step_key=key, kind="event",
                status=WaitStatus.DONE.value, token_hash=hashed, decision=decision,
                decided_by="callback", decided_at=now, requested_by=EARLY_EVENT,
                created_at=now,
            )
            .returning(waits.c.id)  # rowcount is not told for an INSERT on every driver
        ).first()  # fmt: skip
        return wait_id if kept is not None else None

    def expire_due(self) -> int:
        """Pending waits past their expiry end as declared: skip, fail or escalate."""
        now = self.clock.now()
        with self.db.write() as conn:
            due = list(
                conn.execute(
                    select(waits).where(
                        waits.c.status == WaitStatus.PENDING.value, waits.c.expires_at <= now
                    )
                )
            )
            for row in due:
                outcome = row.on_expiry or "fail"
                decision = {"expired": True, "outcome": outcome, "at": now}
                self._settle(conn, row, WaitStatus.EXPIRED, "expiry", None, decision, now)
                if row.kind == "task":
                    end_incident_tasks(
                        conn, row.run_id, row.step_key, "expiry", now,
                        status="cancelled", result=f"expired ({outcome})",
                    )  # fmt: skip
                if outcome == "skip":
                    self._close_step(conn, row, StepStatus.SKIPPED, output=decision)
                else:
                    code = "escalated" if outcome == "escalate" else "expired"
                    error = {
                        "code": code,
                        "message": f"the {row.kind} expired unanswered ({outcome})",
                        "retryable": False,
                    }
                    self._close_step(conn, row, StepStatus.FAILED, output=decision, error=error)
                self._ready(conn, row.run_id, now)
        if due:
            self._changed()
        return len(due)

    def cancel_for_run(self, conn: Connection, run_id: str, now: datetime) -> None:
        """Cancel a run's pending waits (in the caller's transaction), and the incident tasks
        its manual steps made."""
        conn.execute(
            update(waits)
            .where(waits.c.run_id == run_id, waits.c.status == WaitStatus.PENDING.value)
            .values(status=WaitStatus.CANCELED.value, decided_at=now, decided_by="cancel")
        )
        end_incident_tasks(conn, run_id, None, "cancel", now, status="cancelled",
                           result="the run was cancelled")  # fmt: skip

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _pending(conn: Connection, wait_id: str, kinds: tuple[str, ...]) -> Any:
        row = conn.execute(select(waits).where(waits.c.id == wait_id)).first()
        if row is None:
            raise NotFound(f"no wait {wait_id!r}", field="id", value=wait_id)
        if row.kind not in kinds:
            raise Conflict(f"{wait_id} is a {row.kind} wait, not {' or '.join(kinds)}")
        if row.status != WaitStatus.PENDING.value:
            raise Conflict(f"{wait_id} was already {row.status}")
        return row

    @staticmethod
    def _settle(
        conn: Connection,
        row: Any,
        status: WaitStatus,
        actor: str,
        comment: str | None,
        decision: dict[str, Any],
        now: datetime,
    ) -> None:
        done = conn.execute(
            update(waits)
            .where(waits.c.id == row.id, waits.c.status == WaitStatus.PENDING.value)
            .values(
                status=status.value,
                decided_by=actor,
                decided_at=now,
                comment=comment,
                decision=_json_safe(decision),
            )
        )
        if not done.rowcount:
            raise Conflict(f"{row.id} was decided meanwhile")

    def _close_step(
        self,
        conn: Connection,
        row: Any,
        status: StepStatus,
        *,
        output: Any = None,
        error: Any = None,
    ) -> None:
        conn.execute(
            update(run_steps)
            .where(
                run_steps.c.run_id == row.run_id,
                run_steps.c.key == row.step_key,
                run_steps.c.status.like("waiting_%"),
            )
            .values(
                status=status.value,
                output=_json_safe(output),
                error=error,
                finished_at=self.clock.now(),
            )
        )

    @staticmethod
    def _ready(conn: Connection, run_id: str, now: datetime) -> None:
        resume_decided(conn, run_id, now)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


__all__ = ["Wait", "WaitService"]
