"""The audit trail: who did what to which, and why, in a hash chain.

Each event is stored with the SHA-256 of the event before it and its own hash over both
(``hash = sha256(prev_hash + canonical JSON of the event)``), so changing, removing or
reordering an event breaks every hash after it: :meth:`AuditLog.verify` names the first event
that does not fit. Events are appended one at a time under the database's write lock (an
advisory lock on PostgreSQL), so the chain has one order across every process.

What is recorded here today: guardrail decisions (holds, refusals, approvals asked) and policy
changes, connector instances configured (secret *names*, never values), actions called by hand,
containments reverted. Details never hold a secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, insert, select

from quell.clock import Clock
from quell.ids import new_id
from quell.store.database import Backend, Database
from quell.store.schema import audit_events

GENESIS = "0" * 64
_LOCK = 0x41_55_44  # the advisory lock that orders appends on PostgreSQL


@dataclass(frozen=True)
class AuditEvent:
    """One event of the trail."""

    seq: int
    id: str
    at: datetime
    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "seq": self.seq,
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def _digest(prev_hash: str, event_id: str, at: datetime, actor: str, action: str,
            subject: str | None, detail: Mapping[str, Any]) -> str:  # fmt: skip
    body = orjson.dumps(
        {
            "id": event_id,
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "subject": subject,
            "detail": detail,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        seq=row.seq,
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        detail=dict(row.detail or {}),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


class AuditLog:
    """Append to and read the audit trail."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def record(
        self,
        actor: str,
        action: str,
        subject: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event; the event as stored."""
        plain = dict(orjson.loads(orjson.dumps(dict(detail or {}), default=str)))
        actor = actor[:160]  # as stored, so the hash covers what is kept
        # Times are stored to the microsecond in UTC on both backends; hash what reads back.
        at = self.clock.now()
        event_id = new_id("aud")
        with self.db.write() as conn:
            if self.db.backend is Backend.POSTGRESQL:
                conn.execute(select(func.pg_advisory_xact_lock(_LOCK)))
            last = conn.execute(
                select(audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
            ).scalar()
            prev_hash = last or GENESIS
            digest = _digest(prev_hash, event_id, at, actor, action, subject, plain)
            conn.execute(
                insert(audit_events).values(
                    id=event_id, at=at, actor=actor, action=action, subject=subject,
                    detail=plain, prev_hash=prev_hash, hash=digest,
                )
            )  # fmt: skip
        return self.get(event_id)

    def get(self, event_id: str) -> AuditEvent:
        """One event."""
        with self.db.read() as conn:
            row = conn.execute(select(audit_events).where(audit_events.c.id == event_id)).one()
        return _event(row)

    def list_all(
        self,
        *,
        action: str | None = None,
        subject: str | None = None,
        limit: int = 200,
        before: int | None = None,
    ) -> list[AuditEvent]:
        """Events, newest first (``before``: older than that seq, for paging)."""
        query = select(audit_events).order_by(audit_events.c.seq.desc()).limit(limit)
        if action is not None:
            query = query.where(audit_events.c.action.startswith(action))
        if subject is not None:
            query = query.where(audit_events.c.subject == subject)
        if before is not None:
            query = query.where(audit_events.c.seq < before)
        with self.db.read() as conn:
            return [_event(row) for row in conn.execute(query)]

    def verify(self, *, batch: int = 1000) -> tuple[int, int | None]:
        """Walk the chain: how many events were checked, and the seq of the first one that does
        not fit (None: the chain holds)."""
        checked, prev_hash, after = 0, GENESIS, 0
        while True:
            with self.db.read() as conn:
                rows = list(
                    conn.execute(
                        select(audit_events)
                        .where(audit_events.c.seq > after)
                        .order_by(audit_events.c.seq)
                        .limit(batch)
                    )
                )
            if not rows:
                return checked, None
            for row in rows:
                expected = _digest(
                    prev_hash, row.id, row.at, row.actor, row.action, row.subject,
                    dict(row.detail or {}),
                )  # fmt: skip
                if row.prev_hash != prev_hash or row.hash != expected:
                    return checked, int(row.seq)
                checked += 1
                prev_hash, after = row.hash, int(row.seq)


__all__ = ["GENESIS", "AuditEvent", "AuditLog"]
