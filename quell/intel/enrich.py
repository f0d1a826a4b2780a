"""Enrichment: the verdict on an observable from the store, the allow-list and outside services.

Two paths share the verdict rules of :mod:`quell.intel.verdicts`:

- **Every new alert** is enriched as it is stored, in the ingest transaction, from the
  in-memory :class:`~quell.intel.index.IntelIndex` (:class:`AlertEnricher`): its verdict is
  there before any playbook triggered by the alert reads it, and each match is recorded as a
  sighting on the indicator.
- **A lookup** (``quell intel lookup``, ``GET /api/intel/lookup``) asks the store, then each
  configured outside service (:class:`Enricher`).

Outside services are connector instances of the read-only enrichment connectors (VirusTotal,
AbuseIPDB, URLhaus, GreyNoise: any connector with ``lookup_types``). Per instance, its config
may set ``cache_ttl`` (default 1 day), ``quota_per_day`` (calls in a UTC day, shared by every
worker), ``rate`` (``4/m``: a token bucket in the database, shared likewise) and
``tlp_ceiling`` (default ``amber``). An observable at or above the ceiling is never sent: its
TLP is the highest of the TLP the caller gives and of every stored indicator that matches it,
so a value a partner shared as TLP:AMBER is not sent to a service capped at AMBER. TLP:RED is
never sent anywhere, whatever the configuration says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from sqlalchemy import Connection, and_, delete, func, select, update

from quell.durations import parse_duration
from quell.errors import NotFound
from quell.ids import new_id
from quell.ingest.alerts import document_observables
from quell.intel.index import IndexHit, IntelIndex
from quell.intel.model import OBSERVABLE_TYPES, Tlp, Verdict, probe
from quell.intel.store import IntelStore
from quell.intel.verdicts import (
    ObservableVerdict,
    Reason,
    Summary,
    indicator_says,
    indicator_verdict,
    summarize,
)
from quell.sdk import ActionError, PermanentError
from quell.store.database import Database
from quell.store.dialect import insert_ignore, upsert
from quell.store.schema import (
    alert_verdicts,
    alerts,
    indicator_sightings,
    indicators,
    intel_allowlist,
    intel_cache,
    intel_quota,
)

if TYPE_CHECKING:
    from quell.connectors.instances import Instance
    from quell.runtime import Runtime

log = structlog.get_logger("quell.intel")

DEFAULT_CACHE_TTL = timedelta(days=1)
DEFAULT_CEILING = Tlp.AMBER
RATE_WAIT_S = 5.0  # a lookup waits this long at most for its source's rate; longer: not asked


# -- enrichment of new alerts -----------------------------------------------------------------


class AlertEnricher:
    """Verdicts for alerts as they are stored, from the in-memory index of the store.

    :meth:`enrich` runs inside the ingest transaction: it writes each alert's verdict and the
    sightings, so both commit (or not) with the alerts."""

    def __init__(self, store: IntelStore) -> None:
        self.store = store
        self.index = IntelIndex()
        self._revision = 0

    def refresh(self) -> None:
        """Bring the index up to date with the database: the indicators of every revision
        committed since the last refresh, and the allow-list when it changed. One small read
        when nothing changed; called before each ingest batch."""
        revision = self.store.revision()
        if revision == self._revision:
            return
        now = self.store.clock.now()
        self.index.load(self.store.iter_live(after=self._revision, upto=revision), now=now)
        with self.store.db.read() as conn:
            rows = conn.execute(select(intel_allowlist.c.key, intel_allowlist.c.reason)).all()
        self.index.set_allowlist((key, reason) for key, reason in rows)
        self._revision = revision

    def match(self, type_: str, value: str, now: float) -> tuple[str | None, list[IndexHit]]:
        """The allow-list's reason for the observable, or the live indicators it matches
        (:meth:`IntelIndex.match`). What ``python -m bench intel`` measures."""
        return self.index.match(type_, value, now)

    def judge(self, type_: str, value: str, now: float) -> ObservableVerdict | None:
        """The local verdict on one observable (:meth:`match`, then the reasons); None when
        nothing is known of it. What enrichment does per observable."""
        reason, hits = self.match(type_, value, now)
        kind = str(OBSERVABLE_TYPES.get(type_, type_))  # a hostname is a domain here
        if reason is not None:
            result = ObservableVerdict(kind, value.strip())
            result.add(Reason("allowlist", "allowlist", Verdict.SAFE, 0, f"allow-listed: {reason}"))
            return result
        if not hits:
            return None
        result = ObservableVerdict(kind, value.strip())
        for hit in hits:
            verdict, score = indicator_verdict(hit.confidence)
            match = (
                "cidr"
                if hit.key.startswith("net:")
                else ("subdomain" if hit.key.startswith("dn*:") else "exact")
            )
            tlp = Tlp(hit.tlp)
            result.tlp = max(result.tlp, tlp)
            shown = hit.key.split(":", 1)[1]
            result.add(
                Reason(
                    hit.source,
                    "indicator",
                    verdict,
                    score,
                    indicator_says(kind, match, shown, hit.confidence, tlp),
                    ref=hit.key,
                )
            )
        return result

    def enrich(
        self, conn: Connection, observed: Sequence[tuple[str, str, str]], now: datetime
    ) -> int:
        """Enrich alerts from their observables, given as (alert id, type, value); returns how
        many alerts got a verdict. Runs in the caller's transaction, with the index as the last
        :meth:`refresh` left it (the caller refreshes before it takes the write lock)."""
        if self.index.empty or not observed:
            return 0
        cutoff = now.timestamp()
        per_alert: dict[str, list[ObservableVerdict]] = {}
        # (source, key, alert) -> the value seen: one sighting per indicator and alert, even
        # when the alert carries the value twice (a host and the domain of its URL).
        sightings: dict[tuple[str, str, str], str] = {}
        for alert_id, type_, value in observed:
            result = self.judge(type_, value, cutoff)
            if result is None:
                continue
            per_alert.setdefault(alert_id, []).append(result)
            for reason in result.reasons:
                if reason.kind == "indicator" and reason.ref is not None:
                    sightings.setdefault((reason.source, reason.ref, alert_id), result.value)
        if not per_alert:
            return 0
        write_verdicts(conn, {a: summarize(v) for a, v in per_alert.items()}, now)
        record_alert_sightings(
            conn,
            [(source, key, value, alert) for (source, key, alert), value in sightings.items()],
            now,
        )
        return len(per_alert)


def write_verdicts(conn: Connection, summaries: dict[str, Summary], now: datetime) -> None:
    """Keep alerts' verdicts (replacing earlier ones)."""
    if not summaries:
        return
    statement = upsert(
        _backend(conn),
        alert_verdicts,
        keys=["alert_id"],
        update=["verdict", "score", "reasons", "updated_at"],
    )
    conn.execute(
        statement,
        [
            {
                "alert_id": alert_id,
                "verdict": int(s.verdict),
                "score": s.score,
                "reasons": orjson.loads(orjson.dumps(s.reasons[:100])),
                "updated_at": now,
            }
            for alert_id, s in summaries.items()
        ],
    )


