"""Guardrails over real HTTP, on both backends: who may pull the kill switch and set policy."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from quell.governance.permissions import Role
from tests.fixtures.servers import LiveServer


def test_the_person_on_shift_pulls_the_kill_switch_and_admins_set_policy(
    live_server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))
    admin = closing(live_server.client(role_tokens[Role.ADMIN]))

    assert auditor.put("/api/guardrails/kill-switch", json={"on": True}).status_code == 403
    pulled = analyst.put("/api/guardrails/kill-switch", json={"on": True, "reason": "drill"})
    assert pulled.status_code == 200, pulled.text
    shown = auditor.get("/api/guardrails").json()
    assert shown["kill_switch"]["on"] is True
    assert shown["kill_switch"]["reason"] == "drill"
    assert shown["kill_switch"]["by"] == "test-analyst"
    released = analyst.put("/api/guardrails/kill-switch", json={"on": False}).json()
    assert released == {"on": False, "released_runs": 0}

    body = {"risk": "high", "per_hour": 10}
    assert analyst.put("/api/guardrails/limits", json=body).status_code == 403
    assert admin.put("/api/guardrails/limits", json=body).json() == {
        "action": None, "risk": "high", "per_hour": 10,
    }  # fmt: skip
    bad = admin.put("/api/guardrails/limits", json={"per_hour": 1})
    assert bad.status_code == 422
    assert "one action" in bad.text
    # A limit that could never count anything is refused, naming why.
    for action, said in [
        ("nftables.dney", "no action 'nftables.dney' (did you mean 'nftables.deny'?)"),
        ("nftables.*", "'nftables.*' is a pattern: name one action exactly (one limit per action)"),
    ]:
        never = admin.put("/api/guardrails/limits", json={"action": action, "per_hour": 3})
        assert (never.status_code, never.json()["detail"]) == (422, said)
    # A mistyped network, kept as a name, would protect nothing.
    for entry in ("192.168.1.0/33", "10.0.0.256", "192.168.1/24", "2001:db8::/129", "fe80::1::2"):
        typo = admin.patch("/api/guardrails/protected", json={"add": [entry]})
        assert typo.status_code == 422, typo.text
        assert typo.json()["detail"].startswith(f"{entry!r} is not a valid address or network")
    # Names are names, however many digits or colons: an account id, an ARN, a MAC, host:port.
    names = ["123456789012", "arn:aws:iam::123456789012:user/bob", "00:1a:2b:3c:4d:5e",
             "db01.corp:5432"]  # fmt: skip
    kept = admin.patch("/api/guardrails/protected", json={"add": names})
    assert kept.json()["protected"] == names, kept.text
    admin.patch("/api/guardrails/protected", json={"remove": names})
    protected = admin.patch(
        "/api/guardrails/protected", json={"add": ["10.0.0.0/8", "dc01.corp"]}
    ).json()
    assert protected == {"protected": ["10.0.0.0/8", "dc01.corp"], "protected_tags": []}
    assert admin.patch("/api/guardrails/protected", json={"remove": ["dc01.corp"]}).json() == {
        "protected": ["10.0.0.0/8"], "protected_tags": [],
    }  # fmt: skip
    tagged = admin.patch("/api/guardrails/protected", json={"add_tags": ["crown-jewel"]})
    assert tagged.json()["protected_tags"] == ["crown-jewel"]
    assets = admin.put("/api/guardrails/assets", json={"entry": "db01", "tags": ["crown-jewel"]})
    assert assets.json() == {"asset_tags": {"db01": ["crown-jewel"]}}
    assert analyst.put("/api/guardrails/assets", json={"entry": "x", "tags": []}).status_code == 403
    bad_tag = admin.put("/api/guardrails/assets", json={"entry": "db01", "tags": ["Bad Tag"]})
    assert bad_tag.status_code == 422
    assert admin.put("/api/guardrails/breaker", json={"min_runs": 5}).status_code == 200
    policy = auditor.get("/api/guardrails").json()
    assert policy["breaker"] == {"failure_rate": 0.5, "min_runs": 5, "window_minutes": 15}
    assert policy["limits"] == [{"action": None, "risk": "high", "per_hour": 10}]
    missing = analyst.post("/api/guardrails/breaker/nothing/reset")
    assert missing.status_code == 404
    assert admin.delete("/api/guardrails/limits", params={"risk": "high"}).status_code == 204
    assert auditor.get("/api/guardrails").json()["limits"] == []


def test_the_audit_trail_shows_who_pulled_the_switch_and_its_chain_holds(
    live_server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))
    analyst.put("/api/guardrails/kill-switch", json={"on": True, "reason": "drill"})
    analyst.put("/api/guardrails/kill-switch", json={"on": False})
    assert analyst.get("/api/audit").status_code == 403
    events = auditor.get("/api/audit", params={"action": "guardrail."}).json()
    assert [(e["actor"], e["action"]) for e in events] == [
        ("test-analyst", "guardrail.kill_switch_off"),
        ("test-analyst", "guardrail.kill_switch_on"),
    ]
    assert events[0]["prev_hash"] == events[1]["hash"]
    assert auditor.get("/api/audit/verify").json() == {
        "checked": 2, "intact": True, "first_broken_seq": None,
    }  # fmt: skip
