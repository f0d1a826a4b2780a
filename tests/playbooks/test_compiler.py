"""YAML to IR: every construct compiles, and every problem is reported with its place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from quell.errors import InvalidInput
from quell.playbooks.catalog import ActionSpec
from quell.playbooks.compiler import PlaybookInvalid, parse_playbook
from quell.playbooks.dsl import json_schema
from quell.playbooks.ir import ExpiryOutcome, Playbook, StepKind, WaitKind

EVERYTHING = """\
id: contain-host
name: Contain a compromised host
version: 3
inputs:
  alert: {type: object, required: true}
  hosts: {type: list, default: []}
vars: {verdict: unknown, tries: 0}
trigger: {on: alert.created, if: "alert.severity_id >= severity('high')"}
timeout: 2h
on_exception:
  - {id: tell, action: core.log, with: {message: "run {{ run.id }} failed"}}
steps:
  - id: lookup
    action: test.lookup
    with: {value: "{{ alert.src.ip }}"}
    out: {verdict: "{{ output.verdict }}"}
    retry: {attempts: 4, backoff: 2s, max_backoff: 1m}
    timeout: 30s
    delay: 5s
    on_failure: give_up
  - id: decide
    if: verdict == 'malicious'
    then:
      - id: ask
        wait: approval
        prompt: "Block {{ alert.src.ip }}?"
        expires_in: 4h
        on_expiry: skip
        approvers: [approver]
      - {id: block, action: test.block, with: {ip: "{{ alert.src.ip }}"}}
    else:
      - {id: benign, action: core.log, with: {message: benign}}
  - id: by_severity
    switch: alert.severity_id
    cases:
      "5": [{id: page, action: core.log, with: {message: page}}]
    default: [{id: quiet, action: core.log, with: {message: quiet}}]
  - id: poll
    while: tries < 3
    max_iterations: 5
    do:
      - {id: bump, set: {tries: "{{ tries + 1 }}"}}
      - {id: nap, wait: timer, duration: 10s}
  - id: fan
    parallel:
      - [{id: left, action: core.log, with: {message: left}}]
      - [{id: right, wait: event, expires_in: 1h, on_expiry: fail}]
  - id: each_host
    for_each: "{{ hosts }}"
    as: host
    concurrency: 4
    action: test.block
    with: {ip: "{{ host }}"}
  - id: sub
    playbook: enrich-ip
    version: 2
    with: {ip: "{{ alert.src.ip }}"}
  - id: task
    wait: task
    prompt: Reimage the host
  - {id: done, end: true}
  - id: give_up
    fail: "lookup failed for {{ alert.src.ip }}"
