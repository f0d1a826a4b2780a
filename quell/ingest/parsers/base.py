"""What every parser is: a function of one record to an Alert, a NotAnAlert, or a ParseError.

A *record* is what one input unit decodes to: a JSON value (usually a dict) for the JSON
formats, a ``str`` line for CEF, LEEF and syslog payloads. A parser never raises anything but
:class:`ParseError`: the pipeline dead-letters the record with ``ParseError.reason`` (which
names the field), so a parser must turn every surprise (a wrong type, a missing field, a bad
timestamp) into one. Records that are well-formed but are not alerts (a Suricata ``dns`` event)
come back as :class:`NotAnAlert`; the pipeline counts them as suppressed by the format's
built-in filter, visibly, never silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from quell.codec import json_type
from quell.ingest.model import Alert


class ParseError(Exception):
    """The record cannot become an alert. ``reason`` is one sentence naming the field."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True, slots=True)
class NotAnAlert:
    """A well-formed record that is not an alert, and why (``"event_type 'dns'"``)."""

    reason: str


ParseResult = Alert | NotAnAlert


class RecordKind(StrEnum):
    """What the pipeline hands a parser for one record."""

    JSON = "json"  # the decoded JSON value (orjson.loads of the record's bytes)
    TEXT = "text"  # the record's bytes decoded as UTF-8 (strictly: bad bytes are dead-lettered)
    BYTES = "bytes"  # the record's bytes as they came (an RFC 5322 message)


class Parser(ABC):
    """Turns one record of its format into a normalized alert.

    Parsers are built once per source, as ``ParserClass(options)`` where ``options`` is the
    source's parser configuration (a mapping, possibly empty). A subclass that takes options
    validates them in ``__init__`` and refuses bad ones with ParseError naming the option.
    """

    format: ClassVar[str]
    record_kind: ClassVar[RecordKind]

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = dict(options or {})

    @abstractmethod
    def parse(self, record: Any) -> ParseResult:
        """The alert in ``record``; raises only ParseError."""


_MISSING = object()


def dig(record: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """``record["a"]["b"]["c"]`` for ``"a.b.c"``, or ``default`` when any step is missing.

    A key that itself contains dots (ECS flattened ``"source.ip"``) is tried first.
    """
    if path in record:
        return record[path]
    current: Any = record
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return default
        current = current.get(part, _MISSING)
        if current is _MISSING:
            return default
    return current


def require_mapping(record: Any, what: str) -> Mapping[str, Any]:
    """``record`` if it is a JSON object, else ParseError naming what it is (json_type)."""
    if not isinstance(record, Mapping):
        raise ParseError(f"{what} record must be a JSON object, not {json_type(record)}")
    return record


def require_str(record: Mapping[str, Any], path: str) -> str:
    """A non-empty string at ``path``, else ParseError naming the field."""
    value = dig(record, path)
    if value is None:
        raise ParseError(f"missing field {path!r}", field=path)
    if not isinstance(value, str) or not value.strip():
        raise ParseError(
            f"field {path!r} must be a non-empty string, not {type(value).__name__}", field=path
        )
    return value


def optional_str(record: Mapping[str, Any], path: str) -> str | None:
    """A string at ``path`` (numbers are turned into text), None when absent or empty."""
    value = dig(record, path)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ParseError(f"field {path!r} must be a string, not bool", field=path)
    if isinstance(value, str | int | float):
        return str(value)
    raise ParseError(f"field {path!r} must be a string, not {type(value).__name__}", field=path)


def optional_int(record: Mapping[str, Any], path: str) -> int | None:
    """An integer at ``path`` (digits in a string are accepted), None when absent."""
    value = dig(record, path)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ParseError(f"field {path!r} must be an integer, not bool", field=path)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ParseError(f"field {path!r} must be an integer, not {value!r:.40}", field=path)


def parse_time(value: Any, path: str) -> datetime:
    """A timezone-aware UTC datetime from ISO 8601 text or epoch seconds / milliseconds.

    Naive ISO times are taken as UTC. Epoch values above 10^11 are read as milliseconds.
    """
    if isinstance(value, bool) or value is None:
        raise ParseError(f"missing or invalid time in field {path!r}", field=path)
    try:
        if isinstance(value, int | float):
            seconds = value / 1000 if value > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            text = value.strip()
            if text.replace(".", "", 1).isdigit():
                return parse_time(float(text), path)
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise ParseError(f"field {path!r} is not a timestamp: {value!r:.60}", field=path)
