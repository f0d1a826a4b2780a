"""What an action raises when it fails. Retry decisions are data on the error, not guesses.

    ActionError                 a failure; not retried unless ``retryable``
    ├── TransientError          retryable: a timeout, a 5xx, a dropped connection
    │   └── RateLimited         retryable after ``retry_after`` seconds (429)
    └── PermanentError          not retryable: the peer refused the request (4xx)
        ├── TargetNotFound      the host, account or address does not exist there
        └── AuthError           the credentials were refused

The engine never branches on a message; it reads ``retryable``, ``retry_after`` and ``code``.
Messages must not contain secrets (they are journaled and shown).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ActionError(Exception):
    """An action failed; ``retryable`` and ``retry_after`` tell the engine what to do next."""

    retryable_default: ClassVar[bool] = False
    code_default: ClassVar[str] = "action_failed"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.retryable_default if retryable is None else retryable
        self.retry_after = retry_after
        self.code = code or self.code_default
        self.details = details or {}

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error as a step (or an API answer) records it."""
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.retry_after is not None:
            data["retry_after"] = self.retry_after
        return data


class TransientError(ActionError):
    """A failure that may pass: retried with backoff."""

    retryable_default = True
    code_default = "transient"


class RateLimited(TransientError):
    """The peer asked to slow down; retried after ``retry_after`` seconds."""

    code_default = "rate_limited"


class PermanentError(ActionError):
    """The peer refused the request; repeating it will not help."""

    code_default = "refused"


class TargetNotFound(PermanentError):
    """What the action acts on does not exist at the peer."""

    code_default = "target_not_found"


class SecretMissing(PermanentError, KeyError):
    """A secret the action needs is not configured."""

    code_default = "secret_missing"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class AuthError(PermanentError):
    """The peer refused the credentials."""

    code_default = "auth_failed"


__all__ = [
    "ActionError",
    "AuthError",
    "PermanentError",
    "RateLimited",
    "SecretMissing",
    "TargetNotFound",
    "TransientError",
]
