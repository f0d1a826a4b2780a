"""The HTTP client actions get: pooled aiohttp, with timeouts, and guarded against SSRF.

Connections that cannot be made (refused, reset, unreachable) are tried again, up to three
times with a short backoff: nothing has been sent yet, so a write cannot land twice.

An action's URL often comes from alert data, which an attacker can shape. Every destination is
checked before a connection is made: loopback, private, link-local (cloud metadata at
169.254.169.254), multicast, reserved and unspecified addresses are refused unless the
configuration allows them (``QUELL_OUTBOUND_ALLOW``: networks such as ``10.20.0.0/16`` or host
names such as ``edr.corp.example``). The check sits in the client's resolver, so the addresses
checked are the very addresses connected to (a DNS answer cannot change in between), and in
its connector, which sees every request (redirect hops included) before it gets a connection,
so a literal address is checked too.
A refused request raises :class:`OutboundBlocked` naming the host, never the URL's query.

aiohttp rather than httpx on this path: a containment call is on every run's critical path, and
here aiohttp spends a tenth of the CPU per request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import ClientRequest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from aiohttp.resolver import DefaultResolver
from aiohttp.tracing import Trace
from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
CONNECT_ATTEMPTS = 3  # tries to open a connection (connect errors only: nothing sent yet)
CONNECT_BACKOFF = 0.1  # seconds before the second try, doubled before each next one


class OutboundBlocked(aiohttp.ClientOSError):
    """A request to a destination the outbound policy refuses.

    An ``OSError`` and an aiohttp ``ClientError``: aiohttp lets it through as it is when the
    connector refuses a URL, and wraps it (as the ``__cause__``) when the resolver refuses
    what a name resolved to.
    """


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

    def allows(self, host: str, address: Address) -> bool:
        """Whether a request to ``host`` at ``address`` may go out."""
        if host.lower().rstrip(".") in self.hosts:
            return True
        if any(address.version == net.version and address in net for net in self.networks):
            return True
        return address.is_global and not address.is_multicast

    def check(self, host: str, address: Address) -> None:
        """Raise OutboundBlocked unless allowed."""
        if not self.allows(host, address):
            raise OutboundBlocked(
                f"outbound request to {host} ({address}) is blocked: not a public address; "
                "allow it with QUELL_OUTBOUND_ALLOW"
            )


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the whole answer if any address is not allowed."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Addresses of ``host``, each one checked."""
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            self.policy.check(host, ipaddress.ip_address(answer["host"].split("%", 1)[0]))
        return answers

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def _check_url(policy: OutboundPolicy, url: URL) -> None:
    if url.scheme not in ("http", "https"):
        raise OutboundBlocked(f"scheme {url.scheme!r} is not allowed")
    host = url.host or ""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    policy.check(host, address)


class GuardedConnector(aiohttp.TCPConnector):
    """A pooled connector that checks each request's URL before it gets a connection.

    Every request goes through :meth:`connect`, redirect hops included, whether a pooled
    connection serves it or a new one is opened, so a literal address (which aiohttp never
    resolves) is checked as surely as a name (which the resolver checks). Allowed scheme and
    host pairs are remembered, so a peer called again costs a dictionary lookup.
    """

    _REMEMBERED = 4096

    def __init__(self, policy: OutboundPolicy, **options: Any) -> None:
        super().__init__(resolver=GuardedResolver(policy), **options)
        self.policy = policy
        self._allowed: set[tuple[str, str]] = set()
        self.connect_retries = 0  # connections tried again (for tests and diagnostics)

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        """Check the destination, then connect as usual."""
        url = req.url
        seen = (url.scheme, url.host or "")
        if seen not in self._allowed:
            _check_url(self.policy, url)
            if len(self._allowed) >= self._REMEMBERED:
                self._allowed.clear()
            self._allowed.add(seen)
        # A connection that could not be made is tried again (nothing was sent yet, so a
        # write cannot land twice): a peer restarting or a dropped SYN costs a retry, not a
        # failed step. A refusal by the outbound policy is never retried.
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                return await super().connect(req, traces, timeout)
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.__cause__, OutboundBlocked) or attempt + 1 == CONNECT_ATTEMPTS:
                    raise
                self.connect_retries += 1
                await asyncio.sleep(CONNECT_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def close(self, *, abort_ssl: bool = False) -> None:
        """Close the pooled connections, and let their transports finish closing (one more
        turn of the loop), so a loop that ends next leaves no socket behind."""
        await super().close(abort_ssl=abort_ssl)
        await asyncio.sleep(0)


def guard(policy: OutboundPolicy, *, keep_cookies: bool = True) -> aiohttp.ClientSession:
    """A pooled session whose every destination passes the outbound policy (in a loop).

    ``keep_cookies=False`` for a session unrelated calls share (every run's actions): it keeps
    no cookie, so what a server set in one run's call is never sent with another run's."""
    return aiohttp.ClientSession(
        connector=GuardedConnector(policy, limit=200),
        timeout=DEFAULT_TIMEOUT,
        raise_for_status=False,
        cookie_jar=None if keep_cookies else aiohttp.DummyCookieJar(),
    )


__all__ = ["GuardedConnector", "GuardedResolver", "OutboundBlocked", "OutboundPolicy", "guard"]
