"""Bearer authentication over real HTTP, on both backends."""

from __future__ import annotations

from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer


def test_openapi_needs_a_token(live_server: LiveServer, role_tokens: dict[Role, str]) -> None:
    with live_server.client() as anonymous:
        response = anonymous.get("/api/openapi.json")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    problem = response.json()
    assert problem["type"] == "urn:quell:problem:unauthenticated"
    assert problem["status"] == 401
    assert problem["request_id"] == response.headers["x-request-id"]

    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        document = admin.get("/api/openapi.json")
    assert document.status_code == 200
    spec = document.json()
    assert spec["info"]["title"] == "Quell"
    assert "/api/tokens" in spec["paths"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_role_without_permission_gets_403_and_admin_gets_200(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ANALYST]) as analyst:
        refused = analyst.get("/api/tokens")
    assert refused.status_code == 403
    assert refused.json()["code"] == "forbidden"
    assert refused.json()["permission"] == "tokens:read"
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        assert admin.get("/api/tokens").status_code == 200


def test_revoked_token_is_refused_on_the_next_request(
    live_server: LiveServer, runtime: Runtime
) -> None:
    _, token = runtime.tokens.create("short-lived", "analyst")
    with live_server.client(token.reveal()) as client:
        assert client.get("/api/whoami").json()["name"] == "short-lived"
        runtime.tokens.revoke("short-lived")
        refused = client.get("/api/whoami")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "invalid or revoked API token"


def test_wrong_scheme_and_mistyped_tokens_are_refused(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    token = role_tokens[Role.ADMIN]
    mistyped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with live_server.client() as client:
        basic = client.get("/api/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401
        bad = client.get("/api/whoami", headers={"Authorization": f"Bearer {mistyped}"})
        assert bad.status_code == 401
        assert bad.json()["detail"] == "malformed API token"
        assert mistyped not in bad.text


def test_unknown_paths_need_a_token_before_they_say_404(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client() as anonymous:
        assert anonymous.get("/api/nothing-here").status_code == 401
        assert anonymous.delete("/admin").status_code == 401
    with live_server.client(role_tokens[Role.AUDITOR]) as auditor:
        missing = auditor.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_whoami_reports_role_and_permissions(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.AUDITOR]) as auditor:
        me = auditor.get("/api/whoami").json()
    assert me["role"] == "auditor"
    assert "audit:read" in me["permissions"]
    assert all(permission.endswith(":read") for permission in me["permissions"])
