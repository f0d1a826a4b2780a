"""Schema migrations: upgrade, downgrade and inspect, through Alembic, on either backend."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, text

from quell.errors import InvalidInput, MigrationRequired
from quell.store.database import Backend, Database

SCRIPT_LOCATION = "quell.store:migrations"
# Serializes concurrent upgrades from several processes on one PostgreSQL database.
_PG_LOCK_KEY = zlib.crc32(b"quell.migrations")


class SchemaStatus(StrEnum):
    """How the database schema compares with the code."""

    EMPTY = "empty"
    BEHIND = "behind"
    CURRENT = "current"
    AHEAD = "ahead"


@dataclass(frozen=True)
class SchemaState:
    """Where the database is and where the code wants it."""

    current: str | None
    head: str
    status: SchemaStatus


@dataclass(frozen=True)
class Revision:
    """One migration."""

    id: str
    down: str | None
    message: str


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest migration this code knows."""
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def history() -> list[Revision]:
    """All migrations, oldest first."""
    revisions = [
        Revision(
            id=script.revision,
            down=script.down_revision if isinstance(script.down_revision, str) else None,
            message=(script.doc or "").strip(),
        )
        for script in _scripts().walk_revisions()
    ]
    return list(reversed(revisions))


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def state(db: Database) -> SchemaState:
    """The schema's revision compared with this code's head."""
    with db.read() as conn:
        current = _current(conn)
    head = head_revision()
    if current is None:
        status = SchemaStatus.EMPTY
    elif current == head:
        status = SchemaStatus.CURRENT
    elif current in {revision.id for revision in history()}:
        status = SchemaStatus.BEHIND
    else:
        status = SchemaStatus.AHEAD
    return SchemaState(current=current, head=head, status=status)


def _run(db: Database, operation: str, revision: str) -> tuple[str | None, str | None]:
    with db.write() as conn:
        if db.backend is Backend.POSTGRESQL:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        before = _current(conn)
        config = _config()
        config.attributes["connection"] = conn
        try:
            if operation == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        except CommandError as exc:
            raise InvalidInput(
                f"cannot {operation} to {revision!r}: {exc}", revision=revision
            ) from None
        after = _current(conn)
    return before, after


def upgrade(db: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply pending migrations up to ``revision``; returns (before, after). Idempotent."""
    schema = state(db)
    if schema.status is SchemaStatus.AHEAD:
        raise MigrationRequired(
            f"the database schema ({schema.current}) is newer than this Quell ({schema.head}); "
            "upgrade Quell",
            current=schema.current,
            head=schema.head,
        )
    if revision == "head" and schema.status is SchemaStatus.CURRENT:
        return schema.current, schema.current
    return _run(db, "upgrade", revision)


def downgrade(db: Database, revision: str) -> tuple[str | None, str | None]:
    """Revert migrations down to ``revision`` (``base`` for an empty schema)."""
    return _run(db, "downgrade", revision)


def ensure_schema(db: Database, *, auto_migrate: bool) -> SchemaState:
    """Bring the schema to head (``auto_migrate``) or refuse to run against another revision."""
    schema = state(db)
    if schema.status is SchemaStatus.CURRENT:
        return schema
    if auto_migrate and schema.status is not SchemaStatus.AHEAD:
        _, after = _run(db, "upgrade", "head")
        return SchemaState(current=after, head=schema.head, status=SchemaStatus.CURRENT)
    if schema.status is SchemaStatus.AHEAD:
        raise MigrationRequired(
            f"the database schema ({schema.current}) is newer than this Quell ({schema.head}); "
            "upgrade Quell",
            current=schema.current,
            head=schema.head,
        )
    raise MigrationRequired(
        f"the database schema is {schema.status.value} "
        f"(at {schema.current or 'nothing'}, this Quell needs {schema.head}); "
        "run `quell db upgrade`",
        current=schema.current,
        head=schema.head,
    )
