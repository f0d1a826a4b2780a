"""Staging: records to rows, with no database, in this process or a worker process.

Everything about a batch that does not depend on what is already stored happens here: each
record is size-checked, decoded, parsed, finished (id, observables, fingerprint), matched
against the suppression rules, and turned into the rows its alert will be stored as. What
comes out is a :class:`StagedBatch` of plain values: it pickles cheaply, so that a worker
process can stage the next batch while the main process commits this one (pickling the
``Alert`` objects themselves would cost more than parsing them). The transaction then only
decides what depends on the database: repeats, incidents, counters.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog

from quell.aio import tune_gc
from quell.codec import column_json, nul_free
from quell.correlate.dedup import Fingerprinter
from quell.correlate.grouping import alert_keys
from quell.correlate.suppression import SuppressionAction, compile_match
from quell.ids import new_id
from quell.ingest.alerts import alert_document
from quell.ingest.model import Alert, AlertStatus, ObservableType
from quell.ingest.observables import observables_of
from quell.ingest.parsers import Parser, build_parser
from quell.ingest.parsers.base import NotAnAlert, ParseError, RecordKind
from quell.ingest.sources import Source
from quell.store.bulk import sqlite_time
from quell.store.database import Backend

log = structlog.get_logger(__name__)

# Positions in an alerts row (see ALERT_COLUMNS) that the transaction fills in.
ALERT_COLUMNS = (
    "id", "source", "format", "fingerprint", "time", "first_seen", "last_seen", "count",
    "severity_id", "title", "rule_uid", "rule_name", "status", "incident_id", "received_at",
    "data", "raw",
)  # fmt: skip
FIRST_SEEN, LAST_SEEN, COUNT, INCIDENT = 5, 6, 7, 13
OBSERVABLE_COLUMNS = ("type", "value", "alert_id", "role", "private")


@dataclass(frozen=True)
class RuleSpec:
    """A suppression rule as stored: what a stager needs to compile and apply it."""

    id: str
    name: str
    match: dict[str, Any]
    action: str


@dataclass(frozen=True)
class StagingSpec:
    """What staging needs to know about a source (a small, picklable part of it)."""

    source: str
    format: str
    parser_options: dict[str, Any]
    fingerprint: tuple[str, ...]
    correlate_on: tuple[str, ...]
    max_record_bytes: int
    backend: Backend

    @classmethod
    def of(cls, source: Source, backend: Backend) -> StagingSpec:
        """The staging view of ``source`` on ``backend``."""
        return cls(
            source=source.name,
            format=source.format,
            parser_options=source.parser_options,
            fingerprint=tuple(source.settings.fingerprint),
            correlate_on=tuple(source.settings.correlate_on),
            max_record_bytes=source.settings.max_record_bytes,
            backend=backend,
        )


class Staged:
    """One alert, staged: what the transaction needs to decide about it, and its rows."""

    __slots__ = (
        "action",
        "count",
        "fingerprint",
        "first_seen",
        "id",
        "incident_id",
        "keys",
        "last_seen",
        "long_values",
        "observables",
        "row",
        "rule",
        "severity",
        "time",
        "title",
    )

    def __init__(
        self,
        id: str,
        fingerprint: str,
        time: datetime,
        severity: int,
        title: str,
        keys: list[tuple[str, str]],
        row: list[Any],
        observables: list[tuple[Any, ...]],
        rule: str | None = None,
        action: str | None = None,
        long_values: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.id = id
        self.fingerprint = fingerprint
        self.time = time
        self.severity = severity
        self.title = title
        self.keys = keys
        self.row = row
        self.observables = observables
        self.rule = rule
        self.action = action
        # Observable values longer than the stored 512 characters, whole, for enrichment (a
        # phishing URL with its tracking parameters must match its indicator).
        self.long_values = long_values
        self.count = 1
        self.first_seen = time
        self.last_seen = time
        self.incident_id: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # A plain tuple of arguments: much cheaper to pickle than the default for slots.
        return (
            Staged,
            (
                self.id,
                self.fingerprint,
                self.time,
                self.severity,
                self.title,
                self.keys,
                self.row,
                self.observables,
                self.rule,
                self.action,
                self.long_values,
            ),
        )


@dataclass
class DeadRecord:
    """A record that could not become an alert, and why."""

    index: int  # its position in the batch
    raw: bytes
    reason: str
    field: str | None = None


@dataclass
class StagedBatch:
    """A batch after staging: alerts to decide about, non-alerts counted, dead records."""

    staged: list[Staged] = field(default_factory=list)
    not_alerts: int = 0
    dead: list[DeadRecord] = field(default_factory=list)


class Stager:
    """Stages batches for one source configuration (parser and rules built once)."""

    def __init__(self, spec: StagingSpec) -> None:
        self.spec = spec
        self.parser: Parser = build_parser(spec.format, spec.parser_options)
        self.fingerprint = Fingerprinter(spec.fingerprint)
        self._time = sqlite_time if spec.backend is Backend.SQLITE else _same_time
        # The rules as given and compiled, as one value: a stager shared by threads (the HTTP
        # intake stages in a thread pool when it has no worker processes) never sees one
        # without the other.
        self._rules: tuple[tuple[RuleSpec, ...], tuple[tuple[RuleSpec, Any], ...]] = ((), ())
        self._received: tuple[datetime | None, Any] = (None, None)

    def _compiled_rules(self, rules: Sequence[RuleSpec]) -> tuple[tuple[RuleSpec, Any], ...]:
        given, compiled = self._rules
        if tuple(rules) != given:
            given = tuple(rules)
            compiled = tuple((rule, compile_match(rule.match)) for rule in given)
            self._rules = (given, compiled)
        return compiled

    def stage(
        self,
        records: Sequence[bytes],
        received_at: datetime | Sequence[datetime],
        rules: Sequence[RuleSpec] = (),
    ) -> StagedBatch:
        """Stage ``records`` (one receipt time, or one per record as on replay)."""
        spec = self.spec
        parser = self.parser
        kind = parser.record_kind
        limit = spec.max_record_bytes
        compiled = self._compiled_rules(rules)
        batch = StagedBatch()
        for index, raw in enumerate(records):
            when = received_at if isinstance(received_at, datetime) else received_at[index]
            if len(raw) > limit:
                batch.dead.append(
                    DeadRecord(
                        index,
                        raw,
                        f"record of {len(raw)} bytes exceeds the source's limit of {limit} "
                        "bytes (settings.max_record_bytes)",
                        "settings.max_record_bytes",
                    )
                )
                continue
            try:
                result = parser.parse(decode(raw, kind))
            except ParseError as exc:
                batch.dead.append(DeadRecord(index, raw, exc.reason, exc.field))
                continue
            except Exception as exc:  # a parser bug must cost one record, not the batch
                log.error("parser_failed", source=spec.source, format=spec.format, exc_info=exc)
                reason = f"{spec.format} parser failed: {type(exc).__name__}: {exc}"
                batch.dead.append(DeadRecord(index, raw, reason[:2000]))
                continue
            if isinstance(result, NotAnAlert):
                batch.not_alerts += 1
                continue
            implausible = _implausible_time(result.time, when)
            if implausible is not None:
                batch.dead.append(DeadRecord(index, raw, implausible, "time"))
                continue
            try:
                batch.staged.append(self._stage_alert(result, raw, when, compiled))
            except Exception as exc:  # whatever goes wrong for one alert costs that alert only
                log.error("staging_failed", source=spec.source, format=spec.format, exc_info=exc)
                failure = f"could not be staged: {type(exc).__name__}: {exc}"
                batch.dead.append(DeadRecord(index, raw, failure[:2000]))
        return batch

    def _stage_alert(
        self,
        alert: Alert,
        raw: bytes,
        received_at: datetime,
        rules: tuple[tuple[RuleSpec, Any], ...],
    ) -> Staged:
        spec = self.spec
        alert.id = new_id("alr")
        alert.source = spec.source
        alert.format = spec.format
        alert.received_at = received_at
        if alert.extra.get("time_source") == "receipt":
            # The record had no time of its own and its source dates such records at receipt:
            # the pipeline's receipt time holds, also when replayed later.
            alert.time = received_at
        alert.title = nul_free(alert.title)[:512]
        alert.observables = observables_of(alert)
        alert.fingerprint = self.fingerprint(alert)
        rule_id = action = None
        for rule, matches in rules:
            if matches(alert):
                rule_id, action = rule.id, rule.action
                if action == SuppressionAction.CLOSE:
                    alert.status = AlertStatus.SUPPRESSED
                    alert.extra["suppressed_by"] = rule.name
                break
        to_time = self._time
        received = self._received  # a batch's records share one receipt time: converted once
        if received[0] is not received_at:
            received = self._received = (received_at, to_time(received_at))
        row: list[Any] = [
            alert.id,
            spec.source,
            spec.format,
            alert.fingerprint,
            to_time(alert.time),
            None,  # first_seen: decided by the transaction
            None,  # last_seen
            1,  # count
            int(alert.severity),
            alert.title,
            nul_free(alert.rule_uid[:256]) if alert.rule_uid else None,
            nul_free(alert.rule_name[:512]) if alert.rule_name else None,
            alert.status.value,
            None,  # incident_id
            received[1],
            _document(alert),
            raw,
        ]
        # Stored values are cut to 512 characters: two long values can become one, and the
        # (type, value, alert) key allows it once.
        observables: list[tuple[Any, ...]] = []
        seen: set[tuple[str, str]] = set()
        long_values: list[tuple[str, str]] = []
        alert_id = alert.id
        for o in alert.observables:
            kind = _TYPE_TEXT[o.type]
            whole = o.value
            value = nul_free(whole[:512])
            if len(whole) > 512:
                long_values.append((kind, whole))
            if (kind, value) not in seen:
                seen.add((kind, value))
                observables.append((kind, value, alert_id, o.role, o.private))
        return Staged(
            alert.id,
            alert.fingerprint,
            alert.time,
            int(alert.severity),
            alert.title,
            [(kind, nul_free(value)) for kind, value in alert_keys(alert, spec.correlate_on)],
            row,
            observables,
            rule_id,
            action,
            tuple(long_values),
        )


# An observable type's text by member (``.value`` on an enum member is a slow property).
_TYPE_TEXT: dict[ObservableType, str] = {kind: kind.value for kind in ObservableType}


def _same_time(value: datetime | None) -> datetime | None:
    return value


EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=366)


def _implausible_time(time: datetime, received_at: datetime) -> str | None:
    """Why ``time`` cannot be an event time, or None. Windows subtract and add hours to it."""
    if time < EARLIEST:
        return f"event time {time.isoformat()} is before 1970"
    if time > received_at + FUTURE_SLACK:
        return f"event time {time.isoformat()} is more than a year after it was received"
    return None


def _document(alert: Alert) -> str:
    """The ``data`` column's JSON, NUL-free (walked only in the rare case that it has one)."""
    return column_json(alert_document(alert))


