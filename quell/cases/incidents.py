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

from sqlalchemy import func, select

from quell.errors import InvalidInput, NotFound
from quell.ingest.model import Severity
from quell.store.database import Database
from quell.store.schema import incident_events, incident_keys, incidents


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


class IncidentService:
    """Read incidents, their keys and their timeline."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list_all(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Incident]:
        """Incidents, most recently active first; ``status`` may be ``open``."""
        query = select(*incidents.c).order_by(incidents.c.last_seen.desc(), incidents.c.id)
        if status == "open":
            query = query.where(incidents.c.status.in_(OPEN_STATUSES))
        elif status is not None:
            try:
                query = query.where(incidents.c.status == IncidentStatus(status).value)
            except ValueError:
                raise InvalidInput(
                    f"status must be open or one of: {', '.join(IncidentStatus)}", field="status"
                ) from None
        with self.db.read() as conn:
            rows = conn.execute(query.limit(min(max(limit, 1), 1000)).offset(max(offset, 0)))
            return [_incident(row) for row in rows]

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

    def count(self) -> int:
        """How many incidents exist (merged ones included)."""
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(incidents)).scalar_one())
