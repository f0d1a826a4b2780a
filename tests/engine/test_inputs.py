"""A run's inputs are checked against the playbook's declared inputs before it starts (by
hand, through the CLI or the API): missing, unknown and mistyped inputs are refused, naming
the input."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from quell.engine.launch import check_inputs
from quell.errors import InvalidInput
from quell.playbooks.compiler import parse_playbook
from quell.runtime import Runtime
from tests.engine.harness import Harness

TYPED = """\
id: typed
name: Typed inputs
inputs:
  host: {type: string, required: true}
  n: {type: integer}
  score: {type: number}
  urgent: {type: boolean}
  tags: {type: list}
  extra: {type: object}
  anything: {type: any}
steps:
  - {id: say, action: core.echo, with: {value: "{{ host }}"}}
"""
TRIGGERED = """\
id: on-alert
name: On an alert
trigger: {on: alert.created}
steps:
  - {id: say, action: core.echo, with: {value: "{{ alert.title }}"}}
"""


def _refusal(text: str, inputs: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_inputs(parse_playbook(text, "pb.yaml"), inputs)
    return caught.value


@pytest.mark.parametrize(
    ("inputs", "message", "field"),
    [
        ({}, "the playbook needs the input 'host'", "inputs.host"),
        ({"host": None}, "the playbook needs the input 'host'", "inputs.host"),
        ({"host": 5}, "input 'host' must be a string (declared string), not an integer",
         "inputs.host"),
        ({"host": "ws-1", "n": "abc"}, "input 'n' must be an integer (declared integer), "
         "not a string", "inputs.n"),
        ({"host": "ws-1", "n": True}, "input 'n' must be an integer (declared integer), "
         "not true or false", "inputs.n"),
        ({"host": "ws-1", "n": 1.5}, "input 'n' must be an integer (declared integer), "
         "not a number", "inputs.n"),
        ({"host": "ws-1", "score": "high"}, "input 'score' must be a number", "inputs.score"),
        ({"host": "ws-1", "urgent": 1}, "input 'urgent' must be true or false", "inputs.urgent"),
        ({"host": "ws-1", "tags": "a,b"}, "input 'tags' must be a list", "inputs.tags"),
        ({"host": "ws-1", "extra": []}, "input 'extra' must be an object", "inputs.extra"),
        ({"host": "ws-1", "zzz": 1}, "the playbook has no input 'zzz' (its inputs: anything, "
         "extra, host, n, score, tags, urgent)", "inputs.zzz"),
    ],
)  # fmt: skip
def test_a_wrong_input_is_refused_naming_it(
    inputs: dict[str, Any], message: str, field: str
) -> None:
    refused = _refusal(TYPED, inputs)
    assert str(refused.message).startswith(message), refused.message
    assert refused.details["field"] == field


def test_inputs_of_their_declared_types_pass() -> None:
    playbook = parse_playbook(TYPED, "pb.yaml")
    check_inputs(playbook, {"host": "ws-1"})
    check_inputs(
        playbook,
        {"host": "ws-1", "n": 3, "score": 0.5, "urgent": False, "tags": ["a"], "extra": {},
         "anything": [1, "x"]},
    )  # fmt: skip
    check_inputs(playbook, {"host": "ws-1", "score": 2, "n": None})  # an int is a number


def test_a_triggered_playbook_takes_its_triggers_payload_by_hand() -> None:
    playbook = parse_playbook(TRIGGERED, "pb.yaml")
    check_inputs(playbook, {"alert": {"title": "x"}})
    refused = _refusal(TRIGGERED, {"incident": {}})
    assert refused.message == "the playbook has no input 'incident' (its inputs: alert)"


def test_a_cacao_playbook_takes_numbers_and_booleans_written_as_strings() -> None:
    """CACAO 2.0 writes a number or a boolean as a JSON string ("3", "true"); the same string
    is refused for a playbook written in Quell's YAML."""
    yaml_playbook = parse_playbook(TYPED, "pb.yaml")
    cacao = dataclasses.replace(yaml_playbook, source_format="cacao")
    check_inputs(cacao, {"host": "ws-1", "n": "7", "score": "0.5", "urgent": "true"})
    for inputs in ({"n": "seven"}, {"score": "high"}, {"urgent": "yes"}):
        with pytest.raises(InvalidInput):
            check_inputs(cacao, {"host": "ws-1", **inputs})
    with pytest.raises(InvalidInput, match="must be an integer"):
        check_inputs(yaml_playbook, {"host": "ws-1", "n": "7"})


DEFAULTED = """\
id: defaulted
name: An input with a default
inputs:
  host: {type: string, required: true}
  level: {type: string, default: low}
steps:
  - {id: say, action: core.echo, with: {value: "{{ host }} {{ level }}"}}
"""


def test_an_input_given_as_null_takes_its_default(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            nulled = await harness.run(DEFAULTED, {"host": "ws-1", "level": None})
            given = await harness.run(DEFAULTED, {"host": "ws-2", "level": "high"})
        assert (nulled.status, given.status) == ("succeeded", "succeeded")
        assert (nulled.variables["level"], given.variables["level"]) == ("low", "high")

    asyncio.run(scenario())
