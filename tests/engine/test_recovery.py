"""A worker that dies mid-run loses nothing, and no write reaches the peer twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from quell.clock import ManualClock
from quell.runtime import Runtime
from tests.engine.harness import ENDED, Harness, statuses
from tests.engine.peer import Peer

CONTAIN = """
id: contain
name: Contain
inputs: {host: {type: string, required: true}, hold: {type: boolean}, hold_after: {type: boolean}}
steps:
  - {id: look, action: test.read, with: {value: "{{ host }}"}}
  - id: isolate
    action: test.{action}
    with: {target: "{{ host }}", hold: "{{ hold }}", hold_after: "{{ hold_after }}"}
  - {id: after, action: core.log, with: {message: "isolated {{ host }}"}}
"""


async def _crash_mid_call(runtime: Runtime, clock: ManualClock, action: str, **holds: bool) -> str:
    """Start the playbook, kill the worker inside the write's call, return the run id."""
    Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
    first = Harness(runtime, lease=5, owner="worker-a")
    await first.__aenter__()
    run_id = await first.start(CONTAIN.replace("{action}", action), {"host": "ws-7", **holds})
    await asyncio.wait_for(Peer.entered.wait(), 10)
    await first.crash()
    Peer.release.set()  # whatever was blocked may go on: nobody is listening any more
    clock.advance(timedelta(seconds=6))  # the dead worker's lease runs out
    return run_id


def test_a_write_that_landed_before_the_crash_is_not_repeated(
    runtime: Runtime, clock: ManualClock
) -> None:
    async def scenario() -> None:
        run_id = await _crash_mid_call(runtime, clock, "contain", hold=False, hold_after=True)
        assert len(Peer.applied) == 1
        async with Harness(runtime, owner="worker-b") as second:
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert Peer.calls["contain:ws-7"] == 1  # reconcile said it landed: no second call
        isolate = [s for s in done.steps if s.key == "isolate"]
        assert [(s.attempt, s.status) for s in isolate] == [(1, "succeeded")]
        assert isolate[0].output["reconciled"] is True
        assert [s.attempt for s in done.steps if s.key == "look"] == [1]  # replayed, not re-read

    asyncio.run(scenario())


def test_a_write_that_never_landed_is_attempted_again(runtime: Runtime, clock: ManualClock) -> None:
    async def scenario() -> None:
        run_id = await _crash_mid_call(runtime, clock, "contain", hold=True, hold_after=False)
        assert Peer.applied == {}
        async with Harness(runtime, owner="worker-b") as second:
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        isolate = [(s.attempt, s.status) for s in done.steps if s.key == "isolate"]
        assert isolate == [(1, "superseded"), (2, "succeeded")]
        assert Peer.calls["contain:ws-7"] == 1
        assert list(Peer.applied) == [f"{run_id}:isolate:2"]

    asyncio.run(scenario())


def test_a_write_nobody_can_reconcile_waits_for_a_person(
    runtime: Runtime, clock: ManualClock
) -> None:
    async def scenario() -> None:
        run_id = await _crash_mid_call(runtime, clock, "blind", hold=False, hold_after=True)
        async with Harness(runtime, owner="worker-b") as second:
            waiting = await second.settle(run_id)
            assert waiting.status == "waiting"
            assert statuses(waiting)["isolate"] == "waiting_reconcile"
            (task,) = second.waits.list_all(kind="reconcile")
            assert "test.blind" in (task.prompt or "")
            second.waits.complete(task.id, "oncall", "checked the console", landed=True)
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert len(Peer.applied) == 1  # never blindly repeated

    asyncio.run(scenario())


def test_a_worker_that_lost_its_lease_cannot_write(runtime: Runtime, clock: ManualClock) -> None:
    text = """
id: fenced
name: Fenced
steps:
  - {id: slow, action: test.read, with: {value: 1, hold: true}}
  - {id: next, action: core.log, with: {message: next}}
"""

    async def scenario() -> None:
        Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
        async with Harness(runtime, lease=5, owner="worker-a") as first:
            run_id = await first.start(text)
            await asyncio.wait_for(Peer.entered.wait(), 10)
            clock.advance(timedelta(seconds=6))  # worker-a stalls past its lease
            Peer.entered = asyncio.Event()
            async with Harness(runtime, owner="worker-b") as second:
                await asyncio.wait_for(Peer.entered.wait(), 10)  # worker-b took the run over
                Peer.release.set()  # both calls return; only worker-b may record
                done = await second.settle(run_id, until=ENDED)
                await asyncio.sleep(0.3)
        assert done.status == "succeeded", done.error
        final = second.runs.get(run_id)
        assert [(s.key, s.attempt, s.status) for s in final.steps] == [
            ("slow", 1, "succeeded"), ("next", 1, "succeeded")
        ]  # fmt: skip
        assert final.owner is None

    asyncio.run(scenario())
