"""Incidents: the cases that correlated alerts form.

The lifecycle follows NIST SP 800-61: new, triage, contained, eradicated, recovered, closed.
Correlation (:mod:`quell.correlate.grouping`) opens incidents, adds alerts to them and merges
them; this module reads them. Every change is an ``incident_events`` row, the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, union_all

from quell.errors import InvalidInput, NotFound
from quell.ingest.model import Severity
from quell.store.database import Database
from quell.store.schema import (
    alerts,
    incident_events,
    incident_keys,
    incidents,
    run_steps,
    runs,
    waits,
)


class IncidentStatus(StrEnum):
    """NIST SP 800-61 phases, as statuses."""

    NEW = "new"
    TRIAGE = "triage"
    CONTAINED = "contained"
    ERADICATED = "eradicated"
    RECOVERED = "recovered"
    CLOSED = "closed"


class Resolution(StrEnum):
    """Why a closed incident was closed."""

    TRUE_POSITIVE = "true_positive"
    BENIGN = "benign"
    FALSE_POSITIVE = "false_positive"
    DUPLICATE = "duplicate"


OPEN_STATUSES = tuple(
    status.value for status in IncidentStatus if status is not IncidentStatus.CLOSED
)


def _active_first(columns: Any) -> tuple[Any, ...]:
    """The incident list's order: most recently active first, then by id."""
    return (columns.last_seen.desc(), columns.id)


@dataclass(frozen=True)
class Incident:
    """An incident as stored."""

    id: str
    title: str
    status: IncidentStatus
    resolution: Resolution | None
    severity: Severity
    alert_count: int
    first_seen: datetime
    last_seen: datetime
    created_at: datetime
    updated_at: datetime
    merged_into: str | None
    priority: int | None = None
    owner: str | None = None
    assignee: str | None = None
    tags: tuple[str, ...] = ()
    techniques: tuple[str, ...] = ()
    description: str | None = None
    acknowledged_at: datetime | None = None
    contained_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "resolution": self.resolution.value if self.resolution else None,
            "severity": self.severity.label.lower(),
            "severity_id": int(self.severity),
            "alert_count": self.alert_count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "merged_into": self.merged_into,
            "priority": self.priority,
            "owner": self.owner,
            "assignee": self.assignee,
            "tags": list(self.tags),
            "techniques": list(self.techniques),
            "description": self.description,
            "acknowledged_at": self.acknowledged_at,
            "contained_at": self.contained_at,
            "closed_at": self.closed_at,
            "closed_by": self.closed_by,
        }


@dataclass(frozen=True)
class IncidentEvent:
    """One entry of an incident's timeline."""

    id: str
    kind: str
    at: datetime
    actor: str | None
    data: dict[str, Any]


_TIE_ORDER = {
    "created": 0, "alert": 1, "run_started": 2, "approval_requested": 3,
    "approval_decided": 4, "action": 5, "run_ended": 9,
}  # fmt: skip


def _entry(
    at: datetime, kind: str, actor: str | None, data: dict[str, Any], ref: str
) -> dict[str, Any]:
    return {"id": ref, "at": at, "kind": kind, "actor": actor, "data": data}


def _incident(row: Any) -> Incident:
    return Incident(
        id=row.id,
        title=row.title,
        status=IncidentStatus(row.status),
        resolution=Resolution(row.resolution) if row.resolution else None,
        severity=Severity(row.severity_id),
        alert_count=row.alert_count,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        created_at=row.created_at,
        updated_at=row.updated_at,
        merged_into=row.merged_into,
        priority=row.priority,
        owner=row.owner,
        assignee=row.assignee,
        tags=tuple(row.tags or ()),
        techniques=tuple(row.techniques or ()),
        description=row.description,
        acknowledged_at=row.acknowledged_at,
        contained_at=row.contained_at,
        closed_at=row.closed_at,
        closed_by=row.closed_by,
    )


def statuses_of(status: str | None) -> tuple[IncidentStatus, ...]:
    """The statuses a ``status`` filter asks for: all for None, the open ones for ``open``;
    InvalidInput for one there is not."""
    if status is None:
        return tuple(IncidentStatus)
    if status == "open":
        return tuple(IncidentStatus(value) for value in OPEN_STATUSES)
    try:
        return (IncidentStatus(status),)
    except ValueError:
        raise InvalidInput(
            f"status must be open or one of: {', '.join(IncidentStatus)}", field="status"
        ) from None


