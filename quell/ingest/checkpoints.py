"""Where pulling sources keep their place: one JSON cursor per key, in the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from quell.clock import Clock
from quell.store.database import Database
from quell.store.dialect import upsert
from quell.store.schema import ingest_checkpoints


class DbCheckpointStore:
    """:class:`quell.ingest.intake.CheckpointStore` on the ``ingest_checkpoints`` table.

    Keys are chosen by each source, conventionally ``"<kind>:<source name>[:<detail>]"``
    (``"imap:phish-inbox:INBOX"``). ``save`` commits before it returns, so a cursor is only
    saved after the records before it were durably submitted by the caller.
    """

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._upsert = upsert(
            db.backend, ingest_checkpoints, keys=["key"], update=["cursor", "updated_at"]
        )

    def load(self, key: str) -> dict[str, Any] | None:
        """The cursor saved under ``key``, or None."""
        with self.db.read() as conn:
            cursor = conn.execute(
                select(ingest_checkpoints.c.cursor).where(ingest_checkpoints.c.key == key)
            ).scalar_one_or_none()
        return dict(cursor) if cursor is not None else None

    def save(self, key: str, cursor: dict[str, Any]) -> None:
        """Replace the cursor under ``key``."""
        with self.db.write() as conn:
            conn.execute(
                self._upsert, {"key": key, "cursor": cursor, "updated_at": self.clock.now()}
            )