"""


class LookupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str
    limit: int = 10


class BlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str


class Catalog:
    specs: ClassVar[dict[str, ActionSpec]] = {
        "test.lookup": ActionSpec("test.lookup", "test", "read", LookupIn),
        "test.block": ActionSpec("test.block", "test", "high", BlockIn, secrets=("api_key",)),
        "core.log": ActionSpec("core.log", "core", "read"),
    }

    def spec(self, key: str) -> ActionSpec | None:
        return self.specs.get(key)

    def keys(self) -> Iterable[str]:
        return self.specs


class Secrets:
    def __init__(self, provided: set[tuple[str, str]]) -> None:
        self.provided = provided

    def provides(self, connector: str, secret: str) -> bool:
        return (connector, secret) in self.provided


def _compile(text: str, **kwargs: object) -> Playbook:
    return parse_playbook(text, "pb.yaml", actions=Catalog(), **kwargs)  # type: ignore[arg-type]


def _problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(PlaybookInvalid) as caught:
        _compile(text, **kwargs)
    return [str(problem) for problem in caught.value.problems]


def test_every_construct_compiles_to_the_flat_ir() -> None:
    playbook = _compile(EVERYTHING, secrets=Secrets({("test", "api_key")}))
    steps = playbook.steps
    assert (playbook.id, playbook.version, playbook.start) == ("contain-host", 3, "lookup")
    assert playbook.on_exception == "tell"
    assert playbook.timeout == 7200
    assert playbook.variables["alert"].external
    assert playbook.variables["alert"].required
    assert playbook.variables["verdict"].value == "unknown"
    assert playbook.triggers[0].on == "alert.created"
    lookup = steps["lookup"]
    assert (lookup.kind, lookup.on_success, lookup.on_failure) == (
        StepKind.ACTION,
        "decide",
        "give_up",
    )
    assert (lookup.retry.max_attempts, lookup.retry.initial, lookup.retry.maximum) == (4, 2, 60)
    assert (lookup.timeout, lookup.delay) == (30, 5)
    decide = steps["decide"]
    assert (decide.on_true, decide.on_false, decide.on_success) == ("ask", "benign", "by_severity")
    assert steps["ask"].on_success == "block"
    assert steps["block"].on_success is None  # the end of its branch
    ask = steps["ask"].wait
    assert ask is not None
    assert (ask.kind, ask.expires_in, ask.on_expiry, ask.approvers) == (
        WaitKind.APPROVAL,
        14400,
        ExpiryOutcome.SKIP,
        ("approver",),
    )
    assert steps["by_severity"].cases == {"5": "page"}
    assert steps["by_severity"].default == "quiet"
    poll = steps["poll"]
    assert (poll.kind, poll.on_true, poll.max_iterations) == (StepKind.WHILE, "bump", 5)
    assert steps["nap"].wait is not None
    assert steps["nap"].wait.duration == 10
    assert steps["fan"].branches == ("left", "right")
    each = steps["each_host"]
    assert (each.kind, each.items, each.item_name, each.concurrency) == (
        StepKind.FOR_EACH,
        "{{ hosts }}",
        "host",
        4,
    )
    assert steps[each.body or ""].action == "test.block"
    sub = steps["sub"]
    assert (sub.kind, sub.playbook, sub.version) == (StepKind.PLAYBOOK, "enrich-ip", 2)
    assert steps["done"].kind is StepKind.END
    assert steps["done"].on_success is None
    assert steps["give_up"].kind is StepKind.FAIL
    assert steps["lookup"].position.line == 13


def test_the_ir_round_trips_through_json() -> None:
    playbook = _compile(EVERYTHING, secrets=Secrets({("test", "api_key")}))
    assert Playbook.from_json(playbook.to_json()) == playbook


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("action: test.lookup", "action: test.lookpu"),
            (
                "pb.yaml:14:5: unknown action 'test.lookpu'; did you mean 'test.lookup', "
                "'test.block'?"
            ),
        ),
        (
            ('with: {value: "{{ alert.src.ip }}"}', "with: {value: 7, colour: red}"),
            (
                "pb.yaml:15:22: with: 'colour' is not an input of test.lookup (its inputs: "
                "limit, value)"
            ),
        ),
        (
            ('with: {value: "{{ alert.src.ip }}"}', "with: {value: [1]}"),
            "pb.yaml:15:12: with.value: Input should be a valid string (for test.lookup)",
        ),
        (
            ('with: {value: "{{ alert.src.ip }}"}', "with: {limit: 3}"),
            "pb.yaml:15:5: test.lookup needs the input 'value'",
        ),
        (
            ("on_failure: give_up", "on_failure: giveup"),
            "pb.yaml:20:5: on_failure: step 'giveup' does not exist",
        ),
        (
            ("if: verdict == 'malicious'", "if: verdikt == 'malicious'"),
            "pb.yaml:22:5: if: 'verdikt' is not defined here; did you mean 'verdict'?",
        ),
        (
            ("    max_iterations: 5\n", ""),
            (
                "pb.yaml:38:5: a loop with no bound: give while a max_iterations (it fails when "
                "the bound is reached)"
            ),
        ),
        (
            ("set: {tries:", "set: {trys:"),
            "pb.yaml:42:26: set: 'trys' is not a playbook variable; declare it under vars",
        ),
        (
            ('with: {ip: "{{ host }}"}', 'with: {ip: "{{ item }}"}'),
            "pb.yaml:53:12: with.ip: 'item' is not defined here",
        ),
        (
            ('"run {{ run.id }} failed"', '"{{ steps.nowhere.output }}"'),
            "pb.yaml:11:41: with.message: steps.nowhere reads a step that does not exist",
        ),
        (
            ("  - {id: done, end: true}", "  - {id: done, end: true, on_success: lookup}"),
            (
                "pb.yaml:13:5: a loop with no bound (lookup -> decide -> by_severity -> poll -> "
                "fan -> each_host -> sub -> task -> done -> lookup); repeat with while and "
                "max_iterations instead"
            ),
        ),
        (
            ("  - {id: done, end: true}", "  - {id: done, end: true}\n  - {id: orphan, end: true}"),
            "pb.yaml:62:6: step 'orphan' can never run: no step of its list leads to it",
        ),
        (
            ("id: benign, action", "id: block, action"),
            "pb.yaml:32:10: step id 'block' is used twice (first at pb.yaml:30:10)",
        ),
        (
            ("  - id: task\n    wait: task", "  - id: task\n    wait: task\n    action: core.log"),
            (
                "pb.yaml:58:5: steps[7]: a step has exactly one of action, if, switch, while, "
                "parallel, for_each, playbook, wait, set, fail, end; this one has action and "
                "wait"
            ),
        ),
        (
            ("timeout: 30s", "timeout: soon"),
            (
                "pb.yaml:18:5: steps[0].timeout: 'soon' is not a duration; use e.g. 30s, 15m, "
                "24h, 7d, 2w or 1h30m"
            ),
        ),
        (
            ("    concurrency: 4\n", "    concurrency: 4\n    colour: blue\n"),
            "pb.yaml:52:5: unknown key 'colour'",
        ),
        (
            ("trigger: {on: alert.created,", "trigger: {on: alert.deleted,"),
            (
                "pb.yaml:8:11: trigger.on: Input should be 'alert.created', 'incident.created', "
                "'incident.updated', 'incident.sla_breached', 'schedule' or 'manual'"
            ),
        ),
    ],
)
def test_problems_name_their_file_line_and_column(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in EVERYTHING
    problems = _problems(EVERYTHING.replace(old, new, 1), secrets=Secrets({("test", "api_key")}))
    assert expected in problems, problems


def test_a_step_id_used_twice_is_the_one_problem_of_its_list() -> None:
    """The duplicate is dropped, so the step before it led to the first of the two: a loop
    (a -> a) and every later step 'can never run' were reported as well, and were false."""
    text = """
