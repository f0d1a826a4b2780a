"""Resolving what waiting runs wait for: approvals, manual tasks, callbacks, expiries.

Each decision is one transaction: the wait row records who decided what and why, the waiting
step's journal record is closed with the decision as its output (or as its error), and the run
becomes ``ready`` for a worker to pick up, where the replay goes past the step. Nothing about
the waiting run is in any process's memory; a decision works the same whether the run's last
worker is alive or not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.engine.execution import EARLY_EVENT, read_callback_token, token_hash
from quell.engine.states import RunStatus, StepStatus, WaitStatus
from quell.engine.store import resume_decided
from quell.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.store.database import Database
from quell.store.dialect import insert_ignore
from quell.store.schema import (
    approval_links,
    approval_votes,
    incident_events,
    incident_tasks,
    incidents,
    run_steps,
    runs,
    waits,
)

PRIVILEGED = frozenset({"admin"})  # may decide an approval whatever roles it names
MAX_COMMENT = 4000


def person(name: str | None) -> str:
    """Who a name is, for separation of duties: ``cli:alice`` (an operator at the CLI),
    ``user:alice`` and ``alice`` are one person."""
    text = (name or "").strip().lower()
    for prefix in ("cli:", "user:"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _close_incident_task(
    conn: Connection, row: Any, actor: str, comment: str | None, now: datetime
) -> None:
    """The incident task a manual step made (quell.engine.execution) ends with the step."""
    end_incident_tasks(conn, row.run_id, row.step_key, actor, now, status="done", result=comment)


def close_canceled(
    conn: Connection,
    run_id: str,
    now: datetime,
    *,
    by: str = "cancel",
    result: str = "the run was cancelled",
) -> None:
    """What a cancelled run leaves open, closed: its pending waits (approvers and assignees no
    longer see them), its manual steps' incident tasks, and its steps still waiting. ``by``
    and ``result`` say why (a run that reached its timeout is closed so too)."""
    conn.execute(
        update(waits)
        .where(waits.c.run_id == run_id, waits.c.status == WaitStatus.PENDING.value)
        .values(status=WaitStatus.CANCELED.value, decided_at=now, decided_by=by)
    )
    end_incident_tasks(conn, run_id, None, by, now, status="cancelled", result=result)
    conn.execute(
        update(run_steps)
        .where(run_steps.c.run_id == run_id, run_steps.c.status.like("waiting_%"))
        .values(status=StepStatus.CANCELED.value, finished_at=now)
    )


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
    required: int = 1
    rule: str | None = None
    excluded: list[str] = field(default_factory=list)
    escalate_at: datetime | None = None
    escalate_to: list[str] = field(default_factory=list)
    escalated_at: datetime | None = None
    votes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def deciders(self) -> list[str]:
        """The roles that may decide now (escalated: the wider group too); empty: any role
        holding ``approvals:decide``."""
        if not self.approvers:
            return []
        if self.escalated_at is not None:
            return list(dict.fromkeys([*self.approvers, *self.escalate_to]))
        return list(self.approvers)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API and the CLI."""
        approvals = [vote["voter"] for vote in self.votes if vote["approved"]]
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
            "required": self.required,
            "approvals": approvals,
            "rule": self.rule,
            "excluded": self.excluded,
            "escalate_at": self.escalate_at,
            "escalate_to": self.escalate_to,
            "escalated_at": self.escalated_at,
            "votes": self.votes,
        }


def _vote(row: Any) -> dict[str, Any]:
    return {
        "voter": row.voter,
        "role": row.role,
        "approved": bool(row.approved),
        "comment": row.comment,
        "via": row.via,
        "at": row.at,
    }


def _wait(row: Any, votes: list[dict[str, Any]] | None = None) -> Wait:
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
        int(row.required or 1),
        row.rule,
        list(row.excluded or []),
        row.escalate_at,
        list(row.escalate_to or []),
        row.escalated_at,
        votes or [],
    )


def _votes(conn: Connection, wait_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(wait_ids), 500):
        chunk = wait_ids[start : start + 500]
        rows = conn.execute(
            select(approval_votes)
            .where(approval_votes.c.wait_id.in_(chunk))
            .order_by(approval_votes.c.at, approval_votes.c.id)
        )
        for row in rows:
            found.setdefault(row.wait_id, []).append(_vote(row))
    return found


