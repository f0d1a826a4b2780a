"""The database handle: one SQLAlchemy engine, set up for SQLite (WAL) or PostgreSQL.

Transactions are explicit and short. :meth:`Database.read` opens a read transaction;
:meth:`Database.write` opens a write transaction, which on SQLite is ``BEGIN IMMEDIATE`` so the
write lock is taken up front: a deferred transaction that reads and then tries to write can
fail with ``SQLITE_BUSY`` instead of waiting, an upgrade deadlock that WAL does not prevent.
Many small writes from many callers go through :class:`quell.store.group_commit.GroupCommitter`
instead, which shares one commit among them.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, OperationalError

from quell.codec import column_json
from quell.errors import ConfigurationError, StorageUnavailable
from quell.settings import SqliteSynchronous

_WRITE_OPTION = "quell_write"
SQLITE_BUSY_TIMEOUT_MS = 10_000


class Backend(StrEnum):
    """The database products Quell runs on."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


def parse_database_url(url: str) -> tuple[URL, Backend]:
    """Parse and normalize a database URL; pick the driver Quell uses for its backend."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            "QUELL_DATABASE_URL is not a database URL; expected sqlite:///PATH or "
            "postgresql://USER@HOST/DB",
            env="QUELL_DATABASE_URL",
        ) from None
    backend_name = parsed.get_backend_name()
    if backend_name == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared between connections; "
                "give QUELL_DATABASE_URL a file path",
                env="QUELL_DATABASE_URL",
            )
        return parsed.set(drivername="sqlite+pysqlite"), Backend.SQLITE
    if backend_name in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg"), Backend.POSTGRESQL
    raise ConfigurationError(
        f"unsupported database {backend_name!r} in QUELL_DATABASE_URL; use sqlite or postgresql",
        env="QUELL_DATABASE_URL",
    )


_SENSITIVE_QUERY = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def _masked(url: URL) -> str:
    query = {
        name: ("***" if _SENSITIVE_QUERY.search(name) else value)
        for name, value in url.query.items()
    }
    return url.set(query=query).render_as_string(hide_password=True)


def hide_password(url: str) -> str:
    """``url`` with its password (and password-like query values) masked, for display."""
    try:
        return _masked(make_url(url))
    except ArgumentError:
        return "(unparseable database URL)"


class Database:
    """An engine plus the transaction discipline Quell relies on."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.NORMAL,
        pool_size: int = 10,
        busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    ) -> None:
        self.url, self.backend = parse_database_url(url)
        self.sqlite_synchronous = sqlite_synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.engine = self._create_engine(pool_size)

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, for the operator's eyes (CLI, logs).

        Never put it in an error a remote caller can see: host and database names are
        reconnaissance too.
        """
        return _masked(self.url)

    def _create_engine(self, pool_size: int) -> Engine:
        if self.backend is Backend.SQLITE:
            path = Path(self.url.database or "")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the folder of the SQLite database {path}: {exc.strerror}",
                    env="QUELL_DATABASE_URL",
                ) from None
            engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                hide_parameters=True,
                connect_args={"check_same_thread": False, "timeout": self.busy_timeout_ms / 1000},
                json_serializer=_json_dumps,
                json_deserializer=orjson.loads,
            )
            event.listen(engine, "connect", self._on_sqlite_connect)
            event.listen(engine, "begin", _on_sqlite_begin)
            return engine
        engine = create_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=pool_size,
            hide_parameters=True,  # bound values (secrets, payloads) never reach error text
            connect_args={"connect_timeout": 5, "application_name": "quell"},
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
        # Instead of pool_pre_ping (a round trip before every transaction), a connection is
        # pinged when it comes out of the pool after an idle spell (see _ping_if_idle).
        event.listen(engine, "connect", _stamp)
        event.listen(engine, "checkin", _stamp)
        event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
        return engine

    def _on_sqlite_connect(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN (pysqlite's own transaction handling
        # would start transactions lazily and skip DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={self.sqlite_synchronous.value.upper()}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            cursor.execute("PRAGMA temp_store=MEMORY")
            # 64 MiB of page cache per connection (the default is 2 MiB): index lookups of
            # dedup and correlation stay in memory as the alert tables grow.
            cursor.execute("PRAGMA cache_size=-65536")
        finally:
            cursor.close()

    def unavailable(self, exc: DBAPIError) -> StorageUnavailable:
        """The error that says this database cannot be reached (``exc``: the driver's)."""
        return StorageUnavailable(
            f"the {self.backend.value} database is unavailable: {_reason(exc)}",
            backend=self.backend.value,
        )

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A pooled connection with no transaction opened yet."""
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise self.unavailable(exc) from exc
        with conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A short read transaction."""
        with self._transaction(write=False) as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; commits on success, rolls back on error.

        Operational failures (the server went away, SQLite stayed locked past the busy
        timeout) surface as :class:`StorageUnavailable`; integrity and programming errors
        pass through unchanged, since they are about the statement, not the database.
        """
        with self._transaction(write=True) as conn:
            yield conn

    @contextmanager
    def migration(self) -> Iterator[Connection]:
        """The write transaction migrations run in. On SQLite, foreign keys are off for it:
        a migration in batch mode copies a table, drops it and renames the copy, and dropping a
        table other rows refer to fails while they are on. SQLite takes that setting only
        outside a transaction, so it is set on the connection around this one; before the
        commit, ``PRAGMA foreign_key_check`` must find no broken reference that was not
        there before (rows written with foreign keys off by another tool are not the
        migration's doing)."""
        if self.backend is not Backend.SQLITE:
            with self.write() as conn:
                yield conn
            return
        try:
            with self.connect() as conn:
                raw = conn.connection.driver_connection
                assert raw is not None  # a checked-out connection
                raw.execute("PRAGMA foreign_keys=OFF")
                try:
                    conn.execution_options(**{_WRITE_OPTION: True})
                    with conn.begin():
                        before = _broken_references(conn)
                        yield conn
                        after = _broken_references(conn)
                        for (table, parent), count in after.items():
                            new = count - before.get((table, parent), 0)
                            if new > 0:
                                raise ConfigurationError(
                                    f"the migration would leave {new} row(s) of {table} "
                                    f"referring to a missing {parent}; nothing was changed"
                                )
                finally:
                    raw.execute("PRAGMA foreign_keys=ON")
        except OperationalError as exc:
            raise self.unavailable(exc) from exc

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        try:
            with self.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise self.unavailable(exc) from exc

    def ping(self) -> None:
        """Raise :class:`StorageUnavailable` unless the database answers a query."""
        try:
            with self.read() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            raise self.unavailable(exc) from exc

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"


def _broken_references(conn: Connection) -> dict[tuple[str, str], int]:
    """SQLite's broken foreign keys, counted by (table, the table it refers to)."""
    found: dict[tuple[str, str], int] = {}
    for row in conn.exec_driver_sql("PRAGMA foreign_key_check"):
        found[(row[0], row[2])] = found.get((row[0], row[2]), 0) + 1
    return found


def _json_dumps(value: Any) -> str:
    return column_json(value)


PING_AFTER_IDLE_SECONDS = 5.0
_IDLE_SINCE = "quell_idle_since"


def _stamp(_dbapi_connection: Any, record: Any) -> None:
    """Note when a PostgreSQL connection was made or went back to the pool."""
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dialect: Any, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a pooled PostgreSQL connection that sat idle for a while before it is used.

    A connection back in the pool within the last few seconds (the journal writer's, the
    claim loop's: thousands of transactions a second) goes out unpinged: a round trip each
    would cost a quarter of a small transaction. One idle longer (the server may have restarted,
    or a firewall dropped it) is pinged as ``pool_pre_ping`` would, and a dead one is replaced
    before anyone sees it. A server that goes away within those seconds fails the next
    transaction on that connection with StorageUnavailable (the engine replays the runs it
    held; an API call answers 503), and the pool then drops its connections."""
    since = record.info.get(_IDLE_SINCE)
    if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        alive = dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as exc:
        raise DisconnectionError(f"connection lost while idle: {type(exc).__name__}") from exc
    if alive is False:
        raise DisconnectionError("connection lost while idle")


def _on_sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _reason(exc: DBAPIError) -> str:
    """The driver's own message, first line only (drivers add hints and context below)."""
    original = exc.orig if exc.orig is not None else exc
    return (
        str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    )
