"""Schema migrations: upgrade, downgrade and inspect, through Alembic, on either backend.

Alembic is imported only when a migration has to be read or run. Opening a store that is
already at the newest migration reads its stamp with one query, and finds the newest migration
by its file name (``NNNN_words.py``, whose revision id is the name without ``.py``; a test holds
every migration to that). That spares every CLI command the third of a second that importing
Alembic, Mako and Pygments costs.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from quell.errors import InvalidInput, MigrationRequired
from quell.store.database import Backend, Database

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "quell.store:migrations"
VERSIONS_DIR = Path(__file__).parent / "migrations" / "versions"
MIGRATION_FILE = re.compile(r"(\d{4}_\w+)\.py")
_VERSION_TABLE = "alembic_version"
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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

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
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _stamp(db: Database) -> str | None:
    """The revision the store is stamped with, read without Alembic; None when unstamped.

    More than one row (branched heads, which Quell's linear history never makes) reads as
    None too, so that Alembic itself judges such a store.
    """
    with db.read() as conn:
        if not inspect(conn).has_table(_VERSION_TABLE):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


@cache
def newest_migration(directory: Path = VERSIONS_DIR) -> str | None:
    """The newest migration by file name, without Alembic.

    None, so that Alembic looks, unless the files number 0001 to N without a gap or a
    repeat: an install missing a migration in the middle must not be told that a store
    stamped with the newest is current (Alembic refuses its broken history)."""
    names = sorted(
        match.group(1)
        for path in directory.iterdir()
        if (match := MIGRATION_FILE.fullmatch(path.name))
    )
    if [int(name[:4]) for name in names] != list(range(1, len(names) + 1)):
        return None
    return names[-1] if names else None


def _at_head(db: Database) -> SchemaState | None:
    """The state of a store already at the newest migration, or None when Alembic must look."""
    newest = newest_migration()
    if newest is not None and _stamp(db) == newest:
        return SchemaState(current=newest, head=newest, status=SchemaStatus.CURRENT)
    return None


def state(db: Database) -> SchemaState:
    """The schema's revision compared with this code's head."""
    at_head = _at_head(db)
    if at_head is not None:
        return at_head
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
    from alembic import command
    from alembic.util.exc import CommandError

    with db.migration() as conn:
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
