"""SLA timers: how long an incident may take to be acknowledged, contained and closed.

**Policy.** Each incident severity (OCSF ``severity_id`` 1 informational .. 6 fatal) has a
target per metric; ``None`` means no SLA for that metric. The defaults:

=================  ===========  ========  =====
severity           acknowledge  contain   close
=================  ===========  ========  =====
fatal, critical    15m          4h        3d
high               1h           8h        7d
medium             4h           24h       14d
low, informational 24h          7d        30d
=================  ===========  ========  =====

A severity's targets are overridden in ``sla_policies`` (:meth:`SlaService.set_policy`, audited;
:meth:`SlaService.reset_policy` goes back to the defaults). Incidents of another severity (0
unknown, 99 other) have no SLA.

**Clocks.** Every open incident gets one clock per metric its severity has a target for
(``incident_slas``), due at the incident's ``created_at`` plus the target. A clock stops (is
*met*) when the case does what it measures, as :mod:`quell.cases.cases` records it: leaving
``new`` (``acknowledged_at``), reaching ``contained`` or a later phase, closing included
(``contained_at``), closing (``closed_at``). A clock still running at its due time is
*breached*; one that stopped after it was due is breached too (``breached_at`` is then its due
time). Each breach is written once, whatever the number of workers: an ``sla_breached`` event on
the incident's timeline and an ``incident.sla_breached`` outbox event, payload
``{"sla": {"metric", "due_at", "breached_at"}}``, that playbooks trigger on.

Running clocks follow the incident and the policy:

- a severity change (by a person, or correlation raising it) moves the due time by the
  difference of the two targets; a severity without a target for the metric cancels the clock
  (unless it already breached);
- a policy change does the same to the running clocks of that severity, in its transaction;
- reopening a closed incident resumes its close clock where it stopped: the time the incident
  spent closed does not count (the due time moves later by it), and a clock that breached
  already does not breach again. The acknowledge and contain clocks stay stopped (they stop
  once, as their times do);
- an incident merged into another (closed as a duplicate by correlation) drops its running
  clocks; the survivor's carry on. One that had breached is stopped at the merge.

Incidents closed before any check saw them get no clocks. :meth:`SlaService.check` does all of
this over bounded batches: it finds them in a read transaction, then acts on those rows in one
short write transaction that reads them again by key (a row that changed in between is taken as
it is now). Every change to an incident moves its ``updated_at``, so after one full look (the
queries then scan the open incidents and the running clocks) a service reads only the incidents
changed since its last check, :data:`MARGIN` earlier to cover a writer that committed late, and
the clocks come due, by index. It looks at everything on its first check (and on the next
ones while that look's batches come back full), every :data:`FULL_EVERY` checks, and when the
policy changed. A check that did not finish its work (a full batch, a failure, another worker
holding the lock) keeps the window where it was, so the next one reads the rest. Stamps come
from the writers' clocks: hosts running Quell must keep time (NTP) within the margin; a change
stamped earlier than that is still found, by the next full look.
Every engine tick runs it (at most every :data:`CHECK_EVERY` seconds, by the clock, and on the
next tick while a batch came back full), so ``quell serve`` and every ``quell worker`` do.
On PostgreSQL one check at a time holds an advisory lock (the others skip that turn), and each
breach is a conditional ``UPDATE ... WHERE breached_at IS NULL`` whose row count decides
whether the events are written, so a breach is announced exactly once on both backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Select, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from quell.cases.incidents import OPEN_STATUSES
from quell.clock import Clock
from quell.durations import format_duration, parse_duration
from quell.errors import InvalidInput
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.store.database import Backend, Database
from quell.store.schema import incident_events, incident_slas, incidents, outbox, sla_policies

log = structlog.get_logger(__name__)

METRICS = ("acknowledge", "contain", "close")
SEVERITIES = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5, "fatal": 6}
SEVERITY_NAMES = {number: name for name, number in SEVERITIES.items()}
NO_SLA = frozenset({"none", "off"})
BREACH_EVENT = "incident.sla_breached"
CHECK_EVERY = 5.0  # seconds between checks of one process (by the clock)
BATCH = 200  # clocks (per phase) one check handles; the rest wait for the next check
FULL_EVERY = 60  # checks between full looks (about five minutes at CHECK_EVERY)
MARGIN = timedelta(minutes=1)  # how far before its last check a check looks for changes

_M, _H, _D = 60, 3600, 86400
DEFAULTS: dict[int, dict[str, int | None]] = {
    1: {"acknowledge": 24 * _H, "contain": 7 * _D, "close": 30 * _D},
    2: {"acknowledge": 24 * _H, "contain": 7 * _D, "close": 30 * _D},
    3: {"acknowledge": 4 * _H, "contain": 24 * _H, "close": 14 * _D},
    4: {"acknowledge": 1 * _H, "contain": 8 * _H, "close": 7 * _D},
    5: {"acknowledge": 15 * _M, "contain": 4 * _H, "close": 3 * _D},
    6: {"acknowledge": 15 * _M, "contain": 4 * _H, "close": 3 * _D},
}
_LOCK = 0x53_4C_41  # "SLA": the advisory lock checks and policy changes take on PostgreSQL
_STOPS = {
    "acknowledge": incidents.c.acknowledged_at,
    "contain": incidents.c.contained_at,
    "close": incidents.c.closed_at,
}
_COLUMNS = {"acknowledge": "acknowledge_s", "contain": "contain_s", "close": "close_s"}
_RUNNING_COLUMNS = (
    incident_slas.c.incident_id, incident_slas.c.metric,
    incident_slas.c.severity_id.label("clock_severity"), incident_slas.c.due_at,
    incident_slas.c.breached_at, incidents.c.severity_id, incidents.c.created_at,
    incidents.c.updated_at, incidents.c.merged_into, *_STOPS.values(),
)  # fmt: skip

Targets = dict[int, dict[str, int | None]]


@dataclass(frozen=True)
class Work:
    """What one check found to do (at most :data:`BATCH` of each kind): open incidents
    without a clock, by metric; incidents whose stopped close clock must resume; running
    clocks (incident, metric) to follow up."""

    missing: dict[str, list[str]]
    reopened: list[str]
    running: list[tuple[str, str]]

    def __bool__(self) -> bool:
        return bool(any(self.missing.values()) or self.reopened or self.running)

    @property
    def full(self) -> bool:
        """A kind filled its batch: there may be more, and the next tick checks again."""
        sizes = [len(ids) for ids in self.missing.values()]
        return max([*sizes, len(self.reopened), len(self.running)]) >= BATCH


@dataclass(frozen=True)
class SlaPolicy:
    """A severity's targets; ``None``: no SLA for that metric. ``default``: not overridden."""

    severity_id: int
    acknowledge: timedelta | None
    contain: timedelta | None
    close: timedelta | None
    default: bool = True
    updated_by: str | None = None
    updated_at: datetime | None = None

    @property
    def severity(self) -> str:
        """The severity's name: ``critical``, ``low``, …"""
        return SEVERITY_NAMES[self.severity_id]

    def target(self, metric: str) -> timedelta | None:
        """The target of ``acknowledge``, ``contain`` or ``close``."""
        value: timedelta | None = getattr(self, metric)
        return value

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: each target as a duration (``15m``) and in seconds."""
        shown: dict[str, Any] = {"severity_id": self.severity_id, "severity": self.severity}
        for metric in METRICS:
            target = self.target(metric)
            shown[metric] = format_duration(target) if target is not None else None
            shown[f"{metric}_s"] = int(target.total_seconds()) if target is not None else None
        shown.update(default=self.default, updated_by=self.updated_by, updated_at=self.updated_at)
        return shown


@dataclass(frozen=True)
class SlaClock:
    """One SLA clock of an incident.

    ``state``: ``running``; ``met`` (stopped in time); ``breached`` (ran past its due time,
    stopped or not: ``met_at`` says whether and when it stopped). A clock past due that no
    check has marked yet already shows ``breached`` (its ``breached_at`` is still empty)."""

    incident_id: str
    metric: str
    due_at: datetime
    met_at: datetime | None
    breached_at: datetime | None
    state: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "metric": self.metric,
            "state": self.state,
            "due_at": self.due_at,
            "met_at": self.met_at,
            "breached_at": self.breached_at,
        }


def parse_severity(value: str | int) -> int:
    """A severity by name (``critical``) or number (``5``), as its OCSF ``severity_id``."""
    text = str(value).strip().lower()
    if text in SEVERITIES:
        return SEVERITIES[text]
    if text.isdigit() and int(text) in SEVERITY_NAMES:
        return int(text)
    raise InvalidInput(
        f"unknown severity {value!r}: use {', '.join(SEVERITIES)} (or 1 to 6)",
        field="severity",
        value=str(value),
    )


def parse_target(value: str | timedelta, metric: str) -> int | None:
    """A target in whole seconds (at least one), from ``15m``, ``4h``, ``3d`` or a timedelta;
    ``none`` or ``off``: no SLA (None)."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
    elif value.strip().lower() in NO_SLA:
        return None
    else:
        seconds = int(parse_duration(value, field=metric).total_seconds())
    if seconds < 1:
        raise InvalidInput(f"{metric}: an SLA target is at least 1s", field=metric)
    return seconds


