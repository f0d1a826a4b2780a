"""The nftables connector against the real kernel: two network namespaces and real TCP.

The module makes a firewall namespace (``qfw-<hex>``) running a small TCP server on two ports,
a client namespace (``qcl-<hex>``), and a veth pair between them with IPv4 and IPv6 addresses.
The connector runs nft inside the firewall namespace (``ip netns exec <fw> nft``); whether a
rule works is told by connecting from the client, never by reading the rule back alone. Each
test starts from an empty ruleset in the firewall namespace; the namespaces are deleted at the
end whatever happened. Nothing here touches the host's own network or ruleset.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
import pytest
from pydantic import ValidationError

from quell.connectors.nftables import (
    DeleteIn,
    DenyIn,
    ListIn,
    ListOut,
    Nftables,
    RuleIn,
    RuleOut,
)
from quell.sdk import ActionContext, Landed, PermanentError, TargetNotFound
from tests.connectors.netlab import PORTS, Lab

pytestmark = pytest.mark.requires("nftables")

T = TypeVar("T")


@pytest.fixture
def firewall(lab: Lab) -> Nftables:
    """The connector on the firewall namespace, whose ruleset starts empty."""
    lab.nft("flush", "ruleset")
    return Nftables(Nftables.Config(command=["ip", "netns", "exec", lab.firewall, "nft"]))


def _ctx(key: str | None = None, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(
        run_id="run-nft",
        step_id="block",
        attempt=1,
        idempotency_key=key or uuid.uuid4().hex,
        dry_run=dry_run,
    )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _deny(firewall: Nftables, ctx: ActionContext | None = None, **inputs: Any) -> RuleOut:
    return _run(firewall.deny(ctx or _ctx(), DenyIn.model_validate(inputs)))


def _allow(firewall: Nftables, ctx: ActionContext | None = None, **inputs: Any) -> RuleOut:
    return _run(firewall.allow(ctx or _ctx(), RuleIn.model_validate(inputs)))


def _delete(firewall: Nftables, rule_number: int) -> None:
    _run(firewall.delete(_ctx(), DeleteIn.model_validate({"rule_number": rule_number})))


def _list(firewall: Nftables, *, dry_run: bool = False) -> ListOut:
    return _run(firewall.list_rules(_ctx(dry_run=dry_run), ListIn()))


def test_deny_ipv4_net_blocks_the_client_until_the_rule_is_deleted(
    lab: Lab, firewall: Nftables
) -> None:
    assert lab.reachable(lab.fw_v4, PORTS[0])

    denied = _deny(firewall, ipv4_net=lab.client_v4)

    assert denied.rule_number is not None
    assert denied.target == {"ipv4_net": lab.client_v4}
    assert denied.expires_at is None
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    assert not lab.reachable(lab.fw_v4, PORTS[1])
    assert lab.reachable(lab.fw_v6, PORTS[0])  # an IPv4 rule leaves IPv6 alone

    listed = _list(firewall)
    assert [(r.rule_number, r.verdict, r.match) for r in listed.rules] == [
        (denied.rule_number, "drop", f"ip saddr {lab.client_v4}")
    ]
    assert listed.rules[0].comment is not None
    assert listed.rules[0].comment.startswith("quell:")

    _delete(firewall, denied.rule_number)

    assert lab.reachable(lab.fw_v4, PORTS[0])
    assert _list(firewall).rules == []


def test_deny_ipv6_net_blocks_ipv6_but_not_ipv4(lab: Lab, firewall: Nftables) -> None:
    assert lab.reachable(lab.fw_v6, PORTS[0])

    denied = _deny(firewall, ipv6_net="fd00:213::/64", drop_process="reject")

    assert denied.target == {"ipv6_net": "fd00:213::/64"}
    assert not lab.reachable(lab.fw_v6, PORTS[0])
    assert lab.reachable(lab.fw_v4, PORTS[0])
    assert denied.rule_number is not None
    _delete(firewall, denied.rule_number)
    # Neighbour discovery was refused too while the rule held: give it a moment to recover.
    assert lab.wait_reachable(lab.fw_v6, PORTS[0], within=5)


def test_deny_ipv4_connection_blocks_only_that_port(lab: Lab, firewall: Nftables) -> None:
    denied = _deny(
        firewall,
        ipv4_connection={"src_addr": lab.client_v4, "dst_port": PORTS[0], "protocol": "tcp"},
    )

    assert denied.target == {
        "ipv4_connection": {"src_addr": lab.client_v4, "dst_port": PORTS[0], "protocol": "tcp"}
    }
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    assert lab.reachable(lab.fw_v4, PORTS[1])
    assert lab.reachable(lab.fw_v6, PORTS[0])  # an IPv4 connection rule leaves IPv6 alone


def test_deny_port_without_address_or_protocol_matches_every_transport(
    lab: Lab, firewall: Nftables
) -> None:
    _deny(firewall, ipv4_connection={"dst_port": PORTS[1]})

    assert not lab.reachable(lab.fw_v4, PORTS[1])
    assert lab.reachable(lab.fw_v4, PORTS[0])
    assert lab.reachable(lab.fw_v6, PORTS[1])  # the rule is limited to IPv4
    (rule,) = _list(firewall).rules
    assert rule.match == f"meta nfproto ipv4 meta l4proto {{ tcp, udp, sctp }} th dport {PORTS[1]}"


def test_an_expiring_deny_ends_in_the_kernel_and_is_collected(lab: Lab, firewall: Nftables) -> None:
    denied = _deny(firewall, ipv4_net=f"{lab.client_v4}/24", expires_in=2)

    assert denied.expires_at is not None
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    (rule,) = _list(firewall).rules
    assert rule.rule_number == denied.rule_number
    assert rule.match.startswith("ip saddr @e")
    assert rule.expires_at is not None
    assert not rule.expired

    # The kernel drops the set's element after 2 s; the rule then matches nothing.
    assert lab.wait_reachable(lab.fw_v4, PORTS[0], within=8)

    assert _list(firewall, dry_run=True).rules[0].expired  # a dry run only looks
    assert _list(firewall).rules == []  # the expired rule and its set are deleted
    table = orjson.loads(lab.nft("-j", "list", "table", "inet", "quell"))["nftables"]
    assert [entry for entry in table if "set" in entry or "rule" in entry] == []


def test_expiry_on_a_connection_uses_its_address(lab: Lab, firewall: Nftables) -> None:
    denied = _deny(
        firewall,
        ipv4_connection={"dst_addr": lab.fw_v4, "dst_port": PORTS[0], "protocol": "tcp"},
        expires_in=600,
    )

    assert denied.expires_at is not None
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    assert lab.reachable(lab.fw_v4, PORTS[1])
    (rule,) = _list(firewall).rules
    assert rule.match.startswith("ip daddr @e")


def test_an_allow_wins_over_a_deny(lab: Lab, firewall: Nftables) -> None:
    denied = _deny(firewall, ipv4_net=f"{lab.fw_v4}/24")
    assert not lab.reachable(lab.fw_v4, PORTS[1])

    allowed = _allow(
        firewall,
        ipv4_connection={"src_addr": lab.client_v4, "dst_port": PORTS[1], "protocol": "tcp"},
    )

    assert lab.reachable(lab.fw_v4, PORTS[1])
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    rules = _list(firewall).rules
    assert [(r.rule_number, r.verdict) for r in rules] == [
        (allowed.rule_number, "accept"),
        (denied.rule_number, "drop"),
    ]


def test_the_same_idempotency_key_adds_one_rule_and_reconciles(
    lab: Lab, firewall: Nftables
) -> None:
    key = f"run-1/block/{uuid.uuid4().hex}"
    params = DenyIn.model_validate({"ipv4_net": lab.client_v4})

    first = _run(firewall.deny(_ctx(key), params))
    second = _run(firewall.deny(_ctx(key), params))

    assert second.rule_number == first.rule_number
    assert len(_list(firewall).rules) == 1
    landed = _run(firewall.find_rule(_ctx(key), params))
    assert landed.state is Landed.LANDED
    assert landed.output is not None
    assert landed.output["rule_number"] == first.rule_number
    assert landed.output["target"] == {"ipv4_net": lab.client_v4}
    unknown = _run(firewall.find_rule(_ctx("another key"), params))
    assert unknown.state is Landed.NOT_LANDED

    assert first.rule_number is not None
    _delete(firewall, first.rule_number)
    gone = _run(firewall.rule_gone(_ctx(), DeleteIn(rule_number=first.rule_number)))
    assert gone.state is Landed.LANDED
    assert _run(firewall.find_rule(_ctx(key), params)).state is Landed.NOT_LANDED


def test_deleting_an_unknown_rule_number_is_target_not_found(firewall: Nftables) -> None:
    with pytest.raises(TargetNotFound, match="no rule 4242 in table inet quell"):
        _delete(firewall, 4242)  # Quell's table does not exist yet
    _deny(firewall, ipv4_net="192.0.2.1")
    with pytest.raises(TargetNotFound, match="no rule 4242"):
        _delete(firewall, 4242)


def test_a_dry_run_changes_nothing(lab: Lab, firewall: Nftables) -> None:
    params = DenyIn.model_validate({"ipv4_net": lab.client_v4, "expires_in": 60})

    pretended = _run(firewall.deny(_ctx(dry_run=True), params))

    assert pretended.rule_number is None
    assert pretended.would_add is not None
    assert f"elements = {{ {lab.client_v4} timeout 60s }}" in pretended.would_add
    assert "add rule inet quell input ip saddr @e" in pretended.would_add
    assert pretended.would_add.rstrip().endswith('"')  # the comment with the key's hash
    assert _list(firewall).rules == []
    assert lab.nft("list", "ruleset").strip() == ""
    assert lab.reachable(lab.fw_v4, PORTS[0])


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"ipv4_net": "300.1.1.1"}, "ipv4_net", "is not an IPv4 address or network"),
        ({"ipv4_net": "fd00::1"}, "ipv4_net", "is not an IPv4 address or network"),
        ({"ipv6_net": "10.0.0.1"}, "ipv6_net", "is not an IPv6 address or network"),
        (
            {"ipv4_net": "10.0.0.1", "ipv6_net": "fd00::1"},
            "",
            "got ipv4_net and ipv6_net",
        ),
        ({}, "", "give exactly one target"),
        ({"ipv4_connection": {}}, "ipv4_connection", "at least one of"),
        (
            {"ipv4_connection": {"dst_port": 80, "protocol": "icmp"}},
            "ipv4_connection",
            "ports need protocol tcp, udp or sctp",
        ),
        ({"ipv4_connection": {"dst_port": 70000}}, "ipv4_connection.dst_port", "65535"),
        (
            {"ipv4_connection": {"dst_port": 22}, "expires_in": 60},
            "",
            "expires_in needs an address",
        ),
        ({"ipv4_net": "10.0.0.1", "expires_in": 0}, "expires_in", "greater than 0"),
        ({"ipv4_net": "10.0.0.1", "drop_process": "false_ack"}, "drop_process", "none"),
        ({"ipv4_net": "10.0.0.1", "port": 22}, "port", "Extra inputs"),
    ],
)
def test_bad_input_fails_validation_naming_the_field(
    inputs: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        DenyIn.model_validate(inputs)
    error = raised.value.errors()[0]
    assert ".".join(str(part) for part in error["loc"]) == field
    assert message in error["msg"]


def test_rules_outside_quells_table_are_untouched(lab: Lab, firewall: Nftables) -> None:
    lab.nft(
        "-f",
        "-",
        stdin=(
            "add table inet other\n"
            "add chain inet other input { type filter hook input priority 0; policy accept; }\n"
            'add rule inet other input tcp dport 9999 counter accept comment "not quell"\n'
        ),
    )
    before = lab.nft("list", "table", "inet", "other")

    denied = _deny(firewall, ipv4_net=lab.client_v4, expires_in=1)
    _allow(firewall, ipv6_net=lab.client_v6)
    assert lab.wait_reachable(lab.fw_v4, PORTS[0], within=6)
    (kept,) = _list(firewall).rules  # the expired deny is collected, the allow kept
    assert denied.rule_number is not None
    with pytest.raises(TargetNotFound):
        _delete(firewall, denied.rule_number)

    assert lab.nft("list", "table", "inet", "other") == before
    assert kept.verdict == "accept"
    assert kept.match == f"ip6 saddr {lab.client_v6}"


def test_nft_failures_are_permanent_errors_naming_the_cause(lab: Lab) -> None:
    missing = Nftables(Nftables.Config(command=["/nonexistent/nft"]))
    with pytest.raises(PermanentError, match="cannot run '/nonexistent/nft': command not found"):
        _list(missing)

    elsewhere = Nftables(
        Nftables.Config(command=["ip", "netns", "exec", f"{lab.firewall}-gone", "nft"])
    )
    with pytest.raises(PermanentError, match=r"nft list table failed \(exit \d+\): .+") as raised:
        _list(elsewhere)
    assert raised.value.retryable is False
