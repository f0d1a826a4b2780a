"""The HTTP client actions get: pooled, with timeouts, and guarded against SSRF.

An action's URL often comes from alert data, which an attacker can shape. Before every request
(redirect hops included) the host is resolved and each address checked: loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved and unspecified addresses
are refused unless the configuration allows them (``QUELL_OUTBOUND_ALLOW``: networks such as
``10.20.0.0/16`` or host names such as ``edr.corp.example``). A refused request raises
:class:`~quell.sdk.errors.PermanentError` naming the host, never the URL's query (which may hold a
key). Redirects are not followed unless a request asks for them.

The check resolves the name and httpx resolves it again to connect; a DNS answer that changes
in between (rebinding) is not caught here. Pinning the checked address is future work.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from quell.sdk.errors import PermanentError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@dataclass(frozen=True)
class OutboundPolicy:
    """Which otherwise-refused destinations are allowed."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OutboundPolicy:
        """From entries that are CIDR networks, addresses or host names."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                hosts.add(text.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether a request to ``host`` at ``address`` may go out."""
        if host.lower().rstrip(".") in self.hosts:
            return True
        if any(address.version == net.version and address in net for net in self.networks):
            return True
        return address.is_global and not address.is_multicast


async def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise PermanentError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    found = []
    for info in infos:
        address = str(info[4][0])
        found.append(ipaddress.ip_address(address.split("%", 1)[0]))
    return found


def guard(policy: OutboundPolicy) -> httpx.AsyncClient:
    """A pooled async client whose every request passes the outbound policy."""

    async def check(request: httpx.Request) -> None:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if request.url.scheme not in ("http", "https"):
            raise PermanentError(f"scheme {request.url.scheme!r} is not allowed")
        for address in await _addresses(host, port):
            if not policy.allows(host, address):
                raise PermanentError(
                    f"outbound request to {host} ({address}) is blocked: not a public address; "
                    "allow it with QUELL_OUTBOUND_ALLOW",
                    code="outbound_blocked",
                )

    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        follow_redirects=False,
        event_hooks={"request": [check]},
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


__all__ = ["OutboundPolicy", "guard"]
