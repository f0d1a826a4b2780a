"""JSON in and out, fast (orjson), with Quell's types understood and secrets redacted."""

from __future__ import annotations

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


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises ``orjson.JSONDecodeError`` (a ``ValueError``) on bad input."""
    return orjson.loads(data)
