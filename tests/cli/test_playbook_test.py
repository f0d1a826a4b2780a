"""``quell playbook test``: cases beside a playbook, run through the real engine with mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Invoke

EXAMPLE = Path(__file__).parents[2] / "examples" / "playbooks" / "block-malicious-source.yaml"
INTEL = "{status: 200, headers: {}, json: {verdict: malicious}}"
BENIGN = "{status: 200, headers: {}, json: {verdict: benign}}"
FIREWALL = "{status: 201, headers: {}, json: {rule: fw-1}}"


@pytest.fixture
def playbook(tmp_path: Path) -> Path:
    """The example playbook, copied where a test writes its own cases beside it."""
    target = tmp_path / "block.yaml"
    shutil.copy(EXAMPLE, target)
    return target


def _cases(playbook: Path, text: str, name: str = "block.test.yaml") -> Path:
    path = playbook.with_name(name)
    path.write_text(text, encoding="utf-8")
    return path


def _json(invoke: Invoke, *args: str) -> tuple[int, dict[str, Any]]:
    result = invoke("playbook", "test", *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def _case(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(case for file in report["files"] for case in file["cases"] if case["name"] == name)


def _steps(case: dict[str, Any], step: str) -> list[dict[str, Any]]:
    return [s for s in case["run"]["steps"] if s["step"] == step]


def test_the_example_passes_its_cases(invoke: Invoke) -> None:
    result = invoke("playbook", "test", str(EXAMPLE))
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"{EXAMPLE} (block-malicious-source.test.yaml, 6 cases)"
    assert lines[1] == "  PASS  a malicious source is blocked once approved"
    assert sum(line.startswith("  PASS  ") for line in lines) == 6
    assert lines[-1] == "6 passed"

    code, report = _json(invoke, str(EXAMPLE))
    assert code == 0
    assert (report["passed"], report["failed"]) == (6, 0)
    blocked = _case(report, "a malicious source is blocked once approved")
    assert blocked["path"] == ["lookup", "decide", "ask", "block"]
    assert blocked["run"]["status"] == "succeeded"
    assert blocked["variables"]["outcome"] == "blocked"


def test_a_wrong_path_fails_the_case_with_a_diff(invoke: Invoke, playbook: Path) -> None:
    _cases(
        playbook,
        f"""\
- name: benign, as the author thought
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}, block: {FIREWALL}}}
  decisions: {{ask: approve}}
  expect:
    path: [lookup, decide, note]
    vars: {{outcome: noted}}
- name: blocked
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}, block: {FIREWALL}}}
  decisions: {{ask: approve}}
  expect: {{path: [lookup, decide, ask, block]}}
""",
    )
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    start = lines.index("  FAIL  benign, as the author thought")
    assert lines[start + 1 : start + 9] == [
        "        path: the steps run differ (- expected, + ran)",
        "            lookup",
        "            decide",
        "          - note",
        "          + ask",
        "          + block",
        '        vars.outcome: expected "noted", got "blocked"',
        "  PASS  blocked",
    ]
    assert lines[-1] == "1 passed, 1 failed"

    code, report = _json(invoke, str(playbook))
    assert code == 1
    failures = _case(report, "benign, as the author thought")["failures"]
    assert [f["what"] for f in failures] == ["path", "vars.outcome"]
    assert failures[0]["expected"] == ["lookup", "decide", "note"]
    assert failures[0]["actual"] == ["lookup", "decide", "ask", "block"]


def test_an_action_without_a_mock_fails_the_case_and_is_never_called(
    invoke: Invoke, playbook: Path
) -> None:
    _cases(
        playbook,
        f"""\
- name: the firewall was forgotten
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}}}
  decisions: {{ask: approve}}
  expect: {{status: failed}}
""",
    )
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 1
    assert (
        "        step 'block' called action 'http.request' with no mock; add mocks: "
        "{block: …} (or {http.request: …})"
    ) in result.stdout.splitlines()

    _code, report = _json(invoke, str(playbook))
    case = _case(report, "the firewall was forgotten")
    (call,) = [c for c in case["calls"] if c["action"] == "http.request"]
    assert call["answered_by"] is None
    assert call["inputs"]["json"] == {
        "address": "203.0.113.7",
        "expires_in": 86400,
        "reason": "malicious source",
    }
    (block,) = _steps(case, "block")
    assert block["status"] == "failed"
    assert block["error"]["code"] == "no_mock"


def test_a_bad_cases_file_is_reported_with_each_place(invoke: Invoke, playbook: Path) -> None:
    cases = _cases(
        playbook,
        f"""\
