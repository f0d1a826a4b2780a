"""Waits hold no memory: approvals, tasks, callbacks and timers, and cancel/pause/resume."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from quell.clock import ManualClock
from quell.engine.execution import callback_token
from quell.engine.states import RunStatus
from quell.errors import Conflict, NotFound, PermissionDenied
from quell.runtime import Runtime
from quell.store.schema import runs
from tests.engine.harness import Harness, bare_engine, eventually, register, statuses
from tests.engine.peer import Peer

APPROVAL = """
id: approve-block
name: Block after approval
inputs: {ip: {type: string, required: true}}
vars: {outcome: pending}
steps:
  - id: ask
    wait: approval
    prompt: "Block {{ ip }}?"
    approvers: [approver]
    expires_in: 1h
    on_expiry: {expiry}
    on_failure: declined
  - {id: block, action: test.contain, with: {target: "{{ ip }}"}, out: {outcome: blocked}}
  - {id: done, end: true}
  - {id: declined, set: {outcome: "{{ steps.ask.error.code }}"}}
"""


def _approval(on_expiry: str = "fail") -> str:
    return APPROVAL.replace("{expiry}", on_expiry)


def test_an_approved_step_lets_the_run_go_on(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(_approval(), {"ip": "203.0.113.7"})
            waiting = await harness.settle(run_id)
            assert waiting.status == "waiting"
            (wait,) = harness.waits.list_all(kind="approval")
            assert wait.prompt == "Block 203.0.113.7?"
            assert Peer.applied == {}
            with pytest.raises(PermissionDenied):
                harness.waits.approve(wait.id, "ana", "analyst", "me too")
            harness.waits.approve(wait.id, "alice", "approver", "confirmed C2")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
            with pytest.raises(Conflict):
                harness.waits.reject(wait.id, "bob", "approver", "too late")
        assert done.status == "succeeded", done.error
        assert done.variables["outcome"] == "blocked"
        ask = next(s for s in done.steps if s.key == "ask")
        assert ask.output["by"] == "alice"
        assert ask.output["comment"] == "confirmed C2"
        assert list(Peer.applied.values()) == ["203.0.113.7"]

    asyncio.run(scenario())


def test_a_rejected_step_fails_into_its_on_failure(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(_approval(), {"ip": "203.0.113.7"})
            await harness.settle(run_id)
            (wait,) = harness.waits.list_all(kind="approval")
            harness.waits.reject(wait.id, "alice", "admin", "false positive")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.variables["outcome"] == "rejected"
        assert Peer.applied == {}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("on_expiry", "outcome", "status"),
    [
        ("skip", "blocked", "skipped"),
        ("fail", "expired", "failed"),
        ("escalate", "escalated", "failed"),
    ],
)
def test_an_expired_approval_ends_as_declared(
    runtime: Runtime, clock: ManualClock, on_expiry: str, outcome: str, status: str
) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(_approval(on_expiry), {"ip": "203.0.113.7"})
            await harness.settle(run_id)
            clock.advance(timedelta(minutes=61))
            done = await harness.settle(run_id, until=("succeeded", "failed"))
            (wait,) = harness.waits.list_all(kind="approval", status=None)
        assert wait.status == "expired"
        assert done.status == "succeeded", done.error
        assert statuses(done)["ask"] == status
        assert done.variables["outcome"] == outcome

    asyncio.run(scenario())


TASK_AND_EVENT = """
id: manual
name: People and callbacks
vars: {url: "", answer: null}
steps:
  - id: reimage
    wait: task
    prompt: Reimage the laptop
  - {id: link, set: {url: "{{ callback_url('hook') }}"}}
  - id: hook
    wait: event
    expires_in: 1h
  - {id: got, set: {answer: "{{ steps.hook.output.payload.verdict }}"}}
