"""Lookups through outside services, on both backends: the TLP ceiling (a server that records
everything it receives proves what never left), the cache, the daily quota, the allow-list
short-cut, and a failing service that fails only its own reason."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select

from quell.clock import ManualClock
from quell.engine.engine import Engine
from quell.intel.enrich import Enricher
from quell.intel.model import IndicatorRecord, IndicatorType, Parsed, Tlp, Verdict
from quell.runtime import Runtime
from quell.sdk import ActionError, SecretValue
from quell.store.schema import intel_quota
from tests.fixtures.webapp import serving

KEY = "abuse-key-5d1e8c0b7a9f"
BAD = {"198.51.100.66": 97}  # the addresses the fake service knows


class Recorder:
    """An AbuseIPDB API (``GET /api/v2/check``) that keeps every request it gets, whole."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.fail = False

    async def check(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path_qs} {dict(request.headers)}")
        if self.fail:
            return web.json_response({"errors": [{"detail": "down", "status": 503}]}, status=503)
        address = request.query["ipAddress"]
        score = BAD.get(address, 0)
        data = {
            "ipAddress": address,
            "isWhitelisted": False,
            "abuseConfidenceScore": score,
            "totalReports": 12 if score else 0,
            "countryCode": "NL",
            "isp": "Example ISP",
            "lastReportedAt": "2026-11-27T10:00:00+00:00" if score else None,
        }
        return web.json_response({"data": data})

    def received(self) -> str:
        return "\n".join(self.requests)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _enricher(runtime: Runtime, base: str, **config: Any) -> Enricher:
    settings = runtime.settings.model_copy(update={"outbound_allow": ["127.0.0.1"]})
    local = dataclasses.replace(runtime, settings=settings)
    local.connector_instances.create(
        "abuse", "abuseipdb", {"base_url": base, **config}, {"api_key": SecretValue(KEY)}
    )
    return Enricher(local)


def _serve(recorder: Recorder) -> web.Application:
    app = web.Application()
    app.add_routes([web.get("/api/v2/check", recorder.check)])
    return app


@pytest.fixture
def partner_red(runtime: Runtime) -> Runtime:
    runtime.intel.apply(
        "partner", Parsed([IndicatorRecord(IndicatorType.IPV4, "203.0.113.5", tlp=Tlp.RED)])
    )
    return runtime


