"""Connectors over real HTTP, on both backends: instances with sealed secrets, health checks,
and actions called by hand under the caller's permissions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import httpx
import pytest

from quell.api.app import create_app
from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.connectors.echo import SECRET
from tests.fixtures.servers import LiveServer, start_server


@pytest.fixture
def server(runtime: Runtime) -> Iterator[LiveServer]:
    settings = runtime.settings.model_copy(update={"plugins": ["tests.connectors.echo"]})
    live = start_server(create_app(dataclasses.replace(runtime, settings=settings)))
    yield live
    live.stop()


def test_an_instance_is_configured_used_and_never_shows_its_secret(
    server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    admin = closing(server.client(role_tokens[Role.ADMIN]))
    auditor = closing(server.client(role_tokens[Role.AUDITOR]))
    analyst = closing(server.client(role_tokens[Role.ANALYST]))

    listed = auditor.get("/api/connectors").json()
    assert {"core", "http", "nftables", "echo"} <= {c["name"] for c in listed["connectors"]}
    described = auditor.get("/api/connectors/echo").json()
    assert described["secrets"] == ["api_token"]
    assert {a["key"]: a["risk"] for a in described["actions"]} == {
        "echo.say": "read",
        "echo.shout": "medium",
    }
    assert described["config_schema"]["required"] == ["base_url"]

    created = admin.post(
        "/api/connectors",
        json={
            "name": "echo-eu",
            "connector": "echo",
            "config": {"base_url": "https://api.example"},
            "secrets": {"api_token": SECRET},
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["secrets"] == ["api_token"]
    for response in (
        created,
        auditor.get("/api/connectors/echo-eu"),
        auditor.get("/api/connectors"),
    ):
        assert SECRET not in response.text
    assert auditor.get("/api/connectors/echo-eu").json()["instance"]["created_by"] == "test-admin"

    said = analyst.post("/api/actions/echo.say/run", json={"input": {"word": "hi"}}).json()
    assert said["ok"] is True, said
    assert said["output"]["token_length"] == len(SECRET)
    assert said["output"]["base_url"] == "https://api.example"

    cleared = admin.put("/api/connectors/echo-eu/secrets/api_token", json={"value": None})
    assert cleared.json()["secrets"] == []
    again = analyst.post("/api/actions/echo.say/run", json={"input": {"word": "hi"}}).json()
    assert again["output"]["token_set"] is False

    checked = admin.post("/api/connectors/echo-eu/test").json()
    assert checked == {"name": "echo-eu", "ok": True, "detail": "echo declares no health check"}


def test_bad_instances_are_refused_naming_the_field(
    server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    admin = closing(server.client(role_tokens[Role.ADMIN]))
    bad = admin.post(
        "/api/connectors",
        json={"name": "x", "connector": "echo", "config": {"base_url": "ftp://no"}},
    )
    assert bad.status_code == 422
    assert "config.base_url" in bad.text
    unknown = admin.post(
        "/api/connectors",
        json={"name": "x", "connector": "echo", "config": {"base_url": "https://a"},
              "secrets": {"password": "hunter2-value"}},
    )  # fmt: skip
    assert unknown.status_code == 422
    assert "declares no secret 'password'" in unknown.text
    assert "p" not in unknown.json().get("value", "")
    assert (
        admin.post("/api/connectors", json={"name": "x", "connector": "ghost"}).status_code == 422
    )
    assert admin.patch("/api/connectors/ghost", json={"enabled": False}).status_code == 404


def test_a_write_by_hand_needs_the_manage_permission_unless_it_is_a_dry_run(
    server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    admin = closing(server.client(role_tokens[Role.ADMIN]))
    analyst = closing(server.client(role_tokens[Role.ANALYST]))
    auditor = closing(server.client(role_tokens[Role.AUDITOR]))
    admin.post(
        "/api/connectors",
        json={"name": "echo", "connector": "echo", "config": {"base_url": "https://b"}},
    )
    body = {"input": {"word": "stop"}}
    assert auditor.post("/api/actions/echo.say/run", json=body).status_code == 403
    refused = analyst.post("/api/actions/echo.shout/run", json=body)
    assert refused.status_code == 403
    assert "needs connectors:manage" in refused.text
    pretend = analyst.post("/api/actions/echo.shout/run", json={**body, "dry_run": True}).json()
    assert pretend["output"] == {
        "simulated": True,
        "action": "echo.shout",
        "input": {"word": "stop"},
    }
    done = admin.post("/api/actions/echo.shout/run", json=body).json()
    assert done["ok"] is True
    assert done["output"]["word"] == "stop"
    assert analyst.delete("/api/connectors/echo").status_code == 403
    assert admin.delete("/api/connectors/echo").status_code == 204
    assert admin.delete("/api/connectors/echo").status_code == 404


def test_an_action_by_hand_is_guarded_against_ssrf_and_fails_clearly(
    server: LiveServer,
    role_tokens: dict[Role, str],
    closing: Callable[[httpx.Client], httpx.Client],
) -> None:
    analyst = closing(server.client(role_tokens[Role.ANALYST]))
    answer = analyst.post(
        "/api/actions/http.get/run",
        json={"input": {"url": "http://169.254.169.254/latest/meta-data/?token=abc"}},
    ).json()
    assert answer["ok"] is False
    assert answer["error"]["code"] == "outbound_blocked"
    assert "169.254.169.254" in answer["error"]["message"]
    assert "token=abc" not in answer["error"]["message"]
    missing = analyst.post("/api/actions/echo.nothing/run", json={"input": {}})
    assert missing.status_code == 404
    invalid = analyst.post("/api/actions/echo.say/run", json={"input": {"wrd": "x"}})
    assert invalid.status_code == 422  # a bad request is a problem, as everywhere
    assert invalid.headers["content-type"] == "application/problem+json"
    assert (invalid.json()["code"], invalid.json()["field"]) == ("invalid_input", "body.input")
    assert invalid.json()["detail"].startswith("echo.say: input w")
