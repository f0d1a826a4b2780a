"""Enrichment on both backends: every new alert gets its verdict and sightings in the ingest
transaction; the allow-list settles a value as safe; lookups give the reasons."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from quell.intel.model import IndicatorRecord, IndicatorType, MatchKind, Parsed, Tlp, Verdict
from quell.runtime import Runtime
from quell.store.schema import indicator_sightings, runs
from tests.engine.harness import ENDED, Harness, eventually

MAPPING = {
    "fields": {
        "title": "title",
        "time": "ts",
        "src.ip": "src",
        "dst.hostname": "dst",
        "rule_name": "r",
    }
}


def _alert(title: str, src: str, dst: str) -> bytes:
    return orjson.dumps(
        {"title": title, "ts": "2026-11-28T09:00:00Z", "src": src, "dst": dst, "r": title}
    )


@pytest.fixture
def fed(runtime: Runtime) -> Runtime:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    runtime.intel.apply(
        "abuse-feed",
        Parsed(
            [
                IndicatorRecord(IndicatorType.IPV4, "203.0.113.0/24", confidence=90),
                IndicatorRecord(
                    IndicatorType.DOMAIN, "evil.example", match=MatchKind.SUBDOMAIN, confidence=40
                ),
                IndicatorRecord(
                    IndicatorType.IPV4,
                    "198.51.100.9",
                    confidence=95,
                    valid_until=runtime.clock.now() + timedelta(hours=1),
                ),
            ]
        ),
    )
    runtime.intel.apply(
        "partner", Parsed([IndicatorRecord(IndicatorType.IPV4, "203.0.113.5", tlp=Tlp.RED)])
    )
    return runtime


def test_new_alerts_get_a_verdict_and_sightings_as_they_are_stored(fed: Runtime) -> None:
    result = fed.pipeline.ingest(
        "edr",
        [
            _alert("c2 beacon", "203.0.113.5", "cdn.evil.example"),
            _alert("scan", "192.0.2.1", "intranet.corp.example"),
        ],
    )
    assert result.stored == 2
    by_title = {alert.title: alert.id for alert in fed.alerts.list_all()}
    c2 = fed.enricher.alert_verdict(by_title["c2 beacon"])
    assert c2 is not None
    assert (c2["verdict"], c2["score"]) == ("malicious", 90)
    sources = sorted({(r["source"], r["observable"]) for r in c2["reasons"]})
    assert sources == [
        ("abuse-feed", "domain:cdn.evil.example"),
        ("abuse-feed", "ipv4:203.0.113.5"),
        ("partner", "ipv4:203.0.113.5"),
    ]
    assert fed.enricher.alert_verdict(by_title["scan"]) is None  # nothing known
    with fed.db.read() as conn:
        seen = conn.execute(select(indicator_sightings.c.observable)).scalars().all()
    assert sorted(seen) == ["203.0.113.5", "203.0.113.5", "cdn.evil.example"]
    hit = fed.intel.lookup("ipv4", "203.0.113.5")
    assert {h.source: h for h in hit}["partner"].tlp is Tlp.RED


def test_the_allow_list_settles_a_value_and_changes_reach_the_next_batch(fed: Runtime) -> None:
    fed.pipeline.ingest("edr", [_alert("first", "10.0.0.1", "www.evil.example")])
    fed.intel.allow("domain", "www.evil.example", "our marketing site", by="alice")
    fed.pipeline.ingest("edr", [_alert("second", "10.0.0.1", "www.evil.example")])
    titles = {alert.title: alert.id for alert in fed.alerts.list_all()}
    first = fed.enricher.alert_verdict(titles["first"])
    second = fed.enricher.alert_verdict(titles["second"])
    assert first is not None
    assert first["verdict"] == "suspicious"
    assert second is not None
    assert second["verdict"] == "safe"
    assert second["reasons"][0]["says"] == "allow-listed: our marketing site"


def test_expired_indicators_stop_matching(fed: Runtime, clock: object) -> None:
    assert fed.enricher.local("ipv4", "198.51.100.9").verdict is Verdict.MALICIOUS
    fed.clock.advance(timedelta(hours=2))  # type: ignore[attr-defined]
    assert fed.enricher.local("ipv4", "198.51.100.9").verdict is Verdict.INFO
    fed.pipeline.ingest("edr", [_alert("late", "198.51.100.9", "x.example.org")])
    (alert,) = fed.alerts.list_all()
    assert fed.enricher.alert_verdict(alert.id) is None


def test_a_lookup_gives_every_reason_and_the_highest_tlp(fed: Runtime) -> None:
    verdict = fed.enricher.local("ipv4", "203.0.113.5")
    assert verdict.verdict is Verdict.MALICIOUS
    assert verdict.tlp is Tlp.RED
    assert [r.source for r in verdict.reasons] == ["abuse-feed", "partner"]
    assert "range" in verdict.reasons[0].says


ON_MALICIOUS = """
id: on-malicious
name: Act on what intel calls malicious
trigger: {on: alert.created, if: "alert.verdict == 'malicious'"}
steps:
  - id: note
    action: core.log
    with: {message: "{{ alert.title }}: {{ alert.verdict }} {{ alert.verdict_score }}"}
"""


def test_a_playbook_triggers_on_the_verdict_the_alert_was_stored_with(fed: Runtime) -> None:
    async def scenario() -> list[Any]:
        async with Harness(fed) as harness:
            harness.add(ON_MALICIOUS, activate=True)
            fed.pipeline.ingest(
                "edr",
                [
                    _alert("c2 beacon", "203.0.113.5", "cdn.evil.example"),
                    _alert("printer", "192.0.2.1", "printer.corp.example"),
                ],
            )
            await eventually(lambda: _ended(fed) >= 1, "the run")
            (run,) = harness.runs.list_all()  # the printer's alert started nothing
            return [run, harness.runs.get(run.id)]

    run, shown = asyncio.run(scenario())
    assert run.status == "succeeded"
    assert shown.steps[0].output == {"message": "c2 beacon: malicious 90"}


def _ended(runtime: Runtime) -> int:
    with runtime.db.read() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(runs).where(runs.c.status.in_(ENDED))
            ).scalar_one()
        )


def test_a_url_longer_than_the_stored_observable_still_matches(runtime: Runtime) -> None:
    mapping = {"fields": {"title": "title", "time": "ts", "url": "link", "rule_name": "title"}}
    runtime.sources.create("proxy", "http", "json", parser_options=mapping)
    long_url = "http://phish.example/login?" + "&".join(f"t{n}=tracking{n}" for n in range(60))
    assert len(long_url) > 700
    runtime.intel.apply(
        "phishtank", Parsed([IndicatorRecord(IndicatorType.URL, long_url, confidence=85)])
    )
    alert = {"title": "clicked", "ts": "2026-11-28T09:00:00Z", "link": long_url}
    runtime.pipeline.ingest("proxy", [orjson.dumps(alert)])
    (stored,) = runtime.alerts.list_all()
    verdict = runtime.enricher.alert_verdict(stored.id)
    assert verdict is not None
    assert (verdict["verdict"], verdict["reasons"][0]["source"]) == ("malicious", "phishtank")
