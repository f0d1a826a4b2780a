"""Typed reads of untrusted JSON values, for the JSON-format parsers.

Every function here takes a value decoded from JSON (dict, list, str, int, float, bool, None)
plus the name of the field it came from, and returns a typed value or None. The rule they share:

- a value of the wrong JSON *type* (an object where a string belongs, a boolean port) raises
  :class:`~quell.ingest.parsers.base.ParseError` naming the field: the record is dead-lettered
  and someone can see why;
- a value of the right type whose *content* is unusable (``"xxx.xxx.x.x"`` in an IP field, a
  port of 70000, ``"unknown"`` as a hash) is treated as absent: vendors fill such fields with
  placeholders, and the alert is still worth having. The raw record keeps the original.

Lookups go through :func:`get`, which reads a dotted path from flat keys (``"source.ip"``),
nested objects, or a mix of both, as ECS and Kibana documents have them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from quell.ingest.model import Endpoint, Severity
from quell.ingest.parsers.base import ParseError

_MISSING: Any = object()

# str(int) refuses more than 4300 digits; no real field is longer than a few dozen.
_MAX_INT_TEXT = 40

_TECHNIQUE = re.compile(r"(?:attack\.)?(t\d{4}(?:\.\d{3})?)", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-fA-F]+")
_SPACE = re.compile(r"\s")
_HASH_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256"}

SEVERITY_LABELS: dict[str, Severity] = {
    "unknown": Severity.UNKNOWN,
    "informational": Severity.INFORMATIONAL,
    "info": Severity.INFORMATIONAL,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "moderate": Severity.MEDIUM,
    "high": Severity.HIGH,
    "critical": Severity.CRITICAL,
    "fatal": Severity.FATAL,
    "other": Severity.OTHER,
}


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages (``object``, ``array``, …)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def wrong_type(field: str, expected: str, value: Any) -> ParseError:
    """The ParseError for ``field`` holding a ``value`` that is not ``expected``."""
    return ParseError(
        f"field {field!r} must be {expected}, not {json_kind(value)}",
        field=field,
    )


def get(node: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``node``, or None.

    A flat key (``"kibana.alert.rule.name"``) wins over nesting; otherwise the first segment
    is looked up and the rest is read from there the same way, so ``{"event": {"kind": …}}``,
    ``{"event.kind": …}`` and ``{"kibana": {"alert.uuid": …}}`` all answer.
    """
    while isinstance(node, dict):
        value = node.get(path, _MISSING)
        if value is not _MISSING:
            return value
        head, dot, path = path.partition(".")
        if not dot:
            return None
        node = node.get(head)
    return None


def mapping(value: Any, field: str) -> dict[str, Any] | None:
    """``value`` if it is a JSON object, None when absent, else ParseError."""
    if value is None or isinstance(value, dict):
        return value
    raise wrong_type(field, "an object", value)


def items(value: Any, field: str) -> list[Any]:
    """``value`` as a list: an array as is, a single value as one item, nothing as empty."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def text(value: Any, field: str) -> str | None:
    """A non-empty string (surrounding blanks removed); numbers become text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, bool):
        raise wrong_type(field, "a string", value)
    if isinstance(value, int):
        if abs(value) >= 10**_MAX_INT_TEXT:
            raise ParseError(f"field {field!r} holds a number too large to be text", field=field)
        return str(value)
    if isinstance(value, float):
        # JSON writers that know only doubles send ids as 2024833.0
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    raise wrong_type(field, "a string", value)


def first_text(value: Any, field: str) -> str | None:
    """Like :func:`text`, but an array gives its first non-empty element (multi-value fields)."""
    if isinstance(value, list):
        for element in value:
            found = text(element, field)
            if found is not None:
                return found
        return None
    return text(value, field)


def text_list(value: Any, field: str) -> list[str]:
    """A string or an array of strings as a list of non-empty strings."""
    result = []
    for element in items(value, field):
        found = text(element, field)
        if found is not None:
            result.append(found)
    return result


def integer(value: Any, field: str) -> int | None:
    """An integer from a number or a string of digits; None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise wrong_type(field, "an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ParseError(f"field {field!r} must be an integer, not {value!r}", field=field)
    if isinstance(value, str):
        digits = value.strip()
        if not digits:
            return None
        unsigned = digits[1:] if digits[0] in "+-" else digits
        if unsigned.isascii() and unsigned.isdigit() and len(unsigned) <= _MAX_INT_TEXT:
            return int(digits)
        raise ParseError(f"field {field!r} must be an integer, not {value!r:.40}", field=field)
    raise wrong_type(field, "an integer", value)


def first_integer(value: Any, field: str) -> int | None:
    """Like :func:`integer`, but an array gives its first element."""
    if isinstance(value, list):
        value = value[0] if value else None
    return integer(value, field)


def port(value: Any, field: str) -> int | None:
    """A TCP/UDP port; placeholders (``"unknown"``) and numbers outside 0-65535 are absent."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 5):
            return None
        number = int(digits)
    else:
        found = integer(value, field) if not isinstance(value, float) else _whole(value)
        if found is None:
            return None
        number = found
    return number if 0 <= number <= 65535 else None


