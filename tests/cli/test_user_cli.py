"""``quell user`` and ``quell token create --user``, on both backends."""

from __future__ import annotations

import json

import pytest

from quell.errors import AuthenticationRequired
from quell.governance.permissions import Role
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from quell.settings import load_settings
from tests.cli.conftest import Invoke
from tests.cli.processes import run_quell

PASSWORD = "correct horse battery staple"


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def test_user_round_trip(invoke: Invoke, env: dict[str, str]) -> None:
    added = invoke(
        "user", "add", "alice", "--role", "analyst", "--password-stdin", env=env,
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == "Added user 'alice' (analyst, active)."
    assert PASSWORD not in added.output
    nopass = invoke("user", "add", "bot", "--role", "auditor", env=env)
    assert "no password yet" in nopass.stdout

    listing = invoke("user", "list", env=env)
    header, first = listing.stdout.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "ROLE", "STATUS", "PASSWORD"]
    assert first.split()[:4] == ["alice", "analyst", "active", "set"]

    settings = load_settings(database_url=env["QUELL_DATABASE_URL"])
    with Runtime.open(settings) as runtime:
        session, _ = runtime.users.login("alice", SecretValue(PASSWORD))

    assert invoke("user", "set-role", "alice", "approver", env=env).exit_code == 0
    with Runtime.open(settings) as runtime:
        assert runtime.users.authenticate(session.reveal()).role == Role.APPROVER

    token = invoke("token", "create", "--name", "alice-cli", "--user", "alice", env=env)
    assert token.exit_code == 0, token.output
    assert "for user 'alice' with role approver" in token.stderr
    listed = json.loads(invoke("token", "list", "--json", env=env).stdout)
    assert listed[0]["user"] == "alice"

    disabled = invoke("user", "disable", "alice", env=env)
    assert disabled.stdout.strip() == "Disabled user 'alice' (approver, disabled)."
    with Runtime.open(settings) as runtime:
        with pytest.raises(AuthenticationRequired):
            runtime.tokens.authenticate(token.stdout.strip())
        with pytest.raises(AuthenticationRequired):
            runtime.users.authenticate(session.reveal())
    assert invoke("user", "enable", "alice", env=env).exit_code == 0
    with Runtime.open(settings) as runtime:
        assert runtime.tokens.authenticate(token.stdout.strip()).user == "alice"

    new = "a brand new long password"
    changed = invoke("user", "set-password", "alice", "--password-stdin", env=env, input=new)
    assert changed.exit_code == 0, changed.output
    with Runtime.open(settings) as runtime:
        runtime.users.login("alice", SecretValue(new))

    as_json = json.loads(invoke("user", "list", "--json", env=env).stdout)
    assert [user["name"] for user in as_json] == ["alice", "bot"]
    assert as_json[0]["last_login_at"] is not None
    assert all("password_hash" not in user for user in as_json)


def test_errors_are_one_line(env: dict[str, str]) -> None:
    short = run_quell(
        "user", "add", "eve", "--role", "admin", "--password-stdin", env=env
    )  # empty stdin
    assert short.returncode == 1
    assert short.stderr.strip().splitlines()[-1] == "error: no password on stdin"
    missing = run_quell("user", "disable", "ghost", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "error: no user named 'ghost'"
    assert "Traceback" not in short.stderr + missing.stderr


def test_token_create_needs_a_role_or_a_user(invoke: Invoke, env: dict[str, str]) -> None:
    result = invoke("token", "create", "--name", "x", env=env)
    assert result.exit_code == 2
    assert "--role" in result.output
