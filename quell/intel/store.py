"""The indicator store in the database: imports, lookups, sightings and the allow-list.

An import is one write transaction: either every indicator of the input is kept, or (on any
error) none is, and the store is as it was. Re-importing the same input changes nothing: each
row keeps a digest of its content fields, and a row whose digest is unchanged is not written.

Lookups here go to the database (the CLI, the API, one-off checks). The enrichment of every
alert uses :class:`quell.intel.index.IntelIndex`, the same keys held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Connection, delete, func, or_, select, update

from quell.clock import Clock, SystemClock
from quell.codec import column_json
from quell.errors import Conflict, NotFound
from quell.ids import new_id
from quell.intel.model import (
    ImportReport,
    IndicatorRecord,
    IndicatorType,
    IntelError,
    MatchKind,
    Parsed,
    Probe,
    Tlp,
    Unsupported,
    indicator_key,
    ipv4_int,
    keyed,
    probe,
)
from quell.store.bulk import bulk_insert, bulk_update
from quell.store.database import Backend, Database
from quell.store.dialect import insert_ignore
from quell.store.schema import (
    indicator_sightings,
    indicators,
    intel_allowlist,
    intel_revision,
)

_CHUNK = 500  # keys per IN (...) when reading existing rows

_INSERT_COLUMNS = (
    "id",
    "source",
    "key",
    "type",
    "match",
    "value",
    "confidence",
    "severity_id",
    "tlp",
    "first_seen",
    "last_seen",
    "valid_until",
    "revoked",
    "tags",
    "kill_chain",
    "stix_ids",
    "description",
    "digest",
    "sightings",
    "created_at",
    "updated_at",
    "rev",
)
_UPDATE_COLUMNS = (*_INSERT_COLUMNS[6:18], "updated_at", "rev")


@dataclass(slots=True, frozen=True)
class Hit:
    """An indicator that matched an observable."""

    indicator_id: str | None
    source: str
    key: str
    type: str
    match: str
    value: str
    confidence: int | None
    severity_id: int | None
    tlp: Tlp
    valid_until: datetime | None
    tags: tuple[str, ...] = ()
    last_seen: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "indicator_id": self.indicator_id,
            "source": self.source,
            "type": self.type,
            "match": self.match,
            "value": self.value,
            "confidence": self.confidence,
            "severity_id": self.severity_id,
            "tlp": self.tlp.label,
            "valid_until": self.valid_until,
            "tags": list(self.tags),
            "last_seen": self.last_seen,
        }


@dataclass(slots=True, frozen=True)
class Allowed:
    """An allow-list entry."""

    id: str
    key: str
    type: str
    match: str
    value: str
    reason: str
    created_by: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "match": self.match,
            "value": self.value,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


# The digest of an indicator its own item withdrew (never a real one: those are hex).
WITHDRAWN = "withdrawn-by-its-item".ljust(32, "-")


def digest_of(record: IndicatorRecord, key: str) -> str:
    """A hash of the fields an import writes, to tell an unchanged indicator from a new one."""
    content = (
        key,
        record.confidence,
        record.severity_id,
        int(record.tlp),
        record.first_seen,
        record.last_seen,
        record.valid_until,
        record.revoked,
        record.tags,
        record.kill_chain,
        record.stix_ids,
        record.description,
    )
    return hashlib.blake2b(orjson.dumps(content), digest_size=16).hexdigest()


def indicator_id_of(source: str, key: str) -> str:
    """An indicator's id, from its source and key: the same indicator always has the same id
    (and no id needs a lock or a clock to make)."""
    tag = hashlib.blake2b(f"{source}\x00{key}".encode(), digest_size=13).hexdigest()
    return f"ind_{tag}"


def _json_list(values: tuple[str, ...]) -> str:
    return "[]" if not values else column_json(list(values))


def is_expired(record: IndicatorRecord, now: datetime) -> bool:
    """Revoked, or valid only until a time already past."""
    return record.revoked or (record.valid_until is not None and record.valid_until <= now)


class IntelStore:
    """Indicators, their sightings and the allow-list, in ``db``."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self._insert = bulk_insert(db, indicators, _INSERT_COLUMNS)
        self._update = bulk_update(db, indicators, _UPDATE_COLUMNS, key="id")
        # Rows are built converted and in column order (see apply).
        if not (self._insert.in_order and self._update.in_order):
            raise RuntimeError("the indicator statements must take their columns in order")

    # -- import ----------------------------------------------------------------------------------

    def apply(
        self,
        source: str,
        parsed: Parsed,
        *,
        also: Callable[[Connection, ImportReport], None] | None = None,
    ) -> ImportReport:
        """Keep ``parsed``'s indicators under ``source``, in one transaction, and count them.

        Indicators are counted once per distinct key (a value given twice in one input is one
        indicator, the later one winning). An expired or revoked indicator is kept, so that it
        stops matching, and counted ``expired``. ``also`` runs in the same transaction after
        the writes (a feed's checkpoint moves with the indicators it covers, or not at all)."""
        source = check_source(source)
        report = ImportReport(source)
        now = self.clock.now()
        wanted: dict[str, tuple[IndicatorRecord, IndicatorType, MatchKind, str]] = {}
        for record in parsed.records:
            try:
                key, type_, match, value = keyed(record)
            except IntelError as exc:
                report.unsupported_items.append(
                    Unsupported(record.origin or record.type, exc.message, record.value[:200])
                )
                continue
            earlier = wanted.get(key)
            if earlier is not None and earlier[0].tlp > record.tlp:
                # The later record wins, but never lowers how far the value may go.
                record.tlp = earlier[0].tlp
            wanted[key] = (record, type_, match, value)
        report.unsupported_items.extend(parsed.unsupported)
        report.unsupported = len(report.unsupported_items)
        withdrawn: dict[str, str] = {}  # key -> the STIX id of the item that no longer says it
        for record in parsed.withdrawn:
            try:
                key = keyed(record)[0]
            except IntelError:
                continue
            if key not in wanted and record.stix_ids:  # another item of the input still says it
                withdrawn[key] = record.stix_ids[0]
        to_time = self._insert.convert
        stamp = to_time("created_at", now)
        with self.db.write() as conn:
            rev = next_revision(conn)
            existing = self._existing(conn, source, [*wanted, *withdrawn])
            report.withdrawn = self._withdraw(conn, withdrawn, existing, now, rev)
            inserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            for key, (record, type_, match, value) in wanted.items():
                known = existing.get(key)
                if (
                    known is not None
                    and known[2] is not None
                    and not record.revoked
                    and record.stix_ids[:1] == (known[2],)
                ):
                    # STIX 2.1: a revoked object is never un-revoked (no version follows
                    # it), so a version of it that is not revoked is an older one.
                    record.revoked = True
                digest = digest_of(record, key)
                expired = is_expired(record, now)
                if known is not None and known[1] == digest:
                    if expired:
                        report.expired += 1
                    else:
                        report.unchanged += 1
                    continue
                if expired:
                    report.expired += 1
                elif known is None:
                    report.added += 1
                else:
                    report.updated += 1
                # Converted here, as the bulk statements store them (no per-value dispatch).
                content = (
                    record.confidence,
                    record.severity_id,
                    int(record.tlp),
                    to_time("first_seen", record.first_seen),
                    to_time("last_seen", record.last_seen),
                    to_time("valid_until", record.valid_until),
                    record.revoked,
                    _json_list(record.tags),
                    _json_list(record.kill_chain),
                    _json_list(record.stix_ids),
                    record.description,
                    digest,
                )
                if known is None:
                    row_id = indicator_id_of(source, key)
                    existing[key] = (row_id, digest, None, None)
                    inserts.append(
                        (row_id, source, key, str(type_), str(match), value, *content, 0, stamp,
                         stamp, rev)
                    )  # fmt: skip
                else:
                    updates.append((*content, stamp, rev, known[0]))
                if len(inserts) >= 5000:
                    self._insert.run_converted(conn, inserts)
                    inserts = []
            self._insert.run_converted(conn, inserts)
            self._update.run_converted(conn, updates)
            report.sightings = self._source_sightings(conn, source, parsed, existing)
            if also is not None:
                also(conn, report)
        return report

    def _withdraw(
        self,
        conn: Connection,
        withdrawn: dict[str, str],
        existing: dict[str, tuple[str, str, str | None, str | None]],
        now: datetime,
        rev: int,
    ) -> int:
        """Stop the stored indicators whose own item withdrew them: they expire now (kept, as
        expired ones are), and one asserted again later is updated back to live. A value that
        another item made (another event's attribute) is left as it is."""
        rows = []
        for key, stix_id in withdrawn.items():
            known = existing.get(key)
            if known is None or known[2] is not None or known[3] != stix_id:
                continue  # not stored, revoked already, or another item's
            if known[1] == WITHDRAWN:
                continue  # withdrawn by an earlier import
            rows.append(known[0])
            existing[key] = (known[0], WITHDRAWN, None, stix_id)
        for start in range(0, len(rows), _CHUNK):
            conn.execute(
                update(indicators)
                .where(indicators.c.id.in_(rows[start : start + _CHUNK]))
                .values(valid_until=now, digest=WITHDRAWN, updated_at=now, rev=rev)
            )
        return len(rows)

    def _existing(
        self, conn: Connection, source: str, wanted: Iterable[str]
    ) -> dict[str, tuple[str, str, str | None, str | None]]:
        """(id, digest, the STIX id of a revoked one, its first STIX id) of the source's stored
        indicators among the ``wanted`` keys."""
        query = select(
            indicators.c.key,
            indicators.c.id,
            indicators.c.digest,
            indicators.c.revoked,
            indicators.c.stix_ids,
        ).where(indicators.c.source == source)
        if conn.execute(query.limit(1)).first() is None:
            return {}  # a new source: nothing to compare with
        found: dict[str, tuple[str, str, str | None, str | None]] = {}
        keys = list(wanted)
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            for key, row_id, digest, revoked, ids in conn.execute(
                query.where(indicators.c.key.in_(chunk))
            ):
                first = ids[0] if ids and isinstance(ids[0], str) else None
                found[key] = (row_id, digest, first if revoked else None, first)
        return found

    def _source_sightings(
        self,
        conn: Connection,
        source: str,
        parsed: Parsed,
        rows: dict[str, tuple[str, str, str | None, str | None]],
    ) -> int:
        """Keep the sightings the input reported; the same sighting imported again is one."""
        fresh: dict[str, tuple[Any, ...]] = {}
        for key, seen_at, where in parsed.sightings:
            row = rows.get(key)
            if row is None:
                continue
            tag = f"{row[0]}|{seen_at.isoformat()}|{where or source}"
            sighting_id = "sig_" + hashlib.blake2b(tag.encode(), digest_size=14).hexdigest()
            fresh[sighting_id] = (sighting_id, row[0], seen_at, None, key, where or source)
        if not fresh:
            return 0
        ids = list(fresh)
        known: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            known.update(
                conn.scalars(
                    select(indicator_sightings.c.id).where(indicator_sightings.c.id.in_(chunk))
                )
            )
        new = [row for sighting_id, row in fresh.items() if sighting_id not in known]
        if new:
            _insert_sightings(conn, new)
        return len(new)

    # -- lookups ---------------------------------------------------------------------------------

    def lookup(self, type_: str, value: str, *, include_expired: bool = False) -> list[Hit]:
        """Every indicator that matches the observable (exact, range or parent domain)."""
        found = probe(type_, value)
        if found is None:
            return []
        return self.lookup_probe(found, include_expired=include_expired)

    def lookup_probe(self, found: Probe, *, include_expired: bool = False) -> list[Hit]:
        now = self.clock.now()
        query = select(indicators).where(indicators.c.key.in_(found.candidates()))
        if not include_expired:
            query = query.where(
                indicators.c.revoked.is_(False),
                or_(indicators.c.valid_until.is_(None), indicators.c.valid_until > now),
            )
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(indicators.c.source)).all()
        return [_hit(row) for row in rows]

    def tlp_of(self, type_: str, value: str, given: Tlp = Tlp.CLEAR) -> Tlp:
        """How far a value may go: the highest of ``given`` and the TLP of every stored
        indicator it matches (expired and revoked ones too: a partner's word on a value does
        not lapse), for a URL also its host's, for an e-mail address its domain's."""
        found = probe(type_, value)
        if found is None:
            return given
        probes = [found]
        if found.type is IndicatorType.URL:
            host = urlsplit(found.value).hostname or ""
            kind = "ipv4" if ipv4_int(host) is not None else "ipv6" if ":" in host else "domain"
            related = probe(kind, host)
            if related is not None:
                probes.append(related)
        elif found.type is IndicatorType.EMAIL:
            related = probe("domain", found.value.rpartition("@")[2])
            if related is not None:
                probes.append(related)
        keys = [key for item in probes for key in item.candidates()]
        with self.db.read() as conn:
            highest = conn.execute(
                select(func.max(indicators.c.tlp)).where(indicators.c.key.in_(keys))
            ).scalar_one_or_none()
        return max(given, Tlp(highest)) if highest is not None else given

    def get(self, indicator_id: str) -> dict[str, Any]:
        """One indicator, whole, with its latest sightings."""
        with self.db.read() as conn:
            row = conn.execute(select(indicators).where(indicators.c.id == indicator_id)).first()
            if row is None:
                raise NotFound(f"no indicator {indicator_id}")
            seen = conn.execute(
                select(indicator_sightings)
                .where(indicator_sightings.c.indicator_id == indicator_id)
                .order_by(indicator_sightings.c.seen_at.desc())
                .limit(50)
            ).all()
        return {**_row_dict(row), "recent_sightings": [dict(s._mapping) for s in seen]}

    def search(
        self,
        *,
        source: str | None = None,
        type_: str | None = None,
        contains: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Indicators by source, type or part of the value, in id order (``after`` pages)."""
        query = select(indicators).order_by(indicators.c.id).limit(max(1, min(limit, 1000)))
        if source:
            query = query.where(indicators.c.source == source)
        if type_:
            query = query.where(indicators.c.type == type_)
        if contains:
            query = query.where(indicators.c.value.contains(contains, autoescape=True))
        if after:
            query = query.where(indicators.c.id > after)
        with self.db.read() as conn:
            return [_row_dict(row) for row in conn.execute(query)]

    def counts(self) -> dict[str, Any]:
        """Indicators by source and type, and how many are live now."""
        now = self.clock.now()
        live = (~indicators.c.revoked) & or_(
            indicators.c.valid_until.is_(None), indicators.c.valid_until > now
        )
        with self.db.read() as conn:
            rows = conn.execute(
                select(
                    indicators.c.source,
                    indicators.c.type,
                    func.count(),
                    func.sum(func.cast(live, indicators.c.sightings.type)),
                ).group_by(indicators.c.source, indicators.c.type)
            ).all()
        return {
            "sources": [
                {"source": s, "type": t, "indicators": n, "live": int(live_n or 0)}
                for s, t, n, live_n in rows
            ],
            "total": sum(row[2] for row in rows),
        }

    def revision(self) -> int:
        """The revision of the last committed change to indicators or the allow-list."""
        with self.db.read() as conn:
            return int(
                conn.execute(
                    select(intel_revision.c.rev).where(intel_revision.c.id == 1)
                ).scalar_one_or_none()
                or 0
            )

    def iter_live(self, *, after: int = 0, upto: int | None = None) -> Iterator[Sequence[Any]]:
        """(key, source, confidence, severity_id, tlp, valid_until, revoked, rev) of every
        indicator written after revision ``after`` (up to ``upto``), for the in-memory index."""
        query = select(
            indicators.c.key,
            indicators.c.source,
            indicators.c.confidence,
            indicators.c.severity_id,
            indicators.c.tlp,
            indicators.c.valid_until,
            indicators.c.revoked,
            indicators.c.rev,
        ).where(indicators.c.rev > after)
        if upto is not None:
            query = query.where(indicators.c.rev <= upto)
        with self.db.read() as conn:
            result = conn.execution_options(yield_per=10_000).execute(query)
            yield from result

    def rows_for(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Hit]:
        """The stored indicators for (source, key) pairs (what the in-memory index matched)."""
        pairs = list(set(pairs))
        found: dict[tuple[str, str], Hit] = {}
        with self.db.read() as conn:
            for start in range(0, len(pairs), _CHUNK):
                chunk = pairs[start : start + _CHUNK]
                keys = {key for _source, key in chunk}
                for row in conn.execute(select(indicators).where(indicators.c.key.in_(keys))):
                    if (row.source, row.key) in chunk:
                        found[(row.source, row.key)] = _hit(row)
        return found

    # -- sightings ------------------------------------------------------------------------------

    def record_sightings(
        self, sightings: Iterable[tuple[str, str, str | None]], *, at: datetime | None = None
    ) -> int:
        """Record (indicator id, observable value, alert id) sightings; count them on each
        indicator. Returns how many were recorded."""
        rows = list(sightings)
        if not rows:
            return 0
        seen_at = at or self.clock.now()
        with self.db.write() as conn:
            _insert_sightings(
                conn,
                [
                    (new_id("sig"), indicator_id, seen_at, alert_id, value[:2048], None)
                    for indicator_id, value, alert_id in rows
                ],
            )
            counts: dict[str, int] = {}
            for indicator_id, _value, _alert in rows:
                counts[indicator_id] = counts.get(indicator_id, 0) + 1
            for indicator_id, count in counts.items():
                conn.execute(
                    update(indicators)
                    .where(indicators.c.id == indicator_id)
                    .values(
                        sightings=indicators.c.sightings + count,
                        last_sighted_at=seen_at,
                    )
                )
        return len(rows)

    def sightings_of(self, indicator_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(indicator_sightings)
                .where(indicator_sightings.c.indicator_id == indicator_id)
                .order_by(indicator_sightings.c.seen_at.desc())
                .limit(limit)
            ).all()
        return [dict(row._mapping) for row in rows]

    # -- allow-list ------------------------------------------------------------------------------

    def allow(
        self,
        type_: IndicatorType | str,
        value: str,
        reason: str,
        *,
        by: str,
        match: MatchKind | str | None = None,
    ) -> Allowed:
        """Add a known-good value. Domains match with their subdomains unless ``match`` says
        ``exact``; an IP given with a prefix is a range."""
        kind = IndicatorType(type_)
        if not reason.strip():
            raise IntelError("an allow-list entry needs a reason")
        wanted = MatchKind(match) if match else None
        if wanted is None:
            wanted = MatchKind.SUBDOMAIN if kind is IndicatorType.DOMAIN else MatchKind.EXACT
        if kind in (IndicatorType.IPV4, IndicatorType.IPV6) and wanted is MatchKind.CIDR:
            wanted = MatchKind.EXACT  # the prefix in the value says it
        key, kind, found_match, canonical = indicator_key(kind, value, wanted)
        entry = Allowed(
            new_id("alw"),
            key,
            str(kind),
            str(found_match),
            canonical,
            reason.strip()[:512],
            by,
            self.clock.now(),
        )
        with self.db.write() as conn:
            next_revision(conn)
            conn.execute(delete(intel_allowlist).where(intel_allowlist.c.key == key))
            conn.execute(
                intel_allowlist.insert().values(
                    id=entry.id,
                    key=key,
                    type=entry.type,
                    match=entry.match,
                    value=canonical,
                    reason=entry.reason,
                    created_by=by,
                    created_at=entry.created_at,
                )
            )
        return entry

    def disallow(self, entry: str, *, type_: str | None = None) -> Allowed:
        """Remove an allow-list entry by its id, or by its value (as shown in the list; with
        ``type_`` when two entries share it)."""
        with self.db.write() as conn:
            query = select(intel_allowlist)
            if entry.startswith("alw_"):
                query = query.where(intel_allowlist.c.id == entry)
            else:
                query = query.where(intel_allowlist.c.value == entry.strip())
                if type_:
                    query = query.where(intel_allowlist.c.type == type_)
            rows = conn.execute(query.limit(3)).all()
            if not rows:
                raise NotFound(f"no allow-list entry {entry!r}")
            if len(rows) > 1:
                raise Conflict(
                    f"{len(rows)} allow-list entries have the value {entry!r}: remove by id"
                )
            (row,) = rows
            next_revision(conn)
            conn.execute(delete(intel_allowlist).where(intel_allowlist.c.id == row.id))
        return _allowed(row)

    def allowlist(self) -> list[Allowed]:
        with self.db.read() as conn:
            rows = conn.execute(select(intel_allowlist).order_by(intel_allowlist.c.value)).all()
        return [_allowed(row) for row in rows]

    def allowed(self, found: Probe) -> Allowed | None:
        """The allow-list entry that covers the observable, if any."""
        with self.db.read() as conn:
            row = conn.execute(
                select(intel_allowlist)
                .where(intel_allowlist.c.key.in_(found.candidates()))
                .limit(1)
            ).first()
        return None if row is None else _allowed(row)


def next_revision(conn: Connection) -> int:
    """Take the next intel revision in the caller's write transaction (writers queue on the
    row until they commit, so revisions become visible in order)."""
    conn.execute(insert_ignore(_backend(conn), intel_revision, keys=["id"]), [{"id": 1, "rev": 0}])
    conn.execute(
        update(intel_revision).where(intel_revision.c.id == 1).values(rev=intel_revision.c.rev + 1)
    )
    return int(
        conn.execute(select(intel_revision.c.rev).where(intel_revision.c.id == 1)).scalar_one()
    )


def _backend(conn: Connection) -> Backend:
    return Backend.POSTGRESQL if conn.dialect.name == "postgresql" else Backend.SQLITE


def check_source(source: str) -> str:
    """A source name: 1-128 printable characters."""
    name = source.strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise IntelError(f"a source name is 1-128 printable characters, not {source!r}")
    return name


def _insert_sightings(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.execute(
        indicator_sightings.insert(),
        [
            {
                "id": r[0],
                "indicator_id": r[1],
                "seen_at": r[2],
                "alert_id": r[3],
                "observable": r[4],
                "reported_by": r[5],
            }
            for r in rows
        ],
    )


def _hit(row: Any) -> Hit:
    return Hit(
        indicator_id=row.id,
        source=row.source,
        key=row.key,
        type=row.type,
        match=row.match,
        value=row.value,
        confidence=row.confidence,
        severity_id=row.severity_id,
        tlp=Tlp(row.tlp),
        valid_until=row.valid_until,
        tags=tuple(row.tags or ()),
        last_seen=row.last_seen,
    )


def _row_dict(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data["tlp"] = Tlp(data["tlp"]).label
    data.pop("digest", None)
    return data


def _allowed(row: Any) -> Allowed:
    return Allowed(
        row.id, row.key, row.type, row.match, row.value, row.reason, row.created_by, row.created_at
    )


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive one is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
