"""The OpenC2 validator on its own: every corpus command and response is judged as the
corpus labels it, and as the corpus's generated JSON schema judges it (the schema is used here
only, as a cross-check), with each disagreement written down and explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quell.openc2.language import (
    InvalidMessage,
    json_path,
    load_json,
    parse_command,
    parse_response,
)
from tests.openc2.support import corpus_file, corpus_params, openc2_corpus, schema_accepts

# Where the validator and the corpus schema part ways on a corpus message, and why. The test
# fails on any disagreement not listed here, and on a listed one that no longer occurs.
RESPONSE_DISAGREEMENTS: dict[str, str] = {
    # Quell reads responses as the language specification does: a consumer may implement
    # more than SLPF, so its pairs may name any action and target. The SLPF schema allows
    # only the SLPF pairs.
    "slpf/bad-responses/slpf_query_pairs_bad_action.json": "pairs beyond SLPF: scan",
    "slpf/bad-responses/slpf_query_pairs_bad_pair.json": "pairs beyond SLPF: query file",
    "slpf/bad-responses/slpf_query_pairs_bad_target.json": "pairs beyond SLPF: update uri",
    # The schema's Nsid is at most 16 characters; the SLPF specification's own example
    # response lists the profile 'iot-front-door-lock' (19).
    "spec-examples/slpf_20_response_a-4-3-actuator-profiles-supported.json": "long profile name",
}


def _judge(parse: Any, body: bytes, root: str) -> tuple[bool, str]:
    try:
        parse(load_json(body, root))
    except InvalidMessage as exc:
        return False, exc.message
    return True, ""


def _name(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", corpus_params("good-commands"))
def test_a_good_corpus_command_is_accepted_as_the_schema_accepts_it(path: Path | None) -> None:
    body = corpus_file(path).read_bytes()
    accepted, problem = _judge(parse_command, body, "command")
    assert accepted, problem
    assert schema_accepts("oc2slpf", "OpenC2-Command", body)


@pytest.mark.parametrize("path", corpus_params("bad-commands"))
def test_a_bad_corpus_command_is_refused_as_the_schema_refuses_it(path: Path | None) -> None:
    body = corpus_file(path).read_bytes()
    accepted, problem = _judge(parse_command, body, "command")
    assert not accepted
    assert ": " in problem  # "<json path>: <what is wrong>"
    # The combined schema refuses it too (the language-only one would refuse any profile
    # extension, good commands included: see the corpus README).
    assert not schema_accepts("oc2slpf", "OpenC2-Command", body)


@pytest.mark.requires("corpus")
def test_responses_are_judged_as_labelled_and_as_the_schemas_judge_them() -> None:
    # Responses of the language folder against the language schema, of the SLPF folder and of
    # the SLPF spec examples against the combined one.
    checked: dict[str, tuple[bool, bool, bool | None, str]] = {}
    for profile, schema_name in (("language", "oc2ls"), ("slpf", "oc2slpf")):
        for kind in ("good-responses", "bad-responses"):
            folder = openc2_corpus() / "tests" / profile / kind
            for path in sorted(folder.glob("*.json")):
                body = path.read_bytes()
                mine, problem = _judge(parse_response, body, "response")
                theirs = schema_accepts(schema_name, "OpenC2-Response", body)
                checked[_name(path)] = (
                    mine, theirs, kind.startswith("good"), problem
                )  # fmt: skip
    for path in sorted((openc2_corpus() / "spec-examples").glob("*_response_*.json")):
        body = path.read_bytes()
        mine, problem = _judge(parse_response, body, "response")
        name = f"spec-examples/{path.name}"
        checked[name] = (mine, schema_accepts("oc2slpf", "OpenC2-Response", body), None, problem)
    assert len(checked) > 40
    disagreements = {name for name, (mine, theirs, _, _) in checked.items() if mine != theirs}
    # oc2ls_13 (results under 'x-esm', an extension profile) is refused by both.
    assert disagreements == set(RESPONSE_DISAGREEMENTS), {
        name: checked[name] for name in disagreements ^ set(RESPONSE_DISAGREEMENTS)
    }
    for name, (mine, _, labelled_good, problem) in checked.items():
        if labelled_good is not None and name not in RESPONSE_DISAGREEMENTS:
            assert mine == labelled_good, (name, problem)


@pytest.mark.requires("corpus")
def test_the_spec_example_commands_are_judged_as_the_combined_schema_judges_them() -> None:
    judged = {}
    for path in sorted((openc2_corpus() / "spec-examples").glob("*_command_*.json")):
        body = path.read_bytes()
        mine, problem = _judge(parse_command, body, "command")
        assert mine == schema_accepts("oc2slpf", "OpenC2-Command", body), (path.name, problem)
        judged[path.name] = mine
    # The SLPF examples are valid; the Endpoint Response ('er') and 'x-esm' examples that
    # use their profile's extensions are refused by both (er_01 uses none).
    assert all(ok for name, ok in judged.items() if name.startswith("slpf_"))
    refused = {name for name, ok in judged.items() if not ok}
    assert {name for name in judged if name.startswith("er_")} - refused == {
        "er_01_command_1-4-2-font-colors-and-style.json"
    }
    assert "oc2ls_12_command_a-3-example-3.json" in refused


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ({"action": "deny", "target": {"ipv4_net": "10.0.0.300/8"}},
         "target.ipv4_net: '10.0.0.300/8' is not an IPv4 network"),
        ({"action": "deny", "target": {"ipv4_net": "10.0.0.1/33"}},
         "target.ipv4_net: '10.0.0.1/33' is not an IPv4 network: the prefix length must be 0-32"),
        ({"action": "deny", "target": {"ipv4_net": "010.0.0.1"}},
         "target.ipv4_net: '010.0.0.1' is not an IPv4 network"),
        ({"action": "deny", "target": {"ipv6_net": "fe80::1%eth0"}},
         "target.ipv6_net: 'fe80::1%eth0' is not an IPv6 network: a zone identifier"),
        ({"action": "deny", "target": {"ipv6_net": "::1/129"}},
         "target.ipv6_net: '::1/129' is not an IPv6 network"),
        ({"action": "deny", "target": {"ipv4_connection": {"dst_port": 65536}}},
         "target.ipv4_connection.dst_port: 65536 is not a port number (0-65535)"),
        ({"action": "deny", "target": {"ipv4_connection": {"protocol": "gre"}}},
         "target.ipv4_connection.protocol: 'gre' is not a valid value"),
        ({"action": "deny", "target": {"ipv4_connection": {}}},
         "target.ipv4_connection: at least one property is required"),
        ({"action": "deny", "target": {"ipv4_net": None}},
         "target.ipv4_net: null is not allowed"),
        ({"action": "deny", "target": {"file": {"hashes": {"sha256": "abc"}}}},
         "target.file.hashes.sha256: 'abc' is not an SHA-256 hash (64 hex digits)"),
        ({"action": "deny", "target": {"file": {"hashes": {"md5": "z" * 32}}}},
         "target.file.hashes.md5: "),
        ({"action": "deny", "target": {"uri": "example.com/no-scheme"}},
         "target.uri: 'example.com/no-scheme' is not a URI"),
        ({"action": "deny", "target": {"domain_name": "bad_label.example"}},
         "target.domain_name: 'bad_label.example' is not a host name"),
        ({"action": "deny", "target": {"email_addr": "nobody"}},
         "target.email_addr: 'nobody' is not an e-mail address"),
        ({"action": "deny", "target": {"mac_addr": "00:11:22:33:44"}},
         "target.mac_addr: '00:11:22:33:44' is not a MAC address"),
        ({"action": "query", "target": {"features": ["pairs", "pairs"]}},
         "target.features: 'pairs' is listed more than once"),
        ({"action": "query", "target": {"features": ["versions", "colour"]}},
         "target.features[1]: 'colour' is not a valid value"),
        ({"action": "delete", "target": {"slpf:rule_number": "7"}},
         'target["slpf:rule_number"]: expected an integer, got a string'),
        ({"action": "delete", "target": {"rule_number": 7}},
         "target: unknown target type 'rule_number'"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"},
          "args": {"start_time": 1, "stop_time": 2, "duration": 1}},
         "args: start_time, stop_time and duration are all given"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"},
          "args": {"start_time": 5, "stop_time": 2}},
         "args: stop_time 2 is before start_time 5"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"}, "args": {"duration": -1}},
         "args.duration: -1 is negative"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"}, "args": {"duration": True}},
         "args.duration: expected an integer, got a boolean"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"},
          "args": {"response_requested": "later"}},
         "args.response_requested: 'later' is not a valid value"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"},
          "args": {"slpf": {"drop_process": "ignore"}}},
         "args.slpf.drop_process: 'ignore' is not a valid value"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"},
          "args": {"slpf": {"persistent": "yes"}}},
         "args.slpf.persistent: expected a boolean, got a string"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"}, "args": {"slpf": {}}},
         "args.slpf: at least one SLPF argument is required"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"},
          "actuator": {"slpf": {"asset_tuple": []}}},
         "actuator.slpf.asset_tuple: must not be empty"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"}, "command_id": 42},
         "command_id: expected a string, got a number"),
        ({"action": "deny", "target": {"ipv4_net": "1.2.3.4"}, "priority": 1},
         "command: unknown property 'priority'"),
    ],
)  # fmt: skip
def test_a_problem_is_named_by_its_json_path(command: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidMessage) as refused:
        parse_command(command)
    assert refused.value.message.startswith(problem), refused.value.message


def test_numbers_are_json_numbers_and_nothing_else() -> None:
    command = parse_command(
        {"action": "deny", "target": {"ipv4_net": "1.2.3.4"}, "args": {"duration": 500.0}}
    )
    assert command.args is not None
    assert command.args.duration == 500
    assert parse_response({"status": 200.0}).status == 200
    for status in (True, "200", 200.5, 201):
        with pytest.raises(InvalidMessage, match=r"^status: "):
            parse_response({"status": status})


def test_a_parsed_command_keeps_only_what_was_given() -> None:
    command = parse_command(
        {"action": "delete", "target": {"slpf:rule_number": 7}, "actuator": {"slpf": {}}}
    )
    assert command.target.kind == "slpf:rule_number"
    assert command.target.value == 7
    assert command.to_json() == {
        "action": "delete", "target": {"slpf:rule_number": 7}, "actuator": {"slpf": {}}
    }  # fmt: skip
    assert command.response_requested == "complete"


def test_json_paths_read_as_written() -> None:
    assert json_path(("target", "features", 0), "command") == "target.features[0]"
    assert json_path(("target", "slpf:rule_number"), "command") == 'target["slpf:rule_number"]'
    assert json_path((), "command") == "command"
