"""Quell as an OpenC2 consumer, over real HTTP: ``POST /api/openc2``.

The corpus: every good command is accepted (an OpenC2 response, valid under the corpus's SLPF
schema, or no response when the command asked for none) and every bad one refused with HTTP
400 whose body names the problem by its JSON path. The corpus runs against one server (SQLite;
it tests the consumer, not storage) whose nftables instance runs a fake nft. The rest runs on
each storage backend: commands reaching the nftables connector (the fake nft records the nft
scripts), the actuator and argument mapping, the transfer rules and the permissions. The real
kernel is in ``test_nftables_lab.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from quell.api.app import create_app
from quell.clock import ManualClock
from quell.governance.permissions import Role
from quell.openc2.language import STATUS_CODES, parse_response
from quell.runtime import Runtime
from quell.settings import load_settings
from tests.fixtures.servers import LiveServer, start_server
from tests.openc2.support import (
    MEDIA_TYPE,
    FakeNft,
    corpus_file,
    corpus_params,
    openc2_corpus,
    schema_accepts,
    send,
)

# -- the corpus --------------------------------------------------------------------------------

# The problem each bad corpus command is refused for: the start of the 400's status_text.
BAD_COMMAND_PROBLEMS: dict[str, str] = {
    "action_notarget.json": "target: required property is missing",
    "action_notarget_id.json": "target: required property is missing",
    "action_unknown.json": "action: 'unknown' is not a valid value",
    "allow_ipv4net_badcidr.json": "target.ipv4_net: '127.0.0.1/64' is not an IPv4 network",
    "allow_ipv4net_badip.json": "target.ipv4_net: '127.0.0.300' is not an IPv4 network",
    "allow_ipv6net_wikipedia3.json": (
        "target.ipv6_net: '2001::85a3::8a2e:370:7334' is not an IPv6 network"
    ),
    "args_empty.json": "args: at least one argument is required",
    "deny_file_hashes_empty.json": "target.file.hashes: at least one hash algorithm is required",
    "deny_file_hashes_sha512.json": "target.file.hashes: unknown hash algorithm 'sha512'",
    "deny_uri_actuator_empty.json": "actuator: exactly one actuator profile is required",
    "deny_uri_actuator_multiple.json": "actuator: unknown actuator profile 'x-acme'",
    "empty.json": "command: the body is empty",
    "empty_array.json": "command: an OpenC2 command is a JSON object, not an array",
    "empty_object.json": "action: required property is missing",
    "number.json": "command: an OpenC2 command is a JSON object, not a number",
    "number_integer.json": "command: an OpenC2 command is a JSON object, not a number",
    "openc2_response.json": "command: this is an OpenC2 response",
    "openc2_response_text.json": "command: this is an OpenC2 response",
    "query_features_ext_args_all.json": "args: unknown argument 'x-0123456789_ABCDEFG_abcdefg___'",
    "query_features_ext_args_capX.json": "args: unknown argument 'X-mycompany'",
    "query_features_ext_args_dots.json": "args: unknown argument 'x-mycompany.example.com'",
    "query_features_ext_args_nox-.json": "args: unknown argument 'mycompany'",
    "query_features_ext_args_specialchar.json": "args: unknown argument 'x-mycompany/foo;bar'",
    "query_features_notunique.json": "target.features: 'versions' is listed more than once",
    "query_features_unknown.json": "target.features[0]: 'unknown' is not a valid value",
    "query_multiple_target_extensions.json": "target: unknown target type 'x-acme:features'",
    "query_multiple_targets.json": (
        "target: exactly one target type is allowed, got 'features', 'properties'"
    ),
    "start_container_ext_nocolon.json": "target: unknown target type 'container'",
    "start_container_ext_noprofile.json": "target: unknown target type ':container'",
    "start_container_ext_specialchar1.json": "target: unknown target type 'x-acm&e:container'",
    "start_container_ext_specialchar2.json": "target: unknown target type 'x-acme:conta$iner'",
    "start_container_ext_underscore_first1.json": (
        "target: unknown target type 'x-_acme:container'"
    ),
    "start_container_ext_underscore_first2.json": (
        "target: unknown target type 'x-acme:_container'"
    ),
    "string.json": "command: an OpenC2 command is a JSON object, not a string",
    "target_multiple.json": "target: exactly one target type is allowed, got 'device', 'file'",
}

# The OpenC2 status each good SLPF corpus command gets here (None: no response, as asked).
SLPF_OUTCOMES: dict[str, int | None] = {
    "ls_example_deny_ipv4connection.json": 404,  # actuator.slpf.asset_id '30': no such instance
    "slpf_example_deny_ipv6connection.json": 404,  # the same command, the same asset_id
    "slpf_example_allow_ipv6connection.json": 200,
    "slpf_example_delete_rulenumber.json": 404,  # no rule 1234
    "slpf_example_deny_ipv4connection.json": 501,  # drop_process false_ack
    "slpf_example_deny_ipv6net.json": None,  # response_requested none
    "slpf_example_update_file.json": 501,  # update file: no connector implements it
}


def _language_outcome(name: str) -> int:
    """Language commands: allow of an address and query features work, the rest is 501."""
    if name.startswith(("allow_ipv4net", "allow_ipv6net")) or "query_features" in name:
        return 200
    return 501


@dataclass
class CorpusConsumer:
    server: LiveServer
    admin: httpx.Client
    nft: FakeNft


_TEST_ENV = {"QUELL_TEST_POSTGRES_URL", "QUELL_CORPUS", "QUELL_REQUIRE_ALL", "QUELL_CRASH_SEED"}


@pytest.fixture(scope="module")
def corpus_consumer(
    tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path
) -> Iterator[CorpusConsumer]:
    """One consumer for the whole corpus, with its nftables instance on a fake nft."""
    base = tmp_path_factory.mktemp("openc2-corpus")
    database = base / "quell.db"
    shutil.copyfile(_sqlite_template, database)
    with pytest.MonkeyPatch.context() as env:  # as tests/conftest.py isolates each test
        for name in list(os.environ):
            if name.startswith("QUELL_") and name not in _TEST_ENV:
                env.delenv(name)
        env.setenv("QUELL_DATA_DIR", str(base / "data"))
        settings = load_settings(data_dir=base / "data", database_url=f"sqlite:///{database}")
    nft = FakeNft(base / "nft-state.json")
    with Runtime.open(settings, clock=ManualClock()) as runtime:
        token = runtime.tokens.create("corpus-admin", Role.ADMIN.value)[1].reveal()
        runtime.connector_instances.create(
            "edge-fw", "nftables", {"command": nft.command}, created_by="test"
        )
        server = start_server(create_app(runtime))
        try:
            with server.client(token) as admin:
                yield CorpusConsumer(server, admin, nft)
        finally:
            server.stop()


@pytest.mark.parametrize("path", corpus_params("good-commands"))
def test_every_good_corpus_command_gets_an_openc2_response(
    corpus_consumer: CorpusConsumer, path: Path | None
) -> None:
    file = corpus_file(path)
    command = json.loads(file.read_bytes())
    rules_before = len(corpus_consumer.nft.rules())
    answer = send(corpus_consumer.admin, file.read_bytes())
    assert answer.status_code == 200, answer.text
    profile = file.parent.parent.name
    expected = (
        SLPF_OUTCOMES.get(file.name, -1) if profile == "slpf" else _language_outcome(file.name)
    )
    if expected is None:  # response_requested none: no OpenC2 response at all
        assert answer.content == b""
        return
    assert answer.headers["content-type"] == MEDIA_TYPE
    body = answer.json()
    parse_response(body)
    assert schema_accepts("oc2slpf", "OpenC2-Response", answer.content), body
    if expected == -1:  # a corpus file added since this table was written
        assert body["status"] in STATUS_CODES
        return
    requested = command.get("args", {}).get("response_requested", "complete")
    if expected == 200 and requested == "ack":
        expected = 102
    assert body["status"] == expected, body
    if expected in (200, 102) and command["action"] in ("deny", "allow"):
        rule = body["results"]["slpf"]["rule_number"]
        assert rule in [r["handle"] for r in corpus_consumer.nft.rules()]
        assert len(corpus_consumer.nft.rules()) == rules_before + 1
    else:
        assert len(corpus_consumer.nft.rules()) == rules_before
    if expected >= 400:
        assert body["status_text"]


@pytest.mark.parametrize("path", corpus_params("bad-commands"))
def test_every_bad_corpus_command_is_refused_naming_the_problem(
    corpus_consumer: CorpusConsumer, path: Path | None
) -> None:
    file = corpus_file(path)
    answer = send(corpus_consumer.admin, file.read_bytes())
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == MEDIA_TYPE
    body = answer.json()
    assert set(body) == {"status", "status_text"}
    assert body["status"] == 400
    expected = BAD_COMMAND_PROBLEMS.get(file.name)
    if expected is None:  # a corpus file added since this table was written
        assert re.match(r"^\S+: \S", body["status_text"]), body
    else:
        assert body["status_text"].startswith(expected), body


@pytest.mark.requires("corpus")
def test_the_corpus_spec_examples_are_accepted(corpus_consumer: CorpusConsumer) -> None:
    examples = sorted((openc2_corpus() / "spec-examples").glob("slpf_*_command_*.json"))
    assert examples
    for example in examples:
        answer = send(corpus_consumer.admin, example.read_bytes())
        assert answer.status_code == 200, (example.name, answer.text)


# -- commands reaching nftables ----------------------------------------------------------------


def _now_ms(runtime: Runtime) -> int:
    return int(runtime.clock.now().timestamp() * 1000)


def _deny(address: str, **args: Any) -> dict[str, Any]:
    command: dict[str, Any] = {"action": "deny", "target": {"ipv4_net": address}}
    if args:
        command["args"] = args
    return command


def test_a_deny_reaches_nftables_and_a_delete_of_its_rule_number_removes_it(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft
) -> None:
    admin = clients[Role.ADMIN]
    denied = send(
        admin,
        _deny("203.0.113.7", duration=3_600_000,
              slpf={"drop_process": "reject", "direction": "egress"}),
    )  # fmt: skip
    assert denied.status_code == 200, denied.text
    assert denied.headers["content-type"] == MEDIA_TYPE
    body = denied.json()
    assert set(body) == {"status", "results"}
    assert body["status"] == 200
    rule = body["results"]["slpf"]["rule_number"]
    (added,) = fake_nft.rules()
    assert added["handle"] == rule
    assert added["body"].startswith("ip daddr @e")  # egress: matched as destination
    assert added["body"].endswith(" reject")  # drop_process reject
    assert "elements = { 203.0.113.7 timeout 3600s }" in fake_nft.scripts()[-1]

    deleted = send(admin, {"action": "delete", "target": {"slpf:rule_number": rule}})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"status": 200, "status_text": f"rule {rule} deleted"}
    assert fake_nft.rules() == []

    again = send(admin, {"action": "delete", "target": {"slpf:rule_number": rule}})
    assert again.status_code == 200
    assert again.json() == {"status": 404, "status_text": f"no rule {rule} in table inet quell"}
    assert send(admin, {"action": "delete", "target": {"slpf:rule_number": 0}}).json() == {
        "status": 404, "status_text": "no rule 0"
    }  # fmt: skip


def test_each_target_and_allow_map_to_the_connector(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft
) -> None:
    admin = clients[Role.ADMIN]
    commands = [
        ({"action": "deny", "target": {"ipv6_net": "2001:db8::/32"}},
         "ip6 saddr 2001:db8::/32 drop"),
        ({"action": "deny", "target": {"ipv4_connection": {
            "protocol": "tcp", "src_addr": "198.51.100.0/24", "dst_port": 22}}},
         "ip saddr 198.51.100.0/24 meta l4proto tcp th dport 22 drop"),
        ({"action": "allow", "target": {"ipv6_connection": {"protocol": "udp", "dst_port": 53}},
          "args": {"slpf": {"drop_process": "reject", "persistent": False}}},
         "meta nfproto ipv6 meta l4proto udp th dport 53 accept"),
        ({"action": "allow", "target": {"ipv4_net": "192.0.2.1"},
          "args": {"slpf": {"direction": "ingress"}}}, "ip saddr 192.0.2.1 accept"),
    ]  # fmt: skip
    for command, nft_rule in commands:
        answer = send(admin, command)
        assert answer.status_code == 200, answer.text
        rule = answer.json()["results"]["slpf"]["rule_number"]
        found = {r["handle"]: r["body"] for r in fake_nft.rules()}
        assert found[rule] == nft_rule


def test_time_arguments_become_an_expiry_or_are_declined(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft, runtime: Runtime
) -> None:
    admin = clients[Role.ADMIN]
    now = _now_ms(runtime)
    stop = send(admin, _deny("203.0.113.8", stop_time=now + 90_500))
    assert stop.json()["status"] == 200, stop.text
    assert "203.0.113.8 timeout 91s" in fake_nft.scripts()[-1]  # rounded up to whole seconds
    window = send(admin, _deny("203.0.113.9", start_time=now - 10_000, duration=70_000))
    assert window.json()["status"] == 200, window.text
    assert "203.0.113.9 timeout 60s" in fake_nft.scripts()[-1]

    scripts = len(fake_nft.scripts())
    later = send(admin, _deny("203.0.113.10", start_time=now + 3_600_000))
    assert later.json()["status"] == 501
    assert "args.start_time" in later.json()["status_text"]
    over = send(admin, _deny("203.0.113.11", start_time=now - 10_000, duration=1_000))
    assert over.json()["status"] == 200
    assert "nothing was changed" in over.json()["status_text"]
    assert "results" not in over.json()
    forever = send(admin, _deny("203.0.113.12", duration=40 * 24 * 3_600_000))
    assert forever.json()["status"] == 501
    assert len(fake_nft.scripts()) == scripts  # none of them reached nft


def test_profile_arguments_nftables_cannot_honour_are_declined(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft
) -> None:
    admin = clients[Role.ADMIN]
    for slpf, named in (
        ({"direction": "both"}, "args.slpf.direction 'both'"),
        ({"insert_rule": 3}, "args.slpf.insert_rule"),
        ({"drop_process": "false_ack"}, "args.slpf.drop_process 'false_ack'"),
    ):
        answer = send(admin, _deny("203.0.113.20", slpf=slpf))
        assert answer.status_code == 200
        assert answer.json()["status"] == 501
        assert answer.json()["status_text"].startswith(named), answer.json()
    # For a connection the 5-tuple says the direction; 'both' is fine there.
    both = send(admin, {"action": "deny", "target": {"ipv4_connection": {"dst_port": 25}},
                        "args": {"slpf": {"direction": "both"}}})  # fmt: skip
    assert both.json()["status"] == 200, both.text
    assert len(fake_nft.rules()) == 1


def test_response_requested_ack_and_none(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft
) -> None:
    admin = clients[Role.ADMIN]
    acked = send(admin, _deny("203.0.113.30", response_requested="ack"))
    assert acked.status_code == 200
    body = acked.json()
    assert body["status"] == 102
    assert body["results"]["slpf"]["rule_number"] == fake_nft.rules()[-1]["handle"]

    quiet = send(admin, _deny("203.0.113.31", response_requested="none"))
    assert quiet.status_code == 200
    assert quiet.content == b""
    assert len(fake_nft.rules()) == 2  # carried out all the same

    failed = send(
        admin,
        {"action": "delete", "target": {"slpf:rule_number": 999},
         "args": {"response_requested": "ack"}},
    )  # fmt: skip
    assert failed.json()["status"] == 404  # a failure is not hidden behind an ack
    invalid = send(admin, {"action": "deny", "target": {"ipv4_net": "1.2.3.4/40"},
                           "args": {"response_requested": "none"}})  # fmt: skip
    assert invalid.status_code == 400  # a refused command is always answered


def test_the_actuator_names_the_instance(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft, tmp_path: Path
) -> None:
    admin = clients[Role.ADMIN]
    other = FakeNft(tmp_path / "other-nft.json")
    created = admin.post(
        "/api/connectors",
        json={"name": "edge-b", "connector": "nftables", "config": {"command": other.command}},
    )
    assert created.status_code == 201, created.text

    to_b = send(admin, {**_deny("203.0.113.40"), "actuator": {"slpf": {"asset_id": "edge-b"}}})
    assert to_b.json()["status"] == 200, to_b.text
    assert [r["handle"] for r in other.rules()] == [to_b.json()["results"]["slpf"]["rule_number"]]
    assert fake_nft.rules() == []

    unknown = send(admin, {**_deny("203.0.113.41"), "actuator": {"slpf": {"asset_id": "edge-z"}}})
    assert unknown.json() == {
        "status": 404,
        "status_text": "actuator.slpf.asset_id: no connector instance named 'edge-z'",
    }
    grouped = send(
        admin, {**_deny("203.0.113.42"), "actuator": {"slpf": {"named_group": "perimeter"}}}
    )
    assert grouped.json()["status"] == 501
    assert grouped.json()["status_text"].startswith("actuator.slpf.named_group is not supported")
    # Two instances and none named: the default cannot be chosen, and the answer says so
    # (a configuration the consumer cannot act on: 501, as with none configured).
    ambiguous = send(admin, _deny("203.0.113.43"))
    assert ambiguous.json()["status"] == 501
    assert "several instances" in ambiguous.json()["status_text"]
    assert fake_nft.rules() == []
    assert len(other.rules()) == 1


def test_failures_of_the_action_become_openc2_statuses(clients: dict[Role, httpx.Client]) -> None:
    admin = clients[Role.ADMIN]
    refused = send(admin, {"action": "deny", "target": {"ipv4_connection": {
        "protocol": "icmp", "dst_port": 80}}})  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["status"] == 400
    assert "ports need protocol tcp, udp or sctp" in refused.json()["status_text"]

    changed = admin.patch(
        "/api/connectors/edge-fw", json={"config": {"command": ["/nonexistent/nft"]}}
    )
    assert changed.status_code == 200, changed.text
    broken = send(admin, _deny("203.0.113.50"))
    assert broken.status_code == 200
    assert broken.json() == {
        "status": 500,
        "status_text": "cannot run '/nonexistent/nft': command not found",
    }


def test_what_is_not_implemented_is_answered_501_naming_what_is(
    clients: dict[Role, httpx.Client],
) -> None:
    admin = clients[Role.ADMIN]
    for command in (
        {"action": "contain", "target": {"device": {"device_id": "laptop-7"}}},
        {"action": "update", "target": {"file": {"name": "rules.conf"}}},
        {"action": "deny", "target": {"domain_name": "evil.example"}},
        {"action": "query", "target": {"properties": ["firewall_status"]}},
    ):
        answer = send(admin, command)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == 501
        target = next(iter(command["target"]))
        assert body["status_text"].startswith(f"{command['action']} {target} is not implemented")
        assert "deny ipv4_net" in body["status_text"]


def test_query_features_is_answered_by_quell(clients: dict[Role, httpx.Client]) -> None:
    analyst = clients[Role.ANALYST]
    everything = send(
        analyst,
        {
            "action": "query",
            "target": {"features": ["versions", "profiles", "pairs", "rate_limit"]},
        },
    )
    assert everything.status_code == 200, everything.text
    targets = ["ipv4_net", "ipv6_net", "ipv4_connection", "ipv6_connection"]
    assert everything.json() == {
        "status": 200,
        "results": {
            "versions": ["1.0"],
            "profiles": ["slpf"],
            "pairs": {"query": ["features"], "deny": targets, "allow": targets,
                      "delete": ["slpf:rule_number"]},
        },  # no rate_limit: no connector behind the pairs declares one
    }  # fmt: skip
    assert schema_accepts("oc2slpf", "OpenC2-Response", everything.content)
    ping = send(analyst, {"action": "query", "target": {"features": []}})
    assert ping.json() == {"status": 200}
    versions = send(analyst, {"action": "query", "target": {"features": ["versions"]}})
    assert versions.json() == {"status": 200, "results": {"versions": ["1.0"]}}


def test_the_transfer_rules(clients: dict[Role, httpx.Client]) -> None:
    admin = clients[Role.ADMIN]
    ping = {"action": "query", "target": {"features": []}}
    for content_type in (
        MEDIA_TYPE,
        "application/openc2+json",
        'application/openc2+json; version="1.0"; charset=utf-8',
        "application/openc2-cmd+json;version=1.0",
        "application/json",
    ):
        answer = send(admin, ping, content_type=content_type)
        assert answer.status_code == 200, (content_type, answer.text)
    for content_type, problem in (
        ("text/plain", "content type 'text/plain' is not accepted"),
        ("application/x-www-form-urlencoded", "is not accepted"),
        ("application/openc2+json;version=2.0", "OpenC2 version '2.0' is not supported"),
        ("application/json; charset=latin-1", "charset 'latin-1'"),
    ):
        answer = send(admin, ping, content_type=content_type)
        assert answer.status_code == 415, (content_type, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert problem in answer.json()["detail"]
    padded = b'{"action": "query", "target": {"features": []}}' + b" " * (64 * 1024)
    too_big = send(admin, padded)
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == "application/problem+json"
    tagged = admin.post(
        "/api/openc2",
        json=ping,
        headers={"X-Request-ID": "producer-req-17", "Content-Type": MEDIA_TYPE},
    )
    assert tagged.headers["x-request-id"] == "producer-req-17"
    assert send(admin, b"{not json").json()["status_text"].startswith("command: not valid JSON")


def test_permissions(
    consumer: LiveServer, clients: dict[Role, httpx.Client], fake_nft: FakeNft
) -> None:
    deny = _deny("203.0.113.60")
    # runs:execute is the route's permission; query features needs no more.
    auditor = send(clients[Role.AUDITOR], deny)
    assert auditor.status_code == 403
    assert auditor.json()["permission"] == "runs:execute"
    with consumer.client() as anonymous:
        assert send(anonymous, deny).status_code == 401
    # A change also needs connectors:manage, which the analyst lacks; a dry run does not.
    analyst = send(clients[Role.ANALYST], deny)
    assert analyst.status_code == 403
    assert analyst.headers["content-type"] == MEDIA_TYPE
    assert analyst.json()["status"] == 403
    assert "connectors:manage" in analyst.json()["status_text"]
    dry = send(clients[Role.ANALYST], deny, params={"dry_run": "true"})
    assert dry.status_code == 200, dry.text
    assert dry.json() == {
        "status": 200,
        "status_text": "dry run of nftables.deny: nothing was changed",
    }
    assert fake_nft.scripts() == []
    assert fake_nft.rules() == []
    # Asking for no response does not hide a refusal.
    quiet = send(clients[Role.ANALYST], _deny("203.0.113.61", response_requested="none"))
    assert quiet.status_code == 403
    made = send(clients[Role.ADMIN], deny)
    assert made.json()["status"] == 200
    assert len(fake_nft.rules()) == 1


def test_the_guardrails_hold_commands_from_other_systems(
    clients: dict[Role, httpx.Client], fake_nft: FakeNft, runtime: Runtime
) -> None:
    admin = clients[Role.ADMIN]
    runtime.guardrails.kill_switch(True, by="alice", reason="incident bridge")
    held = send(admin, _deny("203.0.113.7")).json()
    assert held["status"] == 503
    assert held["status_text"].startswith("kill_switch: the kill switch is on (incident bridge)")
    assert fake_nft.rules() == []
    runtime.guardrails.kill_switch(False, by="alice")
    runtime.guardrails.protect(["203.0.113.0/24"], by="alice")
    protected = send(admin, _deny("203.0.113.9")).json()
    assert protected["status"] == 403
    assert "203.0.113.0/24 is protected" in protected["status_text"]
    runtime.guardrails.add_limit(1, by="alice", action="nftables.deny")
    assert send(admin, _deny("198.51.100.1")).json()["status"] == 200
    limited = send(admin, _deny("198.51.100.2")).json()
    assert limited["status"] == 503
    assert "reached its limit of 1" in limited["status_text"]
    assert len(fake_nft.rules()) == 1
    # One name per caller in the trail (it read openc2:openc2:<token> for guardrail events).
    trail = runtime.audit.list_all(action="guardrail.")
    callers = {event.actor for event in trail if event.actor != "alice"}
    assert callers == {"openc2:test-admin"}, callers


def test_without_a_configured_firewall_a_deny_changes_nothing_on_this_host(
    runtime: Runtime,
    role_tokens: dict[Role, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unconfigured, the nftables connector would run this host's own nft: an OpenC2 deny sent
    to a fresh install used to add a drop rule to the machine's firewall. The connector runs
    only on an instance an admin added; the command is answered 501, saying so. An ``nft``
    first on PATH records any call, so a regression shows here without touching the host."""
    tools = tmp_path / "bin"
    tools.mkdir()
    called = tmp_path / "nft-called"
    nft = tools / "nft"
    nft.write_text(f'#!/bin/sh\necho "$@" >> {called}\nexit 1\n')
    nft.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    server = start_server(create_app(runtime))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            for actuator in ({}, {"actuator": {"slpf": {}}}):
                command = {"action": "deny", "target": {"ipv4_net": "203.0.113.9"}, **actuator}
                answer = send(admin, command).json()
                assert answer["status"] == 501, answer
                assert "quell connector add" in answer["status_text"], answer
                assert "nftables" in answer["status_text"], answer
            listed = admin.get("/api/containments").json()
    finally:
        server.stop()
    assert not called.exists()
    assert listed == [] or listed.get("items") == [], listed
