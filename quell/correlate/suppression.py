"""Suppression rules: drop an alert, or keep it closed as benign, when it matches.

A rule's ``match`` maps alert field names (see :mod:`quell.correlate.fields`) to conditions;
every listed field must match (AND), a list of conditions means any of them (OR)::

    {"rule_name": "ET SCAN *", "src.ip": ["10.0.0.0/8", "192.168.0.0/16"], "severity": {"lte": 2}}

A string is a case-insensitive glob (``*``, ``?``), or a CIDR network for the IP fields; a
number matches by equality; ``{"gte": n, "lte": n, "gt": n, "lt": n}`` compares numbers. For a
list field (``techniques``) it is enough that one element matches. No code and no regular
expressions are evaluated, so a rule cannot run away.

Every suppression is counted on its rule (``hits``, ``last_hit_at``) and in the source's
``suppressed`` counter: nothing is dropped silently. Records a parser recognizes as "not an
alert" (a Suricata ``dns`` event) are counted on a built-in rule per format.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.correlate.fields import getter
from quell.errors import Conflict, InvalidInput, NotFound
from quell.ids import new_id
from quell.ingest.model import Alert
from quell.store.database import Database
from quell.store.schema import suppression_rules

Matcher = Callable[[Alert], bool]

_IP_FIELDS = frozenset({"src.ip", "dst.ip", "host.ip"})
_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "gte": lambda a, b: a >= b,
    "gt": lambda a, b: a > b,
    "lte": lambda a, b: a <= b,
    "lt": lambda a, b: a < b,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,127}$")
MAX_CONDITIONS = 256


class SuppressionAction(StrEnum):
    """What a matching rule does."""

    DROP = "drop"  # not stored; counted
    CLOSE = "close"  # stored as a suppressed (benign) alert, never grouped into an incident


@dataclass(frozen=True)
class SuppressionRule:
    """A rule as stored."""

    id: str
    name: str
    match: dict[str, Any]
    action: SuppressionAction
    builtin: bool
    enabled: bool
    hits: int
    last_hit_at: datetime | None
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to test alerts."""

    id: str
    name: str
    action: SuppressionAction
    matches: Matcher


def _condition(field: str, condition: Any) -> Callable[[Any], bool]:
    if isinstance(condition, bool) or condition is None:
        raise InvalidInput(f"match.{field}: conditions are strings, numbers or comparisons")
    if isinstance(condition, int | float):
        return lambda value: value == condition
    if isinstance(condition, Mapping):
        unknown = set(condition) - set(_COMPARISONS)
        if unknown or not condition:
            raise InvalidInput(
                f"match.{field}: comparisons are {', '.join(_COMPARISONS)}",
                field=f"match.{field}",
            )
        tests = []
        for op, bound in condition.items():
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise InvalidInput(f"match.{field}.{op} must be a number", field=f"match.{field}")
            tests.append((_COMPARISONS[op], float(bound)))
        return lambda value: (
            isinstance(value, int | float)
            and all(compare(float(value), bound) for compare, bound in tests)
        )
    if isinstance(condition, str):
        if field in _IP_FIELDS and ("/" in condition or condition.replace(".", "").isdigit()):
            try:
                network = ipaddress.ip_network(condition, strict=False)
            except ValueError:
                raise InvalidInput(
                    f"match.{field}: {condition!r} is not an IP address or network",
                    field=f"match.{field}",
                ) from None
            return lambda value: _in_network(value, network)
        pattern = re.compile(fnmatch.translate(condition.lower()))
        return lambda value: value is not None and pattern.match(str(value).lower()) is not None
    raise InvalidInput(
        f"match.{field}: {type(condition).__name__} is not a condition", field=f"match.{field}"
    )


