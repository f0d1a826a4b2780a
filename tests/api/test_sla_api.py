"""The SLA policy over real HTTP, on both backends: everyone who reads incidents sees it, only
admins change it; an incident shows its clocks."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson

from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer

MAPPING = {"fields": {"title": "title", "time": "ts", "severity": "sev", "src.ip": "src"}}


def test_admins_set_the_sla_policy_and_incidents_show_their_clocks(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))
    admin = closing(live_server.client(role_tokens[Role.ADMIN]))

    shown = auditor.get("/api/sla")
    assert shown.status_code == 200, shown.text
    policy = {p["severity"]: p for p in shown.json()["policy"]}
    assert list(policy) == ["informational", "low", "medium", "high", "critical", "fatal"]
    assert (policy["critical"]["acknowledge"], policy["critical"]["contain"]) == ("15m", "4h")
    assert policy["high"]["default"] is True

    body = {"acknowledge": "30m", "contain": "none"}
    assert analyst.put("/api/sla/high", json=body).status_code == 403
    changed = admin.put("/api/sla/high", json=body)
    assert changed.status_code == 200, changed.text
    assert changed.json()["acknowledge_s"] == 1800
    assert (changed.json()["contain"], changed.json()["close"]) == (None, "1w")
    assert changed.json()["updated_by"] == "test-admin"
    assert admin.put("/api/sla/4", json={"close": "10d"}).json()["close"] == "1w3d"
    bad = admin.put("/api/sla/high", json={"acknowledge": "soon"})
    assert bad.status_code == 422
    assert "is not a duration" in bad.json()["detail"]
    assert admin.put("/api/sla/urgent", json={"close": "1d"}).status_code == 422
    assert admin.put("/api/sla/high", json={}).status_code == 422
    assert admin.put("/api/sla/high", json={"colour": "red"}).status_code == 422
    assert analyst.delete("/api/sla/high").status_code == 403
    reset = admin.delete("/api/sla/high").json()
    assert (reset["acknowledge"], reset["default"]) == ("1h", True)
    actions = [e.action for e in runtime.audit.list_all(action="sla.")]
    assert actions == ["sla.policy_reset", "sla.policy", "sla.policy"]

    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "sev": "critical", "src": "1.2.3.4"}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    (incident,) = runtime.incidents.list_all()
    runtime.sla.check()
    slas = analyst.get(f"/api/incidents/{incident.id}").json()["slas"]
    assert [(c["metric"], c["state"]) for c in slas] == [
        ("acknowledge", "running"),
        ("contain", "running"),
        ("close", "running"),
    ]
