"""Quell's error tree.

Every error Quell raises on purpose derives from :class:`QuellError`. Each class carries a stable
:class:`ErrorCode`; the code, not the message, is what callers branch on and what journals and
audit events persist. Details are structured (a JSON-able mapping), so the API can render them
as problem+json fields and the CLI as one clear line, without parsing text.

    QuellError                      internal
    ├── InvalidInput                invalid_input      bad data from a caller, with the field
    ├── NotFound                    not_found          a named thing does not exist
    ├── Conflict                    conflict           the request clashes with current state
    ├── AuthenticationRequired      unauthenticated    no credential, or one that is not valid
    ├── PermissionDenied            forbidden          a valid credential lacking a permission
    ├── ConfigurationError          config_invalid     settings or a config file are wrong
    ├── StorageUnavailable          storage_unavailable the database cannot be reached
    ├── MigrationRequired           migration_required the database schema is not at this version
    ├── Overloaded                  overloaded         too much queued; retry after ``retry_after``
    │   └── RateLimited             rate_limited       too many failed logins; retry later
    ├── TooLarge                    too_large          a body or record over its size limit
    └── UpstreamUnavailable         upstream_unavailable a peer (SIEM, mailbox, vendor API) failed

Secrets never reach an error: details are passed through :func:`quell.sdk.secret.redact`
when rendered, so a :class:`~quell.sdk.secret.SecretValue` shows as ``**********``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar

from quell.sdk.secret import redact


class ErrorCode(StrEnum):
    """Stable, persisted identifiers for every kind of error Quell reports."""

    INTERNAL = "internal"
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    CONFIG_INVALID = "config_invalid"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    MIGRATION_REQUIRED = "migration_required"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"


class QuellError(Exception):
    """Root of every error Quell raises on purpose.

    ``message`` is one human sentence without secrets; ``details`` are structured fields
    (which field, which value, what is allowed) for machines and for the API's problem+json.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.value!r})"

    def to_dict(self) -> dict[str, Any]:
        """The error as plain data, secrets redacted: ``{"code", "message", "details"}``."""
        details: Mapping[str, Any] = redact(self.details)
        return {"code": self.code.value, "message": self.message, "details": dict(details)}


class InvalidInput(QuellError):
    """Input from a caller is malformed or out of range; ``field`` names what is wrong."""

    code = ErrorCode.INVALID_INPUT


class NotFound(QuellError):
    """The named object does not exist (or the caller may not know that it does)."""

    code = ErrorCode.NOT_FOUND


class Conflict(QuellError):
    """The request is valid but clashes with the current state, e.g. a duplicate name."""

    code = ErrorCode.CONFLICT


class AuthenticationRequired(QuellError):
    """The request carries no credential, or one that is unknown, malformed or revoked."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(QuellError):
    """The caller is known but its role lacks the permission the operation needs."""

    code = ErrorCode.FORBIDDEN


class ConfigurationError(QuellError):
    """A setting, environment variable or configuration file is wrong."""

    code = ErrorCode.CONFIG_INVALID


class StorageUnavailable(QuellError):
    """The database cannot be reached or refused the operation for a reason outside Quell."""

    code = ErrorCode.STORAGE_UNAVAILABLE


class MigrationRequired(QuellError):
    """The database schema is behind (or ahead of) the revision this Quell needs."""

    code = ErrorCode.MIGRATION_REQUIRED


class Overloaded(QuellError):
    """More work is queued than Quell accepts; the caller should retry after ``retry_after``."""

    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, /, *, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class RateLimited(Overloaded):
    """Too many attempts (failed logins) from a caller or for a name; retry after
    ``retry_after`` seconds."""

    code = ErrorCode.RATE_LIMITED


class TooLarge(QuellError):
    """A request body or a record is larger than its limit."""

    code = ErrorCode.TOO_LARGE


class UpstreamUnavailable(QuellError):
    """A peer Quell talks to (a SIEM, a mailbox, a vendor API) is down, slow or throttling."""

    code = ErrorCode.UPSTREAM_UNAVAILABLE
