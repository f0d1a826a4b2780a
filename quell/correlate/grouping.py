"""Grouping alerts into incidents by shared key observables within a time window.

An alert joins the open incident that shares one of its key observables (host, user, source
IP, file hash by default; configurable per source) seen within the window (an hour by
default, measured on event time). An alert that shares keys with two or more open incidents
merges them into the one whose activity began first; the others are closed as duplicates
pointing at it, and both sides record the merge in their timeline. Otherwise the alert opens a
new incident.

The whole batch is decided in memory from one lookup of the keys it carries, then written with
a handful of executemany statements, inside the ingest transaction (which holds the ingest
lock, so two processes never decide about the same keys at once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, String, bindparam, case, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from quell.cases.incidents import OPEN_STATUSES, IncidentStatus, Resolution
from quell.clock import Clock
from quell.errors import InvalidInput
from quell.ids import new_id
from quell.ingest.model import Alert, Severity
from quell.store.bulk import bulk_delete, bulk_insert, bulk_update, bulk_upsert
from quell.store.database import Backend, Database
from quell.store.schema import alerts, incident_events, incident_keys, incidents

Key = tuple[str, str]


def _host(alert: Alert) -> str | None:
    if alert.host is None:
        return None
    return (alert.host.hostname or "").lower() or alert.host.ip


def _file_hash(alert: Alert) -> str | None:
    if alert.file is None:
        return None
    value = alert.file.sha256 or alert.file.sha1 or alert.file.md5
    return value.lower() if value else None


KEY_KINDS: dict[str, Callable[[Alert], str | None]] = {
    "host": _host,
    "user": lambda a: a.user.strip().lower() if a.user and a.user.strip() else None,
    "src_ip": lambda a: a.src.ip if a.src else None,
    "dst_ip": lambda a: a.dst.ip if a.dst else None,
    "file_hash": _file_hash,
    "sender": lambda a: a.email.sender.lower() if a.email and a.email.sender else None,
}
DEFAULT_KEYS = ("host", "user", "src_ip", "file_hash")
INCIDENT_COLUMNS = (
    "id", "title", "status", "resolution", "severity_id", "alert_count", "first_seen",
    "last_seen", "created_at", "updated_at", "merged_into",
)  # fmt: skip
_LOOKUP_CHUNK = 400


def validate_keys(kinds: Iterable[str]) -> tuple[str, ...]:
    """The key kinds, checked; InvalidInput names an unknown one."""
    checked = tuple(kinds)
    for kind in checked:
        if kind not in KEY_KINDS:
            raise InvalidInput(
                f"correlate_on: unknown key {kind!r}; keys are: {', '.join(KEY_KINDS)}",
                field="correlate_on",
            )
    return checked


def alert_keys(alert: Alert, kinds: Sequence[str]) -> list[Key]:
    """The correlation keys an alert carries."""
    keys = []
    for kind in kinds:
        value = KEY_KINDS[kind](alert)
        if value:
            keys.append((kind, value[:512]))
    return keys


@dataclass
class _Group:
    """An incident as the batch sees it: loaded or new, with what the batch adds."""

    id: str
    order: tuple[Any, ...]  # survivor of a merge: earliest activity, then earliest created
    is_new: bool
    title: str
    severity: int
    first_seen: datetime
    last_seen: datetime
    alert_count: int
    touched: bool = False
    keys: dict[Key, datetime] = field(default_factory=dict)
    dirty: set[Key] = field(default_factory=set)  # keys this batch must write
    first_alert: str | None = None

    def see(self, key: Key, seen: datetime) -> None:
        """Note that ``key`` was seen at ``seen`` in this incident."""
        current = self.keys.get(key)
        if current is None or seen > current:
            self.keys[key] = seen
            self.dirty.add(key)


@dataclass(frozen=True)
class GroupingResult:
    """What a batch did to incidents."""

    created: int
    updated: int
    merged: int
    # Each stored incident merged away by this batch, and the incident it now lives in.
    merged_into: dict[str, str] = field(default_factory=dict)
    created_ids: tuple[str, ...] = ()
    updated_ids: tuple[str, ...] = ()  # stored incidents that took alerts (or merged others)


class Groupable(Protocol):
    """What grouping reads from an alert (an Alert, or a staged one) and sets on it."""

    id: str
    time: datetime
    title: str
    incident_id: str | None

    @property
    def severity(self) -> int:
        """OCSF severity_id."""
        ...


@dataclass(frozen=True)
class AlertKeys:
    """An alert to group, with its keys and window."""

    alert: Groupable
    keys: list[Key]
    window: timedelta
    until: datetime | None = None  # its latest sighting, if repeats in the batch came later


class Correlator:
    """Assigns incidents to alerts, inside the caller's write transaction."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.clock = clock
        self._upsert_key = bulk_upsert(
            db,
            incident_keys,
            ("incident_id", "type", "value", "last_seen"),
            keys=("incident_id", "type", "value"),
            greatest=("last_seen",),
        )
        # A merged incident's keys move to the survivor: those this batch loaded and all the
        # others, so that later alerts sharing any of them still find the case.
        move = (sqlite_insert if db.backend is Backend.SQLITE else postgresql_insert)(
            incident_keys
        ).from_select(
            ["incident_id", "type", "value", "last_seen"],
            select(
                bindparam("survivor", type_=String()),
                incident_keys.c.type,
                incident_keys.c.value,
                incident_keys.c.last_seen,
            ).where(incident_keys.c.incident_id == bindparam("loser")),
        )
        self._move_keys = move.on_conflict_do_update(
            index_elements=["incident_id", "type", "value"],
            set_={
                "last_seen": case(
                    (move.excluded.last_seen > incident_keys.c.last_seen, move.excluded.last_seen),
                    else_=incident_keys.c.last_seen,
                )
            },
        )
        self._insert_incident = bulk_insert(db, incidents, INCIDENT_COLUMNS)
        self._update_incident = bulk_update(
            db,
            incidents,
            ("alert_count", "severity_id", "first_seen", "last_seen", "updated_at"),
            key="id",
        )
        self._insert_event = bulk_insert(
            db, incident_events, ("id", "incident_id", "kind", "at", "actor", "data")
        )
        self._move_alerts = bulk_update(db, alerts, ("incident_id",), key="incident_id")
        self._close_merged = bulk_update(
            db, incidents, ("status", "resolution", "merged_into", "updated_at"), key="id"
        )
        self._drop_keys = bulk_delete(db, incident_keys, key="incident_id")

    def refresh_keys(
        self, conn: Connection, seen: Iterable[tuple[str, str, str, datetime]]
    ) -> set[str]:
        """Record (incident, type, value, time) sightings; a key's last_seen only moves forward.

        Returns the incidents that gained a key they did not have: a repeat whose fingerprint
        leaves a key observable out can carry one its alert did not. What reads an incident's
        keys (its search document) must then see the incident as changed."""
        rows = list(seen)
        wanted = {(incident_id, kind, value) for incident_id, kind, value, _seen in rows}
        present: set[tuple[str, str, str]] = set()
        ordered = sorted(wanted)
        for start in range(0, len(ordered), _LOOKUP_CHUNK):
            chunk = ordered[start : start + _LOOKUP_CHUNK]
            # The incidents' keys of those types, by the primary key's prefix, sifted here.
            # Not a row-value IN (SQLite scans a whole index for it), nor a value IN beside
            # these (SQLite probes every combination of incident, type and value).
            found = conn.execute(
                select(
                    incident_keys.c.incident_id, incident_keys.c.type, incident_keys.c.value
                ).where(
                    incident_keys.c.incident_id.in_(sorted({k[0] for k in chunk})),
                    incident_keys.c.type.in_(sorted({k[1] for k in chunk})),
                )
            )
            present.update((row[0], row[1], row[2]) for row in found)
        self._upsert_key.run(conn, rows)
        return {incident_id for incident_id, _kind, _value in wanted - present}

    def assign(self, conn: Connection, batch: Sequence[AlertKeys]) -> GroupingResult:
        """Set ``incident_id`` on every alert of ``batch`` and write the incidents."""
        if not batch:
            return GroupingResult(0, 0, 0)
        now = self.clock.now()
        groups = self._load(conn, batch)
        # Per key: each incident it was seen in, with the latest time. A dict, not a list of
        # sightings, so that a key seen by thousands of alerts stays one cheap lookup.
        index: dict[Key, dict[str, datetime]] = {}
        for group in groups.values():
            for key, seen in group.keys.items():
                index.setdefault(key, {})[group.id] = seen
        redirect: dict[str, str] = {}

        def resolve(incident_id: str) -> str:
            while incident_id in redirect:
                incident_id = redirect[incident_id]
            return incident_id

        merges: list[tuple[str, str, str]] = []  # (loser, survivor, alert id)
        sequence = 0
        for item in sorted(batch, key=lambda entry: entry.alert.time):
            alert, window = item.alert, item.window
            candidates = {
                resolve(incident_id)
                for key in item.keys
                for incident_id, seen in index.get(key, {}).items()
                if abs(alert.time - seen) <= window
            }
            if not candidates:
                sequence += 1
                group = _Group(
                    id=new_id("inc"),
                    order=(alert.time, now, sequence, ""),
                    is_new=True,
                    title=alert.title[:512],
                    severity=int(alert.severity),
                    first_seen=alert.time,
                    last_seen=alert.time,
                    alert_count=0,
                    first_alert=alert.id,
                )
                groups[group.id] = group
            else:
                ordered = sorted((groups[c] for c in candidates), key=lambda g: g.order)
                group = ordered[0]
                for loser in ordered[1:]:
                    redirect[loser.id] = group.id
                    self._absorb(group, loser)
                    if not loser.is_new:
                        merges.append((loser.id, group.id, alert.id))
            group.touched = True
            group.alert_count += 1
            group.severity = max(group.severity, int(alert.severity))
            latest = max(alert.time, item.until or alert.time)
            group.first_seen = min(group.first_seen, alert.time)
            group.last_seen = max(group.last_seen, latest)
            for key in item.keys:
                group.see(key, latest)
                seen_in = index.setdefault(key, {})
                if latest > seen_in.get(group.id, latest - window - window):
                    seen_in[group.id] = latest
            alert.incident_id = group.id
        for item in batch:
            if item.alert.incident_id is not None:
                item.alert.incident_id = resolve(item.alert.incident_id)
        return self._write(conn, groups, redirect, merges, now)

    @staticmethod
    def _absorb(survivor: _Group, loser: _Group) -> None:
        survivor.alert_count += loser.alert_count
        survivor.severity = max(survivor.severity, loser.severity)
        survivor.first_seen = min(survivor.first_seen, loser.first_seen)
        survivor.last_seen = max(survivor.last_seen, loser.last_seen)
        for key, seen in loser.keys.items():
            survivor.see(key, seen)
            survivor.dirty.add(key)  # the key moves from the loser to the survivor
        survivor.touched = True

    def _load(self, conn: Connection, batch: Sequence[AlertKeys]) -> dict[str, _Group]:
        wanted = sorted({key for item in batch for key in item.keys})
        if not wanted:
            return {}
        since = min(item.alert.time - item.window for item in batch)
        groups: dict[str, _Group] = {}
        # One query per key type with ``value IN (...)``: it walks the (type, value) index on
        # both backends, where a row-value IN over (type, value) pairs may scan the table.
        by_type: dict[str, list[str]] = {}
        for kind, value in wanted:
            by_type.setdefault(kind, []).append(value)
        chunks = [
            (kind, values[start : start + _LOOKUP_CHUNK])
            for kind, values in by_type.items()
            for start in range(0, len(values), _LOOKUP_CHUNK)
        ]
        for kind, chunk in chunks:
            rows = conn.execute(
                select(
                    incident_keys.c.incident_id,
                    incident_keys.c.type,
                    incident_keys.c.value,
                    incident_keys.c.last_seen,
                    incidents.c.title,
                    incidents.c.severity_id,
                    incidents.c.first_seen,
                    incidents.c.last_seen.label("incident_last_seen"),
                    incidents.c.alert_count,
                    incidents.c.created_at,
                )
                .join(incidents, incidents.c.id == incident_keys.c.incident_id)
                .where(
                    incident_keys.c.type == kind,
                    incident_keys.c.value.in_(chunk),
                    incident_keys.c.last_seen >= since,
                    incidents.c.status.in_(OPEN_STATUSES),
                )
            )
            for row in rows:
                group = groups.get(row.incident_id)
                if group is None:
                    group = _Group(
                        id=row.incident_id,
                        order=(row.first_seen, row.created_at, 0, row.incident_id),
                        is_new=False,
                        title=row.title,
                        severity=row.severity_id,
                        first_seen=row.first_seen,
                        last_seen=row.incident_last_seen,
                        alert_count=row.alert_count,
                    )
                    groups[row.incident_id] = group
                group.keys[(row.type, row.value)] = row.last_seen
        return groups

    def _write(
        self,
        conn: Connection,
        groups: dict[str, _Group],
        redirect: dict[str, str],
        merges: list[tuple[str, str, str]],
        now: datetime,
    ) -> GroupingResult:
        live = [g for g in groups.values() if g.touched and g.id not in redirect]
        created = [g for g in live if g.is_new]
        changed = [g for g in live if not g.is_new]
        new = IncidentStatus.NEW.value
        self._insert_incident.run(
            conn,
            [
                (g.id, g.title, new, None, g.severity, g.alert_count, g.first_seen, g.last_seen,
                 now, now, None)
                for g in created
            ],
        )  # fmt: skip
        self._update_incident.run(
            conn,
            [(g.alert_count, g.severity, g.first_seen, g.last_seen, now, g.id) for g in changed],
        )
        events: list[tuple[Any, ...]] = [
            (
                new_id("iev"),
                g.id,
                "created",
                now,
                "correlation",
                {"first_alert": g.first_alert, "severity": Severity(g.severity).label},
            )
            for g in created
        ]
        if merges:

            def redirect_to(incident_id: str) -> str:
                while incident_id in redirect:
                    incident_id = redirect[incident_id]
                return incident_id

            # A survivor may itself have been merged later in the batch: point at the last one.
            final = [(loser, redirect_to(loser), alert_id) for loser, _, alert_id in merges]
            self._move_alerts.run(conn, [(survivor, loser) for loser, survivor, _ in final])
            closed, duplicate = IncidentStatus.CLOSED.value, Resolution.DUPLICATE.value
            self._close_merged.run(
                conn, [(closed, duplicate, survivor, now, loser) for loser, survivor, _ in final]
            )
            conn.execute(
                self._move_keys,
                [{"survivor": survivor, "loser": loser} for loser, survivor, _ in final],
            )
            self._drop_keys.run(conn, [(loser,) for loser, _, _ in final])
            merges = final
        for loser, survivor, alert_id in merges:
            link = {"linked_by_alert": alert_id}
            events.append(
                (new_id("iev"), survivor, "merged", now, "correlation", {"merged": loser, **link})
            )
            events.append(
                (
                    new_id("iev"),
                    loser,
                    "merged_into",
                    now,
                    "correlation",
                    {"into": survivor, **link},
                )
            )
        self._insert_event.run(conn, events)
        self._upsert_key.run(
            conn, [(g.id, key[0], key[1], g.keys[key]) for g in live for key in g.dirty]
        )
        return GroupingResult(
            created=len(created),
            updated=len(changed),
            merged=len(merges),
            merged_into={loser: survivor for loser, survivor, _ in merges},
            created_ids=tuple(g.id for g in created),
            updated_ids=tuple(g.id for g in changed),
        )