def _in_network(value: Any, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not value:
        return False
    try:
        return ipaddress.ip_address(str(value)) in network
    except ValueError:
        return False


def compile_match(match: Mapping[str, Any]) -> Matcher:
    """A matcher for ``match``; InvalidInput names the first bad field or condition."""
    if not isinstance(match, Mapping) or not match:
        raise InvalidInput("match must be an object of field: condition", field="match")
    checks = []
    total = 0
    for field, spec in match.items():
        get = getter(str(field), field=f"match.{field}")
        options = spec if isinstance(spec, list) else [spec]
        if not options:
            raise InvalidInput(f"match.{field}: empty list", field=f"match.{field}")
        total += len(options)
        tests = [_condition(str(field), option) for option in options]
        checks.append((get, tests))
    if total > MAX_CONDITIONS:
        raise InvalidInput(f"match has more than {MAX_CONDITIONS} conditions", field="match")

    def matches(alert: Alert) -> bool:
        for get, tests in checks:
            value = get(alert)
            values = value if isinstance(value, list) else [value]
            if not any(test(item) for item in values for test in tests):
                return False
        return True

    return matches


def builtin_rule_name(format_name: str) -> str:
    """The built-in rule that counts a format's non-alert records."""
    return f"builtin:{format_name}:not-an-alert"


_COLUMNS = tuple(suppression_rules.c)


def _rule(row: Any) -> SuppressionRule:
    values = row._asdict()
    values["action"] = SuppressionAction(values["action"])
    return SuppressionRule(**values)


class SuppressionService:
    """Add, list and remove rules; load the active ones; count hits."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def add(
        self,
        name: str,
        match: Mapping[str, Any],
        action: str = SuppressionAction.DROP,
        *,
        expires_in: timedelta | None = None,
    ) -> SuppressionRule:
        """Create a rule; its match is validated first."""
        if not _NAME.match(name) or name.startswith("builtin:"):
            raise InvalidInput(
                "rule name must be 1-128 letters, digits, spaces or . _ : - "
                "and must not start with 'builtin:'",
                field="name",
                value=name,
            )
        try:
            parsed_action = SuppressionAction(action)
        except ValueError:
            raise InvalidInput(
                f"action must be one of: {', '.join(SuppressionAction)}", field="action"
            ) from None
        compile_match(match)
        now = self.clock.now()
        values = {
            "id": new_id("sup"),
            "name": name,
            "match": dict(match),
            "action": parsed_action.value,
            "builtin": False,
            "enabled": True,
            "hits": 0,
            "last_hit_at": None,
            "created_at": now,
            "expires_at": now + expires_in if expires_in else None,
        }
        try:
            with self.db.write() as conn:
                conn.execute(insert(suppression_rules).values(**values))
        except IntegrityError:
            raise Conflict(f"a suppression rule named {name!r} exists", field="name") from None
        return self.get(name)

    def get(self, name: str) -> SuppressionRule:
        """The rule called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(select(*_COLUMNS).where(suppression_rules.c.name == name)).first()
        if row is None:
            raise NotFound(f"no suppression rule named {name!r}", field="name")
        return _rule(row)

    def list_all(self) -> list[SuppressionRule]:
        """Every rule, built-in ones included, by name."""
        with self.db.read() as conn:
            rows = conn.execute(select(*_COLUMNS).order_by(suppression_rules.c.name))
            return [_rule(row) for row in rows]

    def remove(self, name: str) -> None:
        """Delete a user rule (built-in ones only count and cannot be removed)."""
        with self.db.write() as conn:
            deleted = conn.execute(
                delete(suppression_rules).where(
                    suppression_rules.c.name == name, suppression_rules.c.builtin.is_(False)
                )
            ).rowcount
        if not deleted:
            raise NotFound(f"no user suppression rule named {name!r}", field="name")

    def active(self, conn: Connection, now: datetime) -> list[CompiledRule]:
        """The enabled, unexpired user rules, compiled; read inside the caller's transaction."""
        rows = conn.execute(
            select(
                suppression_rules.c.id,
                suppression_rules.c.name,
                suppression_rules.c.match,
                suppression_rules.c.action,
                suppression_rules.c.expires_at,
            ).where(suppression_rules.c.enabled.is_(True), suppression_rules.c.builtin.is_(False))
        )
        return [
            CompiledRule(row.id, row.name, SuppressionAction(row.action), compile_match(row.match))
            for row in rows
            if row.expires_at is None or row.expires_at > now
        ]

    @staticmethod
    def count_hits(conn: Connection, hits: Mapping[str, int], now: datetime) -> None:
        """Add ``hits`` (rule id: count) to the rules, in the caller's transaction."""
        if not hits:
            return
        conn.execute(
            update(suppression_rules)
            .where(suppression_rules.c.id == bindparam("rule_id"))
            .values(hits=suppression_rules.c.hits + bindparam("n"), last_hit_at=now),
            [{"rule_id": rule_id, "n": n} for rule_id, n in hits.items()],
        )

    @staticmethod
    def builtin_ids(conn: Connection, format_names: set[str], now: datetime) -> dict[str, str]:
        """Ids of the built-in "not an alert" rules of these formats, created when missing."""
        names = {builtin_rule_name(name): name for name in format_names}
        found = {
            row.name: row.id
            for row in conn.execute(
                select(suppression_rules.c.id, suppression_rules.c.name).where(
                    suppression_rules.c.name.in_(names)
                )
            )
        }
        for name, format_name in names.items():
            if name in found:
                continue
            rule_id = new_id("sup")
            conn.execute(
                insert(suppression_rules).values(
                    id=rule_id,
                    name=name,
                    match={"format": format_name},
                    action=SuppressionAction.DROP.value,
                    builtin=True,
                    enabled=True,
                    hits=0,
                    last_hit_at=None,
                    created_at=now,
                    expires_at=None,
                )
            )
            found[name] = rule_id
        return {names[name]: rule_id for name, rule_id in found.items()}
