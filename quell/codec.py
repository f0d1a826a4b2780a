"""JSON in and out, fast (orjson), with Quell's types understood and secrets redacted."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from quell.sdk.secret import REDACTED, SecretValue


def _default(value: Any) -> Any:
    if isinstance(value, SecretValue):
        return REDACTED
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any, *, indent: bool = False, sort_keys: bool = False) -> bytes:
    """Serialize to UTF-8 JSON bytes; datetimes as RFC 3339, SecretValue as the marker."""
    option = orjson.OPT_NON_STR_KEYS
    if indent:
        option |= orjson.OPT_INDENT_2
    if sort_keys:
        option |= orjson.OPT_SORT_KEYS
    return orjson.dumps(value, default=_default, option=option)


def dumps_str(value: Any, *, indent: bool = False, sort_keys: bool = False) -> str:
    """Like :func:`dumps`, as text."""
    return dumps(value, indent=indent, sort_keys=sort_keys).decode()


# PostgreSQL refuses NUL in text and in JSON; Quell stores U+FFFD instead, on both backends,
# as it does for undecodable bytes.
_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def nul_free(text: str) -> str:
    """``text`` with NUL replaced by U+FFFD."""
    return text.replace(_NUL, _REPLACEMENT) if _NUL in text else text


def without_nul(value: Any) -> Any:
    """``value`` (JSON-like data, dataclasses too) with NUL replaced in every string and key."""
    if isinstance(value, str):
        return nul_free(value)
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return without_nul(dataclasses.asdict(value))
    return value


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, as messages name it (``not a string``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def column_json(value: Any) -> str:
    """JSON for a database column: orjson (dataclasses, datetimes and enums natively), and
    NUL-free (the rare value that has one is walked)."""
    encoded = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    if "\\u0000" in encoded:
        encoded = orjson.dumps(without_nul(value), option=orjson.OPT_NON_STR_KEYS).decode()
    return encoded


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises ``orjson.JSONDecodeError`` (a ``ValueError``) on bad input."""
    return orjson.loads(data)
