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

    ``idempotency_key`` names this attempt of one step of one run (``run:step:attempt``), and
    is recorded before the call, so that a ``reconcile`` hook can ask the peer whether the
    attempt a crash cut off landed. :attr:`step_idempotency_key` is the same for every attempt
    of the step: what a write tags its work with (a label, a correlation id, an
    ``Idempotency-Key`` header), so that a retry, or reconcile, finds what any earlier attempt
    of the step made, and a peer that accepts such a key can refuse a repeat itself.
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
    def step_idempotency_key(self) -> str:
        """The step's key, the same for every attempt of it (``idempotency_key`` without its
        ``:attempt``)."""
        key, suffix = self.idempotency_key, f":{self.attempt}"
        return key[: -len(suffix)] if self.attempt > 0 and key.endswith(suffix) else key

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