def record_alert_sightings(
    conn: Connection, sightings: Sequence[tuple[str, str, str, str]], now: datetime
) -> None:
    """Record (source, key, observable, alert id) sightings on their indicators."""
    if not sightings:
        return
    pairs = {(source, key) for source, key, _value, _alert in sightings}
    keys = {key for _source, key in pairs}
    ids: dict[tuple[str, str], str] = {}
    for row in conn.execute(
        select(indicators.c.id, indicators.c.source, indicators.c.key).where(
            indicators.c.key.in_(keys)
        )
    ):
        if (row.source, row.key) in pairs:
            ids[(row.source, row.key)] = row.id
    rows = []
    counts: dict[str, int] = {}
    for source, key, value, alert_id in sightings:
        indicator_id = ids.get((source, key))
        if indicator_id is None:
            continue  # removed since the index read it
        rows.append(
            {
                "id": new_id("sig"),
                "indicator_id": indicator_id,
                "seen_at": now,
                "alert_id": alert_id,
                "observable": value[:2048],
                "reported_by": None,
            }
        )
        counts[indicator_id] = counts.get(indicator_id, 0) + 1
    if rows:
        conn.execute(indicator_sightings.insert(), rows)
    for indicator_id, count in counts.items():
        conn.execute(
            update(indicators)
            .where(indicators.c.id == indicator_id)
            .values(sightings=indicators.c.sightings + count, last_sighted_at=now)
        )


def _backend(conn: Connection) -> Any:
    from quell.store.database import Backend

    return Backend.POSTGRESQL if conn.dialect.name == "postgresql" else Backend.SQLITE


# -- what may leave -------------------------------------------------------------------------------