class SlaService:
    """The SLA policy and the incidents' clocks."""

    def __init__(self, db: Database, clock: Clock, audit: AuditLog | None = None) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.behind = False  # the last check left work for the next one
        self._last_check: float | None = None
        # Incidents changed since then are what the next check reads; None: all of them.
        self._since: datetime | None = None
        self._looked_with: Targets | None = None  # the policy the last check looked with
        self._partial_checks = 0  # checks since the last full look

    # -- policy ---------------------------------------------------------------------------------

    def policy(self) -> list[SlaPolicy]:
        """Every severity's targets, informational (1) to fatal (6)."""
        with self.db.read() as conn:
            rows = {row.severity_id: row for row in conn.execute(select(sla_policies))}
        found = []
        for severity_id, defaults in sorted(DEFAULTS.items()):
            row = rows.get(severity_id)
            seconds = _row_targets(row) if row is not None else defaults
            found.append(
                SlaPolicy(
                    severity_id,
                    acknowledge=_delta(seconds["acknowledge"]),
                    contain=_delta(seconds["contain"]),
                    close=_delta(seconds["close"]),
                    default=row is None,
                    updated_by=row.updated_by if row is not None else None,
                    updated_at=row.updated_at if row is not None else None,
                )
            )
        return found

    def policy_of(self, severity: str | int) -> SlaPolicy:
        """One severity's targets."""
        severity_id = parse_severity(severity)
        return next(p for p in self.policy() if p.severity_id == severity_id)

    def set_policy(
        self,
        severity: str | int,
        *,
        by: str,
        acknowledge: str | timedelta | None = None,
        contain: str | timedelta | None = None,
        close: str | timedelta | None = None,
    ) -> SlaPolicy:
        """Change a severity's targets: each given one (``15m``, ``4h``, ``3d``; ``none`` for no
        SLA), the others kept. Running clocks of that severity move with it; audited."""
        severity_id = parse_severity(severity)
        given = {"acknowledge": acknowledge, "contain": contain, "close": close}
        changed = {m: parse_target(v, m) for m, v in given.items() if v is not None}
        if not changed:
            raise InvalidInput("give a target to change: acknowledge, contain or close")
        now = self.clock.now()
        with self.db.write() as conn:
            self._lock(conn, wait=True)
            before = self._targets(conn)[severity_id]
            after = {**before, **changed}
            conn.execute(delete(sla_policies).where(sla_policies.c.severity_id == severity_id))
            conn.execute(
                sla_policies.insert().values(
                    severity_id=severity_id,
                    **{_COLUMNS[m]: after[m] for m in METRICS},
                    updated_by=by,
                    updated_at=now,
                )
            )
            moved = self._retarget(conn, severity_id, before, after)
        self._audit(by, "sla.policy", severity_id, before, after, moved)
        return self.policy_of(severity_id)

    def reset_policy(self, severity: str | int, *, by: str) -> SlaPolicy:
        """Back to the default targets of a severity (running clocks move with it); audited."""
        severity_id = parse_severity(severity)
        with self.db.write() as conn:
            self._lock(conn, wait=True)
            before = self._targets(conn)[severity_id]
            after = dict(DEFAULTS[severity_id])
            conn.execute(delete(sla_policies).where(sla_policies.c.severity_id == severity_id))
            moved = self._retarget(conn, severity_id, before, after)
        self._audit(by, "sla.policy_reset", severity_id, before, after, moved)
        return self.policy_of(severity_id)

    # -- clocks ---------------------------------------------------------------------------------

    def clocks(self, incident_id: str) -> list[SlaClock]:
        """The incident's clocks (acknowledge, contain, close; those it has)."""
        now = self.clock.now()
        with self.db.read() as conn:
            rows = {
                row.metric: row
                for row in conn.execute(
                    select(incident_slas).where(incident_slas.c.incident_id == incident_id)
                )
            }
        return [_clock(rows[m], now) for m in METRICS if m in rows]

    def check_due(self) -> int:
        """:meth:`check`, if :data:`CHECK_EVERY` seconds passed since this service's last one
        (or that one left work); what an engine tick calls. Failures are logged: the next
        check tries again."""
        moment = self.clock.monotonic()
        last = self._last_check
        if last is not None and not self.behind and moment - last < CHECK_EVERY:
            return 0
        self._last_check = moment
        try:
            return self.check()
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            log.warning("sla_check_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return 0

    def check(self, now: datetime | None = None) -> int:
        """Create missing clocks, resume reopened ones, follow severity changes, mark met and
        breached clocks; the number of breaches announced (each once, across workers)."""
        now = now or self.clock.now()
        with self.db.read() as conn:  # most checks find nothing: no write lock for them
            targets = self._targets(conn)
            full = (
                self._since is None
                or targets != self._looked_with
                or self._partial_checks >= FULL_EVERY
            )
            work = self.find(conn, now, since=None if full else self._since)
        breaches = 0
        if work:
            with self.db.write() as conn:
                if not self._lock(conn, wait=False):
                    return 0  # another worker is checking now; this one looks again next time
                breaches = self.apply(conn, work, now)
        self.behind = work.full
        if not work.full:  # all found was done: the next check may read only what changes
            self._since = now - MARGIN
            self._looked_with = targets
            self._partial_checks = 0 if full else self._partial_checks + 1
        return breaches

    def find(self, conn: Connection, now: datetime, *, since: datetime | None = None) -> Work:
        """What a check has to do, found in a read transaction, without the write lock (on
        SQLite, the one every writer, ingest included, waits for). Without ``since`` the
        queries scan the open incidents and the running clocks, which grows with them; with
        it they read the incidents changed since then, and the clocks come due."""
        targets = self._targets(conn)
        missing = {
            metric: [row.id for row in conn.execute(query.limit(BATCH))]
            for metric, query in self._missing_queries(targets, since).items()
        }
        reopened = [
            row.incident_id for row in conn.execute(self._reopened_query(since).limit(BATCH))
        ]
        if since is None:
            found = list(conn.execute(self._running_query(now).limit(BATCH)))
        else:
            changed = conn.execute(self._running_query(now, since).limit(BATCH))
            due = conn.execute(self._due_query(now).limit(BATCH))
            found = sorted(
                {(row.incident_id, row.metric): row for row in [*changed, *due]}.values(),
                key=lambda row: (row.due_at, row.incident_id, row.metric),
            )[:BATCH]
        running = [(row.incident_id, row.metric) for row in found]
        return Work(missing, reopened, running)

    def apply(self, conn: Connection, work: Work, now: datetime) -> int:
        """Do ``work`` in the write transaction (holding the check's lock). Each phase reads the
        rows found again, by key, and checks its conditions on them as they are now: a row
        that changed since is acted on as it is, or not at all when it no longer qualifies.
        The number of breaches announced."""
        targets = self._targets(conn)
        created = self._create_missing(conn, targets, work.missing)
        resumed = self._resume_reopened(conn, work.reopened)
        # A clock made or resumed now is followed up in the same check (it may be stopped,
        # or due, already), as the running query would find it.
        running = list(dict.fromkeys([*work.running, *created, *resumed]))
        return self._advance(conn, targets, now, running)

    # -- the check's phases ---------------------------------------------------------------------

    def _missing_queries(
        self, targets: Targets, since: datetime | None = None
    ) -> dict[str, Select[Any]]:
        return {
            metric: self._missing_query(metric, severities, since)
            for metric in METRICS
            if (severities := [s for s, t in targets.items() if t[metric]])
        }

    @staticmethod
    def _open(since: datetime | None) -> list[Any]:
        """Open incidents (changed since ``since``). With ``since``, the status is compared as
        ``status || ''``: SQLite, which has no statistics, would otherwise walk the status index,
        every open incident, instead of the few changed ones by ``updated_at``."""
        if since is None:
            return [incidents.c.status.in_(OPEN_STATUSES)]
        return [
            incidents.c.updated_at >= since,
            (incidents.c.status + "").in_(OPEN_STATUSES),
        ]

    @staticmethod
    def _of_changed(since: datetime | None) -> list[Any]:
        """The clocks of the incidents changed since ``since`` (all, without it). Written as
        ``incident_id IN (…)`` so that SQLite reads the changed incidents by ``updated_at`` and
        their clocks by key, instead of walking every clock."""
        if since is None:
            return []
        changed = select(incidents.c.id).where(incidents.c.updated_at >= since)
        return [incident_slas.c.incident_id.in_(changed)]

    @staticmethod
    def _missing_query(
        metric: str, severities: list[int], since: datetime | None = None
    ) -> Select[Any]:
        """Open incidents of these severities (changed since ``since``) without a clock for
        ``metric``."""
        has_clock = (
            select(incident_slas.c.incident_id)
            .where(incident_slas.c.incident_id == incidents.c.id, incident_slas.c.metric == metric)
            .exists()
        )
        return (
            select(incidents.c.id, incidents.c.severity_id, incidents.c.created_at)
            .where(
                *SlaService._open(since),
                incidents.c.merged_into.is_(None),
                incidents.c.severity_id.in_(severities),
                ~has_clock,
            )
            .order_by(incidents.c.created_at, incidents.c.id)
        )

    @staticmethod
    def _reopened_query(since: datetime | None = None) -> Select[Any]:
        """Close clocks that stopped, of incidents open again (changed since ``since``)."""
        s, i = incident_slas.c, incidents.c
        return (
            select(s.incident_id, s.due_at, s.met_at, i.updated_at)
            .select_from(incident_slas.join(incidents, i.id == s.incident_id))
            .where(
                *SlaService._of_changed(since),
                s.metric == "close",
                s.met_at.is_not(None),
                i.closed_at.is_(None),
                i.status.in_(OPEN_STATUSES),
            )
            .order_by(s.incident_id)
        )

    @staticmethod
    def _running_query(now: datetime, since: datetime | None = None) -> Select[Any]:
        """Running clocks with something to do: stopped, due, merged, severity changed; with
        ``since``, those of the incidents changed since then (:meth:`_due_query` finds the
        others that came due)."""
        s, i = incident_slas.c, incidents.c
        stopped = or_(*(and_(s.metric == m, stop.is_not(None)) for m, stop in _STOPS.items()))
        return (
            select(*_RUNNING_COLUMNS)
            .select_from(incident_slas.join(incidents, i.id == s.incident_id))
            .where(
                *SlaService._of_changed(since),
                s.met_at.is_(None),
                or_(
                    i.merged_into.is_not(None),
                    i.severity_id != s.severity_id,
                    stopped,
                    and_(s.breached_at.is_(None), s.due_at <= now),
                ),
            )
            .order_by(s.due_at, s.incident_id, s.metric)
        )

    @staticmethod
    def _due_query(now: datetime) -> Select[Any]:
        """Running clocks come due, by the due index (breached_at, met_at, due_at)."""
        s = incident_slas.c
        return (
            select(s.incident_id, s.metric, s.due_at)
            .where(s.breached_at.is_(None), s.met_at.is_(None), s.due_at <= now)
            .order_by(s.due_at, s.incident_id, s.metric)
        )

    def _create_missing(
        self, conn: Connection, targets: Targets, found: Mapping[str, list[str]]
    ) -> list[tuple[str, str]]:
        """Clocks for the incidents found without one; the clocks made (incident, metric).

        The incidents are read by id only and the missing query's conditions checked on the
        rows: given the conditions too, SQLite (which has no statistics) searches the status
        index instead, every open incident."""
        created: list[tuple[str, str]] = []
        for metric in METRICS:
            severities = {s for s, t in targets.items() if t[metric]}
            ids = found.get(metric)
            if not ids or not severities:
                continue
            i = incidents.c
            clocked = set(
                conn.execute(
                    select(incident_slas.c.incident_id).where(
                        incident_slas.c.incident_id.in_(ids), incident_slas.c.metric == metric
                    )
                ).scalars()
            )
            rows = [
                row
                for row in conn.execute(
                    select(i.id, i.severity_id, i.created_at, i.status, i.merged_into)
                    .where(i.id.in_(ids))
                    .order_by(i.created_at, i.id)
                )
                if row.status in OPEN_STATUSES
                and row.merged_into is None
                and row.severity_id in severities
                and row.id not in clocked
            ]
            if not rows:
                continue
            values = [
                {
                    "incident_id": row.id,
                    "metric": metric,
                    "severity_id": row.severity_id,
                    "due_at": row.created_at
                    + timedelta(seconds=targets[row.severity_id][metric] or 0),
                    "met_at": None,  # the running phase stops it (and sees if it was late)
                    "breached_at": None,
                }
                for row in rows
            ]
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            # One row's statement with many parameter sets: compiled once and cached (a
            # statement with every row's values in it costs more to compile than to run).
            conn.execute(insert(incident_slas).on_conflict_do_nothing(), values)
            created.extend((row.id, metric) for row in rows)
        return created

    def _resume_reopened(self, conn: Connection, found: list[str]) -> list[tuple[str, str]]:
        """Resume the close clocks of the incidents found open again; the clocks resumed (read
        by key, the reopened query's conditions checked on the rows, as for missing clocks)."""
        if not found:
            return []
        s, i = incident_slas.c, incidents.c
        query = (
            select(s.incident_id, s.due_at, s.met_at, i.updated_at, i.closed_at, i.status)
            .select_from(incident_slas.join(incidents, i.id == s.incident_id))
            .where(s.incident_id.in_(found), s.metric == "close")
            .order_by(s.incident_id)
        )
        rows = [
            row
            for row in conn.execute(query)
            if row.met_at is not None and row.closed_at is None and row.status in OPEN_STATUSES
        ]
        for row in rows:
            reopened = _reopened_at(conn, row.incident_id) or row.updated_at
            closed_for = max(reopened - row.met_at, timedelta(0))
            conn.execute(
                update(incident_slas)
                .where(
                    incident_slas.c.incident_id == row.incident_id,
                    incident_slas.c.metric == "close",
                    incident_slas.c.met_at == row.met_at,
                )
                .values(met_at=None, due_at=row.due_at + closed_for)
            )
        return [(row.incident_id, "close") for row in rows]

    def _advance(
        self, conn: Connection, targets: Targets, now: datetime, found: list[tuple[str, str]]
    ) -> int:
        if not found:
            return 0
        # By incident, which the clocks' key leads with (SQLite reads no index for a list of
        # (incident, metric) pairs); the other clocks of those incidents are left out here.
        wanted = set(found)
        ids = list(dict.fromkeys(incident_id for incident_id, _metric in found))
        query = self._running_query(now).where(incident_slas.c.incident_id.in_(ids))
        rows = [row for row in conn.execute(query) if (row.incident_id, row.metric) in wanted]
        breaches = 0
        for row in rows:
            key = (
                incident_slas.c.incident_id == row.incident_id,
                incident_slas.c.metric == row.metric,
            )
            running = (*key, incident_slas.c.met_at.is_(None))
            if row.merged_into is not None:
                if row.breached_at is None:
                    conn.execute(delete(incident_slas).where(*running))
                else:
                    conn.execute(
                        update(incident_slas).where(*running).values(met_at=row.updated_at)
                    )
                continue
            due = row.due_at
            if row.severity_id != row.clock_severity:
                target = targets.get(row.severity_id, {}).get(row.metric)
                if target is None and row.breached_at is None:
                    conn.execute(delete(incident_slas).where(*running))
                    continue
                if target is not None:
                    before = targets.get(row.clock_severity, {}).get(row.metric)
                    due = (
                        due + timedelta(seconds=target - before)
                        if before
                        else row.created_at + timedelta(seconds=target)
                    )
                conn.execute(
                    update(incident_slas)
                    .where(*running)
                    .values(severity_id=row.severity_id, due_at=due)
                )
            met = {"acknowledge": row.acknowledged_at, "contain": row.contained_at,
                   "close": row.closed_at}[row.metric]  # fmt: skip
            if met is not None:
                conn.execute(update(incident_slas).where(*running).values(met_at=met))
            if row.breached_at is None and (met > due if met is not None else due <= now):
                at = due if met is not None else now
                marked = conn.execute(
                    update(incident_slas)
                    .where(*key, incident_slas.c.breached_at.is_(None))
                    .values(breached_at=at)
                ).rowcount
                if marked == 1:
                    self._announce(conn, row.incident_id, row.metric, due, at, now)
                    breaches += 1
        return breaches

    def _announce(
        self,
        conn: Connection,
        incident_id: str,
        metric: str,
        due: datetime,
        at: datetime,
        now: datetime,
    ) -> None:
        sla = {"metric": metric, "due_at": due.isoformat(), "breached_at": at.isoformat()}
        conn.execute(
            incident_events.insert().values(
                id=new_id("iev"), incident_id=incident_id, kind="sla_breached", at=now,
                actor="sla", data=sla,
            )
        )  # fmt: skip
        conn.execute(
            outbox.insert().values(
                id=new_id("evt"), kind=BREACH_EVENT, subject_id=incident_id,
                payload={"sla": sla}, created_at=now, processed_at=None,
            )
        )  # fmt: skip
        log.info("sla_breached", incident=incident_id, metric=metric, due_at=sla["due_at"])

    # -- shared ---------------------------------------------------------------------------------

    def _lock(self, conn: Connection, *, wait: bool) -> bool:
        """The SLA advisory lock on PostgreSQL (SQLite's write transaction is one already)."""
        if self.db.backend is not Backend.POSTGRESQL:
            return True
        if wait:
            conn.execute(select(func.pg_advisory_xact_lock(_LOCK)))
            return True
        return bool(conn.execute(select(func.pg_try_advisory_xact_lock(_LOCK))).scalar())

    @staticmethod
    def _targets(conn: Connection) -> Targets:
        found = {severity: dict(targets) for severity, targets in DEFAULTS.items()}
        for row in conn.execute(select(sla_policies)):
            if row.severity_id in found:
                found[row.severity_id] = _row_targets(row)
        return found

    @staticmethod
    def _retarget(
        conn: Connection,
        severity_id: int,
        before: Mapping[str, int | None],
        after: Mapping[str, int | None],
    ) -> int:
        """Move the running clocks of ``severity_id`` to the new targets; how many moved."""
        moved = 0
        for metric in METRICS:
            old, new = before[metric], after[metric]
            if old == new:
                continue
            running = (
                incident_slas.c.severity_id == severity_id,
                incident_slas.c.metric == metric,
                incident_slas.c.met_at.is_(None),
            )
            if new is None:  # no SLA now: running clocks go, breached ones stay as they were
                result = conn.execute(
                    delete(incident_slas).where(*running, incident_slas.c.breached_at.is_(None))
                )
                moved += result.rowcount
                continue
            if old is None:
                continue  # the next check creates the clocks, due from each incident's start
            shift = timedelta(seconds=new - old)
            rows = conn.execute(
                select(incident_slas.c.incident_id, incident_slas.c.due_at).where(*running)
            ).all()
            if rows:
                conn.execute(
                    update(incident_slas)
                    .where(
                        incident_slas.c.incident_id == bindparam("key"),
                        incident_slas.c.metric == metric,
                    )
                    .values(due_at=bindparam("due")),
                    [{"key": row.incident_id, "due": row.due_at + shift} for row in rows],
                )
                moved += len(rows)
        return moved

    def _audit(
        self,
        by: str,
        action: str,
        severity_id: int,
        before: Mapping[str, int | None],
        after: Mapping[str, int | None],
        moved: int,
    ) -> None:
        if self.audit is None:
            return

        def shown(targets: Mapping[str, int | None]) -> dict[str, str | None]:
            return {m: format_duration(timedelta(seconds=s)) if s else None
                    for m, s in targets.items()}  # fmt: skip

        detail = {"before": shown(before), "after": shown(after), "clocks_moved": moved}
        self.audit.record(by, action, f"severity:{SEVERITY_NAMES[severity_id]}", detail)


def _row_targets(row: Any) -> dict[str, int | None]:
    return {metric: getattr(row, _COLUMNS[metric]) for metric in METRICS}


def _delta(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


def _clock(row: Any, now: datetime) -> SlaClock:
    if row.breached_at is not None:
        state = "breached"
    elif row.met_at is not None:
        state = "breached" if row.met_at > row.due_at else "met"
    else:
        state = "breached" if row.due_at <= now else "running"
    return SlaClock(row.incident_id, row.metric, row.due_at, row.met_at, row.breached_at, state)


def _reopened_at(conn: Connection, incident_id: str) -> datetime | None:
    """When the incident was last reopened, from its timeline (None: not found)."""
    rows = conn.execute(
        select(incident_events.c.at, incident_events.c.data)
        .where(incident_events.c.incident_id == incident_id, incident_events.c.kind == "updated")
        .order_by(incident_events.c.at.desc(), incident_events.c.id.desc())
        .limit(50)
    )
    for at, data in rows:
        status = ((data or {}).get("changes") or {}).get("status")
        if isinstance(status, list) and len(status) == 2 and status[0] == "closed":
            found: datetime = at
            return found
    return None


__all__ = [
    "BREACH_EVENT",
    "CHECK_EVERY",
    "DEFAULTS",
    "METRICS",
    "SEVERITIES",
    "SlaClock",
    "SlaPolicy",
    "SlaService",
    "parse_severity",
    "parse_target",
]
