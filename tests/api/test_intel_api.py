"""Threat intel over real HTTP, on both backends: imports and the allow-list need intel:manage,
lookups and export intel:read; alerts and incidents show their verdicts."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson

from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer

BUNDLE = {
    "type": "bundle",
    "id": "bundle--6f2a1b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
    "objects": [
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "created": "2026-11-01T00:00:00.000Z",
            "modified": "2026-11-01T00:00:00.000Z",
            "pattern": "[ipv4-addr:value ISSUBSET '203.0.113.0/24'] OR "
            "[domain-name:value = 'c2.evil.example']",
            "pattern_type": "stix",
            "valid_from": "2026-11-01T00:00:00Z",
            "confidence": 80,
            "labels": ["c2"],
        }
    ],
}
MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}


def test_import_lookup_allow_and_export(
    live_server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    admin = closing(live_server.client(role_tokens[Role.ADMIN]))
    body = orjson.dumps(BUNDLE)

    assert analyst.post("/api/intel/import?source=cti", content=body).status_code == 403
    imported = admin.post("/api/intel/import?source=cti&format=stix", content=body)
    assert imported.status_code == 200, imported.text
    assert (imported.json()["added"], imported.json()["unsupported"]) == (2, 0)
    broken = admin.post("/api/intel/import?source=cti&format=stix", content=b'{"type": "bun')
    assert broken.status_code == 422
    assert "is not JSON: unexpected end of data" in broken.json()["detail"]

    found = analyst.get("/api/intel/lookup", params={"value": "203.0.113.77"}).json()
    assert (found["type"], found["verdict"], found["score"]) == ("ipv4", "malicious", 80)
    assert found["reasons"][0]["says"].startswith("ipv4 indicator 203.0.113.0/24 (range)")
    sub = analyst.get("/api/intel/lookup", params={"value": "x.c2.evil.example"}).json()
    assert sub["verdict"] == "info"  # an exact domain indicator: not its subdomains
    listed = analyst.get("/api/intel/indicators", params={"source": "cti"}).json()
    assert sorted(i["value"] for i in listed) == ["203.0.113.0/24", "c2.evil.example"]
    one = analyst.get(f"/api/intel/indicators/{listed[0]['id']}").json()
    assert one["source"] == "cti"

    rule = {"type": "ipv4", "value": "203.0.113.77", "reason": "our scanner"}
    assert analyst.post("/api/intel/allowlist", json=rule).status_code == 403
    entry = admin.post("/api/intel/allowlist", json=rule)
    assert entry.status_code == 201, entry.text
    safe = analyst.get("/api/intel/lookup", params={"value": "203.0.113.77"}).json()
    assert safe["verdict"] == "safe"
    assert admin.delete(f"/api/intel/allowlist/{entry.json()['id']}").status_code == 204
    assert analyst.get("/api/intel/allowlist").json() == []

    exported = analyst.get("/api/intel/export", params={"source": "cti"}).json()
    assert exported["type"] == "bundle"
    patterns = sorted(o["pattern"] for o in exported["objects"] if o["type"] == "indicator")
    assert patterns == [
        "[domain-name:value = 'c2.evil.example']",
        "[ipv4-addr:value ISSUBSET '203.0.113.0/24']",
    ]
    audit = admin.get("/api/audit", params={"action": "intel."}).json()
    assert [e["action"] for e in audit] == ["intel.disallow", "intel.allow", "intel.import"]


def test_alerts_and_incidents_show_their_verdicts(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    admin = closing(live_server.client(role_tokens[Role.ADMIN]))
    assert admin.post("/api/intel/import?source=cti", content=orjson.dumps(BUNDLE)).is_success
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
    stored = admin.post("/api/ingest/edr", content=orjson.dumps(alert))
    assert stored.status_code in (200, 202), stored.text
    (listed,) = admin.get("/api/alerts").json()
    shown = admin.get(f"/api/alerts/{listed['id']}").json()
    assert (shown["verdict"]["verdict"], shown["verdict"]["score"]) == ("malicious", 80)
    assert shown["verdict"]["reasons"][0]["observable"] == "ipv4:203.0.113.9"
    incident = admin.get(f"/api/incidents/{listed['incident_id']}").json()
    assert incident["verdict"]["verdict"] == "malicious"
    observed = {(o["type"], o["value"]): o for o in incident["observables"]}
    address = observed[("ipv4", "203.0.113.9")]
    assert (address["verdict"], address["score"], address["sources"]) == ("malicious", 80, ["cti"])
    assert incident["verdict"]["reasons"][0]["alert_id"] == listed["id"]
