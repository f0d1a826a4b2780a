"""From the command line to the kernel: an nftables instance configured with ``quell connector
add``, checked with ``quell connector test``, driven by ``quell action run`` and by a playbook
run, with real traffic between two network namespaces telling whether it worked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Invoke
from tests.connectors.netlab import PORTS, Lab

pytestmark = pytest.mark.requires("nftables")

PLAYBOOK = """
id: contain-source
name: Contain a source for a while
inputs: {ip: {type: string, required: true}}
steps:
  - id: block
    action: nftables.deny
    with: {ipv4_net: "{{ ip }}", expires_in: 3}
"""


@pytest.fixture
def edge(lab: Lab, invoke: Invoke) -> str:
    """An instance ``edge-fw`` running nft in the lab's firewall namespace."""
    lab.nft("flush", "ruleset")
    config = json.dumps({"command": ["ip", "netns", "exec", lab.firewall, "nft"]})
    added = invoke("connector", "add", "edge-fw", "--type", "nftables", "--config", config)
    assert added.exit_code == 0, added.output
    return "edge-fw"


def test_deny_and_delete_by_hand_block_and_free_real_traffic(
    lab: Lab, invoke: Invoke, edge: str
) -> None:
    checked = invoke("connector", "test", edge)
    assert checked.exit_code == 0, checked.output
    assert "nftables v" in checked.output
    assert "table inet quell not created yet" in checked.output

    listed = json.loads(invoke("connector", "list", "--json").stdout)
    assert [i["name"] for i in listed["instances"]] == [edge]

    assert lab.reachable(lab.fw_v4, PORTS[0])
    denied = invoke(
        "action", "run", "nftables.deny", "--json",
        "--input", json.dumps({"ipv4_net": lab.client_v4}),
    )  # fmt: skip
    assert denied.exit_code == 0, denied.output
    rule = json.loads(denied.stdout)["rule_number"]
    assert isinstance(rule, int)
    assert not lab.reachable(lab.fw_v4, PORTS[0])

    rules = json.loads(invoke("action", "run", "nftables.list_rules", "--json").stdout)
    assert [(r["rule_number"], r["verdict"]) for r in rules["rules"]] == [(rule, "drop")]
    assert lab.client_v4 in rules["rules"][0]["match"]

    (item,) = json.loads(invoke("containment", "list", "--json").stdout)
    assert item["action"] == "nftables.deny"
    assert item["instance"] == edge
    assert item["revert"] == {"action": "nftables.delete", "input": {"rule_number": rule}}
    reverted = invoke("containment", "revert", item["id"])
    assert reverted.exit_code == 0, reverted.output
    assert lab.reachable(lab.fw_v4, PORTS[0])

    again = invoke("action", "run", "nftables.delete", "--input", json.dumps({"rule_number": rule}))
    assert again.exit_code == 1
    assert f"no rule {rule} in table inet quell" in again.output


def test_a_dry_run_by_hand_changes_nothing(lab: Lab, invoke: Invoke, edge: str) -> None:
    shown = invoke(
        "action", "run", "nftables.deny", "--dry-run", "--json",
        "--input", json.dumps({"ipv4_net": lab.client_v4}),
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    would = json.loads(shown.stdout)
    assert would["rule_number"] is None
    assert f"ip saddr {lab.client_v4} drop" in would["would_add"]
    assert lab.reachable(lab.fw_v4, PORTS[0])


def test_a_playbook_blocks_through_the_configured_instance_until_the_kernel_expires_it(
    lab: Lab, invoke: Invoke, edge: str, tmp_path: Path
) -> None:
    path = tmp_path / "contain.yaml"
    path.write_text(PLAYBOOK, encoding="utf-8")
    ran = invoke(
        "playbook", "run", str(path), "--wait", "--json",
        "--input", json.dumps({"ip": lab.client_v4}),
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    run = json.loads(ran.stdout)
    assert run["status"] == "succeeded", run
    (block,) = [step for step in run["steps"] if step["key"] == "block"]
    assert isinstance(block["output"]["rule_number"], int)
    assert block["output"]["expires_at"] is not None
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    assert lab.wait_reachable(lab.fw_v4, PORTS[0], within=8)


def test_a_broken_instance_fails_its_test_and_its_calls_clearly(lab: Lab, invoke: Invoke) -> None:
    config = json.dumps({"command": ["/nonexistent/nft"]})
    assert (
        invoke("connector", "add", "broken", "--type", "nftables", "--config", config).exit_code
        == 0
    )
    checked = invoke("connector", "test", "broken")
    assert checked.exit_code == 1
    assert "broken: FAILED: cannot run '/nonexistent/nft': command not found" in checked.output
    called = invoke("action", "run", "nftables.list_rules", "--instance", "broken")
    assert called.exit_code == 1
    assert "command not found" in called.output
    assert invoke("connector", "update", "broken", "--disable").exit_code == 0
    disabled = invoke("action", "run", "nftables.list_rules", "--instance", "broken")
    assert disabled.exit_code == 1
    assert "disabled" in disabled.output