class TlpGate:
    """The data policy of every action runner: an enrichment connector's ``lookup`` (any
    action whose connector has ``lookup_types``) is refused when its value's TLP is at or above
    the instance's ``tlp_ceiling`` (default amber; TLP:RED always), whoever calls it: a
    playbook step, ``quell action run``, the API, or :class:`Enricher`. The value's TLP is
    :meth:`~quell.intel.store.IntelStore.tlp_of`."""

    def __init__(self, store: IntelStore) -> None:
        self.store = store

    async def __call__(self, definition: Any, params: Any, resolved: Any) -> None:
        if not getattr(definition.connector, "lookup_types", None) or params is None:
            return
        value, kind = getattr(params, "value", None), getattr(params, "type", None)
        if not isinstance(value, str) or not isinstance(kind, str):
            return
        tlp = await asyncio.to_thread(self.store.tlp_of, kind, value)
        config = resolved.config
        ceiling = min(Tlp.parse(getattr(config, "tlp_ceiling", None), DEFAULT_CEILING), Tlp.RED)
        if tlp >= ceiling:
            raise PermanentError(
                f"{definition.key}: not sent to {resolved.name}: the value is {tlp.label}, "
                f"at or above its ceiling {ceiling.label}",
                code="tlp_withheld",
            )


# -- lookups -----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SourcePolicy:
    """How an outside service may be used, from its connector instance's config."""

    instance: str
    connector: str
    types: frozenset[str]
    cache_ttl: timedelta
    quota_per_day: int | None
    rate: float | None
    ceiling: Tlp

    @classmethod
    def of(cls, instance: Instance, types: frozenset[str]) -> SourcePolicy:
        from quell.engine.actions import parse_rate

        config = instance.config
        ttl = config.get("cache_ttl")
        quota = config.get("quota_per_day")
        rate = config.get("rate")
        return cls(
            instance=instance.name,
            connector=instance.connector,
            types=types,
            cache_ttl=parse_duration(ttl) if ttl else DEFAULT_CACHE_TTL,
            quota_per_day=int(quota) if quota else None,
            rate=parse_rate(rate) if rate else None,
            ceiling=Tlp.parse(config.get("tlp_ceiling"), DEFAULT_CEILING),
        )


