"""Token management over HTTP."""

from __future__ import annotations

from quell.governance.permissions import Role
from tests.fixtures.servers import LiveServer


def test_admin_creates_lists_and_revokes_a_token(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        created = admin.post(
            "/api/tokens", json={"name": "siem-webhook", "role": "analyst", "expires_in": "90d"}
        )
        assert created.status_code == 201
        body = created.json()
        assert body["token"].startswith("qk_")
        assert body["created_by"] == "test-admin"
        assert body["expires_at"] is not None
        assert body["hint"] == body["token"][-4:]

        with live_server.client(body["token"]) as webhook:
            assert webhook.get("/api/whoami").json()["role"] == "analyst"

        listed = admin.get("/api/tokens").json()
        assert {"siem-webhook", "test-admin"} <= {token["name"] for token in listed}
        assert all("token" not in token for token in listed)
        assert body["token"] not in admin.get("/api/tokens").text

        revoked = admin.delete("/api/tokens/siem-webhook")
        assert revoked.status_code == 200
        assert revoked.json()["status"] == "revoked"
        with live_server.client(body["token"]) as webhook:
            assert webhook.get("/api/whoami").status_code == 401

        names = {token["name"] for token in admin.get("/api/tokens").json()}
        assert "siem-webhook" not in names
        everything = admin.get("/api/tokens", params={"include_revoked": "true"}).json()
        assert "siem-webhook" in {token["name"] for token in everything}


def test_duplicate_name_is_a_conflict(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        response = admin.post("/api/tokens", json={"name": "test-analyst", "role": "auditor"})
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert response.json()["field"] == "name"


def test_bad_expiry_is_refused_with_the_field(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        response = admin.post(
            "/api/tokens", json={"name": "n1", "role": "auditor", "expires_in": "soon"}
        )
    assert response.status_code == 422
    assert response.json()["field"] == "expires_in"


def test_revoking_an_unknown_token_is_404(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        response = admin.delete("/api/tokens/nobody")
    assert response.status_code == 404
    assert response.json()["detail"] == "no active token named 'nobody'"
