"""Waking workers: on PostgreSQL, ``NOTIFY quell_runs`` in the transaction that makes a run
ready, and ``LISTEN`` in every engine; elsewhere the engines poll (and an engine that makes a
run ready itself wakes at once).

A notification is only a hint: it is delivered when (and only if) the transaction commits, and
an engine that misses one still finds the run at its next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from sqlalchemy import Connection, text

from quell.store.database import Backend, Database

log = structlog.get_logger(__name__)
CHANNEL = "quell_runs"


def notify_ready(conn: Connection) -> None:
    """Tell listening engines (PostgreSQL) that runs became ready, when this commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {CHANNEL}"))


async def listen(db: Database, wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``wake`` for each notification until ``stop``; reconnects after failures."""
    if db.backend is not Backend.POSTGRESQL:
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


__all__ = ["CHANNEL", "listen", "notify_ready"]
