"""The ingest pipeline: records in, alerts and incidents out, nothing lost.

For one batch of one source's records:

1. *staging* (:mod:`quell.ingest.staging`, no database, in this process or a worker): size
   checks, decoding, parsing, observables, fingerprints, suppression matching and the rows.
   Whatever fails becomes a dead letter with the exact reason.
2. *commit* (one write transaction, under the ingest lock on PostgreSQL): deduplicate against
   the alerts already stored and within the batch, group the new alerts into incidents, then
   write alerts, observables, dead letters, rule hits and the source's counters together.

Every record ends up counted exactly once: ``received = stored + deduplicated + suppressed +
dead_lettered``. A batch is acknowledged only after its transaction committed. A long input
(``ingest_stream``) can be staged ahead in a worker process while the previous batch commits,
which puts the second CPU core to work.
"""

from __future__ import annotations

import zlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, bindparam, case, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import BindParameter

from quell.clock import Clock
from quell.codec import nul_free
from quell.correlate.grouping import AlertKeys, Correlator, GroupingResult
from quell.correlate.suppression import SuppressionAction, SuppressionService
from quell.errors import StorageUnavailable
from quell.ids import new_id
from quell.ingest.deadletters import DeadLetterService, DeadLetterStatus
from quell.ingest.intake import IntakeResult
from quell.ingest.model import AlertStatus
from quell.ingest.sources import Source, SourceService
from quell.ingest.staging import (
    ALERT_COLUMNS,
    COUNT,
    FIRST_SEEN,
    INCIDENT,
    LAST_SEEN,
    OBSERVABLE_COLUMNS,
    DeadRecord,
    RuleSpec,
    Staged,
    StagedBatch,
    Stager,
    StagingPool,
    StagingSpec,
)
from quell.intel.enrich import AlertEnricher
from quell.intel.store import IntelStore
from quell.store.bulk import bulk_insert, bulk_update
from quell.store.database import Backend, Database
from quell.store.schema import (
    alert_observables,
    alerts,
    dead_letters,
    incidents,
    outbox,
    playbook_versions,
    suppression_rules,
)

log = structlog.get_logger(__name__)

# Serializes ingest transactions across processes on PostgreSQL (SQLite has one writer).
INGEST_LOCK = zlib.crc32(b"quell.ingest")  # writers of incidents' grouping queue on it
_LOOKUP_CHUNK = 500
_DEAD_LETTER_COLUMNS = (
    "id", "source", "format", "received_at", "reason", "field", "raw", "status", "attempts",
    "replayed_at",
)  # fmt: skip


