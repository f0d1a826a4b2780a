"""``quell token``, on both backends."""

from __future__ import annotations

import json

import pytest

from quell.errors import AuthenticationRequired
from quell.governance.tokens import is_well_formed
from quell.runtime import Runtime
from quell.settings import load_settings
from tests.cli.conftest import Invoke
from tests.cli.processes import run_quell


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def test_create_prints_the_token_alone_on_the_last_line(env: dict[str, str]) -> None:
    result = run_quell(
        "token", "create", "--name", "ci", "--role", "admin", env=env, merge_stderr=True
    )
    assert result.returncode == 0, result.stdout
    lines = result.stdout.rstrip("\n").splitlines()
    assert is_well_formed(lines[-1])
    assert "cannot be shown again" in lines[-2]


def test_expected_errors_are_one_line_without_traceback(env: dict[str, str]) -> None:
    result = run_quell("token", "revoke", "ghost", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: no active token named 'ghost'"
    assert "Traceback" not in result.stderr + result.stdout


def test_list_shows_name_role_created_and_last_used_then_revoke_refuses_at_once(
    invoke: Invoke, env: dict[str, str]
) -> None:
    token = invoke("token", "create", "--name", "siem", "--role", "analyst", env=env).stdout
    token = token.strip()
    listing = invoke("token", "list", env=env)
    assert listing.exit_code == 0
    header, row = listing.stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "ROLE", "STATUS", "CREATED", "LAST"]
    assert row.split()[:3] == ["siem", "analyst", "active"]
    assert "never" in row

    settings = load_settings(database_url=env["QUELL_DATABASE_URL"])
    with Runtime.open(settings) as runtime:
        runtime.tokens.authenticate(token)
    used = json.loads(invoke("token", "list", "--json", env=env).stdout)
    assert used[0]["last_used_at"] is not None
    assert used[0]["created_at"] <= used[0]["last_used_at"]

    revoked = invoke("token", "revoke", "siem", env=env)
    assert revoked.exit_code == 0
    assert revoked.stdout.strip() == "Revoked token 'siem'."
    with Runtime.open(settings) as runtime, pytest.raises(AuthenticationRequired):
        runtime.tokens.authenticate(token)
    assert invoke("token", "list", "--json", env=env).stdout.strip() == "[]"


def test_expiry_is_shown(invoke: Invoke, env: dict[str, str]) -> None:
    created = invoke(
        "token", "create", "--name", "tmp", "--role", "auditor", "--expires-in", "12h", env=env
    )
    assert "expires " in created.stderr
    listed = json.loads(invoke("token", "list", "--json", env=env).stdout)
    assert listed[0]["expires_at"] is not None


def test_duplicate_and_bad_expiry_are_one_line_errors(invoke: Invoke, env: dict[str, str]) -> None:
    invoke("token", "create", "--name", "dup", "--role", "admin", env=env)
    duplicate = invoke("token", "create", "--name", "dup", "--role", "admin", env=env)
    assert duplicate.exit_code == 1
    assert (
        duplicate.stderr.strip()
        .splitlines()[-1]
        .startswith("error: an unrevoked token named 'dup' exists")
    )
    bad = invoke("token", "create", "--name", "x", "--role", "admin", "--expires-in", "1y", env=env)
    assert bad.exit_code == 1
    assert "--expires-in: '1y' is not a duration" in bad.stderr


def test_bad_settings_are_one_line(invoke: Invoke, env: dict[str, str]) -> None:
    result = invoke("token", "list", env={**env, "QUELL_API_PORT": "not-a-port"})
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: invalid setting api_port (from QUELL_API_PORT): "
        "Input should be a valid integer, unable to parse string as an integer"
    )


def test_usage_errors_exit_2(invoke: Invoke, env: dict[str, str]) -> None:
    result = invoke("token", "create", "--name", "x", "--role", "overlord", env=env)
    assert result.exit_code == 1  # roles are looked up (custom ones too): a one-line error
    assert "unknown role 'overlord'" in result.stderr
