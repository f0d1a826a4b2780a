"""Login, logout and user management over real HTTP, on both backends."""

from __future__ import annotations

import logging

import pytest
from structlog.testing import capture_logs

from quell.clock import ManualClock
from quell.governance.permissions import Permission, Role
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

            # A user's token acts as them: an admin cannot make one for bob; bob can.
            for_bob = admin.post("/api/tokens", json={"name": "bob-cli", "user": "bob"})
            assert for_bob.status_code == 403
            user_token = bob.post("/api/tokens", json={"name": "bob-cli", "user": "bob"})
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


def test_users_change_their_own_password_with_a_session_or_their_token(
    live_server: LiveServer, runtime: Runtime, role_tokens: dict[Role, str], alice: str
) -> None:
    new_password = "a brand new long password"
    with live_server.client() as anonymous:
        first = anonymous.post("/api/login", json={"name": alice, "password": PASSWORD}).json()
        second = anonymous.post("/api/login", json={"name": alice, "password": PASSWORD}).json()
    with live_server.client(first["token"]) as session:
        wrong = session.post(
            "/api/me/password",
            json={"current_password": "not the password", "new_password": new_password},
        )
        assert wrong.status_code == 422
        assert wrong.json()["field"] == "current_password"
        short = session.post(
            "/api/me/password", json={"current_password": PASSWORD, "new_password": "short"}
        )
        assert short.status_code == 422
        assert short.json()["field"] == "new_password"
        assert "at least 12" in short.json()["detail"]
        changed = session.post(
            "/api/me/password", json={"current_password": PASSWORD, "new_password": new_password}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["name"] == "alice"
        assert "password" not in changed.text.replace("has_password", "")
        assert session.get("/api/whoami").status_code == 200  # this session stays
    with live_server.client(second["token"]) as other:
        assert other.get("/api/whoami").status_code == 401  # the others end
    with live_server.client() as anonymous:
        assert (
            anonymous.post("/api/login", json={"name": alice, "password": PASSWORD}).status_code
            == 401
        )
        assert (
            anonymous.post("/api/login", json={"name": alice, "password": new_password}).status_code
            == 200
        )

    # A token of the user's works too (and ends all of their sessions).
    _, user_token = runtime.tokens.create("alice-cli", "", user="alice")
    with live_server.client(user_token.reveal()) as token:
        again = token.post(
            "/api/me/password",
            json={"current_password": new_password, "new_password": PASSWORD + "!"},
        )
        assert again.status_code == 200, again.text
    with live_server.client(first["token"]) as session:
        assert session.get("/api/whoami").status_code == 401

    # A service token belongs to no one; a user without a password has none to change.
    with live_server.client(role_tokens[Role.ADMIN]) as service:
        refused = service.post(
            "/api/me/password", json={"current_password": PASSWORD, "new_password": new_password}
        )
        assert refused.status_code == 422
        assert "belongs to no user" in refused.json()["detail"]
    runtime.users.add("sso-only", "analyst", by="test")
    _, sso_token = runtime.tokens.create("sso-cli", "", user="sso-only")
    with live_server.client(sso_token.reveal()) as sso:
        none = sso.post(
            "/api/me/password", json={"current_password": PASSWORD, "new_password": new_password}
        )
        assert none.status_code == 409
        assert "no password to change" in none.json()["detail"]
    changes = runtime.audit.list_all(action="user.change_password")
    assert [event.action for event in changes].count("user.change_password") == 2


def test_managing_users_is_no_way_to_take_over_someone_who_holds_more(
    live_server: LiveServer, runtime: Runtime
) -> None:
    """A helpdesk role with users:manage (and nothing else) may not set an admin's password
    (and sign in as them), disable them, re-role them or change their e-mail; it still
    manages users who hold no more than it does."""
    runtime.roles.define("helpdesk", ["users:manage", "system:read"], by="test")
    runtime.users.add("root", "admin", password=SecretValue(PASSWORD), by="test")
    runtime.users.add("hd", "helpdesk", password=SecretValue(PASSWORD), by="test")
    runtime.users.add("newbie", "helpdesk", by="test")
    with live_server.client() as anonymous:
        token = anonymous.post("/api/login", json={"name": "hd", "password": PASSWORD}).json()
    taken_over = "hijacked-password-123"
    with live_server.client(token["token"]) as helpdesk:
        for response in (
            helpdesk.put("/api/users/root/password", json={"password": taken_over}),
            helpdesk.patch("/api/users/root", json={"disabled": True}),
            helpdesk.patch("/api/users/root", json={"role": "helpdesk"}),
            helpdesk.patch("/api/users/root", json={"email": "hd@evil.example"}),
        ):
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "forbidden"
        # Nor by changing a role they hold that grants more than the caller's.
        runtime.roles.define("responder", ["users:manage", "runs:control"], by="test")
        demoted = helpdesk.put("/api/roles/responder", json={"permissions": ["system:read"]})
        assert demoted.status_code == 403, demoted.text
        assert demoted.json()["permission"] == "runs:control"
        # One who holds no more than the caller is theirs to manage.
        assert helpdesk.put("/api/users/newbie/password", json={"password": taken_over}).is_success
        assert helpdesk.patch("/api/users/newbie", json={"disabled": True}).is_success
    root = runtime.users.get("root")
    assert (root.status, root.role, root.email) == ("active", "admin", None)
    assert runtime.roles.permissions("responder") == {
        Permission.USERS_MANAGE,
        Permission.RUNS_CONTROL,
    }
    with live_server.client() as anonymous:
        refused = anonymous.post("/api/login", json={"name": "root", "password": taken_over})
        assert refused.status_code == 401
        assert anonymous.post("/api/login", json={"name": "root", "password": PASSWORD}).is_success


def test_a_refused_role_change_changes_nothing_else(
    live_server: LiveServer, role_tokens: dict[Role, str], runtime: Runtime
) -> None:
    runtime.users.add("bob", "analyst", by="test")
    with live_server.client(role_tokens[Role.ADMIN]) as admin:
        refused = admin.patch("/api/users/bob", json={"role": "overlord", "display_name": "B"})
        assert refused.status_code == 422
        refused = admin.patch("/api/users/bob", json={"email": "nope", "display_name": "B"})
        assert refused.status_code == 422
    assert (runtime.users.get("bob").display_name, runtime.users.get("bob").role) == (
        None,
        "analyst",
    )