def decode(raw: bytes, kind: RecordKind) -> Any:
    """A record's bytes as its parser reads them; ParseError for undecodable bytes."""
    if kind is RecordKind.JSON:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            try:  # orjson calls any bad UTF-8 "surrogates" at the record's first character
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise ParseError(f"invalid UTF-8 at byte {bad.start}: {bad.reason}") from None
            raise ParseError(f"invalid JSON: {exc}") from None
    if kind is RecordKind.TEXT:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
    return raw


# -- staging in worker processes ---------------------------------------------------------------

_WORKER_STAGERS: dict[bytes, Stager] = {}


_WORKER_STAGER_LIMIT = 16  # sources whose parser a worker keeps built


def _stage_in_worker(
    spec: StagingSpec, records: list[bytes], received_at: datetime, rules: tuple[RuleSpec, ...]
) -> StagedBatch:
    # The spec holds a dict (parser options): key the cache on its canonical JSON instead.
    key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    stager = _WORKER_STAGERS.pop(key, None)
    if stager is None:
        stager = Stager(spec)
        while len(_WORKER_STAGERS) >= _WORKER_STAGER_LIMIT:  # least recently used goes first
            del _WORKER_STAGERS[next(iter(_WORKER_STAGERS))]
    _WORKER_STAGERS[key] = stager  # (re)inserted last: the most recently used
    return stager.stage(records, received_at, rules)


