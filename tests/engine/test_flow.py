"""Every control-flow construct, on both backends, through the real engine and journal."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from quell.clock import ManualClock
from quell.runtime import Runtime
from tests.engine.harness import Harness, statuses
from tests.engine.peer import Peer

FLOW = """
id: flow
name: Every construct
inputs: {alert: {type: object, required: true}}
vars: {verdict: unknown, n: 0, seen: []}
steps:
  - id: lookup
    action: test.read
    with: {value: "{{ alert.src }}"}
    out: {verdict: "{{ 'bad' if output.value.startswith('203.') else 'ok' }}"}
  - id: decide
    if: verdict == 'bad'
    then:
      - {id: flag, set: {seen: "{{ seen + ['flagged'] }}"}}
    else:
      - {id: pass_, set: {seen: "{{ seen + ['passed'] }}"}}
  - id: route
    switch: alert.severity
    cases:
      high: [{id: page, action: core.log, with: {message: paged}}]
    default: [{id: quiet, action: core.log, with: {message: quiet}}]
  - id: poll
    while: n < 3
    max_iterations: 10
    do:
      - {id: bump, set: {n: "{{ n + 1 }}"}}
  - id: fan
    parallel:
      - [{id: left, action: test.read, with: {value: L}}]
      - [{id: right, action: test.read, with: {value: R}}]
  - id: each
    for_each: "{{ alert.hosts }}"
    as: host
    concurrency: 2
    action: test.read
    with: {value: "{{ host }}-{{ index }}"}
  - id: total
    action: core.echo
    with: {value: "{{ steps.each.output | map(attribute='value') | join(',') }}"}
"""


def test_every_construct_runs_and_is_journaled(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            inputs = {"alert": {"src": "203.0.113.9", "severity": "high", "hosts": ["a", "b", "c"]}}
            view = await harness.run(FLOW, inputs)
        assert view.status == "succeeded", view.error
        assert view.variables["verdict"] == "bad"
        assert view.variables["seen"] == ["flagged"]
        assert view.variables["n"] == 3
        seen = statuses(view)
        assert seen["decide/flag"] == "succeeded"
        assert "decide/pass_" not in seen
        assert seen["route/page"] == "succeeded"
        assert "route/quiet" not in seen
        assert {k for k in seen if k.startswith("poll#") and "/" in k} == {
            "poll#0/bump",
            "poll#1/bump",
            "poll#2/bump",
        }
        assert seen["fan|0/left"] == seen["fan|1/right"] == "succeeded"
        assert {k for k in seen if k.startswith("each[")} >= {
            "each[0]/each__each",
            "each[1]/each__each",
            "each[2]/each__each",
        }
        total = next(s for s in view.steps if s.key == "total")
        assert total.output == {"value": "a-0,b-1,c-2"}

    asyncio.run(scenario())


def test_else_and_default_branches(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(
                FLOW, {"alert": {"src": "10.0.0.1", "severity": "low", "hosts": []}}
            )
        assert view.status == "succeeded", view.error
        seen = statuses(view)
        assert seen["decide/pass_"] == "succeeded"
        assert seen["route/quiet"] == "succeeded"
        assert next(s for s in view.steps if s.key == "total").output == {"value": ""}

    asyncio.run(scenario())


def test_spans_of_time_and_filtered_lists_are_kept_as_data(runtime: Runtime) -> None:
    """A duration or a map() result stored in a variable or sent to an action used to reach
    the journal as a Python object it could not write: the run crashed, or never ended."""
    text = """