class Enricher:
    """Lookups on demand: the store, the allow-list, then each configured outside service."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = IntelStore(runtime.db, runtime.clock)

    def sources(self) -> list[SourcePolicy]:
        """The enabled instances of enrichment connectors, by name."""
        registry = self.runtime.registry
        found: list[SourcePolicy] = []
        for instance in self.runtime.connector_instances.list_all():
            connector = registry.connectors.get(instance.connector)
            types = getattr(connector, "lookup_types", None)
            if connector is None or not types or not instance.enabled:
                continue
            found.append(SourcePolicy.of(instance, frozenset(types)))
        return found

    def local(self, type_: str, value: str, *, tlp: Tlp = Tlp.CLEAR) -> ObservableVerdict:
        """The verdict from the store and the allow-list only."""
        found = probe(type_, value)
        if found is None:
            raise NotFound(f"{value!r} is not a {type_} value Quell can look up")
        result = ObservableVerdict(
            str(found.type), found.value, tlp=self.store.tlp_of(type_, value, tlp)
        )
        allowed = self.store.allowed(found)
        if allowed is not None:
            result.add(
                Reason("allowlist", "allowlist", Verdict.SAFE, 0,
                       f"allow-listed: {allowed.reason}", at=allowed.created_at, ref=allowed.id)
            )  # fmt: skip
            return result
        now = self.store.clock.now()
        for hit in self.store.lookup_probe(found):
            if hit.valid_until is not None and hit.valid_until <= now:
                continue
            verdict, score = indicator_verdict(hit.confidence)
            says = indicator_says(hit.type, hit.match, hit.value, hit.confidence, hit.tlp)
            result.add(
                Reason(hit.source, "indicator", verdict, score, says, at=hit.last_seen,
                       ref=hit.indicator_id)
            )  # fmt: skip
        return result

    async def lookup(
        self,
        type_: str,
        value: str,
        *,
        tlp: Tlp = Tlp.CLEAR,
        external: bool = True,
        only: Iterable[str] | None = None,
        actor: str = "intel",
    ) -> ObservableVerdict:
        """The verdict on one observable, asking outside services unless ``external`` is
        False (or the value is allow-listed). ``only`` names the instances to ask."""
        result = await asyncio.to_thread(self.local, type_, value, tlp=tlp)
        if not external or result.allowlisted:
            return result
        wanted = set(only) if only is not None else None
        sources = [
            s
            for s in await asyncio.to_thread(self.sources)
            if str(result.type) in s.types and (wanted is None or s.instance in wanted)
        ]
        if not sources:
            return result
        runner = self.runtime.action_runner(actor)
        try:
            answers = await asyncio.gather(
                *(self._ask(runner, source, result, actor) for source in sources),
                return_exceptions=True,
            )
        finally:
            await runner.aclose()
        for source, answer in zip(sources, answers, strict=True):
            if isinstance(answer, Reason):
                result.add(answer)
            elif isinstance(answer, Exception):  # one source's trouble is its own reason only
                log.warning("intel_lookup_failed", source=source.instance,
                            error=type(answer).__name__)  # fmt: skip
                result.add(
                    Reason(source.instance, "withheld", Verdict.INFO, 0,
                           f"{source.instance} failed: {type(answer).__name__}")
                )  # fmt: skip
            else:
                raise answer
        return result

    async def _ask(
        self, runner: Any, source: SourcePolicy, about: ObservableVerdict, actor: str
    ) -> Reason:
        name = source.instance
        if about.tlp >= Tlp.RED or about.tlp >= source.ceiling:
            return Reason(
                name, "withheld", Verdict.INFO, 0,
                f"not sent to {name}: {about.tlp.label} is at or above its ceiling "
                f"{min(source.ceiling, Tlp.RED).label}",
            )  # fmt: skip
        key = f"{about.type}:{about.value}"
        cached = await asyncio.to_thread(self._cached, name, key)
        if cached is not None:
            return _answer_reason(name, cached, cached=True)
        if source.rate is not None:
            rate = source.rate
            wait = await asyncio.to_thread(
                runner.limits.try_take_token, f"intel:{name}", rate, max(1.0, rate), RATE_WAIT_S
            )
            if wait is None:
                return Reason(
                    name, "withheld", Verdict.INFO, 0,
                    f"not asked: {name}'s rate limit is used up for now",
                )  # fmt: skip
            if wait > 0:
                await asyncio.sleep(wait)
        # The quota is charged last, for a call that is going to be made.
        if not await asyncio.to_thread(self._charge_quota, source):
            return Reason(
                name, "withheld", Verdict.INFO, 0,
                f"not asked: {name}'s quota of {source.quota_per_day} lookups a day is used up",
            )  # fmt: skip
        try:
            answer = await runner.run_once(
                f"{source.connector}.lookup",
                {"type": about.type, "value": about.value},
                instance=name,
                actor=actor,
                record=False,
            )
        except ActionError as exc:
            return Reason(name, "withheld", Verdict.INFO, 0, f"{name} failed: {exc.message}")
        await asyncio.to_thread(self._keep, name, key, answer, source.cache_ttl)
        return _answer_reason(name, answer, cached=False)

    def _cached(self, source: str, key: str) -> dict[str, Any] | None:
        now = self.store.clock.now()
        with self.store.db.read() as conn:
            row = conn.execute(
                select(intel_cache.c.answer).where(
                    intel_cache.c.source == source,
                    intel_cache.c.key == key,
                    intel_cache.c.expires_at > now,
                )
            ).first()
        return None if row is None else dict(row.answer)

    def _keep(self, source: str, key: str, answer: dict[str, Any], ttl: timedelta) -> None:
        now = self.store.clock.now()
        with self.store.db.write() as conn:
            conn.execute(
                upsert(
                    self.store.db.backend,
                    intel_cache,
                    keys=["source", "key"],
                    update=["answer", "fetched_at", "expires_at"],
                ),
                [{"source": source, "key": key, "answer": orjson.loads(orjson.dumps(answer)),
                  "fetched_at": now, "expires_at": now + ttl}],
            )  # fmt: skip
            conn.execute(delete(intel_cache).where(intel_cache.c.expires_at <= now))

    def _charge_quota(self, source: SourcePolicy) -> bool:
        """Count one call against the source's daily quota; False when it is used up."""
        if source.quota_per_day is None:
            return True
        now = self.store.clock.now()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        db = self.store.db
        with db.write() as conn:
            conn.execute(
                insert_ignore(db.backend, intel_quota, keys=["source", "window_start"]),
                [{"source": source.instance, "window_start": day, "used": 0}],
            )
            taken = conn.execute(
                update(intel_quota)
                .where(
                    and_(
                        intel_quota.c.source == source.instance,
                        intel_quota.c.window_start == day,
                        intel_quota.c.used < source.quota_per_day,
                    )
                )
                .values(used=intel_quota.c.used + 1)
            ).rowcount
            conn.execute(
                delete(intel_quota).where(
                    intel_quota.c.source == source.instance, intel_quota.c.window_start < day
                )
            )
        return bool(taken)

    # -- verdicts of alerts and incidents --------------------------------------------------------

    def alert_verdict(self, alert_id: str) -> dict[str, Any] | None:
        """An alert's stored verdict, or None when enrichment found nothing."""
        with self.store.db.read() as conn:
            row = conn.execute(
                select(alert_verdicts).where(alert_verdicts.c.alert_id == alert_id)
            ).first()
        return None if row is None else _summary_dict(row)

    def incident_observables(self, incident_id: str, *, limit: int = 500) -> list[dict[str, Any]]:
        """The observables of an incident's alerts, each with its verdict: the worst that
        enrichment gave it in any of those alerts (``info`` when nothing was known), how many
        alerts carry it, and the sources that spoke of it."""
        with self.store.db.read() as conn:
            chosen = select(alerts.c.id, alerts.c.data).where(alerts.c.incident_id == incident_id)
            observed = document_observables(self.store.db.backend, chosen).subquery()
            rows = conn.execute(
                select(observed.c.type, observed.c.value,
                       func.count(observed.c.alert_id.distinct()))
                .group_by(observed.c.type, observed.c.value)
                .order_by(observed.c.type, observed.c.value)
                .limit(limit)
            ).all()  # fmt: skip
            judged = conn.execute(
                select(alert_verdicts.c.reasons)
                .join(alerts, alerts.c.id == alert_verdicts.c.alert_id)
                .where(alerts.c.incident_id == incident_id)
            ).scalars()
            worst: dict[str, tuple[Verdict, int, set[str]]] = {}
            for reasons in judged:
                for reason in reasons or []:
                    name = str(reason.get("observable"))
                    verdict = Verdict.parse(str(reason.get("verdict") or "info"))
                    score = int(reason.get("score") or 0)
                    best, top, sources = worst.get(name, (Verdict.INFO, 0, set()))
                    sources.add(str(reason.get("source")))
                    worst[name] = (max(best, verdict), max(top, score), sources)
        found = []
        for type_, value, count in rows:
            kind = str(OBSERVABLE_TYPES.get(type_, type_))
            verdict, score, sources = worst.get(f"{kind}:{value}", (Verdict.INFO, 0, set()))
            found.append({"type": type_, "value": value, "alerts": count,
                          "verdict": verdict.label, "score": score,
                          "sources": sorted(sources)})  # fmt: skip
        return found

    def incident_verdict(self, incident_id: str) -> dict[str, Any]:
        """An incident's verdict: its worst alert's, with every alert's reasons."""
        with self.store.db.read() as conn:
            rows = conn.execute(
                select(alert_verdicts)
                .join(alerts, alerts.c.id == alert_verdicts.c.alert_id)
                .where(alerts.c.incident_id == incident_id)
                .order_by(alert_verdicts.c.verdict.desc(), alert_verdicts.c.score.desc())
                .limit(200)
            ).all()
        summary = Summary()
        for row in rows:
            summary.verdict = max(summary.verdict, Verdict(row.verdict))
            summary.score = max(summary.score, row.score)
            summary.reasons.extend({"alert_id": row.alert_id, **r} for r in row.reasons)
        return summary.as_dict()


def verdicts_of_alerts(db: Database, alert_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored verdicts of these alerts (those enrichment found something for)."""
    found: dict[str, dict[str, Any]] = {}
    ids = list(alert_ids)
    with db.read() as conn:
        for start in range(0, len(ids), 500):
            for row in conn.execute(
                select(alert_verdicts).where(
                    alert_verdicts.c.alert_id.in_(ids[start : start + 500])
                )
            ):
                found[row.alert_id] = _summary_dict(row)
    return found


def _summary_dict(row: Any) -> dict[str, Any]:
    return {
        "verdict": Verdict(row.verdict).label,
        "score": row.score,
        "reasons": list(row.reasons),
        "updated_at": row.updated_at,
    }


def _answer_reason(source: str, answer: dict[str, Any], *, cached: bool) -> Reason:
    at = answer.get("observed_at")
    when = datetime.fromisoformat(at) if isinstance(at, str) else at
    says = str(answer.get("summary") or f"{source}: {answer.get('verdict')}")
    if cached:
        says += " (cached)"
    return Reason(
        source,
        "lookup",
        Verdict.parse(str(answer.get("verdict") or "info")),
        int(answer.get("score") or 0),
        says,
        at=when,
        ref=answer.get("link"),
    )