- name: typos
  inputs: {{ipp: 203.0.113.7}}
  mocks:
    lookupp: {INTEL}
    block: {{json: {{}}}}
  decisions:
    ask: maybe
  expect:
    path: [lookup, decid, done]
    vars: {{outcom: blocked}}
    calls:
      - {{action: http.post}}
""",
    )
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{cases}:7:5: decisions.ask.decision: Input should be 'approve', 'reject', 'expire' or "
        "'complete'",
    ]

    cases.write_text(
        cases.read_text(encoding="utf-8").replace("ask: maybe", "note: approve"),
        encoding="utf-8",
    )
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{cases}:2:3: inputs: the playbook needs the input 'ip'",
        f"{cases}:2:12: inputs: 'ipp' is not an input of block-malicious-source; "
        "did you mean 'ip'?",
        f"{cases}:4:5: mocks: 'lookupp' is neither an action step nor an action the playbook "
        "calls; did you mean 'lookup'?",
        f"{cases}:5:5: mocks.block: http.request never returns this (status: Field required)",
        f"{cases}:7:5: decisions: 'note' is not a step that waits for an approval, a task or an "
        "event",
        f"{cases}:9:20: path: 'decid' is not a step of the playbook; did you mean 'decide'?",
        f"{cases}:9:27: path: 'done' is an end step; it does nothing and never appears in a path",
        f"{cases}:10:12: vars: 'outcom' is not a variable or input of the playbook; "
        "did you mean 'outcome'?",
        f"{cases}:12:10: calls: no step calls 'http.post'; did you mean 'http.get'?",
    ]

    code, report = _json(invoke, str(playbook))
    assert code == 2
    assert report["valid"] is False
    assert len(report["problems"]) == 9


def test_unparsable_and_empty_cases_files(invoke: Invoke, playbook: Path) -> None:
    cases = _cases(playbook, "- name: x\n  inputs: {ip: [1\n")
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout.startswith(f"{cases}:3:1: ")

    cases.write_text("just text\n", encoding="utf-8")
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout == (
        f"{cases}:1:1: a cases file is a list of cases (or a mapping with cases)\n"
    )

    cases.unlink()
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout == (
        f"{playbook}: no test cases; write them in {playbook.with_name('block.test.yaml')}\n"
    )


def test_an_invalid_playbook_exits_2_with_its_place(invoke: Invoke, tmp_path: Path) -> None:
    playbook = tmp_path / "broken.yaml"
    playbook.write_text(
        "id: broken\nname: Broken\nsteps:\n  - {id: a, action: core.nope}\n", encoding="utf-8"
    )
    _cases(playbook, "- name: anything\n", name="broken.test.yaml")
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout.startswith(f"{playbook}:4:13: unknown action 'core.nope'")


def test_retries_take_the_mock_answers_in_turn(invoke: Invoke, playbook: Path) -> None:
    busy = "{error: {type: transient, message: busy}}"
    _cases(
        playbook,
        f"""\
- name: third time lucky
  inputs: {{ip: 198.51.100.20}}
  mocks:
    lookup: [{busy}, {{error: {{type: timeout}}}}, {BENIGN}]
  expect:
    path: [lookup, decide, note]
    calls: [{{step: lookup, times: 3}}]
- name: out of attempts
  inputs: {{ip: 198.51.100.20}}
  mocks:
    lookup: [{busy}]
  expect:
    status: failed
    error: {{code: transient, message: busy}}
    path: [lookup]
    calls: [{{step: lookup, times: 3}}]
- name: a refusal is not retried
  inputs: {{ip: 198.51.100.20}}
  mocks:
    lookup: {{error: {{type: permanent, message: no such address}}}}
  expect:
    status: failed
    error: no such address
    calls: [{{step: lookup, times: 1}}]
""",
    )
    code, report = _json(invoke, str(playbook))
    assert code == 0, report
    lucky = _case(report, "third time lucky")
    attempts = [(s["attempt"], s["status"]) for s in _steps(lucky, "lookup")]
    assert attempts == [(1, "failed"), (2, "timed_out"), (3, "succeeded")]
    assert [c["answered_by"] for c in lucky["calls"] if c["step"] == "lookup"] == [
        "step:lookup"
    ] * 3
    out = _case(report, "out of attempts")
    assert [s["status"] for s in _steps(out, "lookup")] == ["failed"] * 3


def test_decisions_approve_reject_and_expire_approvals(invoke: Invoke, playbook: Path) -> None:
    _cases(
        playbook,
        f"""\