id: spans
name: Spans
vars: {d: null, names: null}
steps:
  - {id: keep, set: {d: "{{ '90m' | duration }}", names: "{{ ['a', 'b'] | map('upper') }}"}}
  - {id: send, action: core.echo, with: {value: {wait: "{{ d | duration }}", names: "{{ names }}"}}}
  - {id: back, set: {d: "{{ ((d | duration).total_seconds() / 60) | int }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "succeeded", view.error
        assert next(s for s in view.steps if s.key == "send").output == {
            "value": {"wait": "1h30m", "names": ["A", "B"]}
        }
        assert view.variables == {"d": 90, "names": ["A", "B"]}

    asyncio.run(scenario())


EDGES = """
id: edges
name: Edges and handlers
vars: {path: []}
on_exception:
  - {id: tell, set: {path: "{{ path + ['exception:' ~ error.code] }}"}}
steps:
  - id: first
    action: test.read
    with: {value: 1, fail_times: 5, permanent: true}
    on_failure: recover
  - {id: skipped_on_failure, set: {path: "{{ path + ['not here'] }}"}}
  - id: recover
    set: {path: "{{ path + ['recovered'] }}"}
  - id: anyway
    action: test.read
    with: {value: 2, fail_times: 5, permanent: true}
    on_completion: after
  - {id: after, set: {path: "{{ path + ['after'] }}"}}
  - id: stop
    fail: "stopping at {{ path | length }}"
"""


def test_on_failure_on_completion_fail_and_the_exception_handler(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(EDGES)
        assert view.status == "failed"
        assert view.error == {"code": "fail_step", "message": "stopping at 2", "retryable": False}
        assert view.variables["path"] == ["recovered", "after", "exception:fail_step"]
        seen = statuses(view)
        assert seen["first"] == "failed"
        assert "skipped_on_failure" not in seen
        assert seen["!exception/tell"] == "succeeded"

    asyncio.run(scenario())


RETRY = """
id: retry
name: Retries
steps:
  - id: flaky
    action: test.read
    with: {value: ok, fail_times: 2}
    retry: {attempts: 3, backoff: 10ms, max_backoff: 50ms}
  - id: hopeless
    action: test.read
    with: {value: ok, fail_times: 9, permanent: true}
    retry: {attempts: 5, backoff: 10ms}
    on_failure: done
  - {id: done, end: true}
"""


def test_retries_back_off_and_only_retryable_errors_are_retried(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(RETRY)
        assert view.status == "succeeded", view.error
        flaky = [s for s in view.steps if s.key == "flaky"]
        assert [(s.attempt, s.status) for s in flaky] == [
            (1, "failed"),
            (2, "failed"),
            (3, "succeeded"),
        ]
        assert flaky[0].error["retryable"] is True
        hopeless = [s for s in view.steps if s.key == "hopeless"]
        assert [(s.attempt, s.status) for s in hopeless] == [(1, "failed")]

    asyncio.run(scenario())


def test_retry_after_from_the_error_is_honoured(runtime: Runtime) -> None:
    text = """
id: polite
name: Polite
steps:
  - id: rated
    action: test.read
    with: {value: ok, fail_times: 1, retry_after: 0.3}
    retry: {attempts: 2, backoff: 1ms, max_backoff: 1ms}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "succeeded", view.error
        first, second = [s for s in view.steps if s.key == "rated"]
        assert first.error["retry_after"] == 0.3
        assert first.due_at is not None
        assert (first.due_at - first.finished_at).total_seconds() >= 0.3
        assert second.status == "succeeded"

    asyncio.run(scenario())


def test_a_step_timeout_fails_the_step_and_leads_to_on_failure(runtime: Runtime) -> None:
    text = """
id: slow
name: Slow
vars: {note: ""}
steps:
  - id: wait_too_long
    action: test.read
    with: {value: x, seconds: 5}
    timeout: 100ms
    on_failure: noted
  - {id: noted, set: {note: "{{ steps.wait_too_long.error.code }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "succeeded", view.error
        assert statuses(view)["wait_too_long"] == "timed_out"
        assert view.variables["note"] == "timeout"

    asyncio.run(scenario())


def test_a_connector_bug_fails_its_step_without_leaking_its_message(runtime: Runtime) -> None:
    text = "id: bug\nname: Bug\nsteps:\n  - {id: crash, action: test.boom, with: {}}\n"

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "failed"
        assert view.error == {
            "code": "connector_error",
            "message": "test.boom raised RuntimeError",
            "retryable": False,
        }
        assert "hunter2" not in str(view.as_dict())

    asyncio.run(scenario())


def test_an_input_the_action_refuses_fails_the_step_naming_the_field(runtime: Runtime) -> None:
    text = """
id: typo
name: Bad input at run time
inputs: {thing: {type: any}}
steps:
  - {id: contain, action: test.contain, with: {target: "{{ thing }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text, {"thing": {"not": "a string"}})
        assert view.status == "failed"
        assert view.error["code"] == "invalid_input"
        assert "input target" in view.error["message"]
        assert Peer.applied == {}

    asyncio.run(scenario())


def test_dry_run_calls_reads_and_records_the_writes_it_would_make(runtime: Runtime) -> None:
    text = """
id: dry
name: Dry
steps:
  - {id: look, action: test.read, with: {value: seen}}
  - {id: block, action: test.contain, with: {target: "{{ steps.look.output.value }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text, dry_run=True)
        assert view.status == "succeeded", view.error
        assert view.dry_run
        look = next(s for s in view.steps if s.key == "look")
        block = next(s for s in view.steps if s.key == "block")
        assert (look.simulated, look.output["value"]) == (False, "seen")
        assert block.simulated
        assert block.inputs == {"target": "seen"}
        assert Peer.applied == {}  # the write never reached the peer

    asyncio.run(scenario())


def test_concurrency_caps_hold_inside_for_each(runtime: Runtime) -> None:
    text = """
id: capped
name: Capped
steps:
  - id: many
    for_each: "{{ [1, 2, 3, 4, 5, 6] }}"
    concurrency: 6
    action: test.limited
    with: {value: "{{ item }}", seconds: 0.05}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "succeeded", view.error
        assert Peer.most_in_flight == 2

    asyncio.run(scenario())


def test_a_while_loop_stops_at_its_bound(runtime: Runtime) -> None:
    text = """
id: forever
name: Forever
vars: {n: 0}
steps:
  - id: spin
    while: "true"
    max_iterations: 3
    do: [{id: inc, set: {n: "{{ n + 1 }}"}}]
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "failed"
        assert view.error["code"] == "loop_bound"
        assert view.variables["n"] == 3

    asyncio.run(scenario())


def test_a_sub_playbook_runs_as_a_child_and_hands_back_its_variables(runtime: Runtime) -> None:
    child = """
id: enrich
name: Enrich
version: 2
inputs: {ip: {type: string, required: true}}
vars: {score: 0}
steps:
  - {id: score, action: test.read, with: {value: 87}, out: {score: "{{ output.value }}"}}
"""
    parent = """
id: parent
name: Parent
vars: {score: 0}
steps:
  - id: call
    playbook: enrich
    version: 2
    with: {ip: 203.0.113.4}
    out: {score: "{{ output.variables.score }}"}
  - {id: after, action: core.log, with: {message: "score {{ score }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            harness.add(child)
            view = await harness.settle(await harness.start(parent), until=("succeeded", "failed"))
        assert view.status == "succeeded", view.error
        call = next(s for s in view.steps if s.key == "call")
        child_run = harness.runs.get(call.output["run_id"])
        assert child_run.status == "succeeded"
        assert child_run.parent_run_id == view.id
        assert view.variables["score"] == 87

    asyncio.run(scenario())


def test_watching_runs_leaves_nothing_behind(runtime: Runtime) -> None:
    text = "id: quick\nname: Quick\nsteps: [{id: one, action: core.noop}]\n"

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            version = harness.add(text)
            for _ in range(3):
                run_id = f"run_watch{_}"
                watched = harness.engine.watch(run_id)
                await harness.engine.start(version, {}, run_id=run_id)
                assert await watched == "succeeded"
            given_up = harness.engine.watch("run_never")
            given_up.cancel()
            await asyncio.sleep(0)
            assert harness.engine.finished == {}
            # Two callers watch one run; one gives up; the other still hears the end.
            patient, impatient = harness.engine.watch("run_both"), harness.engine.watch("run_both")
            impatient.cancel()
            await harness.engine.start(version, {}, run_id="run_both")
            assert await patient == "succeeded"
            await asyncio.sleep(0)
            assert harness.engine.finished == {}

    asyncio.run(scenario())


def test_a_nul_in_an_output_is_stored_as_a_replacement_character(runtime: Runtime) -> None:
    """PostgreSQL refuses NUL in JSON; an EDR's command line may hold one. The run goes on."""
    text = """
id: nul
name: A NUL from a peer
vars: {seen: ""}
steps:
  - id: read
    action: test.read
    with: {value: "cmd.exe\\u0000/c whoami"}
    out: {seen: "{{ output.value }}"}
  - {id: after, action: core.echo, with: {value: "{{ seen }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
        assert view.status == "succeeded", view.error
        assert view.variables["seen"] == "cmd.exe\ufffd/c whoami"
        (read,) = [s for s in view.steps if s.key == "read"]
        assert read.output["value"] == "cmd.exe\ufffd/c whoami"

    asyncio.run(scenario())


def test_a_read_is_recorded_from_when_it_began(runtime: Runtime) -> None:
    """A read has one record, written when it ends: its start read the end's time (a
    walkthrough saw a 15 s call shown as taking no time)."""
    clock = runtime.clock
    assert isinstance(clock, ManualClock)

    async def scenario() -> None:
        Peer.reset()
        Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
        async with Harness(runtime) as harness:
            text = "id: slow\nname: A slow read\nsteps:\n"
            text += "  - {id: look, action: test.read, with: {value: 1, hold: true}}\n"
            run_id = await harness.start(text)
            await asyncio.wait_for(Peer.entered.wait(), 10)
            clock.advance(timedelta(seconds=15))
            Peer.release.set()
            view = await harness.settle(run_id)
        assert view.status == "succeeded", view.error
        (look,) = [step for step in view.steps if step.key == "look"]
        assert look.finished_at is not None
        assert look.finished_at - look.started_at == timedelta(seconds=15)

    asyncio.run(scenario())
