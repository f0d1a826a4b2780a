"""Where an action call goes, and whether that is inside the organization (TLP:RED data)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from quell.engine.markings import destination, inside, max_tlp


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.1.2.3", True), ("172.16.0.9", True), ("192.168.7.1", True), ("127.0.0.1", True),
        ("169.254.1.1", True), ("fd00::1", True), ("::1", True), ("localhost", True),
        ("intel.corp.example", True), ("corp.example", True),
        ("203.0.113.10", False),  # documentation range: Python calls it private, it is not ours
        ("8.8.8.8", False), ("corp.example.evil.net", False), ("notcorp.example", False),
        ("", False), (None, False),
    ],
)  # fmt: skip
def test_inside_the_organization(host: str | None, expected: bool) -> None:
    assert inside(host, ["corp.example"]) is expected


def test_a_call_goes_where_its_connector_says_and_unknown_ones_cannot_be_vouched_for() -> None:
    url = SimpleNamespace(url="https://10.0.0.5:8443/api?q=1")
    assert destination("http", url, None) == "10.0.0.5"
    config = SimpleNamespace(url="https://fw.corp.example/openc2", host=None)
    assert destination("openc2", None, config) == "fw.corp.example"
    assert destination("ssh", None, SimpleNamespace(host="192.168.0.10")) == "192.168.0.10"
    assert destination("runner", None, SimpleNamespace(location="local")) == "localhost"
    assert destination("runner", None, SimpleNamespace(location="ssh", host="bastion")) == "bastion"
    assert destination("core", None, None) == "localhost"
    # A mail relay inside still delivers outside: no single host says where mail goes.
    assert (
        destination("mail", SimpleNamespace(to=["x@evil.net"]), SimpleNamespace(host="10.0.0.2"))
        is None
    )
    assert destination("slack", None, SimpleNamespace(url="https://hooks.slack.com/x")) is None


def test_the_stricter_marking_wins() -> None:
    assert max_tlp("TLP:GREEN", "TLP:RED") == "TLP:RED"
    assert max_tlp(None, "TLP:AMBER+STRICT") == "TLP:AMBER+STRICT"
    assert max_tlp("TLP:AMBER", None) == "TLP:AMBER"
    assert max_tlp(None, None) is None