id: dup
name: Dup
steps:
  - {id: a, action: core.log, with: {message: x}}
  - {id: a, action: core.log, with: {message: x}}
  - {id: b, action: core.log, with: {message: x}}
  - {id: c, action: core.log, with: {message: x}}
"""
    assert _problems(text) == ["pb.yaml:6:6: step id 'a' is used twice (first at pb.yaml:5:6)"]


def test_a_missing_secret_is_reported_against_the_action() -> None:
    problems = _problems(EVERYTHING, secrets=Secrets(set()))
    assert (
        "pb.yaml:30:21: test.block needs the secret 'api_key' of connector 'test', and "
        "no configuration provides it"
    ) in problems


def test_every_problem_is_reported_at_once() -> None:
    broken = EVERYTHING.replace("test.lookup", "test.nope").replace("tries < 3", "tires < 3")
    assert len(_problems(broken, secrets=Secrets({("test", "api_key")}))) == 2


def test_a_schedule_trigger_needs_a_valid_cron() -> None:
    text = EVERYTHING.replace(
        "trigger: {on: alert.created, if: \"alert.severity_id >= severity('high')\"}",
        "triggers: [{on: schedule, cron: '61 * * * *'}]",
    )
    problems = _problems(text, secrets=Secrets({("test", "api_key")}))
    assert any(p.startswith("pb.yaml:8:") and "cron: '61 * * * *'" in p for p in problems), problems


def test_yaml_that_does_not_parse_names_its_place() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_playbook("id: x\nsteps: [\n  {id: a", "bad.yaml")
    assert str(caught.value).startswith("bad.yaml:3:")


def test_yaml_aliases_and_deep_nesting_are_refused_where_they_are_written() -> None:
    """A few hundred bytes of nested aliases expanded to billions of values for whatever walked
    them (1.5 GB and 11 s at six levels, through the API's validate)."""
    lines = ["id: x", "name: y", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 7)]
    with pytest.raises(InvalidInput) as caught:
        parse_playbook("\n".join(lines), "laughs.yaml")
    assert str(caught.value) == (
        "laughs.yaml:4:10: YAML aliases (*name) are not allowed here: write the value out"
    )
    with pytest.raises(InvalidInput) as caught:
        parse_playbook("id: x\nvars: {v: " + "[" * 5000 + "]" * 5000 + "}", "deep.yaml")
    assert str(caught.value) == "deep.yaml:2:109: nested deeper than 100 levels"
    anchored = _compile(
        "id: x\nname: y\nvars: {v: &one 1}\nsteps:\n  - {id: a, action: core.log, with: {}}\n"
    )
    assert anchored.variables["v"].value == 1  # an anchor no alias uses is harmless


def test_the_json_schema_accepts_the_language_and_refuses_mistakes() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    document = yaml.safe_load(EVERYTHING.replace("{on: alert.created", "{'on': alert.created"))
    assert list(validator.iter_errors(document)) == []
    document["steps"][0]["retry"]["attempts"] = 0
    document["colour"] = "blue"
    assert len(list(validator.iter_errors(document))) == 2
