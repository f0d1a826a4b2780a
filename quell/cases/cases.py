"""Working a case: status through the NIST SP 800-61 phases, ownership and assignment, priority,
tags and ATT&CK techniques, notes and tasks.

Every change is one transaction that also writes the incident's timeline (``incident_events``),
an audit event, and an ``incident.updated`` event for the playbooks that listen (with the
changes, so a trigger can say ``if: "changes.status == 'contained'"``).

Status rules:

- any open status may move to any other (phases are skipped or revisited in real work);
- closing needs a resolution (true positive, benign, false positive, duplicate);
- a closed incident is reopened into ``triage`` (its resolution cleared);
- leaving ``new`` the first time stops the time-to-acknowledge clock (``acknowledged_at``);
  reaching ``contained`` or a later phase (closing included) stops time-to-contain
  (``contained_at``); closing stops time-to-close (``closed_at``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, text, update

from quell.cases.incidents import OPEN_STATUSES, IncidentStatus, Resolution
from quell.clock import Clock
from quell.errors import Conflict, InvalidInput, NotFound
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.ingest.alerts import document_observables
from quell.ingest.pipeline import INGEST_LOCK
from quell.store.database import Backend, Database
from quell.store.schema import (
    alerts,
    evidence_custody,
    incident_events,
    incident_evidence,
    incident_keys,
    incident_notes,
    incident_tasks,
    incidents,
    outbox,
    waits,
)

MAX_TAGS = 50
MAX_NOTE_CHARS = 20_000
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/+-]{0,63}$")
_TECHNIQUE = re.compile(r"^T[0-9]{4}(?:\.[0-9]{3})?$")
_PHASES = (
    IncidentStatus.NEW,
    IncidentStatus.TRIAGE,
    IncidentStatus.CONTAINED,
    IncidentStatus.ERADICATED,
    IncidentStatus.RECOVERED,
    IncidentStatus.CLOSED,
)
_CONTAINED_OR_LATER = frozenset(_PHASES[2:])


class TaskStatus:
    """A task's states."""

    OPEN = "open"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Note:
    """A note on an incident."""

    id: str
    incident_id: str
    author: str
    body: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "author": self.author,
            "body": self.body,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Task:
    """A task on an incident: ad hoc, or a playbook's manual step (``run_id`` set)."""

    id: str
    incident_id: str
    title: str
    description: str | None
    status: str
    assignee: str | None
    created_by: str
    created_at: datetime
    due_at: datetime | None
    completed_by: str | None
    completed_at: datetime | None
    result: str | None
    run_id: str | None
    step_key: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "title": self.title,
            "description": self.description,
            "status": self.status,
            "assignee": self.assignee,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "due_at": self.due_at,
            "completed_by": self.completed_by,
            "completed_at": self.completed_at,
            "result": self.result,
            "run_id": self.run_id,
            "step_key": self.step_key,
        }


def check_tags(tags: Iterable[str]) -> list[str]:
    """Tags, each 1-64 of letters, digits and ``:._/+-``, without repeats, at most 50."""
    found: list[str] = []
    for tag in tags:
        text = str(tag).strip()
        if not _TAG.match(text):
            raise InvalidInput(
                f"tag {text!r} is not 1-64 letters, digits or :._/+- (starting with a letter "
                "or digit)",
                field="tags",
            )
        if text not in found:
            found.append(text)
    if len(found) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags", field="tags")
    return found


def check_techniques(techniques: Iterable[str]) -> list[str]:
    """MITRE ATT&CK technique ids (``T1059``, ``T1059.001``), upper-cased, without repeats."""
    found: list[str] = []
    for technique in techniques:
        text = str(technique).strip().upper()
        if not _TECHNIQUE.match(text):
            raise InvalidInput(
                f"{technique!r} is not an ATT&CK technique id (T1059 or T1059.001)",
                field="techniques",
            )
        if text not in found:
            found.append(text)
    return found


