"""The audit trail: who did what to which, and why, in a hash chain.

Each event is stored with the SHA-256 of the event before it and its own hash over both
(``hash = sha256(prev_hash + canonical JSON of the event)``), so changing, removing or
reordering an event breaks every hash after it: :meth:`AuditLog.verify` names the first event
that does not fit. Events are appended one at a time under the database's write lock (an
advisory lock on PostgreSQL), so the chain has one order across every process.

Every change people make (users, roles, tokens, sources, playbooks and their publication,
approvals and approval rules, guardrails, connector instances, cases, intel, secrets) is an
event; so is every action call a run makes (``action.call``: the run, step, attempt, outcome and
SHA-256 digests of the inputs and output), written with the run's journal into an outbox and
appended to the chain by the engine's tick (:meth:`AuditLog.drain`). An event made while
serving an API request carries its request id. Before and after values are redacted: a value
under a credential-like key (:data:`REDACTED_KEYS`) or a :class:`SecretValue` never reaches the
trail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, delete, func, insert, select

from quell.clock import Clock
from quell.ids import new_id
from quell.sdk.secret import SecretValue
from quell.store.database import Backend, Database
from quell.store.schema import audit_events, audit_outbox

PACKED = "action.calls"  # the action of an outbox row that holds several events (pack_outbox)


def pack_outbox(rows: list[Any]) -> tuple[Any, ...]:
    """Outbox rows (id, at, actor, action, subject, detail) as one: the first's id and time,
    action ``action.calls``, and each event as ``[at, actor, action, subject, detail]``, in
    order. The journal writes the action calls of one batch so (one row instead of one per
    call keeps its batches short); :meth:`AuditLog.drain` appends each event as it was."""
    events = [
        [at, actor, action, subject, detail] for _, at, actor, action, subject, detail in rows
    ]
    return (rows[0][0], rows[0][1], "journal", PACKED, None, {"events": events})


# Keys whose values are credentials: their values are replaced before an event is stored.
REDACTED_KEYS = frozenset(
    {
        "password", "new_password", "current_password", "secret_value", "api_key",
        "apikey", "client_secret", "authorization", "access_token", "refresh_token",
        "id_token", "token_value", "code_verifier", "private_key", "passphrase", "webhook_url",
        "cookie",
    }
)  # fmt: skip
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """``value`` with every credential-like entry replaced (nested dicts and lists too)."""
    if isinstance(value, SecretValue):
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if str(key).lower() in REDACTED_KEYS and item is not None
                  and not isinstance(item, bool) else redact(item))
            for key, item in value.items()
        }  # fmt: skip
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _request_id() -> str | None:
    import structlog

    found = structlog.contextvars.get_contextvars().get("request_id")
    return str(found)[:40] if found else None


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
    request_id: str | None = None

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
            "request_id": self.request_id,
        }


def _digest(prev_hash: str, event_id: str, at: datetime, actor: str, action: str,
            subject: str | None, detail: Mapping[str, Any],
            request_id: str | None = None) -> str:  # fmt: skip
    fields: dict[str, Any] = {
        "id": event_id,
        "at": at.isoformat(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "detail": detail,
    }
    if request_id is not None:  # events from before request ids hash as they always did
        fields["request_id"] = request_id
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
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
        request_id=row.request_id,
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
        *,
        request_id: str | None = None,
    ) -> AuditEvent:
        """Append one event (credential-like values redacted; the current API request's id
        unless one is given); the event as stored."""
        event = self._event(actor, action, subject, detail, self.clock.now(), new_id("aud"),
                            request_id or _request_id())  # fmt: skip
        with self.db.write() as conn:
            self.append(conn, [event])
        return self.get(event["id"])

    def event(
        self, actor: str, action: str, subject: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """An event to :meth:`append` in the caller's own transaction (so the change and its
        record commit together): now, a new id, the current request's id."""
        return self._event(actor, action, subject, detail, self.clock.now(), new_id("aud"),
                           _request_id())  # fmt: skip

    @staticmethod
    def _event(actor: str, action: str, subject: str | None, detail: Mapping[str, Any] | None,
               at: datetime, event_id: str, request_id: str | None) -> dict[str, Any]:  # fmt: skip
        plain = dict(orjson.loads(orjson.dumps(redact(dict(detail or {})), default=str)))
        # Stored as hashed: the actor cut to its column, times to the microsecond in UTC.
        return {
            "id": event_id, "at": at, "actor": actor[:160], "action": action[:64],
            "subject": subject[:512] if subject else subject, "detail": plain,
            "request_id": request_id,
        }  # fmt: skip

    def append(self, conn: Connection, events: list[dict[str, Any]]) -> None:
        """Chain ``events`` (in order) onto the trail in the caller's transaction, holding the
        trail's lock (PostgreSQL; SQLite's write lock is the transaction's)."""
        if not events:
            return
        if self.db.backend is Backend.POSTGRESQL:
            conn.execute(select(func.pg_advisory_xact_lock(_LOCK)))
        last = conn.execute(
            select(audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
        ).scalar()
        prev_hash = last or GENESIS
        rows = []
        for event in events:
            digest = _digest(prev_hash, event["id"], event["at"], event["actor"],
                             event["action"], event["subject"], event["detail"],
                             event["request_id"])  # fmt: skip
            rows.append({**event, "prev_hash": prev_hash, "hash": digest})
            prev_hash = digest
        conn.execute(insert(audit_events), rows)

    def drain(self, *, limit: int = 5000) -> int:
        """Append what waits in the outbox (a run's action calls), oldest first, in one
        transaction of about ``limit`` events; how many events were appended.

        An outbox row is one event, or (action ``action.calls``, as the journal writes the
        calls of one batch) several, each ``[at, actor, action, subject, detail]`` in order."""
        with self.db.read() as conn:  # most ticks find nothing: no lock for that
            if conn.execute(select(audit_outbox.c.id).limit(1)).first() is None:
                return 0
        with self.db.write() as conn:
            if self.db.backend is Backend.POSTGRESQL:  # one drainer at a time, across workers
                conn.execute(select(func.pg_advisory_xact_lock(_LOCK)))
            query = select(audit_outbox).order_by(audit_outbox.c.id).limit(limit)
            events: list[dict[str, Any]] = []
            taken: list[str] = []
            for row in conn.execute(query):
                if len(events) >= limit:  # a packed row can hold many: the rest next time
                    break
                taken.append(row.id)
                if row.action == PACKED:
                    for at, actor, action, subject, detail in (row.detail or {})["events"]:
                        events.append(
                            self._event(actor, action, subject, detail or {},
                                        datetime.fromisoformat(at), new_id("aud"), None)
                        )  # fmt: skip
                    continue
                events.append(
                    self._event(row.actor, row.action, row.subject, row.detail or {}, row.at,
                                new_id("aud"), None)
                )  # fmt: skip
            if not taken:
                return 0
            self.append(conn, events)
            conn.execute(delete(audit_outbox).where(audit_outbox.c.id.in_(taken)))
        return len(events)

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
        """Events, newest first (``before``: older than that seq, for paging); the outbox is
        appended first, so a run's action calls are there."""
        self.drain()
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
        not fit (None: the chain holds). The outbox is appended first."""
        self.drain()
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
                    dict(row.detail or {}), row.request_id,
                )  # fmt: skip
                if row.prev_hash != prev_hash or row.hash != expected:
                    return checked, int(row.seq)
                checked += 1
                prev_hash, after = row.hash, int(row.seq)


def iter_events(
    db: Database,
    *,
    after_seq: int = 0,
    after_time: datetime | None = None,
    batch: int = 1000,
) -> Iterator[AuditEvent]:
    """Events oldest first: those after seq ``after_seq`` (and recorded after ``after_time``),
    read a page at a time, each page its own short read."""
    while True:
        query = (
            select(audit_events)
            .where(audit_events.c.seq > after_seq)
            .order_by(audit_events.c.seq)
            .limit(batch)
        )
        if after_time is not None:
            query = query.where(audit_events.c.at > after_time)
        with db.read() as conn:
            rows = list(conn.execute(query))
        for row in rows:
            yield _event(row)
        if len(rows) < batch:
            return
        after_seq = int(rows[-1].seq)


def verify_exported(
    events: Iterable[Mapping[str, Any]], *, prev_hash: str | None = None
) -> tuple[int, int | None]:
    """Check events as exported (:meth:`AuditEvent.as_dict`, in seq order) the way
    :meth:`AuditLog.verify` checks the table: how many fit, and the seq of the first that does
    not (None: all do). The first event must follow ``prev_hash``; None takes the first event's
    own ``prev_hash`` as given (an export that does not start at the first event). An entry
    without a seq is reported as seq -1."""
    checked = 0
    for event in events:
        try:
            seq = int(event["seq"])
        except (KeyError, TypeError, ValueError):
            return checked, -1  # not an exported event at all
        if prev_hash is None:
            prev_hash = str(event.get("prev_hash"))
        try:
            expected = _digest(
                prev_hash, event["id"], datetime.fromisoformat(event["at"]), event["actor"],
                event["action"], event["subject"], dict(event["detail"] or {}),
                event.get("request_id"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return checked, seq
        if event["prev_hash"] != prev_hash or event["hash"] != expected:
            return checked, seq
        checked += 1
        prev_hash = expected
    return checked, None


__all__ = [
    "GENESIS",
    "PACKED",
    "AuditEvent",
    "AuditLog",
    "iter_events",
    "pack_outbox",
    "verify_exported",
]
