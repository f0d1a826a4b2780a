"""IP addresses: validation, canonical text and the private/public split, by ``ipaddress``."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from quell.ingest.model import Observable, ObservableType

# The longest textual IPv6 address with an embedded IPv4 tail is 45 characters; allow brackets
# and some slack, but never cache (or parse) arbitrarily long junk.
_MAX_IP_CHARS = 64

IpInfo = tuple[ObservableType, str, bool]


@lru_cache(maxsize=16384)
def ip_info(value: str) -> IpInfo | None:
    """``(type, canonical text, private)`` for an address, or None when it is not one.

    Accepts surrounding whitespace, ``[v6]`` brackets and a ``%zone`` suffix (dropped: a zone
    names an interface of the host that logged it, not part of the address). An IPv4-mapped
    IPv6 address (``::ffff:10.0.0.1``) is the IPv4 host it maps, so it becomes that IPv4
    address and correlates with it. Leading zeros (``010.0.0.1``) are refused, as
    ``ipaddress`` does: they mean octal to some parsers and decimal to others.
    """
    text = value.strip()
    if len(text) > _MAX_IP_CHARS or not text:
        return None
    if text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    zone = text.find("%")
    if zone >= 0:
        text = text[:zone]
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            # Multicast and the deprecated site-local range are not hosts on the internet;
            # is_global alone calls some multicast scopes global.
            private = not address.is_global or address.is_multicast or address.is_site_local
            return ObservableType.IPV6, str(address), private
        address = mapped
    private = not address.is_global or address.is_multicast
    return ObservableType.IPV4, str(address), private


def classify_ip(value: str, role: str | None = None) -> Observable | None:
    """An IPv4/IPv6 observable in canonical form with ``private`` set, or None if not an IP.

    ``private`` is True for every non-global address: RFC 1918, loopback, link-local, CGNAT
    (100.64/10), unique-local (fc00::/7), documentation and benchmarking ranges, reserved
    space, multicast and the unspecified address. IPv6 comes out compressed and lowercase.
    """
    info = ip_info(value)
    if info is None:
        return None
    return Observable(info[0], info[1], role, info[2])
