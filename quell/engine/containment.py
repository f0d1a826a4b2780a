"""Containments: what a run put in place that can be undone, and undoing it.

Every successful call of a write that declares the action reverting it (``reverts=``) is
recorded as an *active containment*, in the same commit as the step's success: the action, its
instance, what it acted on, what the peer answered, which run (or person) did it, since when,
until when (an ``expires_in`` input or an ``expires_at`` output) and how to revert it (the
revert action and its input, derived from the call: the connector's ``revert_with`` hook, else
the revert action's fields taken by name from the output, then the inputs).

``quell containment list|revert ID`` and ``/api/containments`` show and revert them; the
engine reverts expired ones on its tick. A revert that fails stays ``failed`` with its error
and is tried again with backoff (expired ones by the engine, others when a person asks):
never forgotten. A revert whose target is already gone counts as done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection, insert, or_, select, update

from quell.clock import Clock
from quell.errors import Conflict, NotFound, QuellError
from quell.governance.audit import AuditLog
from quell.ids import new_id
from quell.sdk.errors import ActionError, TargetNotFound
from quell.store.database import Backend, Database
from quell.store.dialect import insert_ignore
from quell.store.schema import containments

if TYPE_CHECKING:
    from quell.connectors.registry import ActionDef
    from quell.engine.actions import ActionRunner

log = structlog.get_logger(__name__)

MAX_BACKOFF = timedelta(hours=1)
CLAIM = timedelta(minutes=5)  # a revert in progress holds its containment this long at most
DUE_BATCH = 20  # expired containments one tick reverts at most


class ContainmentStatus(StrEnum):
    """Where a containment is."""

    ACTIVE = "active"
    REVERTED = "reverted"
    FAILED = "failed"  # a revert failed; tried again later, shown until it succeeds


@dataclass(frozen=True)
class Containment:
    """One containment, as shown."""

    id: str
    action: str
    instance: str | None
    target: dict[str, Any]
    output: dict[str, Any] | None
    revert_action: str
    revert_input: dict[str, Any] | None
    run_id: str | None
    step_key: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    status: ContainmentStatus
    attempts: int
    next_attempt_at: datetime | None
    last_error: dict[str, Any] | None
    reverted_at: datetime | None
    reverted_by: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "action": self.action,
            "instance": self.instance,
            "target": self.target,
            "output": self.output,
            "revert": {"action": self.revert_action, "input": self.revert_input},
            "run_id": self.run_id,
            "step_key": self.step_key,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "status": self.status.value,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
            "last_error": self.last_error,
            "reverted_at": self.reverted_at.isoformat() if self.reverted_at else None,
            "reverted_by": self.reverted_by,
        }


def _containment(row: Any) -> Containment:
    return Containment(
        id=row.id,
        action=row.action,
        instance=row.instance or None,
        target=dict(row.target or {}),
        output=row.output,
        revert_action=row.revert_action,
        revert_input=row.revert_input,
        run_id=row.run_id,
        step_key=row.step_key,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        status=ContainmentStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        reverted_at=row.reverted_at,
        reverted_by=row.reverted_by,
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def revert_plan(
    definition: ActionDef,
    revert: ActionDef,
    instance_object: Any,
    inputs: dict[str, Any],
    output: dict[str, Any],
) -> dict[str, Any] | None:
    """The revert action's input for this call, or None when it cannot be derived."""
    hook = definition.meta.revert_with
    try:
        if hook is not None:
            params = (
                definition.input_model.model_validate(inputs) if definition.input_model else None
            )
            planned = getattr(instance_object, hook)(params, output)
            candidate = dict(planned)
        else:
            fields = revert.input_model.model_fields if revert.input_model is not None else {}
            candidate = {}
            for name, info in fields.items():
                alias = info.alias or name
                for source in (output, inputs):
                    if alias in source:
                        candidate[alias] = source[alias]
                        break
        if revert.input_model is not None:
            revert.input_model.model_validate(candidate)
    except Exception:  # noqa: BLE001 - a hook's bug leaves the containment for a person
        return None
    return candidate


def expiry_of(now: datetime, inputs: dict[str, Any], output: dict[str, Any]) -> datetime | None:
    """When the containment ends by itself: the output's ``expires_at``, else now plus the
    input's ``expires_in`` seconds."""
    stated = _parse_time(output.get("expires_at"))
    if stated is not None:
        return stated
    seconds = inputs.get("expires_in")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return now + timedelta(seconds=float(seconds))
    return None


