"""OpenC2 to the kernel: a ``deny ipv4_net`` sent to ``POST /api/openc2`` blocks real traffic
between two network namespaces, and a ``delete`` of the rule number it returned lets it through
again. The nftables instance is configured through the API to run nft inside the lab's
firewall namespace; nothing touches the host's own network or ruleset."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from quell.api.app import create_app
from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.connectors.netlab import PORTS, Lab, lab  # noqa: F401 - the fixture
from tests.fixtures.servers import LiveServer, start_server
from tests.openc2.support import send

pytestmark = pytest.mark.requires("nftables")


@pytest.fixture
def edge(
    lab: Lab,  # noqa: F811 - the fixture imported above
    runtime: Runtime,
    role_tokens: dict[Role, str],
) -> Iterator[httpx.Client]:
    """An admin client of a consumer whose instance ``edge-fw`` is the lab's firewall."""
    lab.nft("flush", "ruleset")
    server: LiveServer = start_server(create_app(runtime))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            created = admin.post(
                "/api/connectors",
                json={"name": "edge-fw", "connector": "nftables",
                      "config": {"command": ["ip", "netns", "exec", lab.firewall, "nft"]}},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            yield admin
    finally:
        server.stop()


def test_an_openc2_deny_blocks_real_traffic_until_its_rule_is_deleted(
    lab: Lab,  # noqa: F811
    edge: httpx.Client,
) -> None:
    assert lab.reachable(lab.fw_v4, PORTS[0])
    denied = send(
        edge,
        {"action": "deny", "target": {"ipv4_net": lab.client_v4},
         "args": {"slpf": {"direction": "ingress", "drop_process": "none"}},
         "actuator": {"slpf": {"asset_id": "edge-fw"}}},
    )  # fmt: skip
    assert denied.status_code == 200, denied.text
    body = denied.json()
    assert body["status"] == 200, body
    rule = body["results"]["slpf"]["rule_number"]
    assert isinstance(rule, int)
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    assert not lab.reachable(lab.fw_v4, PORTS[1])
    assert f"handle {rule}" in lab.nft("-a", "list", "table", "inet", "quell")

    deleted = send(edge, {"action": "delete", "target": {"slpf:rule_number": rule}})
    assert deleted.json() == {"status": 200, "status_text": f"rule {rule} deleted"}
    assert lab.reachable(lab.fw_v4, PORTS[0])

    again = send(edge, {"action": "delete", "target": {"slpf:rule_number": rule}})
    assert again.json() == {"status": 404, "status_text": f"no rule {rule} in table inet quell"}


def test_an_openc2_deny_of_one_connection_blocks_only_that_port(
    lab: Lab,  # noqa: F811
    edge: httpx.Client,
) -> None:
    denied = send(
        edge,
        {"action": "deny",
         "target": {"ipv4_connection": {"src_addr": lab.client_v4, "dst_port": PORTS[0],
                                        "protocol": "tcp"}},
         "args": {"duration": 60_000}},
    )  # fmt: skip
    assert denied.json()["status"] == 200, denied.text
    assert not lab.reachable(lab.fw_v4, PORTS[0])
    assert lab.reachable(lab.fw_v4, PORTS[1])
    rule = denied.json()["results"]["slpf"]["rule_number"]
    assert (
        send(edge, {"action": "delete", "target": {"slpf:rule_number": rule}}).json()["status"]
        == 200
    )
    assert lab.reachable(lab.fw_v4, PORTS[0])
