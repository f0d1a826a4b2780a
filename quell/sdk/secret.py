"""Secrets as a type: a :class:`SecretValue` redacts itself wherever it goes.

``repr``, ``str``, f-strings, logs, JSON (orjson through :mod:`quell.codec`, pydantic
serialization), error details and pickling never show the value. Only :meth:`SecretValue.reveal`
gives it, and only code that must hand it to a peer (an action, a database driver) calls it.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, NoReturn

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

REDACTED = "**********"


class SecretValue:
    """A string that must never be shown: a password, an API key, a signing key."""

    __slots__ = ("_value",)

    def __init__(self, value: str | SecretValue) -> None:
        if isinstance(value, SecretValue):
            value = value.reveal()
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The secret itself. Call it only where the value is handed to its consumer."""
        value: str = object.__getattribute__(self, "_value")
        return value

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    def __repr__(self) -> str:
        return f"SecretValue('{REDACTED}')"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, format_spec: str) -> str:
        return format(REDACTED, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self.reveal().encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash((SecretValue, self.reveal()))

    def __bool__(self) -> bool:
        return bool(self.reveal())

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SecretValue cannot be pickled; store it through the secrets store")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretValue:
        return self

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate from a str (or a SecretValue); serialize as the redaction marker."""
        from_str = core_schema.no_info_after_validator_function(cls, core_schema.str_schema())
        return core_schema.json_or_python_schema(
            json_schema=from_str,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), from_str]),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda _value: REDACTED, when_used="always"
            ),
        )


def redact(value: Any) -> Any:
    """A copy of ``value`` (nested dicts, lists, tuples) with every SecretValue redacted."""
    if isinstance(value, SecretValue):
        return REDACTED
    if isinstance(value, Mapping):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item) for item in value]
    return value
