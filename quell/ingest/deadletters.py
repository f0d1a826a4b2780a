"""Dead letters: input that could not become an alert, kept with its bytes and the reason.

Nothing a source sends is lost: a record that is not valid JSON, not UTF-8, too large, or that
its parser refuses is stored here with the exact reason (and the field, when one is at
fault). After a fix (a mapping, a parser), ``replay`` runs them through the pipeline again.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, or_, select

from quell.errors import NotFound
from quell.store.database import Database
from quell.store.schema import dead_letters


class DeadLetterStatus(StrEnum):
    """Whether a dead letter still waits."""

    PENDING = "pending"
    REPLAYED = "replayed"


@dataclass(frozen=True)
class DeadLetter:
    """One record that did not make it."""

    id: str
    source: str
    format: str
    received_at: datetime
    reason: str
    field: str | None
    raw: bytes
    status: DeadLetterStatus
    attempts: int
    replayed_at: datetime | None

    def as_dict(self, *, with_raw: bool = True) -> dict[str, Any]:
        """Plain data for JSON; the raw bytes as text where they are valid UTF-8."""
        data: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "format": self.format,
            "received_at": self.received_at,
            "reason": self.reason,
            "field": self.field,
            "status": self.status.value,
            "attempts": self.attempts,
            "replayed_at": self.replayed_at,
            "size": len(self.raw),
        }
        if with_raw:
            try:
                data["raw"] = self.raw.decode("utf-8")
            except UnicodeDecodeError:
                data["raw_base64"] = base64.b64encode(self.raw).decode()
        return data


def _letter(row: Any) -> DeadLetter:
    values = row._asdict()
    values["raw"] = bytes(values["raw"])
    values["status"] = DeadLetterStatus(values["status"])
    return DeadLetter(**values)


class DeadLetterService:
    """Read dead letters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list_all(
        self,
        *,
        source: str | None = None,
        status: DeadLetterStatus | None = DeadLetterStatus.PENDING,
        limit: int = 100,
        after: tuple[datetime, str] | None = None,
        until: datetime | None = None,
    ) -> list[DeadLetter]:
        """Dead letters, oldest first; ``after`` a (received_at, id) cursor, up to ``until``."""
        query = select(*dead_letters.c).order_by(dead_letters.c.received_at, dead_letters.c.id)
        if after is not None:
            at, letter_id = after
            query = query.where(
                or_(
                    dead_letters.c.received_at > at,
                    and_(dead_letters.c.received_at == at, dead_letters.c.id > letter_id),
                )
            )
        if until is not None:
            query = query.where(dead_letters.c.received_at <= until)
        if source is not None:
            query = query.where(dead_letters.c.source == source)
        if status is not None:
            query = query.where(dead_letters.c.status == status.value)
        with self.db.read() as conn:
            return [_letter(row) for row in conn.execute(query.limit(min(max(limit, 1), 10_000)))]

    def get(self, letter_id: str) -> DeadLetter:
        """One dead letter."""
        with self.db.read() as conn:
            row = conn.execute(
                select(*dead_letters.c).where(dead_letters.c.id == letter_id)
            ).first()
        if row is None:
            raise NotFound(f"no dead letter {letter_id!r}", field="id")
        return _letter(row)
