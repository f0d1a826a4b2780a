"""Addresses and networks as the hosts behind them: an IPv4-mapped IPv6 value is its IPv4 one.

``::ffff:10.0.0.1`` reaches the host 10.0.0.1 (and a vendor API may well store it so), but
``ipaddress`` calls it a different version and never places it in ``10.0.0.0/8``. Whatever
compares addresses with networks a person wrote (filters in playbooks, protected assets) goes
through these first, as ingest does with the observables it extracts.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def host_address(address: Address) -> Address:
    """``address``, or the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_network(network: Network) -> Network:
    """``network``, or the IPv4 network it maps when it lies inside ``::ffff:0:0/96``."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


__all__ = ["Address", "Network", "host_address", "host_network"]
