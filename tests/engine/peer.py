"""A test connector whose actions count their calls, fail on request, block, and reconcile."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, ClassVar

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    Landed,
    PermanentError,
    RateLimited,
    Reconciliation,
    RiskLevel,
    TransientError,
    action,
)


class ValueIn(ActionInput):
    value: Any = None
    fail_times: int = 0
    retry_after: float | None = None
    permanent: bool = False
    seconds: float = 0.0
    hold: bool = False


class ValueOut(ActionOutput):
    value: Any = None
    calls: int = 0


class TargetIn(ActionInput):
    target: str
    hold: bool = False  # block until released, before the peer applies it
    hold_after: bool = False  # block until released, after the peer applied it
    expires_in: int | None = None  # seconds until the containment should be reverted


class ReleaseIn(ActionInput):
    target: str


class TargetOut(ActionOutput):
    target: str
    applied: bool = True


class Peer:
    """What the test connector saw; reset by each test."""

    calls: ClassVar[defaultdict[str, int]] = defaultdict(int)
    applied: ClassVar[dict[str, str]] = {}  # idempotency key -> target
    in_flight: ClassVar[int] = 0
    most_in_flight: ClassVar[int] = 0
    entered: ClassVar[asyncio.Event | None] = None
    release: ClassVar[asyncio.Event | None] = None
    released: ClassVar[list[str]] = []  # targets whose containment was reverted
    release_failures: ClassVar[int] = 0  # the next reverts that fail

    @classmethod
    async def wait_released(cls) -> None:
        """Tell the test we are in the call, and wait until it lets us go on."""
        if cls.entered is not None:
            cls.entered.set()
        if cls.release is not None:
            await cls.release.wait()

    @classmethod
    def reset(cls) -> None:
        cls.calls = defaultdict(int)
        cls.applied = {}
        cls.in_flight = 0
        cls.most_in_flight = 0
        cls.entered = None
        cls.release = None
        cls.released = []
        cls.release_failures = 0


class Test(Connector):
    name = "test"

    @action("read", risk=RiskLevel.READ)
    async def read(self, ctx: ActionContext, params: ValueIn) -> ValueOut:
        key = f"{ctx.run_id}:{ctx.step_id}"
        Peer.calls[key] += 1
        calls = Peer.calls[key]
        if params.hold:
            await Peer.wait_released()
        if params.seconds:
            await asyncio.sleep(params.seconds)
        if calls <= params.fail_times:
            if params.permanent:
                raise PermanentError(f"refused (call {calls})")
            if params.retry_after is not None:
                raise RateLimited("slow down", retry_after=params.retry_after)
            raise TransientError(f"flaky (call {calls})")
        return ValueOut(value=params.value, calls=calls)

    @action("limited", risk=RiskLevel.READ, concurrency=2)
    async def limited(self, ctx: ActionContext, params: ValueIn) -> ValueOut:
        Peer.in_flight += 1
        Peer.most_in_flight = max(Peer.most_in_flight, Peer.in_flight)
        await asyncio.sleep(params.seconds or 0.02)
        Peer.in_flight -= 1
        return ValueOut(value=params.value)

    @action("boom", risk=RiskLevel.READ)
    async def boom(self, ctx: ActionContext, params: ValueIn) -> ValueOut:
        raise RuntimeError("a connector bug with a secret-looking message hunter2")

    @action("contain", risk=RiskLevel.HIGH, reconcile="contained", reverts="release")
    async def contain(self, ctx: ActionContext, params: TargetIn) -> TargetOut:
        if params.hold:
            await Peer.wait_released()
        Peer.applied[ctx.idempotency_key] = params.target
        Peer.calls[f"contain:{params.target}"] += 1
        if params.hold_after:
            await Peer.wait_released()
        return TargetOut(target=params.target)

    @action("release", risk=RiskLevel.MEDIUM, idempotent=True, reverts="contain")
    async def release_target(self, ctx: ActionContext, params: ReleaseIn) -> TargetOut:
        """Undo ``contain``."""
        if Peer.release_failures > 0:
            Peer.release_failures -= 1
            raise TransientError("the peer is busy")
        Peer.released.append(params.target)
        return TargetOut(target=params.target)

    async def contained(self, ctx: ActionContext, params: TargetIn) -> Reconciliation:
        if ctx.idempotency_key in Peer.applied:
            return Reconciliation(Landed.LANDED, {"target": params.target, "applied": True})
        return Reconciliation(Landed.NOT_LANDED, detail="the peer has no such key")

    @action("blind", risk=RiskLevel.HIGH)
    async def blind(self, ctx: ActionContext, params: TargetIn) -> TargetOut:
        if params.hold:
            await Peer.wait_released()
        Peer.applied[ctx.idempotency_key] = params.target
        if params.hold_after:
            await Peer.wait_released()
        return TargetOut(target=params.target)

    @action("wipe", risk=RiskLevel.CRITICAL)
    async def wipe(self, ctx: ActionContext, params: TargetIn) -> TargetOut:
        """A critical write: two distinct people must approve it."""
        Peer.applied[ctx.idempotency_key] = params.target
        return TargetOut(target=params.target)
