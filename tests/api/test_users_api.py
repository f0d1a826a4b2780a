"""Login, logout and user management over real HTTP, on both backends."""

from __future__ import annotations

import logging

import pytest
from structlog.testing import capture_logs

from quell.clock import ManualClock
from quell.governance.permissions import Role
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from tests.fixtures.servers import LiveServer

PASSWORD = "correct horse battery staple"


@pytest.fixture
def alice(runtime: Runtime) -> str:
    runtime.users.add("alice", "analyst", password=SecretValue(PASSWORD), by="test")
    return "alice"


def test_login_gives_a_session_that_works_until_logout(
    live_server: LiveServer, runtime: Runtime, alice: str
) -> None:
    with live_server.client() as anonymous:
        response = anonymous.post("/api/login", json={"name": alice, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"].startswith("qs_")
    assert body["user"] == "alice"
    assert body["role"] == "analyst"
    assert body["expires_at"]
    with live_server.client(body["token"]) as session:
        me = session.get("/api/whoami").json()
        assert me["name"] == "alice"
        assert me["role"] == "analyst"
        assert session.get("/api/users").status_code == 403
        assert session.post("/api/logout").status_code == 204
        refused = session.get("/api/whoami")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "invalid or revoked session"


def test_logout_with_an_api_token_is_refused(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.AUDITOR]) as client:
        response = client.post("/api/logout")
    assert response.status_code == 422
    assert "DELETE /api/tokens" in response.json()["detail"]


def test_failed_logins_are_401_then_429_with_retry_after(
    live_server: LiveServer, alice: str
) -> None:
    with live_server.client() as anonymous:
        for _ in range(5):
            failed = anonymous.post("/api/login", json={"name": alice, "password": "x" * 20})
            assert failed.status_code == 401
            assert failed.json()["detail"] == "invalid name or password"
        limited = anonymous.post("/api/login", json={"name": alice, "password": PASSWORD})
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) == 15 * 60
        assert anonymous.post("/api/login", json={}).status_code == 422


def test_admin_manages_users_and_a_role_change_applies_at_once(
    live_server: LiveServer, role_tokens: dict[Role, str], runtime: Runtime
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        created = admin.post(
            "/api/users",
            json={"name": "bob", "role": "auditor", "password": PASSWORD, "display_name": "Bob"},
        )
        assert created.status_code == 201, created.text
        assert created.json()["has_password"] is True
        assert "password" not in created.json()
        short = admin.post("/api/users", json={"name": "eve", "role": "auditor", "password": "x"})
        assert short.status_code == 422
        assert "at least 12" in short.json()["detail"]
        assert admin.post("/api/users", json={"name": "bob", "role": "admin"}).status_code == 409
        assert [u["name"] for u in admin.get("/api/users").json()] == ["bob"]

        with live_server.client() as anonymous:
            token = anonymous.post("/api/login", json={"name": "bob", "password": PASSWORD}).json()[
                "token"
            ]
        with live_server.client(token) as bob:
            assert bob.get("/api/tokens").status_code == 200  # auditor reads tokens
            assert bob.get("/api/users").status_code == 403
            promoted = admin.patch("/api/users/bob", json={"role": "admin"})
            assert promoted.json()["role"] == "admin"
            assert bob.get("/api/users").status_code == 200

            user_token = admin.post("/api/tokens", json={"name": "bob-cli", "user": "bob"})
            assert user_token.status_code == 201, user_token.text
            assert user_token.json()["user"] == "bob"
            assert user_token.json()["role"] == "admin"

            disabled = admin.patch("/api/users/bob", json={"disabled": True})
            assert disabled.json()["status"] == "disabled"
            assert bob.get("/api/whoami").status_code == 401
        with live_server.client(user_token.json()["token"]) as bob_cli:
            refused = bob_cli.get("/api/whoami")
            assert refused.status_code == 401
            assert "disabled" in refused.json()["detail"]
            admin.patch("/api/users/bob", json={"disabled": False, "display_name": "Robert"})
            assert bob_cli.get("/api/whoami").json()["role"] == "admin"

        new_password = "another long password!"
        assert (
            admin.put("/api/users/bob/password", json={"password": new_password}).status_code == 200
        )
        with live_server.client() as anonymous:
            assert (
                anonymous.post("/api/login", json={"name": "bob", "password": PASSWORD}).status_code
                == 401
            )
            assert (
                anonymous.post(
                    "/api/login", json={"name": "bob", "password": new_password}
                ).status_code
                == 200
            )
        assert admin.get("/api/users/bob").json()["display_name"] == "Robert"
        assert admin.get("/api/users/ghost").status_code == 404


def test_session_expires_with_the_clock(
    live_server: LiveServer, alice: str, clock: ManualClock
) -> None:
    with live_server.client() as anonymous:
        token = anonymous.post("/api/login", json={"name": alice, "password": PASSWORD}).json()[
            "token"
        ]
    with live_server.client(token) as session:
        assert session.get("/api/whoami").status_code == 200
        clock.advance(12 * 3600 + 1)
        expired = session.get("/api/whoami")
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


def test_canary_password_is_never_logged_audited_or_returned(
    live_server: LiveServer,
    role_tokens: dict[Role, str],
    runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    canary = "CANARY-pw-7f3a9c1e-do-not-leak"
    wrong = "CANARY-wrong-52be77d0-guess"
    responses: list[str] = []
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs, live_server.client(role_tokens[Role.ADMIN]) as admin:
        responses.append(
            admin.post(
                "/api/users", json={"name": "carol", "role": "analyst", "password": canary}
            ).text
        )
        responses.append(admin.put("/api/users/carol/password", json={"password": canary}).text)
        with live_server.client() as anonymous:
            for password in (wrong, canary, wrong, "short"):
                responses.append(
                    anonymous.post("/api/login", json={"name": "carol", "password": password}).text
                )
            responses.append(
                anonymous.post("/api/login", json={"name": "carol", "password": 12345}).text
            )
            for _ in range(5):
                responses.append(
                    anonymous.post("/api/login", json={"name": "carol", "password": wrong}).text
                )
        responses.append(admin.get("/api/users").text)
        responses.append(admin.get("/api/audit").text)
    outputs = [
        *responses,
        str(logs),
        caplog.text,
        *capsys.readouterr(),
        *(str(event.as_dict()) for event in runtime.audit.list_all(limit=1000)),
    ]
    assert any("user.login_failed" in out for out in outputs)  # the scenario did run
    for output in outputs:
        assert canary not in output
        assert wrong not in output
