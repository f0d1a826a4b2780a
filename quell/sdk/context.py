"""What an action receives besides its input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from quell.sdk.errors import SecretMissing
from quell.sdk.secret import SecretValue


@dataclass
class ActionContext:
    """The call's identity and tools: idempotency key, dry-run flag, secrets, HTTP, a logger.

    ``idempotency_key`` is the same for every attempt of one step of one run (and recorded
    before the first call), so a peer that accepts such a key can refuse a repeat itself, and
    a ``reconcile`` hook can ask the peer whether the key landed.
    """

    run_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    dry_run: bool = False
    secrets: Mapping[str, SecretValue] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    logger: Any = None  # bound on first use of ``log`` (most calls never log)
    log_context: Mapping[str, Any] = field(default_factory=dict)
    instance: str = ""  # the configured instance the call runs against ("" when unconfigured)

    @property
    def log(self) -> Any:
        """A logger bound to this call (action, run, step)."""
        if self.logger is None:
            self.logger = structlog.get_logger("quell.action").bind(**self.log_context)
        return self.logger

    def secret(self, name: str) -> SecretValue:
        """The declared secret ``name``; :class:`SecretMissing` (a PermanentError, and a
        KeyError) names it when it is not configured, so the step fails saying so."""
        try:
            return self.secrets[name]
        except KeyError:
            raise SecretMissing(
                f"secret {name!r} is not configured for this connector "
                "(quell connector set-secret INSTANCE KEY)"
            ) from None

    @property
    def client(self) -> aiohttp.ClientSession:
        """The guarded HTTP client (an aiohttp session; see :mod:`quell.sdk.http`)."""
        if self.http is None:
            raise RuntimeError("this action context has no HTTP client")
        return self.http


__all__ = ["ActionContext"]