@dataclass
class _Existing:
    """A stored alert a new one may be a repeat of."""

    id: str
    first_seen: datetime
    last_seen: datetime
    count: int
    incident_id: str | None
    added: int = 0
    # Keys its repeats saw after its stored last_seen. Those up to that time need no write:
    # an alert's keys were recorded at its last_seen when it was stored, and at each repeat.
    keys: dict[tuple[str, str], datetime] = field(default_factory=dict)


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
        self.correlator = Correlator(db, clock)
        self.enricher = AlertEnricher(IntelStore(db, clock))
        self.dead_letters = DeadLetterService(db)
        self._stagers: dict[str, Stager] = {}
        self._insert_alerts = bulk_insert(db, alerts, ALERT_COLUMNS)
        self._insert_observables = bulk_insert(db, alert_observables, OBSERVABLE_COLUMNS)
        self._insert_dead = bulk_insert(db, dead_letters, _DEAD_LETTER_COLUMNS)
        self._insert_events = bulk_insert(
            db, outbox, ("id", "kind", "subject_id", "payload", "created_at", "processed_at")
        )
        self._trigger_kinds: dict[str, frozenset[str]] = {}
        self._update_repeats = bulk_update(
            db, alerts, ("count", "first_seen", "last_seen"), key="id"
        )

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
        staged = self.stager(source).stage(records, received_at, self.rules())
        return self.commit(source, staged, received_at)

    def ingest_stream(
        self,
        source: Source,
        batches: Iterable[list[bytes]],
        *,
        pool: StagingPool | None = None,
        ahead: int = 2,
    ) -> IntakeResult:
        """Ingest batch after batch; with a pool, the next batches stage while one commits."""
        total = IntakeResult()
        if pool is None:
            for records in batches:
                total = total + self.ingest_source(source, records)
            return total
        spec = StagingSpec.of(source, self.db.backend)
        pending: deque[tuple[Future[StagedBatch], datetime]] = deque()
        for records in batches:
            if not records:
                continue
            received_at = self.clock.now()
            pending.append((pool.submit(spec, records, received_at, self.rules()), received_at))
            while len(pending) > ahead:
                future, when = pending.popleft()
                total = total + self.commit(source, future.result(), when)
        while pending:
            future, when = pending.popleft()
            total = total + self.commit(source, future.result(), when)
        return total

    def replay(
        self, letters: Sequence[Any], *, received_at: datetime | None = None
    ) -> ReplayResult:
        """Run dead letters through the pipeline again with their source's current setup.

        Each source's letters are claimed inside the transaction that stores them: a letter
        another replay got to first (or that is no longer pending) is skipped, so two replays
        racing each other never store a record twice. A letter that fails again stays pending
        with the new reason. The source's counters move the replayed records from
        ``dead_lettered`` to where they went (``received`` is unchanged: they were received once).
        """
        now = received_at or self.clock.now()
        outcome = IntakeResult()
        replayed = failing = 0
        by_source: dict[str, list[Any]] = {}
        for letter in letters:
            by_source.setdefault(letter.source, []).append(letter)
        for source_name, group in by_source.items():
            source = self.sources.get(source_name)
            stager = self.stager(source)
            with self.db.write() as conn:
                if self.db.backend is Backend.POSTGRESQL:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INGEST_LOCK})
                claimed = self._claim(conn, [letter.id for letter in group])
                group = [letter for letter in group if letter.id in claimed]
                if not group:
                    continue
                staged = stager.stage(
                    [letter.raw for letter in group],
                    [letter.received_at for letter in group],
                    self.rules(),
                )
                failed = {dead.index: dead.reason for dead in staged.dead}
                staged.dead = []  # they stay where they are, with the new reason
                result = self._commit(conn, source, staged, now)
                done = [letter.id for i, letter in enumerate(group) if i not in failed]
                again = [
                    {"lid": letter.id, "reason": nul_free(failed[i])}
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
                moved = IntakeResult(
                    stored=result.stored,
                    deduplicated=result.deduplicated,
                    suppressed=result.suppressed,
                    dead_lettered=-len(done),
                )
                SourceService.count(conn, source.name, moved, None)
            replayed += len(done)
            failing += len(again)
            outcome = outcome + result + IntakeResult(received=len(again), dead_lettered=len(again))
        return ReplayResult(replayed=replayed, still_failing=failing, outcome=outcome)

    def replay_source(self, source: str, *, page: int = 2_000) -> ReplayResult:
        """Replay every pending dead letter of ``source`` received until now, page by page."""
        until = self.clock.now()
        total = ReplayResult(0, 0, IntakeResult())
        after: tuple[datetime, str] | None = None
        while True:  # bounded: the cursor only moves forward, through letters received by now
            letters = self.dead_letters.list_all(
                source=source, limit=page, after=after, until=until
            )
            if not letters:
                return total
            result = self.replay(letters)
            total = ReplayResult(
                total.replayed + result.replayed,
                total.still_failing + result.still_failing,
                total.outcome + result.outcome,
            )
            after = (letters[-1].received_at, letters[-1].id)

    @staticmethod
    def _claim(conn: Connection, ids: list[str]) -> set[str]:
        """Those of ``ids`` still pending, read under the ingest lock."""
        claimed: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            claimed.update(
                conn.execute(
                    select(dead_letters.c.id).where(
                        dead_letters.c.id.in_(ids[start : start + _LOOKUP_CHUNK]),
                        dead_letters.c.status == DeadLetterStatus.PENDING.value,
                    )
                ).scalars()
            )
        return claimed

    # -- staging ----------------------------------------------------------------------------

    def stager(self, source: Source) -> Stager:
        """The stager for ``source``'s current configuration (rebuilt when it changes)."""
        spec = StagingSpec.of(source, self.db.backend)
        stager = self._stagers.get(source.name)
        if stager is None or stager.spec != spec:
            stager = self._stagers[source.name] = Stager(spec)
        return stager

    def rules(self) -> list[RuleSpec]:
        """The enabled, unexpired user suppression rules."""
        now = self.clock.now()
        with self.db.read() as conn:
            rows = conn.execute(
                select(
                    suppression_rules.c.id,
                    suppression_rules.c.name,
                    suppression_rules.c.match,
                    suppression_rules.c.action,
                    suppression_rules.c.expires_at,
                ).where(
                    suppression_rules.c.enabled.is_(True), suppression_rules.c.builtin.is_(False)
                )
            )
            return [
                RuleSpec(row.id, row.name, dict(row.match), row.action)
                for row in rows
                if row.expires_at is None or row.expires_at > now
            ]

    # -- committing (one transaction) -----------------------------------------------------------

    def commit(self, source: Source, staged: StagedBatch, received_at: datetime) -> IntakeResult:
        """Decide and write a staged batch in one transaction; counts it on the source.

        If the database refuses something in the batch (a value it will not store), the batch
        is split in halves and each half committed alone, down to the one alert at fault,
        which is dead-lettered with the reason: one bad record never costs its neighbours. A
        database that is unavailable fails the whole batch, to be retried.
        """
        # The intel index catches up first, outside the write lock (a first load of a large
        # store takes seconds; nobody should wait for it).
        try:
            self.enricher.refresh()
        except (SQLAlchemyError, StorageUnavailable) as exc:  # enrich from the index as it is
            log.warning("intel_index_refresh_failed", error=type(exc).__name__)
        try:
            with self.db.write() as conn:
                result = self._commit(conn, source, staged, received_at)
                SourceService.count(conn, source.name, result, received_at)
            return result
        except StorageUnavailable:
            raise
        except (SQLAlchemyError, ValueError, TypeError, OverflowError) as exc:
            return self._isolate(source, staged, received_at, exc)

    def _isolate(
        self, source: Source, batch: StagedBatch, received_at: datetime, error: Exception
    ) -> IntakeResult:
        items = batch.staged
        if len(items) <= 1 and not batch.dead and not batch.not_alerts:
            if not items:
                raise error
            (item,) = items
            log.warning("alert_refused_by_database", source=source.name, error=type(error).__name__)
            reason = f"could not be stored: {type(error).__name__}: {_first_line(error)}"
            dead = StagedBatch(dead=[DeadRecord(0, item.row[-1], reason[:2000])])
            return self.commit(source, dead, received_at)
        if len(items) <= 1:
            # Counted records (non-alerts, dead letters) go alone first: they cannot fail.
            rest = StagedBatch(not_alerts=batch.not_alerts, dead=batch.dead)
            return self.commit(source, rest, received_at) + self.commit(
                source, StagedBatch(staged=items), received_at
            )
        middle = len(items) // 2
        first = StagedBatch(staged=items[:middle], not_alerts=batch.not_alerts, dead=batch.dead)
        second = StagedBatch(staged=items[middle:])
        for item in items:  # the failed attempt may have set these: start from scratch
            item.count, item.first_seen, item.last_seen, item.incident_id = (
                1,
                item.time,
                item.time,
                None,
            )
        return self.commit(source, first, received_at) + self.commit(source, second, received_at)

    def _commit(
        self, conn: Connection, source: Source, batch: StagedBatch, now: datetime
    ) -> IntakeResult:
        if self.db.backend is Backend.POSTGRESQL:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INGEST_LOCK})
        hits: Counter[str] = Counter()
        if batch.not_alerts:
            builtin = SuppressionService.builtin_ids(conn, {source.format}, now)
            hits[builtin[source.format]] += batch.not_alerts
        kept: list[Staged] = []
        closed: list[Staged] = []
        for item in batch.staged:
            if item.rule is None:
                kept.append(item)
                continue
            hits[item.rule] += 1
            if item.action == SuppressionAction.CLOSE:
                closed.append(item)
        suppressed = batch.not_alerts + len(batch.staged) - len(kept)

        fresh, repeats = self._deduplicate(conn, source, kept)
        window = source.correlation_window
        grouping = self.correlator.assign(
            conn, [AlertKeys(item, item.keys, window, item.last_seen) for item in fresh]
        )
        self._insert(conn, fresh + closed)
        self._enrich(conn, fresh, now)
        self._record_repeats(conn, repeats, grouping.merged_into, now)
        self._announce(conn, fresh, grouping, now)
        if batch.dead:
            pending = DeadLetterStatus.PENDING.value
            self._insert_dead.run(
                conn,
                [
                    (new_id("dlq"), source.name, source.format, now, nul_free(dead.reason),
                     nul_free(dead.field) if dead.field else None, dead.raw, pending, 1, None)
                    for dead in batch.dead
                ],
            )  # fmt: skip
        SuppressionService.count_hits(conn, hits, now)
        return IntakeResult(
            received=len(batch.staged) + batch.not_alerts + len(batch.dead),
            stored=len(fresh),
            deduplicated=len(kept) - len(fresh),
            suppressed=suppressed,
            dead_lettered=len(batch.dead),
        )

    def _enrich(self, conn: Connection, fresh: list[Staged], now: datetime) -> None:
        """Verdicts and sightings for the new alerts, in a savepoint: enrichment that fails
        costs the alerts their verdicts, never the alerts."""
        observed = [(row[2], row[0], row[1]) for item in fresh for row in item.observables]
        observed += [(item.id, kind, value) for item in fresh for kind, value in item.long_values]
        if not observed:
            return
        try:
            with conn.begin_nested():
                self.enricher.enrich(conn, observed, now)
        except (SQLAlchemyError, ValueError, TypeError) as exc:
            log.error("alert_enrichment_failed", error=type(exc).__name__, alerts=len(fresh))

    def _announce(
        self, conn: Connection, fresh: list[Staged], grouping: GroupingResult, now: datetime
    ) -> None:
        """Outbox events for what active playbooks listen to, in this same transaction."""
        if not (fresh or grouping.created_ids or grouping.updated_ids):
            return
        listening = self.listening(conn)
        if not listening:
            return
        events: list[tuple[Any, ...]] = []
        if "alert.created" in listening:
            events.extend(
                (new_id("evt"), "alert.created", item.id, None, now, None) for item in fresh
            )
        if "incident.created" in listening:
            events.extend(
                (new_id("evt"), "incident.created", incident_id, None, now, None)
                for incident_id in grouping.created_ids
            )
        if "incident.updated" in listening:
            events.extend(
                (new_id("evt"), "incident.updated", incident_id, None, now, None)
                for incident_id in grouping.updated_ids
            )
        self._insert_events.run(conn, events)

    def listening(self, conn: Connection) -> set[str]:
        """The events some active playbook has a trigger for (read in the caller's
        transaction, so a playbook activated before this commit is never missed)."""
        active = list(
            conn.execute(select(playbook_versions.c.id).where(playbook_versions.c.active)).scalars()
        )
        unknown = [version_id for version_id in active if version_id not in self._trigger_kinds]
        if unknown:  # an IR never changes: each is read once per process
            for version_id, ir in conn.execute(
                select(playbook_versions.c.id, playbook_versions.c.ir).where(
                    playbook_versions.c.id.in_(unknown)
                )
            ):
                self._trigger_kinds[version_id] = frozenset(
                    trigger["on"] for trigger in orjson.loads(ir).get("triggers", [])
                )
        kinds: set[str] = set()
        for version_id in active:
            found = self._trigger_kinds.get(version_id, frozenset())
            kinds |= found
        return kinds

    def _insert(self, conn: Connection, items: list[Staged]) -> None:
        if not items:
            return
        to_time = self._insert_alerts.convert
        rows = []
        observables: list[tuple[Any, ...]] = []
        for item in items:
            row = item.row
            row[FIRST_SEEN] = to_time("first_seen", item.first_seen)
            row[LAST_SEEN] = to_time("last_seen", item.last_seen)
            row[COUNT] = item.count
            row[INCIDENT] = item.incident_id
            rows.append(tuple(row))
            observables.extend(item.observables)
        self._insert_alerts.run_converted(conn, rows)
        self._insert_observables.run_converted(conn, observables)

    def _deduplicate(
        self, conn: Connection, source: Source, batch: list[Staged]
    ) -> tuple[list[Staged], list[_Existing]]:
        """Split ``batch`` into new alerts and repeats (applied to the alert they repeat)."""
        if not batch:
            return [], []
        window = source.dedup_window
        existing = self._load_existing(conn, batch, window)
        fresh: list[Staged] = []
        # Per fingerprint, every alert a record may repeat: the stored ones near the batch's
        # times and the batch's own new ones. A record repeats the latest of them whose time
        # span, widened by the window, holds its time: a record sent again repeats its own
        # alert, not only the fingerprint's newest one.
        candidates: dict[str, list[Staged | _Existing]] = {
            fingerprint: list(rows) for fingerprint, rows in existing.items()
        }
        for item in sorted(batch, key=lambda s: s.time):
            time = item.time
            known: Staged | _Existing | None = None
            for candidate in candidates.get(item.fingerprint, ()):
                if candidate.first_seen - window <= time <= candidate.last_seen + window and (
                    known is None or candidate.last_seen > known.last_seen
                ):
                    known = candidate
            if known is not None:
                if isinstance(known, _Existing):
                    known.added += 1
                    if time > known.last_seen:  # keeps its incident findable by these keys
                        for key in item.keys:
                            known.keys[key] = time
                known.count += 1
                known.first_seen = min(known.first_seen, time)
                known.last_seen = max(known.last_seen, time)
                continue
            fresh.append(item)
            candidates.setdefault(item.fingerprint, []).append(item)
        return fresh, [alert for rows in existing.values() for alert in rows if alert.added]

    @staticmethod
    def _load_existing(
        conn: Connection, batch: list[Staged], window: timedelta
    ) -> dict[str, list[_Existing]]:
        since = min(item.time for item in batch) - window
        until = max(item.time for item in batch) + window
        wanted = sorted({item.fingerprint for item in batch})
        found: dict[str, list[_Existing]] = {}
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
                    alerts.c.first_seen <= until,
                    alerts.c.status == AlertStatus.NEW.value,
                )
            )
            for row in rows:
                found.setdefault(row.fingerprint, []).append(
                    _Existing(row.id, row.first_seen, row.last_seen, row.repeats, row.incident_id)
                )
        return found

    def _record_repeats(
        self,
        conn: Connection,
        repeats: list[_Existing],
        merged_into: dict[str, str],
        now: datetime,
    ) -> None:
        if not repeats:
            return
        self._update_repeats.run(
            conn, [(r.count, r.first_seen, r.last_seen, r.id) for r in repeats]
        )
        touched = [r for r in repeats if r.incident_id]
        for repeat in touched:  # this batch may have merged the incident into another
            repeat.incident_id = merged_into.get(repeat.incident_id or "", repeat.incident_id)
        latest: dict[tuple[str, str, str], datetime] = {}  # one write per incident key
        for repeat in touched:
            for (kind, value), seen in repeat.keys.items():
                at = (repeat.incident_id or "", kind, value)
                if at not in latest or seen > latest[at]:
                    latest[at] = seen
        gained = self.correlator.refresh_keys(conn, ((*key, seen) for key, seen in latest.items()))
        if not touched:
            return
        # updated_at is when this write happens, never earlier than it was: ``now`` is the
        # batch's receipt, which may precede a change an analyst committed while the batch
        # waited for the lock, and the SLA check and the search index read changes by it.
        written = max(now, self.clock.now())
        stamp: BindParameter[datetime] = bindparam("w", type_=incidents.c.updated_at.type)
        restamp = case((incidents.c.updated_at < stamp, stamp), else_=incidents.c.updated_at)
        conn.execute(
            update(incidents)
            .where(incidents.c.id == bindparam("iid"), incidents.c.last_seen < bindparam("t"))
            .values(last_seen=bindparam("t"), updated_at=restamp),
            [{"iid": r.incident_id, "t": r.last_seen, "w": written} for r in touched],
        )
        if gained:  # a key it did not have, whether or not the repeat is its newest sighting
            conn.execute(
                update(incidents)
                .where(incidents.c.id == bindparam("iid"))
                .values(updated_at=restamp),
                [{"iid": incident_id, "w": written} for incident_id in sorted(gained)],
            )


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
