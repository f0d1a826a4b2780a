"""A command loads what it needs and no more, so that the CLI answers quickly.

Each check runs ``quell`` in a fresh interpreter, which is the only place the set of loaded
modules means anything, and reads that set after the command has run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

_PROBE = """
import json, sys
from click.testing import CliRunner
from quell.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:], catch_exceptions=False)
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"exit": result.exit_code, "output": result.output, "loaded": loaded}))
"""


@dataclass(frozen=True)
class Report:
    """What a command printed, and the top-level packages loaded once it had run."""

    output: str
    loaded: frozenset[str]


def _run(data_dir: Path, *args: str) -> Report:
    env = {**os.environ, "QUELL_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, check=True
    )
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["exit"] == 0, found["output"]
    return Report(output=found["output"], loaded=frozenset(found["loaded"]))


def test_version_loads_no_database_or_http_stack(tmp_path: Path) -> None:
    report = _run(tmp_path / "data", "version")
    assert report.output.strip().startswith("quell ")
    assert not report.loaded & {"sqlalchemy", "alembic", "aiohttp", "fastapi", "psycopg", "lark"}


@pytest.fixture
def current_store(tmp_path: Path) -> Path:
    """A data dir whose SQLite store is already at the newest migration."""
    data_dir = tmp_path / "data"
    _run(data_dir, "db", "upgrade")
    return data_dir


def test_root_help_loads_no_database_or_http_stack(tmp_path: Path) -> None:
    """``quell --help`` loads every group to show it, each importing only what it declares."""
    report = _run(tmp_path / "data", "--help")
    assert "approval" in report.output
    assert not report.loaded & {"sqlalchemy", "alembic", "aiohttp", "fastapi", "psycopg", "lark"}


def test_a_read_on_a_current_store_loads_no_migrations_engine_or_other_groups(
    current_store: Path,
) -> None:
    report = _run(current_store, "alert", "list", "--json")
    assert json.loads(report.output) == []
    assert "sqlalchemy" in report.loaded  # the read itself ran
    # Alembic is needed only to migrate; the HTTP stack and the PostgreSQL driver only by
    # commands that use them.
    assert not report.loaded & {"alembic", "mako", "aiohttp", "fastapi", "uvicorn", "psycopg"}


def test_a_store_behind_is_still_migrated_when_a_command_opens_it(current_store: Path) -> None:
    """The fast path reads the stamp; a store one migration behind goes through Alembic."""
    from quell.store import migrate
    from quell.store.database import Database

    db = Database(f"sqlite:///{current_store / 'quell.db'}")
    try:
        newest = migrate.history()[-1]
        migrate.downgrade(db, newest.down or "base")
        assert migrate.state(db).status is migrate.SchemaStatus.BEHIND
        report = _run(current_store, "alert", "list", "--json")
        assert "alembic" in report.loaded
        assert migrate.state(db).current == newest.id
    finally:
        db.dispose()


def test_listing_the_connectors_loads_no_ssh_stack(current_store: Path) -> None:
    """Every engine process and ``quell playbook validate`` discover the connectors; the SSH
    library (0.2 s to import) loads only when a connection is made or a key is checked."""
    report = _run(current_store, "connector", "list", "--json")
    listed = json.loads(report.output)
    assert {"ssh", "runner"} <= {c["name"] for c in listed["connectors"]}
    assert "asyncssh" not in report.loaded