_Job = tuple[StagingSpec, list[bytes], datetime, tuple[RuleSpec, ...]]


class StagingPool:
    """Worker processes that stage batches while this process commits others.

    Processes are spawned (not forked): a server process has threads, which a fork would
    copy in an unknown state. A worker that dies (killed for memory, a crash in a native
    library) breaks a ``ProcessPoolExecutor`` for good; this pool replaces it and stages the
    batches that were in flight again, once. A batch whose second attempt also loses its
    worker is not staged in this process (it might bring the server down with it): its
    records become dead letters saying so, to replay once the cause is found.
    """

    RETRIES = 1

    def __init__(self, processes: int = 1) -> None:
        self._processes = max(1, processes)
        self._lock = threading.Lock()
        self._closed = False
        self._pool = self._new()
        self.replaced = 0  # how many times a broken pool was replaced

    def _new(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        # A worker turns each batch into tens of thousands of objects that live until they
        # are pickled back, and CPython's default thresholds would have young collections walk
        # them again and again, finding nothing; its start-up imports are frozen out of the way.
        return ProcessPoolExecutor(
            max_workers=self._processes, mp_context=context, initializer=tune_gc
        )

    def submit(
        self,
        spec: StagingSpec,
        records: list[bytes],
        received_at: datetime,
        rules: Sequence[RuleSpec],
    ) -> Future[StagedBatch]:
        """Stage ``records`` in a worker; the future gives the StagedBatch."""
        outcome: Future[StagedBatch] = Future()
        self._attempt(outcome, (spec, records, received_at, tuple(rules)), self.RETRIES)
        return outcome

    def _attempt(self, outcome: Future[StagedBatch], job: _Job, retries: int) -> None:
        executor = self._pool
        try:
            try:
                inner = executor.submit(_stage_in_worker, *job)
            except BrokenProcessPool:  # a worker died while idle: replace the pool first
                executor = self._replace(executor)
                inner = executor.submit(_stage_in_worker, *job)
        except (RuntimeError, OSError) as exc:  # closed, or a process could not start
            outcome.set_exception(exc)
            return
        inner.add_done_callback(lambda done: self._settle(outcome, done, executor, job, retries))

    def _settle(
        self,
        outcome: Future[StagedBatch],
        done: Future[StagedBatch],
        executor: ProcessPoolExecutor,
        job: _Job,
        retries: int,
    ) -> None:
        if done.cancelled():
            outcome.cancel()
            return
        error = done.exception()
        if error is None:
            outcome.set_result(done.result())
            return
        if not isinstance(error, BrokenProcessPool) or self._closed:
            outcome.set_exception(error)
            return
        log.warning("ingest.staging_worker_died", records=len(job[1]), retries_left=retries)
        try:
            self._replace(executor)
        except (RuntimeError, OSError) as exc:
            outcome.set_exception(exc)
            return
        if retries > 0:
            self._attempt(outcome, job, retries - 1)
            return
        reason = (
            "staging this batch stopped its worker process twice; kept as a dead letter "
            "to replay once the cause is found"
        )
        outcome.set_result(
            StagedBatch(dead=[DeadRecord(n, raw, reason) for n, raw in enumerate(job[1])])
        )

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A working pool in place of ``broken`` (once, however many batches notice)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the staging pool is closed")
            if self._pool is broken:
                self._pool = self._new()
                self.replaced += 1
                broken.shutdown(wait=False, cancel_futures=False)
            return self._pool

    def pids(self) -> list[int]:
        """The worker processes' ids (for resource accounting)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)

    def close(self) -> None:
        """Stop the workers."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "ALERT_COLUMNS",
    "OBSERVABLE_COLUMNS",
    "DeadRecord",
    "RuleSpec",
    "Staged",
    "StagedBatch",
    "Stager",
    "StagingPool",
    "StagingSpec",
    "decode",
]
