"""The ingest pipeline: records in, alerts and incidents out, nothing lost.

For one batch of one source's records:

1. *prepare* (no database): check each record's size, decode it (JSON or UTF-8 text), parse it
   with the source's parser, and finish each alert (id, source, times, observables,
   fingerprint). Whatever fails here becomes a dead letter with the exact reason.
2. *commit* (one write transaction, under the ingest lock on PostgreSQL): apply suppression
   rules, deduplicate against the alerts already stored and within the batch, group the new
   alerts into incidents, then write alerts, observables, dead letters, rule hits and the
   source's counters together.

Every record ends up counted exactly once: ``received = stored + deduplicated + suppressed +
dead_lettered``. A batch is acknowledged only after its transaction committed.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, bindparam, select, text, update

from quell.clock import Clock
from quell.correlate.dedup import Fingerprinter
from quell.correlate.grouping import AlertKeys, Correlator, alert_keys
from quell.correlate.suppression import SuppressionAction, SuppressionService
from quell.ids import new_id
from quell.ingest.alerts import alert_document
from quell.ingest.deadletters import DeadLetterStatus
from quell.ingest.intake import IntakeResult
from quell.ingest.model import Alert, AlertStatus
from quell.ingest.observables import observables_of
from quell.ingest.parsers import Parser, build_parser
from quell.ingest.parsers.base import NotAnAlert, ParseError, RecordKind
from quell.ingest.sources import Source, SourceService
from quell.store.bulk import bulk_insert, bulk_update
from quell.store.database import Backend, Database
from quell.store.schema import alert_observables, alerts, dead_letters, incidents

log = structlog.get_logger(__name__)

# Serializes ingest transactions across processes on PostgreSQL (SQLite has one writer).
_INGEST_LOCK = zlib.crc32(b"quell.ingest")
_LOOKUP_CHUNK = 500


@dataclass
class _DeadLetter:
    index: int  # position of the record in its batch
    raw: bytes
    reason: str
    field: str | None = None


@dataclass
class _Prepared:
    """A batch after parsing, before the transaction."""

    alerts: list[Alert] = field(default_factory=list)
    not_alerts: int = 0
    dead: list[_DeadLetter] = field(default_factory=list)


@dataclass
class _Existing:
    """A stored alert a new one may be a repeat of."""

    id: str
    first_seen: datetime
    last_seen: datetime
    count: int
    incident_id: str | None
    added: int = 0


@dataclass(frozen=True)
class ReplayResult:
    """What replaying dead letters did."""

    replayed: int
    still_failing: int
    outcome: IntakeResult


class IngestPipeline:
    """Turns one source's records into stored alerts and incidents."""

    def __init__(self, db: Database, clock: Clock, sources: SourceService) -> None:
        self.db = db
        self.clock = clock
        self.sources = sources
        self.suppressions = SuppressionService(db, clock)
        self.correlator = Correlator(db, clock)
        self._insert_alerts = bulk_insert(db, alerts, ALERT_COLUMNS)
        self._insert_observables = bulk_insert(
            db, alert_observables, ("alert_id", "type", "value", "role", "private")
        )
        self._insert_dead = bulk_insert(db, dead_letters, DEAD_LETTER_COLUMNS)
        self._update_repeats = bulk_update(
            db, alerts, ("count", "first_seen", "last_seen"), key="id"
        )
        self._parsers: dict[str, tuple[tuple[Any, ...], Parser, Fingerprinter]] = {}

    # -- entry points ------------------------------------------------------------------------

    def ingest(
        self, source_name: str, records: Sequence[bytes], *, received_at: datetime | None = None
    ) -> IntakeResult:
        """Ingest ``records`` for the source called ``source_name``; returns once durable."""
        return self.ingest_source(self.sources.get(source_name), records, received_at=received_at)

    def ingest_source(
        self, source: Source, records: Sequence[bytes], *, received_at: datetime | None = None
    ) -> IntakeResult:
        """Ingest ``records`` for ``source``; returns once durable."""
        if not records:
            return IntakeResult()
        received_at = received_at or self.clock.now()
        prepared = self._prepare(source, records, received_at)
        with self.db.write() as conn:
            result = self._commit(conn, source, prepared, received_at)
            SourceService.count(conn, source.name, result, received_at)
        return result

    def replay(
        self, letters: Sequence[Any], *, received_at: datetime | None = None
    ) -> ReplayResult:
        """Run dead letters through the pipeline again with their source's current setup."""
        now = received_at or self.clock.now()
        outcome = IntakeResult()
        replayed = failing = 0
        by_source: dict[str, list[Any]] = {}
        for letter in letters:
            by_source.setdefault(letter.source, []).append(letter)
        for source_name, group in by_source.items():
            source = self.sources.get(source_name)
            prepared = self._prepare(
                source,
                [letter.raw for letter in group],
                now,
                received=[letter.received_at for letter in group],
            )
            failed = {dead.index: dead.reason for dead in prepared.dead}
            prepared.dead = []  # they stay where they are, with the new reason
            with self.db.write() as conn:
                result = self._commit(conn, source, prepared, now)
                done = [letter.id for i, letter in enumerate(group) if i not in failed]
                again = [
                    {"lid": letter.id, "reason": failed[i]}
                    for i, letter in enumerate(group)
                    if i in failed
                ]
                if done:
                    conn.execute(
                        update(dead_letters)
                        .where(dead_letters.c.id == bindparam("lid"))
                        .values(status=DeadLetterStatus.REPLAYED.value, replayed_at=now),
                        [{"lid": letter_id} for letter_id in done],
                    )
                if again:
                    conn.execute(
                        update(dead_letters)
                        .where(dead_letters.c.id == bindparam("lid"))
                        .values(reason=bindparam("reason"), attempts=dead_letters.c.attempts + 1),
                        again,
                    )
            replayed += len(done)
            failing += len(again)
            outcome = outcome + result + IntakeResult(dead_lettered=len(again))
        return ReplayResult(replayed=replayed, still_failing=failing, outcome=outcome)

    # -- preparing (no database) ---------------------------------------------------------------

    def _parser(self, source: Source) -> tuple[Parser, Fingerprinter]:
        # Keyed on the configuration itself: a changed mapping takes effect at once.
        key = (source.format, source.parser_options, source.settings.fingerprint)
        cached = self._parsers.get(source.name)
        if cached is None or cached[0] != key:
            parser = build_parser(source.format, source.parser_options)
            fingerprinter = Fingerprinter(source.settings.fingerprint)
            cached = (key, parser, fingerprinter)
            self._parsers[source.name] = cached
        return cached[1], cached[2]

    def _prepare(
        self,
        source: Source,
        records: Sequence[bytes],
        received_at: datetime,
        *,
        received: Sequence[datetime] | None = None,
    ) -> _Prepared:
        """Parse and finish each record; ``received`` gives per-record receipt times (replay)."""
        parser, fingerprint = self._parser(source)
        limit = source.settings.max_record_bytes
        kind = parser.record_kind
        prepared = _Prepared()
        for index, raw in enumerate(records):
            if len(raw) > limit:
                prepared.dead.append(
                    _DeadLetter(
                        index,
                        raw,
                        f"record of {len(raw)} bytes exceeds the source's limit of {limit} "
                        "bytes (settings.max_record_bytes)",
                        "settings.max_record_bytes",
                    )
                )
                continue
            try:
                record = _decode(raw, kind)
                result = parser.parse(record)
            except ParseError as exc:
                prepared.dead.append(_DeadLetter(index, raw, exc.reason, exc.field))
                continue
            except Exception as exc:
                log.error("parser_failed", source=source.name, format=source.format, exc_info=exc)
                reason = f"{source.format} parser failed: {type(exc).__name__}: {exc}"
                prepared.dead.append(_DeadLetter(index, raw, reason[:2000]))
                continue
            if isinstance(result, NotAnAlert):
                prepared.not_alerts += 1
                continue
            when = received[index] if received is not None else received_at
            self._finish(result, source, raw, when, fingerprint)
            prepared.alerts.append(result)
        return prepared

    @staticmethod
    def _finish(
        alert: Alert, source: Source, raw: bytes, received_at: datetime, fingerprint: Fingerprinter
    ) -> None:
        alert.id = new_id("alr")
        alert.source = source.name
        alert.format = source.format
        alert.raw = raw
        alert.received_at = received_at
        if alert.extra.get("time_source") == "receipt":
            # The record had no time of its own and its source dates such records at receipt:
            # the pipeline's receipt time is the one that holds, also when replayed later.
            alert.time = received_at
        alert.first_seen = alert.first_seen or alert.time
        alert.last_seen = alert.last_seen or alert.time
        alert.title = alert.title[:512]
        alert.observables = observables_of(alert)
        alert.fingerprint = fingerprint(alert)

    # -- committing (one transaction) -----------------------------------------------------------

    def _commit(
        self, conn: Connection, source: Source, prepared: _Prepared, now: datetime
    ) -> IntakeResult:
        if self.db.backend is Backend.POSTGRESQL:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INGEST_LOCK})
        hits: Counter[str] = Counter()
        suppressed = 0
        if prepared.not_alerts:
            builtin = SuppressionService.builtin_ids(conn, {source.format}, now)
            hits[builtin[source.format]] += prepared.not_alerts
            suppressed += prepared.not_alerts

        kept: list[Alert] = []
        closed: list[Alert] = []
        rules = self.suppressions.active(conn, now) if prepared.alerts else []
        if not rules:
            kept = prepared.alerts
        for alert in prepared.alerts if rules else ():
            rule = next((r for r in rules if r.matches(alert)), None)
            if rule is None:
                kept.append(alert)
                continue
            hits[rule.id] += 1
            suppressed += 1
            if rule.action is SuppressionAction.CLOSE:
                alert.status = AlertStatus.SUPPRESSED
                alert.extra["suppressed_by"] = rule.name
                closed.append(alert)

        fresh, repeats = self._deduplicate(conn, source, kept)
        self.correlator.assign(
            conn,
            [
                AlertKeys(a, alert_keys(a, source.settings.correlate_on), source.correlation_window)
                for a in fresh
            ],
        )
        stored = fresh + closed
        if stored:
            self._insert_alerts.run(conn, [_alert_row(a) for a in stored])
            self._insert_observables.run(
                conn,
                [
                    (a.id, o.type.value, o.value[:512], o.role, o.private)
                    for a in stored
                    for o in a.observables
                ],
            )
        self._record_repeats(conn, repeats, now)
        if prepared.dead:
            pending = DeadLetterStatus.PENDING.value
            self._insert_dead.run(
                conn,
                [
                    (new_id("dlq"), source.name, source.format, now, dead.reason, dead.field,
                     dead.raw, pending, 1, None)
                    for dead in prepared.dead
                ],
            )  # fmt: skip
        SuppressionService.count_hits(conn, hits, now)
        deduplicated = len(kept) - len(fresh)
        return IntakeResult(
            received=len(prepared.alerts) + prepared.not_alerts + len(prepared.dead),
            stored=len(fresh),
            deduplicated=deduplicated,
            suppressed=suppressed,
            dead_lettered=len(prepared.dead),
        )

    def _deduplicate(
        self, conn: Connection, source: Source, batch: list[Alert]
    ) -> tuple[list[Alert], list[_Existing]]:
        """Split ``batch`` into new alerts and repeats (applied to the alert they repeat)."""
        if not batch:
            return [], []
        window = source.dedup_window
        existing = self._load_existing(conn, batch, window)
        fresh: list[Alert] = []
        latest: dict[str, Alert | _Existing] = {}
        for alert in sorted(batch, key=lambda a: a.time):
            time = alert.time
            known = latest.get(alert.fingerprint) or existing.get(alert.fingerprint)
            if known is not None:
                first = known.first_seen or time
                last = known.last_seen or time
                if first - window <= time <= last + window:
                    known.count += 1
                    known.first_seen = min(first, time)
                    known.last_seen = max(last, time)
                    if isinstance(known, _Existing):
                        known.added += 1
                    latest[alert.fingerprint] = known
                    continue
            fresh.append(alert)
            latest[alert.fingerprint] = alert
        repeats = [item for item in existing.values() if item.added]
        return fresh, repeats

    @staticmethod
    def _load_existing(
        conn: Connection, batch: list[Alert], window: timedelta
    ) -> dict[str, _Existing]:
        since = min(a.time for a in batch) - window
        wanted = sorted({a.fingerprint for a in batch})
        found: dict[str, _Existing] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            rows = conn.execute(
                select(
                    alerts.c.id,
                    alerts.c.fingerprint,
                    alerts.c.first_seen,
                    alerts.c.last_seen,
                    alerts.c.count.label("repeats"),  # not "count": Row.count is tuple.count
                    alerts.c.incident_id,
                ).where(
                    alerts.c.fingerprint.in_(wanted[start : start + _LOOKUP_CHUNK]),
                    alerts.c.last_seen >= since,
                    alerts.c.status == AlertStatus.NEW.value,
                )
            )
            for row in rows:
                current = found.get(row.fingerprint)
                if current is None or row.last_seen > current.last_seen:
                    found[row.fingerprint] = _Existing(
                        row.id, row.first_seen, row.last_seen, row.repeats, row.incident_id
                    )
        return found

    def _record_repeats(self, conn: Connection, repeats: list[_Existing], now: datetime) -> None:
        if not repeats:
            return
        self._update_repeats.run(
            conn, [(r.count, r.first_seen, r.last_seen, r.id) for r in repeats]
        )
        touched = [r for r in repeats if r.incident_id]
        if touched:
            conn.execute(
                update(incidents)
                .where(incidents.c.id == bindparam("iid"), incidents.c.last_seen < bindparam("t"))
                .values(last_seen=bindparam("t"), updated_at=now),
                [{"iid": r.incident_id, "t": r.last_seen} for r in touched],
            )


def _decode(raw: bytes, kind: RecordKind) -> Any:
    if kind is RecordKind.JSON:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None
    if kind is RecordKind.TEXT:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
    return raw


ALERT_COLUMNS = (
    "id", "source", "format", "fingerprint", "time", "first_seen", "last_seen", "count",
    "severity_id", "title", "rule_uid", "rule_name", "status", "incident_id", "received_at",
    "data", "raw",
)  # fmt: skip
DEAD_LETTER_COLUMNS = (
    "id", "source", "format", "received_at", "reason", "field", "raw", "status", "attempts",
    "replayed_at",
)  # fmt: skip


def _alert_row(alert: Alert) -> tuple[Any, ...]:
    return (
        alert.id,
        alert.source,
        alert.format,
        alert.fingerprint,
        alert.time,
        alert.first_seen,
        alert.last_seen,
        alert.count,
        int(alert.severity),
        alert.title,
        alert.rule_uid[:256] if alert.rule_uid else None,
        alert.rule_name[:512] if alert.rule_name else None,
        alert.status.value,
        alert.incident_id,
        alert.received_at,
        alert_document(alert),
        alert.raw,
    )
