"""Alert fields by name, for fingerprint rules and suppression rules.

Users name fields in configuration (``fingerprint: [rule, src.ip, user]``, a suppression rule
matching ``rule_name``); each name maps to a small getter so that evaluating a rule costs a
few attribute reads, not a conversion of the whole alert to a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quell.errors import InvalidInput
from quell.ingest.model import Alert

Getter = Callable[[Alert], Any]


def _host(alert: Alert) -> str | None:
    if alert.host is None:
        return None
    return (alert.host.hostname or "").lower() or alert.host.ip


def _file_hash(alert: Alert) -> str | None:
    if alert.file is None:
        return None
    return alert.file.sha256 or alert.file.sha1 or alert.file.md5


def _rule(alert: Alert) -> str:
    return alert.rule_uid or alert.rule_name or alert.title


FIELDS: dict[str, Getter] = {
    "title": lambda a: a.title,
    "rule": _rule,
    "rule_uid": lambda a: a.rule_uid,
    "rule_name": lambda a: a.rule_name,
    "category": lambda a: a.category,
    "severity": lambda a: int(a.severity),
    "product": lambda a: a.product,
    "vendor": lambda a: a.vendor,
    "source": lambda a: a.source,
    "format": lambda a: a.format,
    "src.ip": lambda a: a.src.ip if a.src else None,
    "src.port": lambda a: a.src.port if a.src else None,
    "src.hostname": lambda a: a.src.hostname if a.src else None,
    "dst.ip": lambda a: a.dst.ip if a.dst else None,
    "dst.port": lambda a: a.dst.port if a.dst else None,
    "dst.hostname": lambda a: a.dst.hostname if a.dst else None,
    "host": _host,
    "host.hostname": lambda a: a.host.hostname if a.host else None,
    "host.ip": lambda a: a.host.ip if a.host else None,
    "user": lambda a: a.user,
    "file.name": lambda a: a.file.name if a.file else None,
    "file.path": lambda a: a.file.path if a.file else None,
    "file.hash": _file_hash,
    "file.sha256": lambda a: a.file.sha256 if a.file else None,
    "file.sha1": lambda a: a.file.sha1 if a.file else None,
    "file.md5": lambda a: a.file.md5 if a.file else None,
    "url": lambda a: a.url,
    "email.sender": lambda a: a.email.sender if a.email else None,
    "email.subject": lambda a: a.email.subject if a.email else None,
    "email.message_id": lambda a: a.email.message_id if a.email else None,
    "techniques": lambda a: a.techniques,
}


def getter(name: str, *, field: str) -> Getter:
    """The getter for field ``name``; InvalidInput (naming ``field``) lists the known ones."""
    try:
        return FIELDS[name]
    except KeyError:
        raise InvalidInput(
            f"{field}: unknown alert field {name!r}; known fields: {', '.join(FIELDS)}",
            field=field,
            value=name,
        ) from None
