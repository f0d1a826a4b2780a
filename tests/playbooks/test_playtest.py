"""Playbook tests from the inside: the cases language, matching, paths, and the runner."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from quell.connectors.core import Core
from quell.connectors.registry import Registry
from quell.engine.service import StepView
from quell.playbooks.compiler import parse_playbook
from quell.playbooks.ir import StepKind
from quell.playtest.cases import CasesInvalid, MockAnswer, read_cases
from quell.playtest.compare import MISSING, differences, path_diff
from quell.playtest.runner import PlaybookTest, instant, path_of
from tests.engine import peer
from tests.engine.peer import Peer


def test_expected_values_are_subsets_and_true_is_not_one() -> None:
    actual = {"a": 1.0, "b": {"c": True, "d": [1, {"e": "x", "f": 2}]}, "z": None}
    assert differences({"a": 1, "b": {"d": [1, {"e": "x"}]}}, actual, "v") == []
    assert differences({"b": {"c": 1}}, actual, "v") == [("v.b.c", 1, True)]
    assert differences({"b": {"d": [1]}}, actual, "v") == [("v.b.d", [1], [1, {"e": "x", "f": 2}])]
    assert differences({"q": 1}, actual, "v") == [("v.q", 1, MISSING)]
    assert differences({"z": None}, actual, "v") == []
    assert differences("x", "y", "w") == [("w", "x", "y")]


def test_a_path_diff_aligns_the_two_paths() -> None:
    assert path_diff(["a", "b", "c", "d"], ["a", "x", "c"]) == ["  a", "- b", "+ x", "  c", "- d"]


def _view(key: str, attempt: int = 1) -> StepView:
    step_id = key.rsplit("/", 1)[-1]
    for mark in ("~delay", "[]", "#0", "#1", "#2"):
        step_id = step_id.removesuffix(mark)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return StepView(key, step_id, "action", attempt, "succeeded", None, None, None, None, False,
                    now, now)  # fmt: skip


def test_the_path_is_each_execution_of_a_step_once_in_order() -> None:
    keys = [
        "lookup", "lookup", "decide", "decide/ask~delay", "decide/ask", "fan|0/left",
        "fan|1/right", "poll#0", "poll#0/bump", "poll#1", "poll#1/bump", "poll#2", "isolate[]",
        "isolate[0]/isolate__each", "isolate[1]/isolate__each", "!exception/cleanup",
    ]  # fmt: skip
    views = [_view(key, 2 if index == 1 else 1) for index, key in enumerate(keys)]
    assert path_of(views) == [
        "lookup", "decide", "ask", "fan", "left", "right", "poll", "bump", "bump", "isolate",
        "cleanup",
    ]  # fmt: skip


def test_instant_playbooks_spend_no_time_in_the_worker() -> None:
    playbook = parse_playbook(
        """
id: slow
name: Slow
steps:
  - {id: a, action: core.noop, retry: {attempts: 4, backoff: 2s}, delay: 1s}
  - {id: b, action: core.noop, delay: 10m}
  - {id: c, wait: timer, duration: 2s}
  - {id: d, wait: timer, duration: 1h}
""",
        "slow.yaml",
    )
    fast = instant(playbook).steps
    assert (fast["a"].retry.max_attempts, fast["a"].retry.initial, fast["a"].delay) == (4, 0, None)
    assert fast["b"].delay == 600  # durable: the driver moves the clock to it
    assert fast["c"].wait is not None
    assert fast["c"].wait.duration == 0
    assert fast["d"].wait is not None
    assert fast["d"].wait.duration == 3600
    assert playbook.steps["a"].retry.initial == 2  # the original is untouched


def test_short_forms_of_mocks_and_decisions() -> None:
    cases = read_cases(
        """
- name: short
  mocks:
    a: {verdict: bad}
    b: {error: refused}
    c: [{output: {error: kept as output}}, {error: {type: transient}}]
  decisions: {ask: approve}
