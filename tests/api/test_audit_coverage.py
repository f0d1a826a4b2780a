"""Changes made through the API are in the audit trail, as the caller, with the request id of
the answer (``X-Request-ID``), on both backends; a secret set through the API never is."""

from __future__ import annotations

from quell.governance.permissions import Role
from tests.fixtures.servers import LiveServer

SECRET = "hmac-secret-0123456789-never-audited"


def test_state_changes_through_the_api_are_audited_with_their_request_id(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    answered: dict[str, str] = {}
    with live_server.client(role_tokens[Role.ADMIN]) as admin:

        def call(action: str, method: str, path: str, **kwargs: object) -> None:
            response = admin.request(method, path, **kwargs)  # type: ignore[arg-type]
            assert response.status_code < 300, (action, response.text)
            answered[action] = response.headers["x-request-id"]

        call("token.create", "POST", "/api/tokens", json={"name": "bot", "role": "analyst"})
        call("token.revoke", "DELETE", "/api/tokens/bot")
        source = {"name": "edr", "kind": "http", "format": "json", "secret": SECRET}
        call("source.create", "POST", "/api/sources", json=source)
        call("source.update", "PATCH", "/api/sources/edr", json={"enabled": False})
        call("source.secret", "PUT", "/api/sources/edr/secret", json={"secret": SECRET + "2"})
        call("source.remove", "DELETE", "/api/sources/edr")
        rule = {"name": "scanner", "match": {"rule_name": "ET SCAN"}}
        call("suppression.add", "POST", "/api/suppressions", json=rule)
        call("suppression.remove", "DELETE", "/api/suppressions/scanner")
        call("role.create", "PUT", "/api/roles/hunter", json={"permissions": ["intel:read"]})
        trail = admin.get("/api/audit", params={"limit": 100}).json()
    found = {event["action"]: event for event in trail}
    for action, request_id in answered.items():
        assert action in found, action
        assert found[action]["actor"] == "test-admin"
        assert found[action]["request_id"] == request_id, action
    assert found["source.update"]["detail"]["before"]["enabled"] is True
    assert found["source.update"]["detail"]["after"]["enabled"] is False
    assert found["source.secret"]["detail"] == {"set": True}
    assert SECRET not in str(trail)
