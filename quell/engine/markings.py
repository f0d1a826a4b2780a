"""TLP markings on a playbook's data: what may leave the organization.

A playbook marked TLP:RED or TLP:AMBER+STRICT (CACAO ``markings``) holds data for the
organization only. Before an action call the engine asks where the call goes (the URL it is
given, or the host or URL its connector instance is configured with) and refuses it when that is
outside: neither a private, loopback or link-local address, nor ``localhost``, nor under one of
the ``organization_domains``. Where a call goes cannot be told, it is refused too (fail closed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

RESTRICTED = frozenset({"TLP:RED", "TLP:AMBER+STRICT"})
# The organization's own address space: private (RFC 1918, RFC 4193), loopback, link-local.
# Not Python's ``is_private``, which also counts documentation and benchmark ranges.
_INSIDE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128")
)  # fmt: skip
_CONFIG_PLACES = ("url", "base_url", "endpoint", "host", "server", "hostname")


def _host(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if "://" in text:
        return urlsplit(text).hostname
    return text.split("/", 1)[0].rsplit("@", 1)[-1].strip("[]").split(":")[0] or None


def destination(params: Any, config: Any) -> str | None:
    """The host an action call reaches, from its inputs or its instance's configuration;
    ``localhost`` for a local runner; None when it cannot be told."""
    url = getattr(params, "url", None)
    if url is not None:
        return _host(url)
    if getattr(config, "location", None) == "local":
        return "localhost"
    for place in _CONFIG_PLACES:
        value = getattr(config, place, None)
        if value:
            return _host(value)
    return None


def inside(host: str | None, domains: Sequence[str]) -> bool:
    """Whether ``host`` is inside the organization (see the module's docs)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return any(host == d.lower().strip(".") or host.endswith("." + d.lower().strip("."))
                   for d in domains if d.strip("."))  # fmt: skip
    return any(address in network for network in _INSIDE)


__all__ = ["RESTRICTED", "destination", "inside"]