- name: approved
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}, block: {FIREWALL}}}
  decisions:
    ask: {{decision: approve, comment: C2 confirmed, by: alice}}
  expect:
    path: [lookup, decide, ask, block]
    outputs: {{ask: {{approved: true, by: alice, comment: C2 confirmed}}, block: {{status: 201}}}}
- name: rejected
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}}}
  decisions: {{ask: reject}}
  expect:
    path: [lookup, decide, ask, declined]
    vars: {{outcome: declined (rejected)}}
- name: unanswered
  now: 2026-03-01T08:00:00Z
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}}}
  decisions: {{ask: expire}}
  expect:
    vars: {{outcome: declined (expired)}}
""",
    )
    code, report = _json(invoke, str(playbook))
    assert code == 0, report
    rejected = _case(report, "rejected")
    (ask,) = _steps(rejected, "ask")
    assert (ask["status"], ask["error"]["code"]) == ("failed", "rejected")
    unanswered = _case(report, "unanswered")
    (declined,) = _steps(unanswered, "declined")
    # The clock jumped to the approval's expiry (4 h), in no time.
    assert declined["started_at"] == "2026-03-01T12:00:00+00:00"


def test_a_wait_with_no_decision_stops_the_run_there(invoke: Invoke, playbook: Path) -> None:
    _cases(
        playbook,
        f"""\
- name: forgot the approval
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}}}
- name: stops at the approval
  inputs: {{ip: 203.0.113.7}}
  mocks: {{lookup: {INTEL}}}
  expect: {{status: waiting, path: [lookup, decide, ask]}}
""",
    )
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1:5] == [
        "  FAIL  forgot the approval",
        "        the run waits at step 'ask' (approval) and the case has no decision for it; add "
        "decisions: {ask: approve} (or reject, or expire), or expect status: waiting",
        "        status: expected succeeded, got waiting",
        "  PASS  stops at the approval",
    ]


def test_one_case_by_name_and_the_cases_file_named_directly(invoke: Invoke, playbook: Path) -> None:
    cases = _cases(
        playbook,
        f"""\
- name: benign
  inputs: {{ip: 198.51.100.20}}
  mocks: {{lookup: {BENIGN}}}
  expect: {{vars: {{outcome: noted}}}}
- name: broken on purpose
  inputs: {{ip: 198.51.100.20}}
  mocks: {{lookup: {BENIGN}}}
  expect: {{vars: {{outcome: blocked}}}}
""",
        name="block.tests.yaml",
    )
    result = invoke("playbook", "test", str(playbook), "--case", "benign")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[1:] == ["  PASS  benign", "1 passed"]

    result = invoke("playbook", "test", str(cases))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == f"{playbook} (block.tests.yaml, 2 cases)"

    moved = cases.rename(playbook.with_name("elsewhere.yaml"))
    result = invoke("playbook", "test", str(playbook), "--cases", str(moved), "--case", "benign")
    assert result.exit_code == 0, result.stdout

    result = invoke("playbook", "test", str(playbook), "--cases", str(moved), "--case", "nope")
    assert result.exit_code == 2
    assert result.stdout == "no case is named 'nope' (the cases: 'benign', 'broken on purpose')\n"


CHILD = """\
id: notify-team
name: Tell the team
inputs: {text: {type: string, required: true}}
steps:
  - id: send
    action: http.request
    with: {url: "https://chat.example.net/hook", json: {text: "{{ text }}"}}
"""

EVERYTHING = """\
id: everything
name: Every kind of wait
inputs: {hosts: {type: list, required: true}}
vars: {count: 0, got: null}
steps:
  - id: isolate
    for_each: "{{ hosts }}"
    action: http.request
    with: {url: "https://edr.example.net/isolate", json: {host: "{{ item }}"}}
  - id: fan
    parallel:
      - - {id: left, action: core.echo, with: {value: "{{ hosts | length }}"}}
      - - {id: pause, wait: timer, duration: 6h}
        - {id: right, action: http.get, with: {url: "https://x.example.net/"}}
  - id: poll
    while: count < 2
    max_iterations: 5
    do:
      - {id: bump, set: {count: "{{ count + 1 }}"}}
  - {id: check, wait: task, prompt: Look at the hosts}
  - {id: hook, wait: event, expires_in: 1h, out: {got: "{{ output.payload.ok }}"}}
  - {id: tell, playbook: notify-team, with: {text: "isolated {{ hosts | length }}"}}
