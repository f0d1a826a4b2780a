"""Per-action concurrency caps and rate limits that hold across every worker process.

Both live in the database every worker shares, so ``concurrency=4`` means four calls in flight
in the whole cluster, not four per process:

- a **slot** is a row of ``action_slots``; a call takes a free one (or one whose holder's
  expiry passed: its worker died mid-call) and frees it when it ends;
- a **rate** is a token bucket in ``rate_buckets``; a call takes a token, and when the bucket is
  empty reserves the next one and sleeps until it is due, so waiting callers queue fairly.

Each operation is one short write transaction. Times come from the engine's clock, the same
one the run leases use.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import Connection, and_, or_, select, update

from quell.clock import Clock
from quell.ids import new_id
from quell.store.database import Backend, Database
from quell.store.dialect import insert_ignore
from quell.store.schema import action_slots, rate_buckets

# How long a waiting call sleeps between looks for a free slot (doubling up to the cap).
_FIRST_WAIT = 0.01
_MOST_WAIT = 0.5


class SharedLimits:
    """Slots and tokens in the database, taken by ``owner`` (the engine's worker name)."""

    def __init__(self, db: Database, clock: Clock, owner: str) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner
        self._seeded: dict[str, int] = {}

    # -- concurrency ----------------------------------------------------------------------------

    def try_acquire(
        self, key: str, size: int, hold: timedelta, holder: str | None = None
    ) -> int | None:
        """Take a free slot of ``key``'s ``size`` for at most ``hold``; None when all are busy.

        ``holder`` names this acquisition (default: the worker), so that a release frees only
        the slot this call took, not one the worker took again after an expiry."""
        holder = holder or self.owner
        now = self.clock.now()
        with self.db.write() as conn:
            if self._seeded.get(key, 0) < size:
                self._seed(conn, key, size)
            free = (
                select(action_slots.c.slot)
                .where(
                    action_slots.c.key == key,
                    action_slots.c.slot < size,
                    or_(action_slots.c.owner.is_(None), action_slots.c.expires_at < now),
                )
                .order_by(action_slots.c.slot)
                .limit(1)
            )
            if self.db.backend is Backend.POSTGRESQL:
                free = free.with_for_update(skip_locked=True)
            slot = conn.execute(free).scalar()
            if slot is None:
                return None
            conn.execute(
                update(action_slots)
                .where(action_slots.c.key == key, action_slots.c.slot == slot)
                .values(owner=holder, expires_at=now + hold)
            )
            return int(slot)

    def _seed(self, conn: Connection, key: str, size: int) -> None:
        statement = insert_ignore(self.db.backend, action_slots, keys=["key", "slot"])
        conn.execute(statement, [{"key": key, "slot": slot} for slot in range(size)])
        self._seeded[key] = size

    def release(self, key: str, slot: int, holder: str | None = None) -> None:
        """Give the slot back (a no-op if it expired and someone else holds it now)."""
        holder = holder or self.owner
        with self.db.write() as conn:
            conn.execute(
                update(action_slots)
                .where(
                    and_(
                        action_slots.c.key == key,
                        action_slots.c.slot == slot,
                        action_slots.c.owner == holder,
                    )
                )
                .values(owner=None, expires_at=None)
            )

    def extend(self, key: str, slot: int, holder: str, hold: timedelta) -> None:
        """Keep a slot for ``hold`` more (a call still running): a slot lapses only when its
        holder stopped extending it, that is, when its worker died."""
        with self.db.write() as conn:
            conn.execute(
                update(action_slots)
                .where(
                    action_slots.c.key == key,
                    action_slots.c.slot == slot,
                    action_slots.c.owner == holder,
                )
                .values(expires_at=self.clock.now() + hold)
            )

    async def acquire(self, key: str, size: int, hold: timedelta) -> tuple[int, str]:
        """Wait for a slot (cancellable); the slot and its holder name, to :meth:`release`."""
        holder = f"{self.owner}/{new_id('slt')[-10:]}"
        pause = _FIRST_WAIT
        while True:
            attempt = asyncio.ensure_future(
                asyncio.to_thread(self.try_acquire, key, size, hold, holder)
            )
            try:
                slot = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                # The thread goes on and may take a slot nobody would release: give it back.
                attempt.add_done_callback(lambda done: self._abandon(done, key, holder))
                raise
            if slot is not None:
                return slot, holder
            await asyncio.sleep(pause)
            pause = min(_MOST_WAIT, pause * 2)

    def _abandon(self, done: asyncio.Future[int | None], key: str, holder: str) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        slot = done.result()
        if slot is not None:
            asyncio.get_running_loop().run_in_executor(None, self.release, key, slot, holder)

    # -- rate -------------------------------------------------------------------------------------

    def take_token(self, key: str, rate: float, capacity: float) -> float:
        """Take a token from ``key``'s bucket; the seconds to wait before calling (0: now)."""
        wait = self._take(key, rate, capacity, None)
        return 0.0 if wait is None else wait

    def try_take_token(
        self, key: str, rate: float, capacity: float, max_wait: float
    ) -> float | None:
        """Like :meth:`take_token`, but a token that would come later than ``max_wait`` is not
        taken (the bucket is left as it was): None, and the caller gives up without spending."""
        return self._take(key, rate, capacity, max_wait)

    def _take(self, key: str, rate: float, capacity: float, max_wait: float | None) -> float | None:
        now = self.clock.now()
        with self.db.write() as conn:
            seed = insert_ignore(self.db.backend, rate_buckets, keys=["key"])
            conn.execute(seed, [{"key": key, "tokens": capacity, "updated_at": now}])
            current = select(rate_buckets.c.tokens, rate_buckets.c.updated_at).where(
                rate_buckets.c.key == key
            )
            if self.db.backend is Backend.POSTGRESQL:
                current = current.with_for_update()
            tokens, updated_at = conn.execute(current).one()
            # A clock behind the bucket's (another worker's) adds nothing, never removes.
            elapsed = max(0.0, (now - updated_at).total_seconds())
            left = min(capacity, tokens + elapsed * rate) - 1.0
            wait = 0.0 if left >= 0 else -left / rate
            if max_wait is not None and wait > max_wait:
                return None
            conn.execute(
                update(rate_buckets)
                .where(rate_buckets.c.key == key)
                .values(tokens=left, updated_at=max(now, updated_at))
            )
        return wait


__all__ = ["SharedLimits"]
