"""Every error a client sees is problem+json with a stable code; no traceback ever."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.routing import APIRoute

from quell.api.auth import Authorize
from quell.governance.permissions import Permission, Role
from quell.governance.tokens import Principal
from quell.sdk.secret import SecretValue
from tests.fixtures.servers import LiveServer

CanRead = Annotated[Principal, Depends(Authorize(Permission.SYSTEM_READ))]


def test_invalid_body_names_the_field(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        response = admin.post("/api/tokens", json={"name": "x", "role": "analyst", "user": 7})
        unknown = admin.post("/api/tokens", json={"name": "x", "role": "overlord"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["errors"][0]["field"] == "body.user"
    assert problem["detail"].startswith("body.user:")
    # A role is looked up (custom roles too): an unknown one is named, with the roles there are.
    assert unknown.status_code == 422
    assert unknown.json()["field"] == "role"
    assert "unknown role 'overlord'" in unknown.json()["detail"]


def test_malformed_json_is_a_422_not_a_500(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        response = admin.post(
            "/api/tokens",
            content=b'{"name": "x", "role"',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


def test_unexpected_error_is_a_500_problem_without_traceback_or_secret(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    secret = SecretValue("canary-db-password-7f3a")

    async def explode(_: CanRead) -> None:
        raise RuntimeError(f"driver said: password={secret.reveal()}")

    live_server.app.router.routes.insert(0, APIRoute("/api/explode", explode, methods=["GET"]))
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        response = admin.get("/api/explode")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal"
    assert "Traceback" not in response.text
    assert "canary-db-password" not in response.text
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_caller_request_id_is_kept_and_a_bad_one_replaced(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client() as client:
        kept = client.get("/healthz", headers={"X-Request-ID": "siem-42.abc"})
        replaced = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert kept.headers["x-request-id"] == "siem-42.abc"
    assert replaced.headers["x-request-id"].startswith("req_")
