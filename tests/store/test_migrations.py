"""Migrations: idempotent upgrade, a downgrade for every step, and code matching the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from quell.cases.search import ENGINE_OBJECTS
from quell.errors import InvalidInput, MigrationRequired
from quell.store import migrate
from quell.store.database import Database
from quell.store.schema import metadata


def _schema_snapshot(db: Database) -> dict[str, object]:
    """Tables, columns and indexes as the database reports them, plus the revision."""
    with db.read() as conn:
        inspector = inspect(conn)
        snapshot: dict[str, object] = {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                sorted(
                    (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                ),
            )
            for table in sorted(inspector.get_table_names())
        }
        snapshot["revision"] = MigrationContext.configure(conn).get_current_revision()
    return snapshot


@pytest.fixture
def blank(blank_database_url: str) -> Database:
    db = Database(blank_database_url)
    yield db
    db.dispose()


def test_upgrade_twice_changes_nothing_the_second_time(blank: Database) -> None:
    assert migrate.state(blank).status is migrate.SchemaStatus.EMPTY
    before, after = migrate.upgrade(blank)
    assert (before, after) == (None, migrate.head_revision())
    first = _schema_snapshot(blank)
    assert "api_tokens" in first

    again = migrate.upgrade(blank)
    assert again == (after, after)
    assert _schema_snapshot(blank) == first
    assert migrate.state(blank).status is migrate.SchemaStatus.CURRENT


def test_every_migration_downgrades_and_upgrades_again(blank: Database) -> None:
    revisions = migrate.history()
    migrate.upgrade(blank)
    for revision in reversed(revisions):
        target = revision.down or "base"
        _, now = migrate.downgrade(blank, target)
        assert now == revision.down
    emptied = _schema_snapshot(blank)
    assert set(emptied) == {"alembic_version", "revision"}
    assert emptied["revision"] is None
    for revision in revisions:
        _, now = migrate.upgrade(blank, revision.id)
        assert now == revision.id


def test_models_and_migrations_agree(blank: Database) -> None:
    migrate.upgrade(blank)
    with blank.read() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": _not_an_engine_object, "include_name": _not_fts}
        )
        differences = compare_metadata(context, metadata)
    assert differences == []


def _not_an_engine_object(item: Any, name: str | None, kind: str, *args: Any) -> bool:
    """The full-text engines' own objects (an FTS5 table and its shadow tables, a GIN
    expression index) are made by their migration, not described by the metadata."""
    return not (name or "").startswith(tuple(ENGINE_OBJECTS))


def _not_fts(name: str | None, kind: str, parent: Any) -> bool:
    return not (name or "").startswith(tuple(ENGINE_OBJECTS))


def test_a_blank_database_is_refused_without_auto_migrate(blank: Database) -> None:
    with pytest.raises(MigrationRequired, match="run `quell db upgrade`"):
        migrate.ensure_schema(blank, auto_migrate=False)
    migrate.ensure_schema(blank, auto_migrate=True)
    assert migrate.state(blank).status is migrate.SchemaStatus.CURRENT


def test_a_schema_from_a_newer_quell_is_refused(blank: Database) -> None:
    migrate.upgrade(blank)
    with blank.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    assert migrate.state(blank).status is migrate.SchemaStatus.AHEAD
    with pytest.raises(MigrationRequired, match="newer than this Quell"):
        migrate.upgrade(blank)


def test_downgrade_to_an_unknown_revision_names_it(blank: Database) -> None:
    migrate.upgrade(blank)
    with pytest.raises(InvalidInput, match="no-such-revision"):
        migrate.downgrade(blank, "no-such-revision")


def test_every_migration_file_is_named_by_its_revision() -> None:
    """Opening a store finds the newest migration by file name, without Alembic; that holds
    only while every file is ``<revision>.py`` and the names sort in migration order."""
    scripts = list(migrate._scripts().walk_revisions())
    assert len(scripts) == len(migrate.history()) >= 20
    for script in scripts:
        name = Path(script.path).name
        assert migrate.MIGRATION_FILE.fullmatch(name), name
        assert name == f"{script.revision}.py"
    assert migrate.newest_migration() == migrate.head_revision()


@pytest.mark.parametrize(
    ("files", "newest"),
    [
        (["0001_a.py", "0002_b.py", "0003_c.py", "__init__.py", "notes.txt"], "0003_c"),
        (["0001_a.py", "0003_c.py"], None),  # 0002 missing: Alembic must look
        (["0001_a.py", "0002_b.py", "0002_b2.py"], None),  # two of one number
        (["0002_b.py", "0003_c.py"], None),  # no first
        ([], None),
    ],
)
def test_the_newest_migration_is_trusted_only_from_an_unbroken_sequence(
    tmp_path: Path, files: list[str], newest: str | None
) -> None:
    for name in files:
        (tmp_path / name).write_text("")
    assert migrate.newest_migration(tmp_path) == newest


def test_a_store_one_migration_behind_is_seen_behind_and_upgraded(blank: Database) -> None:
    migrate.upgrade(blank)
    newest = migrate.history()[-1]
    migrate.downgrade(blank, newest.down or "base")
    assert migrate.state(blank).status is migrate.SchemaStatus.BEHIND
    with pytest.raises(MigrationRequired, match="run `quell db upgrade`"):
        migrate.ensure_schema(blank, auto_migrate=False)
    assert migrate.ensure_schema(blank, auto_migrate=True).current == newest.id
    assert migrate.state(blank).status is migrate.SchemaStatus.CURRENT


def test_0024_gives_stored_versions_their_content_digest_and_0023_the_old_one(
    blank: Database,
) -> None:
    """Two versions of one text stored under two paths (possible before 0024): the older gets
    the digest of its content, the newer keeps its own (the digest is unique); the downgrade
    gives both their digest of old, the SHA-256 of the IR as stored."""
    import hashlib
    from datetime import UTC, datetime

    from quell.clock import SystemClock
    from quell.connectors.registry import Registry
    from quell.engine.library import PlaybookLibrary
    from quell.engine.store import PlaybookStore
    from quell.errors import Conflict
    from quell.playbooks.compiler import parse_playbook
    from quell.store.schema import playbook_versions

    migrate.upgrade(blank, "0023_waits_status_created")
    text = "id: pb\nname: A playbook\nvars: {x: 0}\nsteps:\n  - {id: one, set: {x: 1}}\n"
    rows = []
    for n, file in enumerate(("pb/triage.yaml", "/srv/pb/triage.yaml")):
        playbook = parse_playbook(text, file)
        ir = playbook.to_json().decode()
        rows.append(
            {"id": f"pbv_{n}", "playbook_id": "pb", "version": 1, "name": "A playbook",
             "digest": hashlib.sha256(ir.encode()).hexdigest(), "ir": ir,
             "source_format": "yaml", "active": False, "state": "draft",
             "created_at": datetime(2026, 1, 1, 0, n, tzinfo=UTC)}
        )  # fmt: skip
    with blank.write() as conn:
        conn.execute(playbook_versions.insert(), rows)

    def digests() -> list[str]:
        with blank.read() as conn:
            query = select(playbook_versions.c.digest).order_by(playbook_versions.c.id)
            return list(conn.execute(query).scalars())

    old = [row["digest"] for row in rows]
    assert old[0] != old[1]
    migrate.upgrade(blank)
    content = parse_playbook(text, "elsewhere.yaml").digest()
    assert digests() == [content, old[1]]
    # The newer copy's older digest is still the same content: adding the text again is no
    # change of version 1, and finds the older copy.
    library = PlaybookLibrary(
        blank, PlaybookStore(blank, SystemClock()), Registry.discover(), review_required=False
    )
    assert library.add(text, "again.yaml").id == "pbv_0"
    with pytest.raises(Conflict, match="other content"):
        library.add(text.replace("x: 1", "x: 2"), "again.yaml")
    migrate.downgrade(blank, "0023_waits_status_created")
    assert digests() == old


def test_a_store_holding_runs_goes_down_and_up_again(blank: Database) -> None:
    """On SQLite a migration in batch mode drops and recreates a table: with foreign keys on,
    dropping playbook_versions under a run that refers to it failed (a walkthrough's
    traceback from 'quell db downgrade 0014_secret_keys'), and so would an upgrade of an old
    store that holds runs. The references must still hold after the round trip."""
    from datetime import UTC, datetime

    from quell.clock import SystemClock
    from quell.engine.store import PlaybookStore
    from quell.playbooks.compiler import parse_playbook
    from quell.store.schema import runs

    migrate.upgrade(blank)
    text_ = "id: pb\nname: A playbook\nvars: {x: 0}\nsteps:\n  - {id: one, set: {x: 1}}\n"
    version = PlaybookStore(blank, SystemClock()).register(parse_playbook(text_, "pb.yaml"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with blank.write() as conn:
        conn.execute(
            runs.insert().values(
                id="run_1", playbook_version_id=version.id, playbook_id="pb", status="succeeded",
                dry_run=False, inputs={}, trigger="manual", root_run_id="run_1", created_at=now,
                updated_at=now, lease_epoch=0,
            )
        )  # fmt: skip
    migrate.downgrade(blank, "0014_secret_keys")
    migrate.upgrade(blank)
    with blank.read() as conn:
        kept = conn.execute(text("SELECT id, playbook_version_id FROM runs")).all()
        assert [tuple(row) for row in kept] == [("run_1", version.id)]
        if blank.backend.value == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # on again


def test_a_migration_may_leave_no_new_broken_reference_and_minds_no_old_one(
    tmp_path: Path,
) -> None:
    """Foreign keys are off while a migration runs on SQLite (only there: PostgreSQL keeps
    them); the check before its commit refuses a reference it broke, and does not blame it for
    one written before by a tool that had them off (a reviewer's: every migration failed with
    a traceback then)."""
    import sqlite3

    from quell.errors import ConfigurationError

    blank = Database(f"sqlite:///{tmp_path / 'quell.db'}")
    migrate.upgrade(blank)
    path = blank.url.database
    assert path is not None
    with sqlite3.connect(path) as raw:  # the sqlite3 shell's way: foreign keys off
        raw.execute(
            "INSERT INTO runs (id, playbook_version_id, playbook_id, status, dry_run, inputs, "
            "trigger, root_run_id, created_at, updated_at, lease_epoch) VALUES ('run_orphan', "
            "'pbv_gone', 'pb', 'succeeded', 0, '{}', 'manual', 'run_orphan', "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', 0)"
        )
    newest = migrate.history()[-1]
    migrate.downgrade(blank, newest.down or "base")  # the old orphan is not the migration's
    migrate.upgrade(blank)

    def break_a_reference() -> None:
        with blank.migration() as conn:
            conn.execute(
                text(
                    "INSERT INTO runs (id, playbook_version_id, playbook_id, status, dry_run, "
                    "inputs, trigger, root_run_id, created_at, updated_at, lease_epoch) SELECT "
                    "'run_new', 'pbv_none', playbook_id, status, dry_run, inputs, trigger, "
                    "'run_new', created_at, updated_at, 0 FROM runs WHERE id = 'run_orphan'"
                )
            )

    with pytest.raises(ConfigurationError, match="1 row\\(s\\) of runs referring to a missing"):
        break_a_reference()
    with blank.read() as conn:
        ids = sorted(conn.execute(text("SELECT id FROM runs")).scalars())
        assert ids == ["run_orphan"]  # nothing of the refused transaction was kept
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    blank.dispose()