class CaseService:
    """Changes to incidents by people (and playbooks), each on the timeline and audited."""

    def __init__(self, db: Database, clock: Clock, audit: AuditLog | None = None) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit

    # -- the incident itself -------------------------------------------------------------------

    def update(
        self,
        incident_id: str,
        *,
        by: str,
        status: str | None = None,
        resolution: str | None = None,
        severity_id: int | None = None,
        priority: int | None = None,
        title: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        assignee: str | None = None,
        tags: Iterable[str] | None = None,
        techniques: Iterable[str] | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Change what is given; returns the changes as ``{field: [before, after]}``. An empty
        string for ``owner`` or ``assignee`` clears it."""
        now = self.clock.now()
        with self.db.write() as conn:
            _hold_ingest(conn)
            row = _locked(conn, incident_id)
            if row.merged_into:
                raise Conflict(
                    f"incident {incident_id} was merged into {row.merged_into}; change that one",
                    field="id",
                )
            values: dict[str, Any] = {}
            changes: dict[str, list[Any]] = {}

            def change(field: str, before: Any, after: Any) -> None:
                if before != after:
                    values[field] = after
                    changes[field] = [before, after]

            if status is not None or resolution is not None:
                self._status(row, status, resolution, now, by, change, values)
            if severity_id is not None:
                if not 1 <= severity_id <= 6:
                    raise InvalidInput("severity_id is 1 (informational) to 6 (fatal)")
                change("severity_id", row.severity_id, severity_id)
            if priority is not None:
                if not 1 <= priority <= 4:
                    raise InvalidInput("priority is 1 (most urgent) to 4", field="priority")
                change("priority", row.priority, priority)
            if title is not None:
                text = title.strip()
                if not 1 <= len(text) <= 512:
                    raise InvalidInput("a title is 1 to 512 characters", field="title")
                change("title", row.title, text)
            if description is not None:
                change("description", row.description, description[:MAX_NOTE_CHARS] or None)
            if owner is not None:
                change("owner", row.owner, _person(owner, "owner"))
            if assignee is not None:
                change("assignee", row.assignee, _person(assignee, "assignee"))
            if tags is not None:
                change("tags", list(row.tags or []), check_tags(tags))
            if techniques is not None:
                change("techniques", list(row.techniques or []), check_techniques(techniques))
            detail: dict[str, Any] = {"changes": _plain(changes)}
            if comment:
                detail["comment"] = comment[:2000]
            if changes:
                conn.execute(
                    update(incidents)
                    .where(incidents.c.id == incident_id)
                    .values(**values, updated_at=now)
                )
                self._event(conn, incident_id, "updated", by, detail, now)
                self._announce(conn, incident_id, {"changes": _plain(changes)}, now)
        if not changes:
            if comment and comment.strip():
                # Nothing to change (it already is so, or only a comment was sent): the
                # comment is not dropped, it goes on the timeline as a note.
                self.add_note(incident_id, comment, by=by)
            return {}
        self._audit(by, "incident.update", incident_id, detail)
        return changes

    def _status(
        self,
        row: Any,
        status: str | None,
        resolution: str | None,
        now: datetime,
        by: str,
        change: Any,
        values: dict[str, Any],
    ) -> None:
        current = IncidentStatus(row.status)
        wanted = current if status is None else _status(status)
        if resolution is not None and wanted is not IncidentStatus.CLOSED:
            raise InvalidInput("a resolution is given when closing", field="resolution")
        if wanted is IncidentStatus.CLOSED:
            if resolution is None and current is not IncidentStatus.CLOSED:
                raise InvalidInput(
                    "closing needs a resolution: " + ", ".join(r.value for r in Resolution),
                    field="resolution",
                )
            if resolution is not None:
                change("resolution", row.resolution, _resolution(resolution).value)
            if current is not IncidentStatus.CLOSED:
                values["closed_at"], values["closed_by"] = now, by
        elif current is IncidentStatus.CLOSED:
            if wanted is not IncidentStatus.TRIAGE:
                raise Conflict(
                    f"a closed incident is reopened into triage, not {wanted.value}",
                    field="status",
                )
            change("resolution", row.resolution, None)
            values["closed_at"] = values["closed_by"] = None
        change("status", current.value, wanted.value)
        if wanted is not IncidentStatus.NEW and row.acknowledged_at is None:
            values["acknowledged_at"] = now
        if wanted in _CONTAINED_OR_LATER and row.contained_at is None:
            values["contained_at"] = now

    # -- notes ----------------------------------------------------------------------------------

    def add_note(self, incident_id: str, body: str, *, by: str) -> Note:
        """A note (text, up to 20,000 characters) on the incident's timeline."""
        text = body.strip()
        if not text:
            raise InvalidInput("a note needs some text", field="body")
        if len(text) > MAX_NOTE_CHARS:
            raise InvalidInput(f"a note is at most {MAX_NOTE_CHARS} characters", field="body")
        now = self.clock.now()
        note = Note(new_id("not"), incident_id, by, text, now)
        with self.db.write() as conn:
            _not_merged(_locked(conn, incident_id), "add notes")
            conn.execute(incident_notes.insert().values(**note.as_dict()))
            self._event(conn, incident_id, "note_added", by, {"note_id": note.id}, now)
            conn.execute(
                update(incidents).where(incidents.c.id == incident_id).values(updated_at=now)
            )
        self._audit(by, "incident.note", incident_id, {"note_id": note.id, "chars": len(text)})
        return note

    def notes(self, incident_id: str) -> list[Note]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(incident_notes)
                .where(incident_notes.c.incident_id == incident_id)
                .order_by(incident_notes.c.created_at, incident_notes.c.id)
            ).all()
        return [Note(r.id, r.incident_id, r.author, r.body, r.created_at) for r in rows]

    # -- tasks ----------------------------------------------------------------------------------

    def add_task(
        self,
        incident_id: str,
        title: str,
        *,
        by: str,
        description: str | None = None,
        assignee: str | None = None,
        due_at: datetime | None = None,
        run_id: str | None = None,
        step_key: str | None = None,
    ) -> Task:
        """A task on the incident (a playbook's manual step when ``run_id`` is given)."""
        text = title.strip()
        if not 1 <= len(text) <= 512:
            raise InvalidInput("a task title is 1 to 512 characters", field="title")
        if due_at is not None and due_at.tzinfo is None:  # a time without a zone is UTC
            due_at = due_at.replace(tzinfo=UTC)
        now = self.clock.now()
        task = Task(
            new_id("tsk"), incident_id, text, (description or None), TaskStatus.OPEN,
            _person(assignee, "assignee") if assignee else None, by, now, due_at, None, None,
            None, run_id, step_key,
        )  # fmt: skip
        with self.db.write() as conn:
            _not_merged(_locked(conn, incident_id), "add tasks")
            conn.execute(incident_tasks.insert().values(**task.as_dict()))
            self._event(
                conn, incident_id, "task_added", by, {"task_id": task.id, "title": text}, now
            )
            conn.execute(
                update(incidents).where(incidents.c.id == incident_id).values(updated_at=now)
            )
        self._audit(by, "incident.task_add", incident_id, {"task_id": task.id, "title": text})
        return task

    def complete_task(
        self, task_id: str, *, by: str, result: str | None = None, cancel: bool = False
    ) -> Task:
        """Mark an open task done (or cancelled), with an optional result. A playbook's manual
        step is completed with it (its run goes on); it cannot be cancelled here (cancel the
        run instead)."""
        task = self.task(task_id)
        if task.run_id is not None and task.step_key is not None and self._step_waits(task):
            if cancel:
                raise Conflict(
                    f"task {task_id} is a step of run {task.run_id}: complete it, or cancel "
                    "the run",
                    field="id",
                )
            if task.status == TaskStatus.OPEN:
                self._complete_step(task, by, result)
                return self.task(task_id)
        now = self.clock.now()
        status = TaskStatus.CANCELLED if cancel else TaskStatus.DONE
        with self.db.write() as conn:
            row = conn.execute(select(incident_tasks).where(incident_tasks.c.id == task_id)).first()
            if row is None:
                raise NotFound(f"no task {task_id!r}", field="id")
            if row.status != TaskStatus.OPEN:
                raise Conflict(f"task {task_id} is already {row.status}", field="id")
            conn.execute(
                update(incident_tasks)
                .where(incident_tasks.c.id == task_id)
                .values(
                    status=status,
                    completed_by=by,
                    completed_at=now,
                    result=(result or None) and result[:MAX_NOTE_CHARS],
                )
            )
            self._event(conn, row.incident_id, f"task_{status}", by, {"task_id": task_id}, now)
        self._audit(by, f"incident.task_{status}", row.incident_id, {"task_id": task_id})
        return self.task(task_id)

    def _step_waits(self, task: Task) -> bool:
        """Whether the run's step behind a task still waits (else the task is ad hoc now)."""
        with self.db.read() as conn:
            return (
                conn.execute(
                    select(waits.c.id).where(
                        waits.c.run_id == task.run_id,
                        waits.c.step_key == task.step_key,
                        waits.c.kind == "task",
                        waits.c.status == "pending",
                    )
                ).first()
                is not None
            )

    def _complete_step(self, task: Task, by: str, result: str | None) -> None:
        """Complete the manual step's wait (which closes this task in its transaction)."""
        from quell.engine.waits import WaitService

        with self.db.read() as conn:
            wait_id = conn.execute(
                select(waits.c.id).where(
                    waits.c.run_id == task.run_id,
                    waits.c.step_key == task.step_key,
                    waits.c.kind == "task",
                    waits.c.status == "pending",
                )
            ).scalar_one_or_none()
        if wait_id is None:
            raise Conflict(f"the run's step for task {task.id} is not waiting any more")
        # The wait's transaction closes the task and puts it on the incident's timeline.
        WaitService(self.db, self.clock).complete(wait_id, by, result)
        self._audit(by, "incident.task_done", task.incident_id, {"task_id": task.id})

    def task(self, task_id: str) -> Task:
        with self.db.read() as conn:
            row = conn.execute(select(incident_tasks).where(incident_tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id!r}", field="id")
        return _task(row)

    def tasks(self, incident_id: str | None = None, *, status: str | None = None) -> list[Task]:
        query = select(incident_tasks).order_by(incident_tasks.c.created_at, incident_tasks.c.id)
        if incident_id is not None:
            query = query.where(incident_tasks.c.incident_id == incident_id)
        if status is not None:
            query = query.where(incident_tasks.c.status == status)
        with self.db.read() as conn:
            return [_task(row) for row in conn.execute(query.limit(1000))]

    # -- merge and split -------------------------------------------------------------------------

    def merge(self, incident_id: str, into: str, *, by: str, comment: str | None = None) -> None:
        """Merge ``incident_id`` into ``into``: its alerts, correlation keys, notes, open tasks
        and evidence (a ``moved`` entry in each piece's custody log) move; it is closed as a
        duplicate pointing at ``into``. Later alerts sharing its keys go to ``into``."""
        if incident_id == into:
            raise InvalidInput("an incident cannot be merged into itself", field="into")
        now = self.clock.now()
        with self.db.write() as conn:
            _hold_ingest(conn)
            # Both rows, in id order: two opposite merges at once queue instead of deadlocking.
            first, second = sorted((incident_id, into))
            rows = {first: _locked(conn, first), second: _locked(conn, second)}
            loser, survivor = rows[incident_id], rows[into]
            for row in (loser, survivor):
                if row.merged_into:
                    raise Conflict(f"incident {row.id} was already merged into {row.merged_into}")
            if survivor.status == IncidentStatus.CLOSED.value:
                raise Conflict(f"incident {into} is closed; reopen it before merging into it")
            conn.execute(update(alerts).where(alerts.c.incident_id == incident_id).values(
                incident_id=into))  # fmt: skip
            for table in (incident_notes, incident_tasks):
                moved = update(table).where(table.c.incident_id == incident_id)
                if table is incident_tasks:
                    moved = moved.where(incident_tasks.c.status == TaskStatus.OPEN)
                conn.execute(moved.values(incident_id=into))
            evidence = (
                conn.execute(
                    select(incident_evidence.c.id).where(
                        incident_evidence.c.incident_id == incident_id
                    )
                )
                .scalars()
                .all()
            )
            if evidence:  # the case's evidence goes with it, and its custody log says so
                conn.execute(
                    update(incident_evidence)
                    .where(incident_evidence.c.incident_id == incident_id)
                    .values(incident_id=into)
                )
                conn.execute(
                    evidence_custody.insert(),
                    [{"id": new_id("cus"), "evidence_id": evidence_id, "at": now, "actor": by,
                      "action": "moved", "detail": {"from": incident_id, "to": into}}
                     for evidence_id in evidence],
                )  # fmt: skip
            _move_keys(conn, incident_id, into)
            conn.execute(
                update(incidents)
                .where(incidents.c.id == incident_id)
                .values(
                    status=IncidentStatus.CLOSED.value,
                    resolution=Resolution.DUPLICATE.value,
                    merged_into=into,
                    alert_count=0,
                    closed_at=now if loser.closed_at is None else loser.closed_at,
                    closed_by=loser.closed_by or by,
                    updated_at=now,
                )
            )
            _recount(conn, into, now, keep_severity=survivor.severity_id)
            detail = {"comment": comment[:2000]} if comment else {}
            self._event(conn, into, "merged", by, {"merged": incident_id, **detail}, now)
            self._event(conn, incident_id, "merged_into", by, {"into": into, **detail}, now)
            self._announce(conn, into, {"changes": {"merged": [None, incident_id]}}, now)
        self._audit(by, "incident.merge", incident_id, {"into": into, **detail})

    def split(
        self, incident_id: str, alert_ids: Iterable[str], *, by: str, title: str | None = None
    ) -> str:
        """Move ``alert_ids`` of ``incident_id`` to a new incident; returns its id. The
        correlation keys that only the moved alerts carry move with them."""
        wanted = sorted(set(alert_ids))
        if not wanted:
            raise InvalidInput("name the alerts to split off", field="alert_ids")
        now = self.clock.now()
        with self.db.write() as conn:
            _hold_ingest(conn)
            row = _locked(conn, incident_id)
            if row.merged_into:
                raise Conflict(f"incident {incident_id} was merged into {row.merged_into}")
            found = conn.execute(
                select(alerts.c.id, alerts.c.title, alerts.c.incident_id).where(
                    alerts.c.id.in_(wanted)
                )
            ).all()
            strangers = sorted(set(wanted) - {a.id for a in found if a.incident_id == incident_id})
            if strangers:
                raise InvalidInput(
                    f"not alerts of {incident_id}: {', '.join(strangers[:10])}", field="alert_ids"
                )
            total = conn.execute(
                select(func.count()).select_from(alerts).where(alerts.c.incident_id == incident_id)
            ).scalar_one()
            if len(wanted) >= total:
                raise InvalidInput("a split leaves at least one alert behind", field="alert_ids")
            new = new_id("inc")
            first = min(found, key=lambda a: a.id)
            conn.execute(
                incidents.insert().values(
                    id=new, title=(title or first.title)[:512], status=IncidentStatus.NEW.value,
                    severity_id=row.severity_id, alert_count=0, first_seen=now, last_seen=now,
                    created_at=now, updated_at=now, tags=list(row.tags or []),
                    techniques=list(row.techniques or []),
                )
            )  # fmt: skip
            conn.execute(update(alerts).where(alerts.c.id.in_(wanted)).values(incident_id=new))
            _split_keys(conn, self.db.backend, incident_id, new, wanted)
            _recount(conn, incident_id, now, keep_severity=row.severity_id, keep_only=True)
            _recount(conn, new, now)
            self._event(conn, new, "split_from", by, {"from": incident_id, "alerts": wanted}, now)
            self._event(conn, incident_id, "split_into", by, {"into": new, "alerts": wanted}, now)
            conn.execute(
                outbox.insert().values(
                    id=new_id("evt"), kind="incident.created", subject_id=new, payload=None,
                    created_at=now, processed_at=None,
                )
            )  # fmt: skip
        self._audit(by, "incident.split", incident_id, {"into": new, "alerts": wanted})
        return new

    # -- shared ---------------------------------------------------------------------------------

    def _event(
        self,
        conn: Connection,
        incident_id: str,
        kind: str,
        actor: str,
        data: Mapping[str, Any],
        now: datetime,
    ) -> None:
        conn.execute(
            incident_events.insert().values(
                id=new_id("iev"), incident_id=incident_id, kind=kind, at=now, actor=actor,
                data=_plain(dict(data)),
            )
        )  # fmt: skip

    def _announce(
        self, conn: Connection, incident_id: str, payload: dict[str, Any], now: datetime
    ) -> None:
        conn.execute(
            outbox.insert().values(
                id=new_id("evt"), kind="incident.updated", subject_id=incident_id,
                payload=payload, created_at=now, processed_at=None,
            )
        )  # fmt: skip

    def _audit(self, actor: str, action: str, subject: str, detail: Mapping[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, subject, detail)


def _hold_ingest(conn: Connection) -> None:
    """On PostgreSQL, wait for (and hold off) the ingest transaction that groups alerts into
    incidents: it reads incidents without row locks and writes their counts, keys and
    severity, so a merge, split or change must not interleave with it. SQLite's single writer
    already serializes them."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INGEST_LOCK})


def _locked(conn: Connection, incident_id: str) -> Any:
    query = select(incidents).where(incidents.c.id == incident_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no incident {incident_id!r}", field="id")
    return row


def _not_merged(row: Any, what: str) -> None:
    """Conflict for an incident merged into another: its case goes on there."""
    if row.merged_into:
        raise Conflict(
            f"incident {row.id} was merged into {row.merged_into}; {what} there", field="id"
        )


def _recount(
    conn: Connection,
    incident_id: str,
    now: datetime,
    *,
    keep_severity: int | None = None,
    keep_only: bool = False,
) -> None:
    """An incident's alert count, first and last seen and severity, from its alerts. A severity
    someone set is kept: never lowered (``keep_severity``), or kept as it is (``keep_only``)."""
    count, first, last, severity = conn.execute(
        select(
            func.count(), func.min(alerts.c.first_seen), func.max(alerts.c.last_seen),
            func.max(alerts.c.severity_id),
        ).where(alerts.c.incident_id == incident_id)
    ).one()  # fmt: skip
    values: dict[str, Any] = {"alert_count": count, "updated_at": now}
    if count:
        values.update(first_seen=first, last_seen=last, severity_id=severity)
        if keep_severity is not None:
            values["severity_id"] = (
                keep_severity if keep_only else max(keep_severity, severity or keep_severity)
            )
    conn.execute(update(incidents).where(incidents.c.id == incident_id).values(**values))


def _move_keys(conn: Connection, loser: str, survivor: str) -> None:
    """The loser's correlation keys become the survivor's (the later last-seen kept)."""
    theirs = conn.execute(
        select(incident_keys.c.type, incident_keys.c.value, incident_keys.c.last_seen).where(
            incident_keys.c.incident_id == loser
        )
    ).all()
    ours = {
        (r.type, r.value): r.last_seen
        for r in conn.execute(
            select(incident_keys.c.type, incident_keys.c.value, incident_keys.c.last_seen).where(
                incident_keys.c.incident_id == survivor
            )
        )
    }
    for type_, value, seen in theirs:
        mine = ours.get((type_, value))
        if mine is None:
            conn.execute(incident_keys.insert().values(
                incident_id=survivor, type=type_, value=value, last_seen=seen))  # fmt: skip
        elif seen > mine:
            conn.execute(
                update(incident_keys)
                .where(
                    incident_keys.c.incident_id == survivor,
                    incident_keys.c.type == type_,
                    incident_keys.c.value == value,
                )
                .values(last_seen=seen)
            )
    conn.execute(delete(incident_keys).where(incident_keys.c.incident_id == loser))


def _split_keys(
    conn: Connection, backend: Backend, source: str, target: str, moved: list[str]
) -> None:
    """Keys of ``source`` whose value its moved alerts carry and its remaining alerts do not
    go to ``target`` (keys are correlation kinds, ``src_ip`` and the like, over observable
    values)."""

    def values(condition: Any) -> set[str]:
        chosen = select(alerts.c.id, alerts.c.data).where(condition)
        observed = document_observables(backend, chosen).subquery()
        # As keys hold them: cut to the column's 512 characters (a document keeps values whole).
        found = conn.execute(select(observed.c.value).distinct()).scalars()
        return {value[:512] for value in found}

    theirs = values(alerts.c.id.in_(moved))
    staying = values(alerts.c.incident_id == source)
    keys = conn.execute(
        select(incident_keys.c.type, incident_keys.c.value).where(
            incident_keys.c.incident_id == source
        )
    ).all()
    for type_, value in keys:
        if value in theirs and value not in staying:
            conn.execute(
                update(incident_keys)
                .where(
                    incident_keys.c.incident_id == source,
                    incident_keys.c.type == type_,
                    incident_keys.c.value == value,
                )
                .values(incident_id=target)
            )


def _status(text: str) -> IncidentStatus:
    try:
        return IncidentStatus(text.strip().lower())
    except ValueError:
        raise InvalidInput(
            f"unknown status {text!r}: use {', '.join(s.value for s in IncidentStatus)}",
            field="status",
        ) from None


def _resolution(text: str) -> Resolution:
    try:
        return Resolution(text.strip().lower().replace("-", "_").replace(" ", "_"))
    except ValueError:
        raise InvalidInput(
            f"unknown resolution {text!r}: use {', '.join(r.value for r in Resolution)}",
            field="resolution",
        ) from None


def _person(text: str, field: str) -> str | None:
    name = text.strip()
    if not name:
        return None
    if len(name) > 128 or not name.isprintable():
        raise InvalidInput(f"{field} is a name of at most 128 printable characters", field=field)
    return name


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _task(row: Any) -> Task:
    return Task(
        row.id, row.incident_id, row.title, row.description, row.status, row.assignee,
        row.created_by, row.created_at, row.due_at, row.completed_by, row.completed_at,
        row.result, row.run_id, row.step_key,
    )  # fmt: skip


__all__ = ["OPEN_STATUSES", "CaseService", "Note", "Task", "TaskStatus", "check_tags"]
