"""Waking workers when another process makes a run ready.

- PostgreSQL: ``NOTIFY quell_runs`` in the transaction that makes a run ready, ``LISTEN`` in
  every engine.
- SQLite: every 50 ms the engine reads ``PRAGMA data_version`` on a connection of its own; the
  number changes when any other connection commits (``quell approval approve`` in another
  process, say), and the engine then looks for work. It is a read of a counter in shared
  memory: no lock, no write.

Either way a wake-up is only a hint: an engine that misses one still finds the run at its next
poll. (An engine that makes a run ready itself wakes at once, without either.)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import Connection, text

from quell.store.database import Backend, Database

log = structlog.get_logger(__name__)
CHANNEL = "quell_runs"
SQLITE_WATCH_SECONDS = 0.05


def notify_ready(conn: Connection) -> None:
    """Tell listening engines (PostgreSQL) that runs became ready, when this commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {CHANNEL}"))


async def listen(db: Database, wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``wake`` for each notification until ``stop``; reconnects after failures."""
    if db.backend is Backend.SQLITE:
        await _watch_sqlite(db, wake, stop)
        return
    import psycopg

    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                wake()  # anything made ready while we were not listening
                async for _ in conn.notifies():
                    wake()
                    if stop.is_set():
                        return
        except (OSError, psycopg.Error) as exc:
            log.warning("listen_failed", error=type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), timeout=2.0)
            except TimeoutError:
                continue


def _read_only(path: str) -> sqlite3.Connection:
    """A connection of the watcher's own. No busy wait: the counter is read from shared memory,
    and a rare lock only skips a tick. The URI is percent-encoded, so any file name works."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=0.0)


async def _watch_sqlite(db: Database, wake: Callable[[], None], stop: asyncio.Event) -> None:
    path = db.engine.url.database
    if not path or path == ":memory:":
        return
    try:
        conn = _read_only(path)
    except sqlite3.Error as exc:
        log.warning("watch_failed", error=type(exc).__name__)
        return
    try:
        seen = None
        while not stop.is_set():
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:  # busy or gone for a moment: the poll covers it
                log.debug("watch_read_failed", error=type(exc).__name__)
                version = seen
            if seen is not None and version != seen:
                wake()
            seen = version
            try:
                await asyncio.wait_for(stop.wait(), timeout=SQLITE_WATCH_SECONDS)
            except TimeoutError:
                continue
    finally:
        conn.close()


__all__ = ["CHANNEL", "listen", "notify_ready"]