class ContainmentService:
    """Record, list and revert containments."""

    def __init__(self, db: Database, clock: Clock, *, audit: AuditLog | None = None) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit or AuditLog(db, clock)

    @staticmethod
    def row(
        *,
        action: str,
        instance: str,
        target: dict[str, Any],
        output: dict[str, Any],
        revert_action: str,
        revert_input: dict[str, Any] | None,
        run_id: str | None,
        step_key: str | None,
        created_by: str,
        created_at: datetime,
        expires_at: datetime | None,
    ) -> dict[str, Any]:
        """A new active containment's row."""
        return {
            "id": new_id("cnt"),
            "action": action,
            "instance": instance,
            "target": target,
            "output": output,
            "revert_action": revert_action,
            "revert_input": revert_input,
            "run_id": run_id,
            "step_key": step_key,
            "created_by": created_by,
            "created_at": created_at,
            "expires_at": expires_at,
            "status": ContainmentStatus.ACTIVE.value,
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": None,
            "reverted_at": None,
            "reverted_by": None,
        }

    @staticmethod
    def insert(conn: Connection, row: dict[str, Any]) -> None:
        """Record it in the caller's transaction; a run's step is recorded once however often
        it is written (a replay, a reconcile)."""
        if row.get("run_id") is None:
            conn.execute(insert(containments).values(**row))
            return
        backend = Backend.SQLITE if conn.dialect.name == "sqlite" else Backend.POSTGRESQL
        statement = insert_ignore(backend, containments, keys=["run_id", "step_key"])
        conn.execute(statement.values(**row))

    def list_all(self, *, include_reverted: bool = False, limit: int = 500) -> list[Containment]:
        """Containments in place (or failing to revert); with ``include_reverted``, all."""
        query = select(containments).order_by(containments.c.created_at.desc()).limit(limit)
        if not include_reverted:
            query = query.where(containments.c.status != ContainmentStatus.REVERTED.value)
        with self.db.read() as conn:
            return [_containment(row) for row in conn.execute(query)]

    def get(self, containment_id: str) -> Containment:
        """One containment."""
        with self.db.read() as conn:
            row = conn.execute(
                select(containments).where(containments.c.id == containment_id)
            ).first()
        if row is None:
            raise NotFound(f"no containment {containment_id!r}", field="id", value=containment_id)
        return _containment(row)

    def due(self) -> list[Containment]:
        """Expired containments to revert now, and failed reverts whose retry is due."""
        now = self.clock.now()
        query = (
            select(containments)
            .where(
                or_(
                    (containments.c.status == ContainmentStatus.ACTIVE.value)
                    & (containments.c.expires_at <= now),
                    (containments.c.status == ContainmentStatus.FAILED.value)
                    & (containments.c.expires_at <= now)
                    & (containments.c.next_attempt_at <= now),
                )
            )
            .order_by(containments.c.expires_at)
            .limit(DUE_BATCH)
        )
        with self.db.read() as conn:
            return [_containment(row) for row in conn.execute(query)]

    def _claim(self, containment_id: str) -> bool:
        """Hold the containment for one revert (no two workers, or a worker and a person,
        call the revert at once); False when someone else holds it."""
        now = self.clock.now()
        with self.db.write() as conn:
            taken = conn.execute(
                update(containments)
                .where(
                    containments.c.id == containment_id,
                    containments.c.status != ContainmentStatus.REVERTED.value,
                    or_(containments.c.claimed_until.is_(None), containments.c.claimed_until < now),
                )
                .values(claimed_until=now + CLAIM)
            ).rowcount
        return bool(taken)

    def _finish(self, item: Containment, by: str, detail: dict[str, Any] | None) -> None:
        now = self.clock.now()
        with self.db.write() as conn:
            conn.execute(
                update(containments)
                .where(containments.c.id == item.id)
                .values(
                    status=ContainmentStatus.REVERTED.value,
                    attempts=item.attempts + 1,
                    reverted_at=now,
                    reverted_by=by,
                    next_attempt_at=None,
                    claimed_until=None,
                    last_error=detail,
                )
            )

    def _failed(self, item: Containment, error: dict[str, Any], *, retry: bool = True) -> None:
        """Mark a revert failed; tried again after a backoff unless only a person can do it."""
        attempts = item.attempts + 1
        backoff = min(MAX_BACKOFF, timedelta(seconds=30 * 2 ** min(attempts - 1, 10)))
        with self.db.write() as conn:
            conn.execute(
                update(containments)
                .where(containments.c.id == item.id)
                .values(
                    status=ContainmentStatus.FAILED.value,
                    attempts=attempts,
                    next_attempt_at=self.clock.now() + backoff if retry else None,
                    claimed_until=None,
                    last_error=error,
                )
            )

    async def revert(self, runner: ActionRunner, containment_id: str, *, by: str) -> Containment:
        """Call the revert action; the containment as it is afterwards (reverted, or failed
        with the error and a retry time)."""
        item = await asyncio.to_thread(self.get, containment_id)
        if item.status is ContainmentStatus.REVERTED:
            raise Conflict(f"containment {item.id} was already reverted by {item.reverted_by}")
        if not await asyncio.to_thread(self._claim, item.id):
            raise Conflict(f"containment {item.id} is being reverted right now")
        by_hand = self._only_by_hand(runner, item)
        if by_hand is not None:
            # Never tried (nothing to call, or nowhere safe to call it), nor retried by the
            # expiry loop: it stays failed, with what to do by hand, until a person acts.
            await asyncio.to_thread(self._failed, item, by_hand, retry=False)
        else:
            await self._call_revert(runner, item, by)
        after = await asyncio.to_thread(self.get, item.id)
        await asyncio.to_thread(
            self.audit.record,
            by,
            "containment.revert",
            item.id,
            {
                "action": item.revert_action,
                "of": item.action,
                "status": after.status.value,
                "error": after.last_error,
            },
        )
        return after

    @staticmethod
    def _only_by_hand(runner: ActionRunner, item: Containment) -> dict[str, Any] | None:
        """Why a revert cannot be called at all (a person must undo it at the peer), or None."""
        if item.revert_input is None:
            return {
                "code": "no_revert_input",
                "message": f"cannot derive {item.revert_action}'s input from the call: "
                "revert it at the peer by hand",
            }
        revert = runner.registry.actions.get(item.revert_action)
        if item.instance is None and revert is not None and revert.connector.needs_instance:
            # Made before the connector needed an instance, on the unconfigured one: this
            # host's own. An instance added since is another peer, where the same input (a
            # rule number) names something else.
            return {
                "code": "no_instance",
                "message": f"{item.action} ran unconfigured, on the host that ran it; "
                f"{item.revert_action} now runs only on a configured instance, which may be "
                f"another peer: revert it on that host by hand ({item.revert_input})",
            }
        return None

    async def _call_revert(self, runner: ActionRunner, item: Containment, by: str) -> None:
        assert item.revert_input is not None  # checked by _only_by_hand
        try:
            await runner.run_once(
                item.revert_action,
                item.revert_input,
                instance=item.instance,
                actor=by,
                record=False,  # undoing a containment is not one
            )
        except TargetNotFound as exc:  # already gone at the peer: nothing left to undo
            detail = {"code": exc.code, "message": f"already gone: {exc.message}"}
            await asyncio.to_thread(self._finish, item, by, detail)
        except ActionError as exc:
            log.warning("containment_revert_failed", containment=item.id, error=exc.message)
            await asyncio.to_thread(self._failed, item, exc.to_dict())
        except QuellError as exc:  # the revert action is gone, its instance is misconfigured
            log.warning("containment_revert_failed", containment=item.id, error=exc.message)
            await asyncio.to_thread(self._failed, item, {"code": exc.code, "message": exc.message})
        else:
            log.info("containment_reverted", containment=item.id, by=by)
            await asyncio.to_thread(self._finish, item, by, None)

    async def revert_due(self, runner: ActionRunner) -> int:
        """Revert what has expired (and retry failed reverts that are due); how many tried."""
        due = await asyncio.to_thread(self.due)
        for item in due:
            try:
                await self.revert(runner, item.id, by="expiry")
            except Conflict:  # reverted meanwhile by someone else
                continue
            except Exception as exc:  # noqa: BLE001 - one bad containment stops no other
                log.error("containment_revert_crashed", containment=item.id, error=repr(exc))
        return len(due)


__all__ = [
    "Containment",
    "ContainmentService",
    "ContainmentStatus",
    "expiry_of",
    "revert_plan",
]
