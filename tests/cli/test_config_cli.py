"""``quell config show``."""

from __future__ import annotations

import json

from tests.cli.conftest import Invoke


def test_show_redacts_the_secret_key_and_the_database_password(invoke: Invoke) -> None:
    env = {
        "QUELL_SECRET_KEY": "s" * 40,
        "QUELL_DATABASE_URL": "postgresql://quell:db-pass-canary@db.internal/quell",
    }
    result = invoke("config", "show", "--json", env=env)
    assert result.exit_code == 0
    shown = json.loads(result.stdout)["settings"]
    assert shown["secret_key"] == "**********"
    assert "db-pass-canary" not in result.stdout
    assert shown["database_url"].startswith("postgresql://quell:***@db.internal")
    table = invoke("config", "show", env=env).stdout
    assert "QUELL_API_PORT" in table
    assert "db-pass-canary" not in table