class WaitService:
    """List and resolve waits."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        on_change: Callable[[], None] | None = None,
        callback_secret: bytes | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit or AuditLog(db, clock)
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
            rows = list(conn.execute(query))
            votes = _votes(conn, [row.id for row in rows if row.kind == "approval"])
        return [_wait(row, votes.get(row.id)) for row in rows]

    def get(self, wait_id: str) -> Wait:
        """One wait."""
        with self.db.read() as conn:
            row = conn.execute(select(waits).where(waits.c.id == wait_id)).first()
            votes = _votes(conn, [wait_id]) if row is not None else {}
        if row is None:
            raise NotFound(f"no wait {wait_id!r}", field="id", value=wait_id)
        return _wait(row, votes.get(wait_id))

    # -- decisions --------------------------------------------------------------------------

    def approve(
        self, wait_id: str, actor: str, role: str, comment: str | None = None, *, via: str = "api"
    ) -> Wait:
        """Approve: once as many distinct people as the approval needs have approved, the step
        succeeds and the run goes on."""
        return self.decide(wait_id, actor, role, comment, approved=True, via=via)

    def reject(
        self, wait_id: str, actor: str, role: str, comment: str | None = None, *, via: str = "api"
    ) -> Wait:
        """Reject: one refusal ends the approval; the step fails (its on_failure, if any,
        runs)."""
        return self.decide(wait_id, actor, role, comment, approved=False, via=via)

    def decide(
        self,
        wait_id: str,
        actor: str,
        role: str,
        comment: str | None,
        *,
        approved: bool,
        via: str = "api",
        link_id: str | None = None,
    ) -> Wait:
        """One person's decision on an approval, with the comment that says why.

        Refused: without a comment; by someone whose role the approval does not name; an
        approval by the person who started the run or wrote the playbook version (separation of
        duties: they may still reject, withdrawing it); by someone who already decided it (one
        person counts once); through a link used already.
        """
        text = (comment or "").strip()
        if not text:
            raise InvalidInput("a decision needs a comment saying why", field="comment")
        if len(text) > MAX_COMMENT:
            raise InvalidInput(f"the comment is longer than {MAX_COMMENT} characters",
                               field="comment")  # fmt: skip
        now = self.clock.now()
        who = person(actor)
        outcome = "vote"
        try:
            with self.db.write() as conn:
                row = self._pending(conn, wait_id, ("approval",), lock=True)
                wait = _wait(row)
                if wait.expires_at is not None and wait.expires_at <= now:
                    raise Conflict(f"{wait_id} expired; it ends as its rule says")
                allowed = wait.deciders
                if allowed and role not in allowed and role not in PRIVILEGED:
                    raise PermissionDenied(
                        f"this approval needs one of the roles {', '.join(allowed)}; "
                        f"you are {role}",
                        required=allowed,
                    )
                if approved and who in {person(name) for name in wait.excluded}:
                    raise PermissionDenied(
                        f"{actor} started this run or wrote this playbook and cannot decide "
                        "its approval (separation of duties)",
                        rule="separation_of_duties",
                    )
                prior = conn.execute(
                    select(approval_votes.c.approved).where(
                        approval_votes.c.wait_id == wait_id, approval_votes.c.voter == who
                    )
                ).first()
                if prior is not None:
                    raise Conflict(
                        f"{actor} already {'approved' if prior.approved else 'rejected'} this; "
                        "another approval must come from someone else",
                        rule="four_eyes",
                    )
                if link_id is not None:
                    used = conn.execute(
                        update(approval_links)
                        .where(approval_links.c.id == link_id, approval_links.c.used_at.is_(None))
                        .values(used_at=now)
                    )
                    if not used.rowcount:
                        raise Conflict("this approval link was used already")
                conn.execute(
                    insert(approval_votes).values(
                        id=new_id("vot"), wait_id=wait_id, voter=who, role=role,
                        approved=approved, comment=text, via=via, at=now,
                    )
                )  # fmt: skip
                voters = [
                    voter
                    for voter, yes in conn.execute(
                        select(approval_votes.c.voter, approval_votes.c.approved)
                        .where(approval_votes.c.wait_id == wait_id)
                        .order_by(approval_votes.c.at, approval_votes.c.id)
                    )
                    if yes
                ]
                if not approved:
                    outcome = "reject"
                    decision = {"approved": False, "by": actor, "comment": text, "at": now,
                                "approvals": voters}  # fmt: skip
                    self._settle(conn, row, WaitStatus.REJECTED, actor, text, decision, now)
                    error = {
                        "code": "rejected",
                        "message": f"rejected by {actor}: {text}",
                        "retryable": False,
                    }
                    self._close_step(conn, row, StepStatus.FAILED, output=decision, error=error)
                    self._ready(conn, row.run_id, now)
                elif len(voters) >= wait.required:
                    outcome = "approve"
                    decision = {"approved": True, "by": actor, "comment": text, "at": now,
                                "approvals": voters}  # fmt: skip
                    self._settle(conn, row, WaitStatus.APPROVED, actor, text, decision, now)
                    self._close_step(conn, row, StepStatus.SUCCEEDED, output=decision)
                    self._ready(conn, row.run_id, now)
                # Recorded in the decision's own transaction: no decision without its record.
                self.audit.append(
                    conn,
                    [
                        self.audit.event(
                            actor,
                            f"approval.{outcome}",
                            wait_id,
                            {
                                "run_id": wait.run_id,
                                "step": wait.step_key,
                                "approved": approved,
                                "comment": text,
                                "via": via,
                                "role": role,
                                "rule": wait.rule,
                                "required": wait.required,
                            },
                        )
                    ],
                )
        except IntegrityError:  # the same person deciding twice at the same moment
            raise Conflict(
                f"{actor} already decided this; another approval must come from someone else",
                rule="four_eyes",
            ) from None
        if outcome != "vote":
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
            if row.expires_at is not None and row.expires_at <= now:
                raise Conflict(f"{wait_id} expired; it ends as its step says")  # the tick does
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
        """Pending waits past their expiry end as declared: skip, fail or escalate (an
        approval with roles to escalate to is handed to them for one more period first);
        approvals past their ``escalate_at`` widen to their escalation roles."""
        now = self.clock.now()
        escalated: list[tuple[str, str, list[str], str]] = []
        settled = 0
        with self.db.write() as conn:
            for row in conn.execute(
                select(waits)
                .where(
                    waits.c.status == WaitStatus.PENDING.value,
                    waits.c.escalate_at <= now,
                    waits.c.escalated_at.is_(None),
                )
                .with_for_update(skip_locked=True)  # one worker escalates each (PostgreSQL)
            ).all():
                self._escalate(conn, row, now, extend=False)
                escalated.append((row.id, row.run_id, list(row.escalate_to or []), "reminder"))
            due = list(
                conn.execute(
                    select(waits)
                    .where(waits.c.status == WaitStatus.PENDING.value, waits.c.expires_at <= now)
                    .with_for_update(skip_locked=True)  # one worker settles each (PostgreSQL)
                )
            )
            for row in due:
                outcome = row.on_expiry or "fail"
                if outcome == "escalate" and row.escalate_to:  # once: then it fails
                    self._escalate(conn, row, now, extend=True)
                    escalated.append((row.id, row.run_id, list(row.escalate_to), "expiry"))
                    continue
                settled += 1
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
        for wait_id, run_id, roles, why in escalated:
            self.audit.record(
                "escalation", "approval.escalated", wait_id,
                {"run_id": run_id, "to": roles, "because": why},
            )  # fmt: skip
        if settled:
            self._changed()
        return settled + len(escalated)

    @staticmethod
    def _escalate(conn: Connection, row: Any, now: datetime, *, extend: bool) -> None:
        """Widen an approval to its escalation roles (at expiry: for one more period)."""
        values: dict[str, Any] = {"escalated_at": row.escalated_at or now}
        if extend and row.expires_at is not None:  # handed on for one more period, once
            values["expires_at"] = now + (row.expires_at - row.created_at)
            values["on_expiry"] = "fail"
        conn.execute(update(waits).where(waits.c.id == row.id).values(values))

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
    def _pending(
        conn: Connection, wait_id: str, kinds: tuple[str, ...], *, lock: bool = False
    ) -> Any:
        query = select(waits).where(waits.c.id == wait_id)
        if lock:  # decisions on one approval one at a time (counting votes), on PostgreSQL
            query = query.with_for_update()
        row = conn.execute(query).first()
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