"""

EVERYTHING_CASES = """\
playbooks: [notify-team.yaml]
cases:
  - name: all of it
    now: 2026-05-01T10:00:00Z
    inputs: {hosts: [web-1, web-2]}
    mocks:
      isolate: {status: 200, headers: {}}
      right: {status: 200, headers: {}}
      send: {status: 204, headers: {}}
    decisions:
      check: {data: {looked: true}, comment: fine}
      hook: {payload: {ok: true}}
    expect:
      path: [isolate, fan, left, pause, right, poll, bump, bump, check, hook, tell]
      vars: {count: 2, got: true}
      outputs: {check: {data: {looked: true}}, left: {value: 2}}
      calls:
        - {step: isolate, times: 2}
        - {action: http.request, with: {json: {host: web-2}}}
        - {step: send, with: {json: {text: isolated 2}}}
  - name: the callback never comes
    inputs: {hosts: []}
    mocks: {http.request: {status: 200, headers: {}}, http.get: {status: 200, headers: {}}}
    decisions: {check: complete, hook: expire}
    expect:
      status: failed
      error: {code: expired}
      path_includes: [poll, check, hook]
      path_excludes: [tell]
"""


def test_loops_timers_tasks_events_and_sub_playbooks(invoke: Invoke, tmp_path: Path) -> None:
    (tmp_path / "notify-team.yaml").write_text(CHILD, encoding="utf-8")
    playbook = tmp_path / "everything.yaml"
    playbook.write_text(EVERYTHING, encoding="utf-8")
    _cases(playbook, EVERYTHING_CASES, name="everything.test.yaml")
    code, report = _json(invoke, str(playbook))
    assert code == 0, json.dumps(report, indent=1)
    everything = _case(report, "all of it")
    (right,) = _steps(everything, "right")
    assert right["started_at"] == "2026-05-01T16:00:00+00:00"  # after the 6 h timer
    (tell,) = _steps(everything, "tell")
    assert tell["output"]["status"] == "succeeded"
    child_calls = [c for c in everything["calls"] if c["step"] == "send"]
    assert [c["run_id"] for c in child_calls] == [tell["output"]["run_id"]]

    # Without the sub-playbook's file, the test cannot be hermetic: refused, with a hint.
    cases = playbook.with_name("everything.test.yaml")
    cases.write_text(EVERYTHING_CASES.replace("playbooks: [notify-team.yaml]", "playbooks: []"))
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert "no playbook 'notify-team' is known (give its file under playbooks:" in result.stdout
    result = invoke("playbook", "test", str(playbook), "--with", str(tmp_path / "notify-team.yaml"))
    assert result.exit_code == 0, result.stdout


def test_validate_checks_a_cases_file_against_its_playbook(invoke: Invoke, playbook: Path) -> None:
    cases = _cases(
        playbook,
        f"- name: benign\n  inputs: {{ip: 198.51.100.20}}\n  mocks: {{lookup: {BENIGN}}}\n",
    )
    result = invoke("playbook", "validate", str(playbook), str(cases))
    assert result.exit_code == 0, result.stdout
    assert f"{cases}: valid (1 test cases of block-malicious-source)" in result.stderr

    cases.write_text("- name: typo\n  inputs: {ipp: 198.51.100.20}\n", encoding="utf-8")
    result = invoke("playbook", "validate", str(playbook), str(cases))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{cases}:2:3: inputs: the playbook needs the input 'ip'",
        f"{cases}:2:12: inputs: 'ipp' is not an input of block-malicious-source; "
        "did you mean 'ip'?",
    ]


def test_an_input_of_the_wrong_type_is_refused_as_a_run_refuses_it(
    invoke: Invoke, playbook: Path
) -> None:
    """``quell playbook run`` refuses an input that is not of its declared type; a test case
    giving one used to run the playbook with it anyway."""
    cases = _cases(
        playbook,
        f"""\
- name: a list for a string
  inputs: {{ip: [203.0.113.7]}}
  mocks: {{lookup: {BENIGN}}}
  expect: {{status: succeeded}}
""",
    )
    result = invoke("playbook", "test", str(playbook))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{cases}:2:12: inputs: input 'ip' must be a string (declared string), not a list",
    ]
