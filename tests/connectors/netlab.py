"""A small network lab for firewall tests: two namespaces, a veth pair, a TCP server.

The firewall namespace (``qfw-<hex>``) runs a TCP server on two ports; the client namespace
(``qcl-<hex>``) connects to it. Whether a rule works is told by connecting from the client.
Both namespaces are deleted at the end whatever happened; nothing touches the host's own
network or ruleset. Use the ``lab`` fixture (module scope): ``from tests.connectors.netlab
import lab``.
"""

from __future__ import annotations

import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

PORTS = (8081, 8082)
CONNECT_TIMEOUT = 0.5  # seconds a dropped SYN is given before the port counts as blocked

_SERVER = """
import selectors, socket, sys
selector = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::", port))
    listener.listen(64)
    selector.register(listener, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        connection, _ = key.fileobj.accept()
        connection.close()
"""

_CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Lab:
    """The two namespaces and their addresses."""

    firewall: str
    client: str
    fw_v4: str
    client_v4: str
    fw_v6: str
    client_v6: str

    def nft(self, *args: str, stdin: str | None = None) -> str:
        """Run nft in the firewall namespace, outside the connector."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.firewall, "nft", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def reachable(self, address: str, port: int) -> bool:
        """Whether a TCP connection from the client to ``address:port`` is accepted."""
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.client,
                sys.executable,
                "-I",
                "-S",
                "-c",
                _CONNECT,
                address,
                str(port),
                str(CONNECT_TIMEOUT),
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.returncode == 0

    def wait_reachable(self, address: str, port: int, *, within: float) -> bool:
        """Poll :meth:`reachable` until it holds or ``within`` seconds have passed."""
        deadline = time.monotonic() + within
        while True:
            if self.reachable(address, port):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _start_server(firewall: str) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            firewall,
            sys.executable,
            "-I",
            "-S",
            "-c",
            _SERVER,
            *map(str, PORTS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], 10)
    if not ready or server.stdout.readline().strip() != "ready":
        server.kill()
        server.wait()
        server.stdout.close()
        pytest.fail("the TCP server in the firewall namespace did not start")
    return server


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Two namespaces joined by a veth pair, and a TCP server in the firewall one."""
    token = secrets.token_hex(4)
    subnet = secrets.randbelow(250) + 1
    lab = Lab(
        firewall=f"qfw-{token}",
        client=f"qcl-{token}",
        fw_v4=f"10.213.{subnet}.1",
        client_v4=f"10.213.{subnet}.2",
        fw_v6="fd00:213::1",
        client_v6="fd00:213::2",
    )
    made: list[str] = []
    server: subprocess.Popen[str] | None = None
    try:
        for namespace in (lab.firewall, lab.client):
            _ip("netns", "add", namespace)
            made.append(namespace)
        # Made inside the firewall namespace with the peer put straight into the client's:
        # no interface ever appears in the host's own namespace.
        _ip("-n", lab.firewall, "link", "add", "qfw0", "type", "veth", "peer", "name", "qcl0")
        _ip("-n", lab.firewall, "link", "set", "qcl0", "netns", lab.client)
        for namespace, link, v4, v6 in (
            (lab.firewall, "qfw0", lab.fw_v4, lab.fw_v6),
            (lab.client, "qcl0", lab.client_v4, lab.client_v6),
        ):
            _ip("-n", namespace, "addr", "add", f"{v4}/24", "dev", link)
            _ip("-n", namespace, "-6", "addr", "add", f"{v6}/64", "dev", link, "nodad")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "link", "set", link, "up")
        server = _start_server(lab.firewall)
        yield lab
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        for namespace in made:
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=10
            )
