"""The database handle on both backends."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.exc import StatementError

from quell.errors import ConfigurationError, StorageUnavailable
from quell.settings import SqliteSynchronous
from quell.store.database import Backend, Database, hide_password, parse_database_url
from quell.store.types import UTCDateTime

scratch = MetaData()
events = Table(
    "scratch_events",
    scratch,
    Column("id", Integer, primary_key=True),
    Column("name", String(32), nullable=False, unique=True),
    Column("at", UTCDateTime(), nullable=True),
)


@pytest.fixture
def scratch_db(database: Database) -> Database:
    scratch.create_all(database.engine)
    yield database
    scratch.drop_all(database.engine)


def test_ping_answers(database: Database) -> None:
    database.ping()


def test_write_commits_and_a_failed_write_leaves_nothing(scratch_db: Database) -> None:
    with scratch_db.write() as conn:
        conn.execute(insert(events).values(id=1, name="first"))

    def abort_after_insert() -> None:
        with scratch_db.write() as conn:
            conn.execute(insert(events).values(id=2, name="second"))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        abort_after_insert()
    with scratch_db.read() as conn:
        names = conn.execute(select(events.c.name)).scalars().all()
    assert names == ["first"]


def test_datetimes_come_back_aware_in_utc(scratch_db: Database) -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=paris)
    with scratch_db.write() as conn:
        conn.execute(insert(events).values(id=1, name="tz", at=moment))
    with scratch_db.read() as conn:
        stored = conn.execute(select(events.c.at)).scalar_one()
    assert stored == moment
    assert stored.tzinfo == UTC
    assert stored.hour == 11


def test_naive_datetimes_are_refused(scratch_db: Database) -> None:
    with pytest.raises(StatementError, match="naive datetime"), scratch_db.write() as conn:
        conn.execute(insert(events).values(id=1, name="naive", at=datetime(2026, 1, 1)))


def test_display_url_hides_passwords_in_userinfo_and_query() -> None:
    db = Database("postgresql://quell:hunter2-secret@127.0.0.1:1/quell?sslpassword=q-canary")
    for shown in (db.display_url, repr(db)):
        assert "hunter2-secret" not in shown
        assert "q-canary" not in shown
    assert "hunter2" not in hide_password("postgresql://u:hunter2@h/db?password=hunter2")
    assert "sslmode=require" in hide_password("postgresql://u@h/db?sslmode=require")


@pytest.mark.parametrize(
    ("url", "expected", "driver"),
    [
        ("sqlite:////tmp/x.db", Backend.SQLITE, "sqlite+pysqlite"),
        ("postgresql://u@h/db", Backend.POSTGRESQL, "postgresql+psycopg"),
        ("postgres://u@h/db", Backend.POSTGRESQL, "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", Backend.POSTGRESQL, "postgresql+psycopg"),
    ],
)
def test_urls_pick_quells_driver(url: str, expected: Backend, driver: str) -> None:
    parsed, found = parse_database_url(url)
    assert found is expected
    assert parsed.drivername == driver


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/quell", "unsupported database 'mysql'"),
        ("not a url", "is not a database URL"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_bad_urls_are_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Database(url)


def test_unreachable_postgres_is_storage_unavailable_without_the_url() -> None:
    db = Database("postgresql://quell:s3cret-pw@127.0.0.1:9/quell?password=q-canary")
    with pytest.raises(StorageUnavailable) as caught:
        db.ping()
    assert "s3cret-pw" not in str(caught.value)
    assert "q-canary" not in str(caught.value)
    assert caught.value.code == "storage_unavailable"


def test_a_sqlite_path_under_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="cannot create the folder"):
        Database(f"sqlite:///{tmp_path / 'file' / 'sub' / 'q.db'}")


@pytest.mark.parametrize("mode", list(SqliteSynchronous))
def test_sqlite_runs_in_wal_with_the_configured_synchronous(
    tmp_path: Path, mode: SqliteSynchronous
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'q.db'}", sqlite_synchronous=mode)
    with db.read() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        # synchronous: 1 = NORMAL, 2 = FULL
        assert (
            conn.execute(text("PRAGMA synchronous")).scalar_one()
            == {"normal": 1, "full": 2}[mode.value]
        )
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    db.dispose()


def test_sqlite_write_transactions_take_the_lock_up_front(tmp_path: Path) -> None:
    """A second writer waits for the first instead of failing half-way with SQLITE_BUSY."""
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    scratch.create_all(db.engine)
    with db.write() as first:
        first.execute(select(events.c.id))  # read only: the lock must already be held
        raw = db.engine.raw_connection()
        try:
            other = raw.driver_connection
            other.execute("PRAGMA busy_timeout=0")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            raw.close()
    db.dispose()


@pytest.mark.requires("postgres")
def test_postgres_connections_idle_a_while_are_pinged_and_dead_ones_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pooled connection whose server side died while it sat idle is found out by the
    checkout ping and replaced: the caller never sees it. One back in the pool a moment ago
    goes out unpinged (no round trip per transaction), so if it died in that moment the next
    transaction on it fails as StorageUnavailable, and the one after gets a fresh connection."""
    from quell.store import database as module

    url = os.environ["QUELL_TEST_POSTGRES_URL"]
    db = Database(url, pool_size=1)
    admin = Database(url)

    def backend_pid() -> int:
        with db.read() as conn:
            return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def kill(pid: int) -> None:
        with admin.write() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    try:
        first = backend_pid()
        assert backend_pid() == first  # pooled: the same server process, no reconnect

        # Idle "longer" than the threshold: the ping finds the connection dead.
        kill(first)
        monkeypatch.setattr(module, "PING_AFTER_IDLE_SECONDS", 0.0)
        second = backend_pid()
        assert second != first

        # Back in the pool a moment ago: not pinged, so its death shows once.
        monkeypatch.setattr(module, "PING_AFTER_IDLE_SECONDS", 3600.0)
        kill(second)
        with pytest.raises(StorageUnavailable) as caught:
            backend_pid()
        assert "postgresql database is unavailable" in str(caught.value)
        assert backend_pid() not in (first, second)
    finally:
        db.dispose()
        admin.dispose()