def test_nothing_at_or_above_the_ceiling_leaves(partner_red: Runtime, recorder: Recorder) -> None:
    async def scenario() -> dict[str, Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(partner_red, base, tlp_ceiling="red")
            return {
                # TLP:RED from the partner's indicator: never sent, even to a ceiling of red.
                "red_by_store": await enricher.lookup("ipv4", "203.0.113.5"),
                "red_given": await enricher.lookup("ipv4", "192.0.2.10", tlp=Tlp.RED),
                "amber_ok": await enricher.lookup("ipv4", "198.51.100.66", tlp=Tlp.AMBER),
            }

    found = asyncio.run(scenario())
    red = found["red_by_store"]
    assert red.tlp is Tlp.RED
    assert [r.kind for r in red.reasons] == ["indicator", "withheld"]
    assert "not sent to abuse: TLP:RED" in red.reasons[1].says
    assert found["red_given"].reasons[0].kind == "withheld"
    amber = found["amber_ok"]  # under a ceiling of red, amber may go
    assert (amber.verdict, amber.score) == (Verdict.MALICIOUS, 97)
    received = recorder.received()
    assert "198.51.100.66" in received
    assert "203.0.113.5" not in received
    assert "192.0.2.10" not in received


def test_the_default_ceiling_keeps_amber_in(runtime: Runtime, recorder: Recorder) -> None:
    async def scenario() -> list[Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(runtime, base)  # tlp_ceiling: amber
            return [
                await enricher.lookup("ipv4", "198.51.100.66", tlp=Tlp.AMBER),
                await enricher.lookup("ipv4", "198.51.100.67", tlp=Tlp.AMBER_STRICT),
                await enricher.lookup("ipv4", "198.51.100.68", tlp=Tlp.GREEN),
            ]

    amber, strict, green = asyncio.run(scenario())
    assert amber.reasons[0].kind == strict.reasons[0].kind == "withheld"
    assert green.reasons[0].kind == "lookup"
    assert len(recorder.requests) == 1
    assert "198.51.100.68" in recorder.requests[0]


def test_answers_are_cached_for_their_ttl(
    runtime: Runtime, recorder: Recorder, clock: ManualClock
) -> None:
    async def scenario() -> list[Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(runtime, base, cache_ttl="1h")
            first = await enricher.lookup("ipv4", "198.51.100.66")
            again = await enricher.lookup("ipv4", "198.51.100.66")
            clock.advance(timedelta(hours=2))
            later = await enricher.lookup("ipv4", "198.51.100.66")
            return [first, again, later]

    first, again, later = asyncio.run(scenario())
    assert len(recorder.requests) == 2
    assert again.reasons[0].says.endswith("(cached)")
    assert again.verdict is first.verdict is later.verdict is Verdict.MALICIOUS


def test_the_daily_quota_holds_and_renews(
    runtime: Runtime, recorder: Recorder, clock: ManualClock
) -> None:
    async def scenario() -> list[Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(runtime, base, quota_per_day=2)
            found = [await enricher.lookup("ipv4", f"198.51.100.{n}") for n in (1, 2, 3)]
            clock.advance(timedelta(days=1))
            found.append(await enricher.lookup("ipv4", "198.51.100.4"))
            return found

    found = asyncio.run(scenario())
    assert [r.reasons[0].kind for r in found] == ["lookup", "lookup", "withheld", "lookup"]
    assert "quota of 2 lookups a day is used up" in found[2].reasons[0].says
    assert len(recorder.requests) == 3


def test_allowlisted_values_ask_no_one_and_failures_stay_in_their_reason(
    runtime: Runtime, recorder: Recorder
) -> None:
    runtime.intel.allow("ipv4", "198.51.100.0/24", "our own range", by="alice")

    async def scenario() -> list[Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(runtime, base)
            allowed = await enricher.lookup("ipv4", "198.51.100.66")
            recorder.fail = True
            failed = await enricher.lookup("ipv4", "192.0.2.77")
            return [allowed, failed]

    allowed, failed = asyncio.run(scenario())
    assert allowed.verdict is Verdict.SAFE
    assert [r.kind for r in allowed.reasons] == ["allowlist"]
    assert "198.51.100.66" not in recorder.received()
    assert failed.verdict is Verdict.INFO
    assert failed.reasons[0].kind == "withheld"
    assert failed.reasons[0].says.startswith("abuse failed:")
    assert KEY not in failed.reasons[0].says


def test_the_shared_rate_limit_holds_a_lookup_back(runtime: Runtime, recorder: Recorder) -> None:
    async def scenario() -> list[Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(runtime, base, rate="1/h", quota_per_day=10)
            first = await enricher.lookup("ipv4", "198.51.100.66")
            # Another process's enricher shares the bucket (it lives in the database).
            other = Enricher(enricher.runtime)
            second = await other.lookup("ipv4", "198.51.100.67")
            return [first, second]

    first, second = asyncio.run(scenario())
    assert first.reasons[0].kind == "lookup"
    assert second.reasons[0].kind == "withheld"
    assert "rate limit is used up" in second.reasons[0].says
    assert len(recorder.requests) == 1
    with runtime.db.read() as conn:  # a lookup held back by the rate spends no quota
        assert conn.execute(select(intel_quota.c.used)).scalars().all() == [1]


def test_every_call_of_a_lookup_action_passes_the_tlp_gate(
    partner_red: Runtime, recorder: Recorder
) -> None:
    """Not only the enricher: a playbook step or a call by hand of ``abuseipdb.lookup`` with a
    TLP:RED value (or a URL on a TLP:RED host) is refused before anything is sent."""

    async def scenario() -> list[Any]:
        async with serving(_serve(recorder)) as base:
            enricher = _enricher(partner_red, base, tlp_ceiling="red")
            runner = enricher.runtime.action_runner("cli:test")
            found: list[Any] = []
            try:
                for value in ("203.0.113.5", "198.51.100.66"):
                    try:
                        found.append(
                            await runner.run_once(
                                "abuseipdb.lookup", {"type": "ipv4", "value": value},
                                instance="abuse",
                            )
                        )  # fmt: skip
                    except ActionError as exc:
                        found.append(exc)
            finally:
                await runner.aclose()
            return found

    refused, answered = asyncio.run(scenario())
    assert isinstance(refused, ActionError)
    assert refused.code == "tlp_withheld"
    assert "the value is TLP:RED" in refused.message
    assert answered["verdict"] == "malicious"
    assert "203.0.113.5" not in recorder.received()
    # The engine's runner has the same gate.
    engine = Engine.for_runtime(partner_red)
    assert engine.actions.data_policy is partner_red.data_policy


def test_a_value_takes_the_tlp_of_its_host_and_of_expired_indicators(
    runtime: Runtime, clock: ManualClock
) -> None:
    runtime.intel.apply(
        "partner",
        Parsed(
            [
                IndicatorRecord(IndicatorType.DOMAIN, "secret.example", tlp=Tlp.RED),
                IndicatorRecord(
                    IndicatorType.IPV4, "192.0.2.1", tlp=Tlp.AMBER,
                    valid_until=clock.now() - timedelta(days=1),
                ),
            ]
        ),
    )  # fmt: skip
    assert runtime.intel.tlp_of("url", "https://secret.example/login?x=1") is Tlp.RED
    assert runtime.intel.tlp_of("email", "ceo@secret.example") is Tlp.RED
    assert runtime.intel.tlp_of("ipv4", "192.0.2.1") is Tlp.AMBER  # expired, still AMBER
    assert runtime.intel.tlp_of("ipv4", "192.0.2.2") is Tlp.CLEAR
