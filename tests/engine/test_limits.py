"""Concurrency caps and rate limits bind every worker, because they live in the database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from quell.clock import ManualClock
from quell.engine.limits import SharedLimits
from quell.runtime import Runtime
from quell.sdk import ActionContext, ActionInput, ActionOutput, Connector, RiskLevel, action
from tests.engine.harness import ENDED, Harness
from tests.engine.peer import Peer

HOLD = timedelta(seconds=60)


def test_a_cap_counts_the_slots_every_worker_holds(runtime: Runtime, clock: ManualClock) -> None:
    a = SharedLimits(runtime.db, clock, "worker-a")
    b = SharedLimits(runtime.db, clock, "worker-b")
    first = a.try_acquire("edr.isolate", 2, HOLD)
    second = b.try_acquire("edr.isolate", 2, HOLD)
    assert {first, second} == {0, 1}
    assert a.try_acquire("edr.isolate", 2, HOLD) is None
    assert b.try_acquire("edr.isolate", 2, HOLD) is None
    assert a.try_acquire("other.action", 2, HOLD) is not None  # caps are per action

    assert second is not None
    a.release("edr.isolate", second)  # not a's slot: nothing happens
    assert a.try_acquire("edr.isolate", 2, HOLD) is None
    b.release("edr.isolate", second)
    assert a.try_acquire("edr.isolate", 2, HOLD) == second


def test_a_dead_workers_slot_frees_itself_when_its_hold_ends(
    runtime: Runtime, clock: ManualClock
) -> None:
    dead = SharedLimits(runtime.db, clock, "worker-dead")
    alive = SharedLimits(runtime.db, clock, "worker-alive")
    assert dead.try_acquire("fw.block", 1, HOLD) == 0
    assert alive.try_acquire("fw.block", 1, HOLD) is None
    clock.advance(HOLD + timedelta(seconds=1))
    assert alive.try_acquire("fw.block", 1, HOLD) == 0
    dead.release("fw.block", 0)  # too late: the slot is someone else's now
    assert dead.try_acquire("fw.block", 1, HOLD) is None


def test_a_cap_that_shrinks_uses_only_the_slots_below_it(
    runtime: Runtime, clock: ManualClock
) -> None:
    limits = SharedLimits(runtime.db, clock, "worker-a")
    assert [limits.try_acquire("x.y", 3, HOLD) for _ in range(3)] == [0, 1, 2]
    for slot in range(3):
        limits.release("x.y", slot)
    smaller = SharedLimits(runtime.db, clock, "worker-b")  # redeployed with concurrency=1
    assert smaller.try_acquire("x.y", 1, HOLD) == 0
    assert smaller.try_acquire("x.y", 1, HOLD) is None


def test_a_rate_is_one_bucket_for_all_workers(runtime: Runtime, clock: ManualClock) -> None:
    a = SharedLimits(runtime.db, clock, "worker-a")
    b = SharedLimits(runtime.db, clock, "worker-b")
    # 2 calls a second, bursts of 2: the third and fourth calls wait their turn, in order.
    assert a.take_token("intel.lookup", 2.0, 2.0) == 0.0
    assert b.take_token("intel.lookup", 2.0, 2.0) == 0.0
    assert a.take_token("intel.lookup", 2.0, 2.0) == pytest.approx(0.5)
    assert b.take_token("intel.lookup", 2.0, 2.0) == pytest.approx(1.0)
    clock.advance(timedelta(seconds=10))  # refills, but only up to the burst
    assert [a.take_token("intel.lookup", 2.0, 2.0) for _ in range(2)] == [0.0, 0.0]
    assert b.take_token("intel.lookup", 2.0, 2.0) == pytest.approx(0.5)


def test_two_engines_share_one_cap(runtime: Runtime) -> None:
    text = """
id: fan-out
name: Fan out
steps:
  - id: many
    for_each: "{{ [1, 2, 3, 4] }}"
    concurrency: 4
    action: test.limited
    with: {value: "{{ item }}", seconds: 0.05}
"""

    async def scenario() -> None:
        async with (
            Harness(runtime, owner="worker-a") as a,
            Harness(runtime, owner="worker-b") as b,
        ):
            runs = [await a.start(text) for _ in range(2)] + [await b.start(text) for _ in range(2)]
            views = [await (a if i < 2 else b).settle(r, until=ENDED) for i, r in enumerate(runs)]
        assert [view.status for view in views] == ["succeeded"] * 4
        # Each engine alone would allow 2 at once (4 in all); the database allows 2 in all.
        assert Peer.most_in_flight == 2

    asyncio.run(scenario())


class SlowIn(ActionInput):
    seconds: float = 0.03


class Capped(Connector):
    """A peer that takes one call at a time, whichever action, whichever worker."""

    name = "capped"
    concurrency = 1
    in_flight = 0
    most = 0

    @action("first", risk=RiskLevel.READ)
    async def first(self, ctx: ActionContext, params: SlowIn) -> ActionOutput:
        return await self._call(params)

    @action("second", risk=RiskLevel.READ)
    async def second(self, ctx: ActionContext, params: SlowIn) -> ActionOutput:
        return await self._call(params)

    async def _call(self, params: SlowIn) -> ActionOutput:
        Capped.in_flight += 1
        Capped.most = max(Capped.most, Capped.in_flight)
        await asyncio.sleep(params.seconds)
        Capped.in_flight -= 1
        return ActionOutput()


def test_a_connector_cap_spans_its_actions_and_every_worker(runtime: Runtime) -> None:
    text = """
id: both
name: Both actions at once
steps:
  - id: together
    parallel:
      - [{id: a, action: capped.first}]
      - [{id: b, action: capped.second}]
"""
    Capped.most = 0

    async def scenario() -> None:
        async with (
            Harness(runtime, owner="worker-a") as a,
            Harness(runtime, owner="worker-b") as b,
        ):
            a.registry.add(Capped)
            b.registry.add(Capped)
            runs = [(a, await a.start(text)), (b, await b.start(text))]
            views = [await harness.settle(run_id, until=ENDED) for harness, run_id in runs]
        assert [view.status for view in views] == ["succeeded", "succeeded"], views[0].error
        assert Capped.most == 1

    asyncio.run(scenario())


def test_a_release_frees_only_the_acquisition_it_belongs_to(
    runtime: Runtime, clock: ManualClock
) -> None:
    limits = SharedLimits(runtime.db, clock, "worker-a")
    assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-a/call-1") == 0
    clock.advance(HOLD + timedelta(seconds=1))  # call 1 overran its hold...
    assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-a/call-2") == 0
    limits.release("edr.isolate", 0, "worker-a/call-1")  # ...and ends: call 2's slot stays held
    assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-a/call-3") is None
    limits.release("edr.isolate", 0, "worker-a/call-2")
    assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-a/call-3") == 0


def test_a_slot_extended_by_its_running_call_does_not_lapse(
    runtime: Runtime, clock: ManualClock
) -> None:
    limits = SharedLimits(runtime.db, clock, "worker-a")
    assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-a/long-call") == 0
    for _ in range(3):  # the call runs for three holds, extending as it goes
        clock.advance(HOLD * 0.9)
        limits.extend("edr.isolate", 0, "worker-a/long-call", HOLD)
        assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-b/other") is None
    clock.advance(HOLD + timedelta(seconds=1))  # its worker died: no more extensions
    assert limits.try_acquire("edr.isolate", 1, HOLD, "worker-b/other") == 0
