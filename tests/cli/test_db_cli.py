"""``quell db`` on both backends, from a blank database."""

from __future__ import annotations

import json

import pytest

from quell.store import migrate
from tests.cli.conftest import Invoke


@pytest.fixture
def env(blank_database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": blank_database_url}


def test_upgrade_is_idempotent_and_downgrade_empties(invoke: Invoke, env: dict[str, str]) -> None:
    head = migrate.head_revision()
    first = invoke("db", "upgrade", env=env)
    assert first.exit_code == 0, first.stderr
    assert f"upgraded from base to {head}" in first.stdout
    second = invoke("db", "upgrade", env=env)
    assert second.exit_code == 0
    assert f"already at {head}; nothing to do" in second.stdout

    status = json.loads(invoke("db", "status", "--json", env=env).stdout)
    assert status["status"] == "current"
    assert status["current"] == head

    down = invoke("db", "downgrade", "base", "--yes", env=env)
    assert down.exit_code == 0, down.stderr
    status = json.loads(invoke("db", "status", "--json", env=env).stdout)
    assert status["status"] == "empty"


def test_downgrade_asks_first(invoke: Invoke, env: dict[str, str]) -> None:
    invoke("db", "upgrade", env=env)
    refused = invoke("db", "downgrade", "base", env=env, input="n\n")
    assert refused.exit_code == 1
    assert "Aborted" in refused.stderr
    status = json.loads(invoke("db", "status", "--json", env=env).stdout)
    assert status["status"] == "current"


def test_history_lists_every_migration(invoke: Invoke) -> None:
    result = invoke("db", "history", "--json")
    assert [entry["id"] for entry in json.loads(result.stdout)] == [
        revision.id for revision in migrate.history()
    ]


def test_commands_refuse_a_stale_schema_when_auto_migrate_is_off(
    invoke: Invoke, env: dict[str, str]
) -> None:
    result = invoke("token", "list", env={**env, "QUELL_AUTO_MIGRATE": "false"})
    assert result.exit_code == 1
    assert "run `quell db upgrade`" in result.stderr