""",
        "x.test.yaml",
    )
    case = cases.cases[0].case
    assert case.mocks["a"] == [MockAnswer(output={"verdict": "bad"})]
    (refused,) = case.mocks["b"]
    assert refused.error is not None
    assert (refused.error.type, refused.error.message) == ("permanent", "refused")
    first, second = case.mocks["c"]
    assert first.output == {"error": "kept as output"}
    assert second.error is not None
    assert second.error.type == "transient"
    assert case.decisions["ask"][0].decision == "approve"
    assert case.expect.status == "succeeded"


def test_a_problem_inside_a_short_form_is_placed_where_it_was_written() -> None:
    with pytest.raises(CasesInvalid) as caught:
        read_cases(
            """
cases:
  - name: x
    mocks:
      a: {error: {type: flaky}}
      b: [{verdict: ok}, {output: 1}]
""",
            "x.test.yaml",
        )
    assert [str(problem) for problem in caught.value.problems] == [
        "x.test.yaml:5:19: mocks.a.error.type: Input should be 'transient', 'permanent', "
        "'rate_limited', 'not_found', 'auth' or 'timeout'",
        "x.test.yaml:6:27: mocks.b[1].output: Input should be a valid dictionary",
    ]


CONTAIN = """
id: contain
name: Contain
inputs: {host: {type: string, required: true}}
vars: {done: false}
steps:
  - id: isolate
    action: test.contain
    with: {target: "{{ host }}"}
    out: {done: "{{ output.applied }}"}
"""


def _registry() -> Registry:
    registry = Registry()
    registry.add(Core)
    registry.add(peer.Test)
    return registry


def _cases(text: str) -> list[Any]:
    return [spec.case for spec in read_cases(text, "contain.test.yaml").cases]


def test_a_mocked_containment_runs_through_the_journal_and_never_reaches_the_peer() -> None:
    Peer.reset()
    registry = _registry()
    playbook = parse_playbook(CONTAIN, "contain.yaml", actions=registry)
    assert playbook.steps["isolate"].kind is StepKind.ACTION
    results = PlaybookTest(playbook, registry).run(
        _cases(
            """
- name: mocked
  inputs: {host: web-1}
  mocks: {isolate: {target: web-1, applied: true}}
  expect: {vars: {done: true}, calls: [{action: test.contain, with: {target: web-1}}]}
- name: not mocked
  inputs: {host: web-1}
  expect: {status: failed}
"""
        )
    )
    mocked, unmocked = results
    assert mocked.passed, [failure.message for failure in mocked.failures]
    assert mocked.run is not None
    (attempt,) = [step for step in mocked.run.steps if step.step_id == "isolate"]
    assert attempt.status == "succeeded"
    assert attempt.output == {"target": "web-1", "applied": True}
    assert [failure.what for failure in unmocked.failures] == ["mock"]
    assert unmocked.failures[0].message.startswith(
        "step 'isolate' called action 'test.contain' with no mock"
    )
    assert Peer.applied == {}  # the real connector was never called, mocked or not
    assert Peer.calls == {}


TRIGGERED = """
id: triage
name: Triage an alert
trigger: {on: alert.created, if: "alert.severity_id >= 3"}
vars: {summary: null}
steps:
  - id: describe
    action: core.echo
    with: {value: "{{ alert.title }} from {{ alert.src.ip }}"}
    out: {summary: "{{ output.value }}"}
"""


def test_a_triggered_playbook_gets_its_payload_as_an_input_and_core_actions_run() -> None:
    registry = _registry()
    playbook = parse_playbook(TRIGGERED, "triage.yaml", actions=registry)
    (result,) = PlaybookTest(playbook, registry).run(
        _cases(
            """
- name: the alert is described
  inputs: {alert: {title: C2 beacon, severity_id: 4, src: {ip: 203.0.113.5}}}
  expect:
    vars: {summary: C2 beacon from 203.0.113.5}
    calls: [{action: core.echo, times: 1}]
"""
        )
    )
    assert result.passed, [failure.message for failure in result.failures]
    (call,) = result.observed.calls
    assert call.answered_by == "real"  # core touches nothing outside Quell: no mock needed