def _whole(value: float) -> int | None:
    return int(value) if value.is_integer() else None


@lru_cache(maxsize=8192)
def _normal_ip(candidate: str) -> str | None:
    # ipaddress costs a few microseconds a call; alert streams repeat the same addresses.
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def ip(value: Any, field: str) -> str | None:
    """An IP address in canonical form (``fe80::1``); text that is not an address is absent."""
    if isinstance(value, list):
        for element in value:
            found = ip(element, field)
            if found is not None:
                return found
        return None
    if value is None:
        return None
    if isinstance(value, str):
        candidate = value.strip()
        if not candidate or len(candidate) > 45:
            return None
        if candidate[0] == "[" and candidate[-1] == "]":
            candidate = candidate[1:-1]
        return _normal_ip(candidate)
    if isinstance(value, bool | dict):
        raise wrong_type(field, "an IP address string", value)
    return None


def hostname(value: Any, field: str) -> str | None:
    """A host or domain name: text that is not an IP address, without a trailing dot."""
    found = first_text(value, field)
    if found is None or ip(found, field) is not None:
        return None
    found = found.rstrip(".")
    if not found or len(found) > 253 or _SPACE.search(found):
        return None
    return found


def domain(value: Any, field: str) -> str | None:
    """A DNS name (lowercase, at least one dot), or None."""
    found = hostname(value, field)
    if found is None or "." not in found:
        return None
    return found.lower()


def file_hash(value: Any, field: str, length: int) -> str | None:
    """A lowercase hex digest of ``length`` characters; anything else is absent."""
    found = first_text(value, field)
    if found is None or len(found) != length or not _HEX.fullmatch(found):
        return None
    return found.lower()


def hash_kind(value: str) -> str | None:
    """``md5``, ``sha1`` or ``sha256`` for a hex digest of that length, else None."""
    kind = _HASH_LENGTHS.get(len(value))
    if kind is None or not _HEX.fullmatch(value):
        return None
    return kind


def techniques(values: Iterable[Any], field: str, into: list[str]) -> None:
    """Append the ATT&CK technique ids among ``values`` (``T1110``, ``attack.t1558``) to ``into``.

    Text that is not a technique id is skipped; duplicates are not appended twice.
    """
    for value in values:
        found = text(value, field)
        if found is None:
            continue
        match = _TECHNIQUE.fullmatch(found)
        if match is None:
            continue
        technique = match.group(1).upper()
        if technique not in into:
            into.append(technique)


def severity_label(value: Any, field: str) -> Severity | None:
    """The Severity for a label such as ``"High"`` or ``"informational"``; None if unknown."""
    found = first_text(value, field)
    if found is None:
        return None
    return SEVERITY_LABELS.get(found.lower())


def score_severity(score: int | float) -> Severity:
    """A 0-100 risk score in Elastic's default bands: 21 low, 47 medium, 73 high, 99 critical."""
    if score <= 21:
        return Severity.LOW
    if score <= 47:
        return Severity.MEDIUM
    if score <= 73:
        return Severity.HIGH
    return Severity.CRITICAL


def number(value: Any, field: str) -> float | None:
    """A finite number from a number or numeric text; None when absent."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool):
        raise wrong_type(field, "a number", value)
    if isinstance(value, int | float):
        result = float(value) if abs(value) < 1e300 else None
    elif isinstance(value, str):
        try:
            result = float(value) if len(value) <= _MAX_INT_TEXT else None
        except ValueError:
            raise ParseError(
                f"field {field!r} must be a number, not {value!r:.40}", field=field
            ) from None
    else:
        raise wrong_type(field, "a number", value)
    if result is None or result != result or result in (float("inf"), float("-inf")):
        raise ParseError(f"field {field!r} is not a usable number", field=field)
    return result


def endpoint(
    ip_address: str | None, port_number: int | None = None, host: str | None = None
) -> Endpoint | None:
    """An Endpoint, or None when there is nothing to put in it."""
    if ip_address is None and port_number is None and host is None:
        return None
    return Endpoint(ip=ip_address, port=port_number, hostname=host)


def basename(path: str) -> str:
    """The last component of a POSIX or Windows path."""
    cut = max(path.rfind("/"), path.rfind("\\"))
    return path[cut + 1 :] if cut >= 0 else path


def severity_option(value: Any, option: str) -> Severity:
    """A severity written in parser options: an OCSF ``severity_id`` or its label."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Severity(value)
        except ValueError:
            pass
    elif isinstance(value, str) and value.strip().lower() in SEVERITY_LABELS:
        return SEVERITY_LABELS[value.strip().lower()]
    raise ParseError(
        f"option {option!r} must be an OCSF severity_id (0-6, 99) or one of "
        f"{', '.join(SEVERITY_LABELS)}, not {value!r:.40}",
        field=option,
    )