"""


def test_a_task_and_a_callback_resume_the_run(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(TASK_AND_EVENT)
            assert (await harness.settle(run_id)).status == "waiting"
            (task,) = harness.waits.list_all(kind="task")
            harness.waits.complete(task.id, "bob", "reimaged", {"ticket": "IT-42"})
            await asyncio.sleep(0.1)
            assert (await harness.settle(run_id)).status == "waiting"
            token = callback_token(harness.engine.callback_secret, run_id, "hook")
            # The playbook had the link to hand out before it waited:
            url = (await harness.settle(run_id)).variables["url"]
            assert url == f"http://127.0.0.1:8470/api/callbacks/{token}"
            with pytest.raises(NotFound):
                harness.waits.callback("forged-token", {"verdict": "x"})
            harness.waits.callback(token, {"verdict": "malicious"})
            with pytest.raises(Conflict):  # one use only
                harness.waits.callback(token, {"verdict": "benign"})
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.variables["answer"] == "malicious"
        reimage = next(s for s in done.steps if s.key == "reimage")
        assert reimage.output["data"] == {"ticket": "IT-42"}

    asyncio.run(scenario())


def test_a_task_past_its_expiry_cannot_be_completed(runtime: Runtime, clock: ManualClock) -> None:
    """Until the engine's tick settled it, an expired task still took a completion (approvals
    and callbacks refused theirs): it ends as its step says, not as whoever came late says."""
    text = TASK_AND_EVENT.replace(
        "prompt: Reimage the laptop", "prompt: Reimage\n    expires_in: 1h"
    )

    async def scenario() -> str:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            assert (await harness.settle(run_id)).status == "waiting"
        return run_id  # the engine is stopped: no tick settles the task meanwhile

    asyncio.run(scenario())
    waits = Harness(runtime).waits
    (task,) = waits.list_all(kind="task")
    clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(Conflict, match="expired"):
        waits.complete(task.id, "bob", "done late", {})
    assert waits.get(task.id).status == "pending"  # for the tick to end as declared


def test_callback_url_names_only_event_steps(runtime: Runtime) -> None:
    text = TASK_AND_EVENT.replace("callback_url('hook')", "callback_url('reimage')")

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            assert (await harness.settle(run_id)).status == "waiting"
            (task,) = harness.waits.list_all(kind="task")
            harness.waits.complete(task.id, "bob", "reimaged", {})
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "failed"
        assert "'reimage' is not a wait: event step" in done.error["message"]

    asyncio.run(scenario())


def test_a_long_timer_is_a_row_until_it_is_due(runtime: Runtime, clock: ManualClock) -> None:
    text = """
