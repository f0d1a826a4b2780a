"""TLP markings on a playbook's data: what may leave the organization.

A playbook marked TLP:RED or TLP:AMBER+STRICT (CACAO ``markings``) holds data for the
organization only, and so does a sub-playbook it calls (the child's run keeps the parent's
marking). Before an action call the engine asks where the call goes and refuses it when that is
outside: neither a private, loopback or link-local address, nor ``localhost``, nor under one of
the ``organization_domains``.

Where a call goes is known for the connectors a CACAO command maps to and a few local ones
(:data:`DESTINATIONS`): the URL an ``http`` call is given, the host or URL an ``ssh``,
``openc2``, ``runner`` or ``ldap`` instance is configured with, this host for ``core`` and
``nftables``. Any other connector (mail, chat, ticketing, EDR and intel services) is refused
under those markings: it sends data to places no single host names (a mail relay inside
delivers outside), so the engine cannot vouch for it (fail closed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import select

from quell.store.database import Database
from quell.store.schema import playbook_versions, runs

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


def _from_config(config: Any) -> str | None:
    for place in _CONFIG_PLACES:
        value = getattr(config, place, None)
        if value:
            return _host(value)
    return None


def _runner(params: Any, config: Any) -> str | None:
    # A local script runs here; what it reaches beyond is the admin's, who enabled it.
    return "localhost" if getattr(config, "location", None) == "local" else _from_config(config)


DESTINATIONS: dict[str, Any] = {
    "http": lambda params, config: _host(getattr(params, "url", "") or ""),
    "openc2": lambda params, config: _from_config(config),
    "ssh": lambda params, config: _from_config(config),
    "ldap": lambda params, config: _from_config(config),
    "runner": _runner,
    "core": lambda params, config: "localhost",
    "nftables": lambda params, config: "localhost",
}


def destination(connector: str, params: Any, config: Any) -> str | None:
    """The host an action call of ``connector`` reaches; None when it cannot be told."""
    find = DESTINATIONS.get(connector)
    return find(params, config) if find is not None else None


LEVELS = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")


def max_tlp(first: str | None, second: str | None) -> str | None:
    """The stricter of two markings (None: unmarked)."""
    known = [level for level in (first, second) if level in LEVELS]
    return max(known, key=LEVELS.index) if known else None


def inherited_tlp(db: Database, run_id: str | None, depth: int = 32) -> str | None:
    """The strictest marking of a run and the runs that called it (up to ``depth`` levels)."""
    found: str | None = None
    with db.read() as conn:
        for _ in range(depth):
            if run_id is None:
                break
            row = conn.execute(
                select(runs.c.parent_run_id, playbook_versions.c.ir)
                .join(playbook_versions, playbook_versions.c.id == runs.c.playbook_version_id)
                .where(runs.c.id == run_id)
            ).first()
            if row is None:
                break
            level = orjson.loads(row.ir).get("tlp")
            found = max_tlp(found, level if isinstance(level, str) else None)
            run_id = row.parent_run_id
    return found


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


__all__ = ["DESTINATIONS", "RESTRICTED", "destination", "inherited_tlp", "inside", "max_tlp"]
