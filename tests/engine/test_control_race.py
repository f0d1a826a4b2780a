"""A cancel or pause asked while a run is held, just before its worker releases it to wait for
a person, is acted on at once, not when the wait is decided (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from quell.engine.journal import Op, OpKind, release_params
from quell.runtime import Runtime
from quell.store.schema import runs, waits
from tests.engine.harness import ENDED, Harness

APPROVAL = """
id: ask-first
name: Ask before anything
steps:
  - {id: ask, wait: approval, prompt: "Go?", expires_in: 1h}
  - {id: done, action: core.log, with: {message: went}}
"""


async def _held_and_asked(
    harness: Harness,
    runtime: Runtime,
    ask: str,
    *,
    heard: str | None = None,
    released: str = "waiting",
) -> str:
    """A run waiting for its approval, then the race replayed: a worker holds it again
    (running, under a new lease, having heard ``heard`` if given), ``ask`` (cancel, pause or
    resume) arrives and, seeing it running, only sets ``control``; then the worker releases it
    ``released``: to waiting, as a run that just opened its wait does, or to paused, as one
    that stopped for the pause it heard."""
    run_id = await harness.start(APPROVAL)
    assert (await harness.settle(run_id)).status == "waiting"
    with runtime.db.write() as conn:
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status="running", owner="other-worker", control=heard,
                    lease_epoch=runs.c.lease_epoch + 1)
        )  # fmt: skip
        epoch = conn.execute(select(runs.c.lease_epoch).where(runs.c.id == run_id)).scalar()
    getattr(harness.runs, ask)(run_id)  # a resume of a running run is not refused either
    with runtime.db.read() as conn:
        row = conn.execute(select(runs.c.status, runs.c.control).where(runs.c.id == run_id)).one()
    assert (row.status, row.control) == ("running", None if ask == "resume" else ask)
    params = release_params(
        run_id, status=released, variables={}, error=None, finished_at=None, wake_at=None,
        updated_at=runtime.clock.now(),
    )  # fmt: skip
    await harness.engine.journal.write(Op(OpKind.RELEASE_RUN, run_id, epoch, params))
    return run_id


def test_a_cancel_asked_just_before_the_run_waits_cancels_it(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _held_and_asked(harness, runtime, "cancel")
            done = await harness.settle(run_id, until=ENDED)
            assert done.status == "canceled"
            with runtime.db.read() as conn:
                states = conn.execute(select(waits.c.status).where(waits.c.run_id == run_id))
                assert [state for (state,) in states] == ["canceled"]

    asyncio.run(scenario())


def test_a_pause_asked_just_before_the_run_waits_pauses_it(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _held_and_asked(harness, runtime, "pause")
            paused = await harness.settle(run_id, until=("paused",))
            assert paused.status == "paused"
            harness.runs.resume(run_id)
            again = await harness.settle(run_id)
            assert again.status == "waiting"  # at its approval again, nothing lost
            (wait,) = harness.waits.list_all(kind="approval")
            harness.waits.approve(wait.id, "alice", "admin", "go")
            finished = await harness.settle(run_id, until=ENDED)
            assert finished.status == "succeeded", finished.error

    asyncio.run(scenario())


@pytest.mark.parametrize("ask", ["cancel", "pause"])
def test_without_a_race_a_waiting_run_is_cancelled_or_paused_directly(
    runtime: Runtime, ask: str
) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(APPROVAL)
            assert (await harness.settle(run_id)).status == "waiting"
            getattr(harness.runs, ask)(run_id)
            with runtime.db.read() as conn:
                row = conn.execute(
                    select(runs.c.status, runs.c.control).where(runs.c.id == run_id)
                ).one()
            assert (row.status, row.control) == (
                {"cancel": "canceled", "pause": "paused"}[ask],
                None,
            )

    asyncio.run(scenario())


@pytest.mark.parametrize(("then", "ends"), [("resume", "waiting"), ("cancel", "canceled")])
def test_a_run_stopping_for_a_pause_takes_what_was_asked_after_it(
    runtime: Runtime, then: str, ends: str
) -> None:
    """A worker heard a pause and stops; before it releases the run paused, a resume withdraws
    the pause (or a cancel comes). The run used to sit paused anyway (and a resume then erased
    the cancel); it is released ready, so that it goes on (or stops, cancelled)."""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _held_and_asked(harness, runtime, then, heard="pause", released="paused")
            harness.engine.wake()
            done = await harness.settle(run_id, until=(ends,))
            assert done.status == ends
            if then == "resume":  # the withdrawn pause is gone, not waiting for a next time
                with runtime.db.read() as conn:
                    row = conn.execute(select(runs.c.control).where(runs.c.id == run_id))
                    assert row.scalar() is None

    asyncio.run(scenario())