id: later
name: Later
steps:
  - {id: nap, wait: timer, duration: 10m}
  - {id: woke, action: core.log, with: {message: awake}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            waiting = await harness.settle(run_id)
            assert waiting.status == "waiting"
            # Nothing of it stays in memory, once the release that committed "waiting" returns
            # (the status can be read a moment before the engine lets go of the execution).
            await eventually(lambda: harness.engine.active == {}, "the engine to let go of it")
            await asyncio.sleep(0.2)
            assert harness.engine.active == {}
            assert (await harness.settle(run_id)).status == "waiting"
            clock.advance(timedelta(minutes=10, seconds=1))
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert statuses(done) == {"nap": "succeeded", "woke": "succeeded"}

    asyncio.run(scenario())


def test_a_step_delay_is_a_durable_timer(runtime: Runtime, clock: ManualClock) -> None:
    text = """
id: delayed
name: Delayed
steps:
  - {id: later, action: core.log, with: {message: later}, delay: 5m}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            assert (await harness.settle(run_id)).status == "waiting"
            clock.advance(timedelta(minutes=6))
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded"
        assert statuses(done) == {"later~delay": "succeeded", "later": "succeeded"}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "wait",
    [
        "{id: ask, wait: approval, prompt: proceed, approvers: [approver], expires_in: 1h}",
        "{id: ask, wait: timer, duration: 20m}",
    ],
)
def test_a_run_waiting_past_its_timeout_fails_then_and_closes_its_waits(
    runtime: Runtime, clock: ManualClock, wait: str
) -> None:
    """A playbook's timeout ends a run that waits, when it comes: the run used to be woken at
    its deadline, find its wait again without awaiting anything (so a timeout of zero never
    fired) and go back to waiting, until the wait itself ended."""
    text = f"""
id: bounded
name: Bounded
timeout: 3m
vars: {{handled: ""}}
on_exception:
  - {{id: tell, set: {{handled: "{{{{ error.code }}}}"}}}}
steps:
  - {wait}
  - {{id: after, action: core.log, with: {{message: after}}}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            assert (await harness.settle(run_id)).status == "waiting"
            clock.advance(timedelta(minutes=3, seconds=1))
            done = await harness.settle(run_id, until=("succeeded", "failed"))
            pending = harness.waits.list_all(status="pending")
        assert done.status == "failed"
        assert done.error["code"] == "run_timeout"
        assert statuses(done)["ask"] == "canceled"
        assert pending == []
        # woken past its deadline, the run still gets its exception step (CACAO)
        assert done.variables["handled"] == "run_timeout"
        assert statuses(done)["!exception/tell"] == "succeeded"

    asyncio.run(scenario())


TIMED_HANDLER = """
id: timed-handler
name: Timed, with a handler
timeout: {timeout}
vars: {{handled: "", saw: ""}}
on_exception:
  - id: tell
    set:
      handled: "{{{{ error.code }}}}"
      saw: "{{{{ steps.first.output.value | default('none') }}}}"
steps:
  - {{id: first, action: test.read, with: {{value: seen}}}}
  - {step}
  - {{id: after, action: core.log, with: {{message: after}}}}
"""


def test_the_exception_step_runs_when_a_running_run_reaches_its_timeout(
    runtime: Runtime,
) -> None:
    """CACAO's workflow_exception runs whenever a playbook does not end successfully: a run cut
    off at its timeout in the middle of a step gets its handler, which sees the steps before."""
    slow = "{id: slow, action: test.read, with: {value: x, seconds: 5}}"
    text = TIMED_HANDLER.format(timeout="300ms", step=slow)

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            done = await harness.run(text)
        assert done.status == "failed"
        assert done.error["code"] == "run_timeout"
        assert done.variables["handled"] == "run_timeout"
        assert done.variables["saw"] == "seen"
        assert statuses(done)["!exception/tell"] == "succeeded"
        assert "after" not in statuses(done)

    asyncio.run(scenario())


def test_cancelling_a_waiting_run_cancels_its_waits(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(_approval(), {"ip": "198.51.100.1"})
            await harness.settle(run_id)
            harness.runs.cancel(run_id)
            done = await harness.settle(run_id, until=("canceled",))
            (wait,) = harness.waits.list_all(kind="approval", status=None)
            with pytest.raises(Conflict):
                harness.runs.cancel(run_id)
        assert done.error["code"] == "canceled"
        assert wait.status == "canceled"
        assert statuses(done)["ask"] == "canceled"

    asyncio.run(scenario())


SLOW = """
id: slow-steps
name: Slow steps
steps:
  - {id: one, action: test.read, with: {value: 1, seconds: 0.3}}
  - {id: two, action: test.read, with: {value: 2, seconds: 0.3}}
  - {id: three, action: test.read, with: {value: 3, seconds: 0.3}}
"""


def test_a_running_run_stops_at_its_next_step_when_cancelled(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime, lease=0.6) as harness:
            run_id = await harness.start(SLOW)
            await asyncio.sleep(0.1)
            harness.runs.cancel(run_id)
            done = await harness.settle(run_id, until=("canceled", "succeeded"))
        assert done.status == "canceled"
        assert "three" not in statuses(done)

    asyncio.run(scenario())


def test_a_run_cancelled_in_its_exception_step_ends_cancelled_not_crashed(
    runtime: Runtime,
) -> None:
    """The cancel reached the handler's next step; it used to escape the run as a crash."""
    text = """
id: cancel-in-handler
name: Cancelled while handling
on_exception:
  - {id: slow, action: test.read, with: {value: x, seconds: 0.5}}
  - {id: later, action: core.log, with: {message: later}}
steps:
  - {id: broken, fail: broken}
"""

    async def scenario() -> None:
        async with Harness(runtime, lease=0.6) as harness:
            run_id = await harness.start(text)
            await asyncio.sleep(0.1)
            harness.runs.cancel(run_id)
            done = await harness.settle(run_id, until=("canceled", "failed"))
        assert done.status == "canceled", done.error
        assert done.error["code"] == "canceled"
        assert statuses(done)["!exception/slow"] == "succeeded"
        assert "!exception/later" not in statuses(done)

    asyncio.run(scenario())


def test_pause_and_resume(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime, lease=0.6) as harness:
            run_id = await harness.start(SLOW)
            await asyncio.sleep(0.1)
            harness.runs.pause(run_id)
            paused = await harness.settle(run_id, until=("paused",))
            assert "three" not in statuses(paused)
            harness.runs.resume(run_id)
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded"
        assert [s.attempt for s in done.steps if s.key == "one"] == [1]  # not run again

    asyncio.run(scenario())


@pytest.mark.parametrize("heard", [0.0, 0.3])  # resumed before, or after, the worker heard
def test_a_resume_right_after_a_pause_withdraws_it(runtime: Runtime, heard: float) -> None:
    """A running run asked to pause had not stopped yet: resume answered "running, not
    paused", and the run paused moments later anyway, to be resumed again by hand."""

    async def scenario() -> None:
        async with Harness(runtime, lease=0.6) as harness:
            run_id = await harness.start(SLOW)
            await asyncio.sleep(0.1)
            harness.runs.pause(run_id)
            await asyncio.sleep(heard)
            harness.runs.resume(run_id)  # not refused
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded"
        assert statuses(done) == {"one": "succeeded", "two": "succeeded", "three": "succeeded"}

    asyncio.run(scenario())


def test_retrying_a_failed_run_reruns_only_its_failed_step(runtime: Runtime) -> None:
    text = """
id: second-chance
name: Second chance
steps:
  - {id: once, action: test.read, with: {value: 1}}
  - {id: fussy, action: test.read, with: {value: 2, fail_times: 1, permanent: true}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            failed = await harness.settle(run_id, until=("failed",))
            assert failed.error["code"] == "refused"
            harness.runs.retry(run_id)
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert [(s.key, s.attempt, s.status) for s in done.steps if s.kind == "action"] == [
            ("once", 1, "succeeded"), ("fussy", 1, "superseded"), ("fussy", 2, "succeeded")
        ]  # fmt: skip

    asyncio.run(scenario())


GATED = """
id: gated-block
name: Block, once a person says so
inputs: {ip: {type: string, required: true}}
vars: {outcome: pending}
steps:
  - id: block
    action: test.contain
    approval: true
    with: {target: "{{ ip }}"}
    out: {outcome: blocked}
    on_failure: declined
  - {id: done, end: true}
  - {id: declined, set: {outcome: "{{ steps.block.error.code }}"}}
"""


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_an_action_that_asks_for_approval_runs_only_once_approved(
    runtime: Runtime, approve: bool
) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(GATED, {"ip": "203.0.113.9"})
            assert (await harness.settle(run_id)).status == "waiting"
            (wait,) = harness.waits.list_all(kind="approval")
            assert wait.prompt == 'Run test.contain (block) with {"target":"203.0.113.9"}'
            assert Peer.applied == {}
            decide = harness.waits.approve if approve else harness.waits.reject
            decide(wait.id, "alice", "approver", "checked")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        if approve:
            assert done.variables["outcome"] == "blocked"
            assert list(Peer.applied.values()) == ["203.0.113.9"]
            assert statuses(done)["block"] == "succeeded"
        else:
            assert done.variables["outcome"] == "rejected"
            assert Peer.applied == {}
        assert statuses(done)["block#approval"] == ("succeeded" if approve else "failed")

    asyncio.run(scenario())


def test_a_dry_run_asks_nobody_to_approve_a_write_it_only_simulates(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            done = await harness.run(GATED, {"ip": "203.0.113.9"}, dry_run=True)
        assert done.status == "succeeded", done.error
        assert Peer.applied == {}
        assert harness.waits.list_all(kind="approval") == []
        block = next(s for s in done.steps if s.key == "block")
        assert block.output == {"simulated": True, "action": "test.contain"}

    asyncio.run(scenario())


def test_a_decision_from_another_process_wakes_an_idle_engine(runtime: Runtime) -> None:
    """The engine polls once a minute here: only the wake-up (LISTEN on PostgreSQL, the
    database's change counter on SQLite) can bring the approved run back within the test."""
    from quell.engine.waits import WaitService

    async def scenario() -> None:
        engine = bare_engine(runtime, poll=60.0, tick=60.0)
        version = register(runtime, engine, _approval())
        stop = asyncio.Event()
        async with engine:
            serving = asyncio.create_task(engine.serve(stop))
            await asyncio.sleep(0.2)  # serving: claimed nothing, listening
            run_id = await engine.start(version, {"ip": "203.0.113.7"})
            elsewhere = WaitService(runtime.db, runtime.clock)  # no on_change: not this engine
            for _ in range(200):
                waiting = elsewhere.list_all(kind="approval")
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, "the run never reached its approval"
            finished = engine.watch(run_id)
            await asyncio.to_thread(
                elsewhere.approve, waiting[0].id, "alice", "approver", "confirmed"
            )
            status = await asyncio.wait_for(finished, 20)
            stop.set()
            await serving
        assert status == "succeeded"

    asyncio.run(scenario())


def test_a_decision_before_the_run_is_released_is_not_lost(runtime: Runtime) -> None:
    """The run opened its wait and a decision came before the run's release was written: the
    release (as waiting) must leave it ready, not stranded."""
    from sqlalchemy import select

    from quell.engine.journal import Op, OpKind, release_params
    from quell.engine.waits import WaitService
    from quell.store.schema import runs

    async def scenario() -> None:
        engine = bare_engine(runtime)  # journals, does not serve: nobody claims the run
        version = register(runtime, engine, _approval())
        async with engine:
            row = engine.run_row(
                "run_held", version, "approve-block", {"ip": "203.0.113.7"},
                status=RunStatus.RUNNING, owner="someone-else", epoch=3,
            )  # fmt: skip
            await engine.journal.write(Op(OpKind.INSERT_RUN, "run_held", None, row))
            with runtime.db.write() as conn:  # what a decision does to its run
                WaitService._ready(conn, "run_held", runtime.clock.now())
            now = runtime.clock.now()
            released = release_params(
                "run_held", status="waiting", variables={}, error=None, finished_at=None,
                wake_at=None, updated_at=now,
            )  # fmt: skip
            await engine.journal.write(Op(OpKind.RELEASE_RUN, "run_held", 3, released))
            with runtime.db.read() as conn:
                status, wake_at = conn.execute(
                    select(runs.c.status, runs.c.wake_at).where(runs.c.id == "run_held")
                ).one()
            assert (status, wake_at) == ("ready", None)
            # Without a decision meanwhile, a release to waiting stays waiting.
            row = engine.run_row(
                "run_quiet", version, "approve-block", {"ip": "203.0.113.8"},
                status=RunStatus.RUNNING, owner="someone-else", epoch=3,
            )  # fmt: skip
            await engine.journal.write(Op(OpKind.INSERT_RUN, "run_quiet", None, row))
            later = now + timedelta(hours=1)
            quiet = release_params(
                "run_quiet", status="waiting", variables={}, error=None, finished_at=None,
                wake_at=later, updated_at=now,
            )  # fmt: skip
            await engine.journal.write(Op(OpKind.RELEASE_RUN, "run_quiet", 3, quiet))
            with runtime.db.read() as conn:
                status, wake_at = conn.execute(
                    select(runs.c.status, runs.c.wake_at).where(runs.c.id == "run_quiet")
                ).one()
            assert (status, wake_at) == ("waiting", later)

    asyncio.run(scenario())


def test_retrying_a_run_whose_approval_was_refused_asks_again(runtime: Runtime) -> None:
    text = GATED.split("    on_failure: declined")[0]  # no way around a refusal: the run fails

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text, {"ip": "203.0.113.9"})
            await harness.settle(run_id)
            (first,) = harness.waits.list_all(kind="approval")
            harness.waits.reject(first.id, "alice", "approver", "not yet")
            assert (await harness.settle(run_id, until=("failed",))).status == "failed"
            harness.runs.retry(run_id)
            assert (await harness.settle(run_id)).status == "waiting"
            (second,) = harness.waits.list_all(kind="approval")
            assert second.id != first.id
            harness.waits.approve(second.id, "alice", "approver", "now")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert list(Peer.applied.values()) == ["203.0.113.9"]
        gates = [(s.attempt, s.status) for s in done.steps if s.key == "block#approval"]
        assert gates == [(1, "superseded"), (2, "succeeded")]

    asyncio.run(scenario())


EARLY = """
id: early
name: A peer faster than the run
vars: {url: "", answer: null}
steps:
  - {id: link, set: {url: "{{ callback_url('hook') }}"}}
  - {id: reimage, wait: task, prompt: Reimage the laptop}
  - {id: hook, wait: event, expires_in: 1h}
  - {id: got, set: {answer: "{{ steps.hook.output.payload.verdict }}"}}
"""


def test_a_callback_that_comes_before_its_wait_is_kept_for_it(runtime: Runtime) -> None:
    from quell.engine.waits import WaitService

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            peer_side = WaitService(
                runtime.db, runtime.clock, callback_secret=harness.engine.callback_secret
            )
            run_id = await harness.start(EARLY)
            waiting = await harness.settle(run_id)
            token = waiting.variables["url"].rsplit("/", 1)[1]
            forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            with pytest.raises(NotFound):  # well formed, badly signed: like any unknown token
                peer_side.callback(forged, {"verdict": "x"})
            kept = peer_side.callback(token, {"verdict": "malicious"})  # the run is at its task
            assert kept.status == "done"
            with pytest.raises(Conflict):  # still one use only
                peer_side.callback(token, {"verdict": "benign"})
            (task,) = harness.waits.list_all(kind="task")
            harness.waits.complete(task.id, "bob", "reimaged", {})
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.variables["answer"] == "malicious"
        assert statuses(done)["hook"] == "succeeded"

    asyncio.run(scenario())


def test_a_genuine_token_of_a_finished_run_is_refused(runtime: Runtime) -> None:
    from quell.engine.waits import WaitService

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(EARLY)
            await harness.settle(run_id)
            token = callback_token(harness.engine.callback_secret, run_id, "hook")
            harness.runs.cancel(run_id)
            await harness.settle(run_id, until=("canceled",))
            peer_side = WaitService(
                runtime.db, runtime.clock, callback_secret=harness.engine.callback_secret
            )
            with pytest.raises(NotFound):
                peer_side.callback(token, {"verdict": "late"})

    asyncio.run(scenario())


def test_the_link_a_peer_holds_still_works_after_a_retry(
    runtime: Runtime, clock: ManualClock
) -> None:
    from quell.engine.waits import WaitService

    text = EARLY.replace("  - {id: reimage, wait: task, prompt: Reimage the laptop}\n", "")

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            peer_side = WaitService(
                runtime.db, runtime.clock, callback_secret=harness.engine.callback_secret
            )
            run_id = await harness.start(text)
            token = (await harness.settle(run_id)).variables["url"].rsplit("/", 1)[1]
            clock.advance(timedelta(hours=2))  # nobody called back: the wait expires, run fails
            assert (await harness.settle(run_id, until=("failed",))).status == "failed"
            with pytest.raises(Conflict, match="expired"):  # (the API answers 404 for it)
                peer_side.callback(token, {"verdict": "too late"})
            harness.runs.retry(run_id)
            assert (await harness.settle(run_id)).status == "waiting"
            peer_side.callback(token, {"verdict": "malicious"})  # the same link, reopened wait
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.variables["answer"] == "malicious"
        assert [(s.attempt, s.status) for s in done.steps if s.key == "hook"] == [
            (1, "superseded"), (2, "succeeded")
        ]  # fmt: skip

    asyncio.run(scenario())


def test_retrying_a_run_that_timed_out_gives_it_its_timeout_again(
    runtime: Runtime, clock: ManualClock
) -> None:
    """A retry used to keep the run's old deadline, long past: the retried run ended at once
    with run_timeout again, without asking anyone, so a timed-out run could never be retried."""
    text = """
id: bounded-retry
name: Bounded, retried
timeout: 3m
steps:
  - {id: ask, wait: approval, approvers: [approver]}
  - {id: after, action: core.log, with: {message: after}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            assert (await harness.settle(run_id)).status == "waiting"
            for _ in range(2):  # each retry has 3 minutes from its start, not more
                clock.advance(timedelta(minutes=3, seconds=1))
                timed_out = await harness.settle(run_id, until=("failed",))
                assert timed_out.error["code"] == "run_timeout"
                harness.runs.retry(run_id)
                with runtime.db.read() as conn:
                    deadline = conn.execute(
                        select(runs.c.deadline).where(runs.c.id == run_id)
                    ).scalar_one()
                assert deadline == clock.now() + timedelta(minutes=3)
                again = await harness.settle(run_id)
                assert again.status == "waiting", again.error
            (wait,) = harness.waits.list_all(kind="approval", status="pending")
            harness.waits.approve(wait.id, "alice", "approver", "in time now")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error

    asyncio.run(scenario())


KID = """
id: kid
name: Contain, then ask
version: 1
inputs: {ip: {type: string, required: true}}
steps:
  - {id: block, action: test.contain, with: {target: "{{ ip }}"}}
  - {id: ask, wait: approval, approvers: [approver]}
"""
PARENT = """
id: parent
name: Call the kid
steps:
  - {id: call, playbook: kid, version: 1, with: {ip: 203.0.113.8}}
  - {id: after, action: core.log, with: {message: after}}
"""


@pytest.mark.parametrize("how", ["rejected", "canceled"])
def test_retrying_a_run_whose_sub_playbook_failed_retries_the_child(
    runtime: Runtime, how: str
) -> None:
    """A retried parent used to supersede its sub-playbook step and then wait for it forever:
    no child started again and nothing was left to decide. The child is retried in place, so
    what it had done (a containment) is not done twice."""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            harness.add(KID)
            run_id = await harness.start(PARENT)
            await eventually(
                lambda: len(harness.waits.list_all(kind="approval")) == 1, "the child to ask"
            )
            (first,) = harness.waits.list_all(kind="approval")
            if how == "rejected":
                harness.waits.reject(first.id, "alice", "approver", "not yet")
            else:
                harness.runs.cancel(run_id)
            ended = await harness.settle(run_id, until=("failed", "canceled"))
            assert ended.status == ("failed" if how == "rejected" else "canceled")
            harness.runs.retry(run_id)
            await eventually(
                lambda: len(harness.waits.list_all(kind="approval")) == 1, "the child to ask again"
            )
            (second,) = harness.waits.list_all(kind="approval")
            assert second.run_id == first.run_id  # the same child, retried
            harness.waits.approve(second.id, "alice", "approver", "now")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert list(Peer.applied.values()) == ["203.0.113.8"]  # contained once

    asyncio.run(scenario())


def test_a_parent_is_not_retried_while_its_cancelled_child_is_still_stopping(
    runtime: Runtime,
) -> None:
    """Retried at once, the parent waited for a child that then ended cancelled into its step,
    failing the retry (or, on PostgreSQL, leaving the parent waiting for an ended child)."""
    slow_kid = KID.replace(
        "  - {id: block,",
        "  - {id: slow, action: test.read, with: {value: 1, seconds: 0.6}}\n  - {id: block,",
    )

    async def scenario() -> None:
        async with Harness(runtime, lease=0.6) as harness:
            harness.add(slow_kid)
            run_id = await harness.start(PARENT)
            await eventually(
                lambda: (
                    {
                        (r.parent_run_id == run_id, r.status)
                        for r in harness.runs.list_all()
                        if r.id == run_id or r.parent_run_id == run_id
                    }
                    == {(False, "waiting"), (True, "running")}
                ),
                "the parent to wait on its running child",
            )
            harness.runs.cancel(run_id)
            with pytest.raises(Conflict, match="still stopping"):
                harness.runs.retry(run_id)
            await eventually(
                lambda: all(
                    r.status == "canceled"
                    for r in harness.runs.list_all()
                    if r.parent_run_id == run_id
                ),
                "the child to stop",
            )
            harness.runs.retry(run_id)
            await eventually(
                lambda: len(harness.waits.list_all(kind="approval")) == 1, "the child to ask"
            )
            (wait,) = harness.waits.list_all(kind="approval")
            harness.waits.approve(wait.id, "alice", "approver", "go")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert list(Peer.applied.values()) == ["203.0.113.8"]

    asyncio.run(scenario())


def test_retrying_a_sub_playbook_step_that_started_no_child_starts_one(
    runtime: Runtime,
) -> None:
    """A sub-playbook step that failed before it started a child (the version was missing)
    starts one when the run is retried, rather than waiting for nothing."""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(PARENT)
            failed = await harness.settle(run_id, until=("failed",))
            assert failed.error["code"] == "sub_playbook"
            harness.add(KID)
            harness.runs.retry(run_id)
            await eventually(
                lambda: len(harness.waits.list_all(kind="approval")) == 1, "the child to ask"
            )
            (wait,) = harness.waits.list_all(kind="approval")
            harness.waits.approve(wait.id, "alice", "approver", "go")
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error

    asyncio.run(scenario())


def test_retrying_a_run_cancelled_in_its_timer_waits_the_timer_again(
    runtime: Runtime, clock: ManualClock
) -> None:
    """A retry used to supersede the cancelled timer and clear its due time, and the replay
    then took the timer as done: the step after it (lifting a block, say) ran at once."""
    text = """
id: wait-then-act
name: Wait, then act
steps:
  - {id: pause, wait: timer, duration: 1h}
  - {id: after, action: core.log, with: {message: after}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await harness.start(text)
            assert (await harness.settle(run_id)).status == "waiting"
            harness.runs.cancel(run_id)
            await harness.settle(run_id, until=("canceled",))
            harness.runs.retry(run_id)
            again = await harness.settle(run_id, until=("waiting", "succeeded", "failed"))
            assert again.status == "waiting"
            assert "after" not in statuses(again)
            clock.advance(timedelta(hours=1, seconds=1))
            done = await harness.settle(run_id, until=("succeeded", "failed"))
        assert done.status == "succeeded", done.error

    asyncio.run(scenario())