class IncidentService:
    """Read incidents, their keys and their timeline."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list_all(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Incident]:
        """Incidents, most recently active first; ``status`` may be ``open``."""
        statuses = statuses_of(status)
        limit, offset = min(max(limit, 1), 1000), max(offset, 0)
        # Each status's incidents are read in order from the (status, last_seen) index, as
        # many as the page may need, and merged: asked of several statuses at once, the
        # databases instead read all their incidents (every open one, for the queue) and
        # sorted them.
        sides = [
            select(*incidents.c)
            .where(incidents.c.status == wanted.value)
            .order_by(*_active_first(incidents.c))
            .limit(limit + offset)
            for wanted in statuses
        ]
        if len(sides) == 1:
            query = sides[0].offset(offset).limit(limit)
        else:
            merged = union_all(*(select(side.subquery()) for side in sides)).subquery()
            query = select(*merged.c).order_by(*_active_first(merged.c)).limit(limit)
            query = query.offset(offset)
        with self.db.read() as conn:
            return [_incident(row) for row in conn.execute(query)]

    def get(self, incident_id: str) -> Incident:
        """One incident."""
        with self.db.read() as conn:
            row = conn.execute(select(*incidents.c).where(incidents.c.id == incident_id)).first()
        if row is None:
            raise NotFound(f"no incident {incident_id!r}", field="id")
        return _incident(row)

    def get_many(self, incident_ids: list[str]) -> dict[str, Incident]:
        """The incidents of these ids that exist, by id."""
        found: dict[str, Incident] = {}
        with self.db.read() as conn:
            for start in range(0, len(incident_ids), 500):
                chunk = incident_ids[start : start + 500]
                for row in conn.execute(select(*incidents.c).where(incidents.c.id.in_(chunk))):
                    found[row.id] = _incident(row)
        return found

    def keys(self, incident_id: str) -> list[tuple[str, str]]:
        """The observables the incident correlates on, as (type, value)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(incident_keys.c.type, incident_keys.c.value)
                .where(incident_keys.c.incident_id == incident_id)
                .order_by(incident_keys.c.type, incident_keys.c.value)
            )
            return [(row.type, row.value) for row in rows]

    def timeline(self, incident_id: str) -> list[IncidentEvent]:
        """The incident's events, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(*incident_events.c)
                .where(incident_events.c.incident_id == incident_id)
                .order_by(incident_events.c.at, incident_events.c.id)
            )
            return [IncidentEvent(r.id, r.kind, r.at, r.actor, dict(r.data)) for r in rows]

    def full_timeline(self, incident_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Everything that happened to the incident, oldest first: its own events (status,
        notes, tasks, evidence, merges, SLA breaches), its alerts, the runs its alerts and it
        started, each action those runs called, and their approvals."""
        entries: list[dict[str, Any]] = []
        with self.db.read() as conn:
            for row in conn.execute(
                select(*incident_events.c)
                .where(incident_events.c.incident_id == incident_id)
                .order_by(incident_events.c.at, incident_events.c.id)
            ):
                entries.append(_entry(row.at, row.kind, row.actor, dict(row.data), row.id))
            alert_rows = conn.execute(
                select(alerts.c.id, alerts.c.title, alerts.c.received_at, alerts.c.source)
                .where(alerts.c.incident_id == incident_id)
                .order_by(alerts.c.id)
                .limit(limit)
            ).all()
            for a in alert_rows:
                data = {"alert_id": a.id, "title": a.title}
                entries.append(_entry(a.received_at, "alert", f"source:{a.source}", data, a.id))
            refs = [incident_id, *(a.id for a in alert_rows)]
            run_rows = conn.execute(
                select(runs.c.id, runs.c.playbook_id, runs.c.status, runs.c.trigger,
                       runs.c.created_at, runs.c.finished_at, runs.c.dry_run)
                .where(runs.c.trigger_ref.in_(refs))
                .limit(limit)
            ).all()  # fmt: skip
            for r in run_rows:
                data = {"run_id": r.id, "playbook": r.playbook_id, "trigger": r.trigger}
                entries.append(_entry(r.created_at, "run_started", "engine", data, r.id))
                if r.finished_at is not None:
                    ended = {**data, "status": r.status, "dry_run": r.dry_run}
                    entries.append(_entry(r.finished_at, "run_ended", "engine", ended, r.id))
            run_ids = [r.id for r in run_rows]
            if run_ids:
                for step in conn.execute(
                    select(run_steps.c.run_id, run_steps.c.key, run_steps.c.action,
                           run_steps.c.status, run_steps.c.finished_at, run_steps.c.simulated)
                    .where(run_steps.c.run_id.in_(run_ids), run_steps.c.action.is_not(None),
                           run_steps.c.finished_at.is_not(None))
                    .limit(limit)
                ):  # fmt: skip
                    data = {"run_id": step.run_id, "step": step.key, "action": step.action,
                            "status": step.status, "simulated": step.simulated}  # fmt: skip
                    entries.append(_entry(step.finished_at, "action", "engine", data, step.key))
                for wait in conn.execute(
                    select(waits.c.id, waits.c.run_id, waits.c.kind, waits.c.status,
                           waits.c.created_at, waits.c.decided_at, waits.c.decided_by,
                           waits.c.comment)
                    .where(waits.c.run_id.in_(run_ids), waits.c.kind == "approval")
                ):  # fmt: skip
                    data = {"run_id": wait.run_id, "wait_id": wait.id}
                    entries.append(
                        _entry(wait.created_at, "approval_requested", "engine", data, wait.id)
                    )
                    if wait.decided_at is not None:
                        decided = {**data, "status": wait.status, "comment": wait.comment}
                        entries.append(_entry(wait.decided_at, "approval_decided",
                                              wait.decided_by, decided, wait.id))  # fmt: skip
        # By time; at one instant, in the order things happen (and the incident's own events
        # in theirs: the sort is stable).
        entries.sort(key=lambda e: (e["at"], _TIE_ORDER.get(e["kind"], 6)))
        return entries[-limit:]  # the newest, when there are more

    def count(self) -> int:
        """How many incidents exist (merged ones included)."""
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(incidents)).scalar_one())
