"""Pulling events from a SIEM: the contract every puller keeps, and the loop that runs one.

A puller reads new events from a SIEM page by page. For every page it

1. submits the page's records to the :class:`~quell.ingest.intake.IntakeSink` under its source
   name; ``submit`` returns only once the records are durable (stored, deduplicated, suppressed
   or dead-lettered), and only then
2. saves its position, the cursor just past the page's last event, in the
   :class:`~quell.ingest.intake.CheckpointStore`.

Never the other way round, and that order lives in one place, :meth:`SiemPuller.commit_page`.
A crash or an error before step 1 completes loses nothing: the saved cursor still points before
the page, and the next pull reads the page again. A crash between steps 1 and 2 re-submits that
last page after the restart; the pipeline's fingerprint dedup absorbs the repeat (the repeated
records count as deduplicated instead of becoming new alerts). So delivery is at-least-once,
with no event lost and none skipped.

Errors::

    QuellError
    └── SiemError                 internal         a pull failed; ``retryable`` says if trying
        │                                          again can help, ``retry_after`` is the
        │                                          peer's own hint in seconds
        └── SiemAccessDenied      config_invalid   the SIEM refused the credentials (401/403);
                                                   also a ConfigurationError, never retried

:meth:`SiemPuller.run` retries everything else with exponential backoff: a SIEM that is down, a
malformed answer, an overloaded pipeline (the sink raising).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Self

import structlog

from quell.clock import SYSTEM_CLOCK, Clock
from quell.errors import ConfigurationError, ErrorCode, QuellError, UpstreamUnavailable
from quell.ingest.intake import CheckpointStore, IntakeResult, IntakeSink

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
"""How a puller waits: ``asyncio.sleep`` in production, a fake that moves a clock in tests."""

# Errors that no amount of waiting repairs: a person has to change the configuration first.
_FATAL_CODES = frozenset(
    {
        ErrorCode.CONFIG_INVALID,
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.FORBIDDEN,
        ErrorCode.MIGRATION_REQUIRED,
    }
)


class SiemError(UpstreamUnavailable):
    """A pull from a SIEM failed.

    ``retryable`` is False when only a change by a person (configuration, data) can help;
    ``retry_after`` is the delay in seconds the SIEM asked for (a ``Retry-After`` header), or None.
    """

    retryable: bool = True

    def __init__(
        self,
        message: str,
        /,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after


class SiemAccessDenied(SiemError, ConfigurationError):
    """The SIEM refused the configured credentials (HTTP 401) or their rights (HTTP 403)."""

    code = ErrorCode.CONFIG_INVALID
    retryable = False


def is_retryable(exc: BaseException) -> bool:
    """Whether :meth:`SiemPuller.run` should try again after ``exc``, decided by type and code."""
    if isinstance(exc, SiemError):
        return exc.retryable
    if isinstance(exc, QuellError):
        return exc.code not in _FATAL_CODES
    return isinstance(exc, Exception)


@dataclass(frozen=True, slots=True)
class PullResult:
    """What one :meth:`SiemPuller.pull_once` did.

    ``pages`` is the number of non-empty pages read, ``events`` the records submitted,
    ``submitted`` what the pipeline made of them, ``checkpoint`` the cursor saved at the end (None
    when nothing was saved, ever). ``caught_up`` is False when the pull stopped at its page limit
    with more events waiting, so the caller should pull again without pausing.
    """

    pages: int = 0
    events: int = 0
    submitted: IntakeResult = field(default_factory=IntakeResult)
    checkpoint: dict[str, Any] | None = None
    caught_up: bool = True


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff after failed pulls: ``initial * factor**(n-1)``, at most ``maximum``.

    No jitter: each source has one puller, so there is no herd of clients to spread out, and
    tests can assert exact delays.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        if failures < 1:
            return 0.0
        exponent = min(failures - 1, 64)  # beyond this the cap has long been reached
        return float(min(self.maximum, self.initial * self.factor**exponent))


class SiemPuller(ABC):
    """Reads new events from a SIEM into the pipeline, keeping its place in a checkpoint.

    Subclasses implement :meth:`pull_once` (read pages after the saved cursor and hand each to
    :meth:`commit_page`) and name their ``kind``; the checkpoint key is ``"<kind>:<source>"``.
    :meth:`run` polls until told to stop. Time comes from ``clock`` and waiting goes through
    ``sleep``, so tests replace both and never wait for real.
    """

    kind: ClassVar[str]

    def __init__(
        self,
        source: str,
        sink: IntakeSink,
        checkpoints: CheckpointStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep = asyncio.sleep,
        poll_interval: timedelta = timedelta(seconds=30),
        backoff: Backoff | None = None,
    ) -> None:
        if not source:
            raise ValueError("a puller needs a source name")
        self.source = source
        self.sink = sink
        self.checkpoints = checkpoints
        self.clock = clock
        self.sleep = sleep
        self.poll_interval = poll_interval
        self.backoff = backoff or Backoff()
        # While pulls fail and are retried: how many in a row, and the last one's error.
        self.retrying: tuple[int, str] | None = None

    @property
    def checkpoint_key(self) -> str:
        """Where this puller's cursor lives in the checkpoint store."""
        return f"{self.kind}:{self.source}"

    async def load_checkpoint(self) -> dict[str, Any] | None:
        """The saved cursor, or None on the first run."""
        # The store does blocking database I/O; keep it off the event loop.
        return await asyncio.to_thread(self.checkpoints.load, self.checkpoint_key)

    async def commit_page(self, records: Sequence[bytes], cursor: dict[str, Any]) -> IntakeResult:
        """Submit ``records``, then save ``cursor``: the cursor never runs ahead of the data.

        If ``submit`` raises, the cursor is not saved and the exception propagates, so the page
        is read again on the next pull.
        """
        result = IntakeResult()
        if records:
            result = await self.sink.submit(self.source, records)
        await asyncio.to_thread(self.checkpoints.save, self.checkpoint_key, cursor)
        return result

    @abstractmethod
    async def pull_once(self) -> PullResult:
        """Read and submit what is new since the saved cursor (up to a page limit)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the puller's connections."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def run(self, stop_event: asyncio.Event) -> None:
        """Pull until ``stop_event`` is set.

        After a pull that caught up it waits ``poll_interval``; after one that stopped at its
        page limit it pulls again at once. A retryable failure waits for the backoff (or the
        SIEM's ``Retry-After``, when longer) and tries again; a fatal one (bad credentials,
        bad configuration) is logged and raised. Setting ``stop_event`` ends any wait at once.
        """
        failures = 0
        while not stop_event.is_set():
            try:
                result = await self.pull_once()
            except Exception as exc:
                if not is_retryable(exc):
                    log.error(
                        "siem.pull_stopped", source=self.source, kind=self.kind, error=str(exc)
                    )
                    raise
                failures += 1
                self.retrying = (failures, f"{type(exc).__name__}: {exc}")
                delay = self.backoff.delay(failures)
                # The SIEM's Retry-After (SiemError) or the pipeline's (quell.errors.Overloaded).
                hint = getattr(exc, "retry_after", None)
                if isinstance(hint, int | float) and not isinstance(hint, bool):
                    delay = max(delay, float(hint))
                log.warning(
                    "siem.pull_failed",
                    source=self.source,
                    kind=self.kind,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    failures=failures,
                    retry_in_s=delay,
                )
            else:
                failures = 0
                self.retrying = None
                if result.events:
                    log.info(
                        "siem.pulled",
                        source=self.source,
                        kind=self.kind,
                        pages=result.pages,
                        events=result.events,
                        caught_up=result.caught_up,
                    )
                delay = self.poll_interval.total_seconds() if result.caught_up else 0.0
            if delay > 0:
                await self._pause(delay, stop_event)
            else:
                await asyncio.sleep(0)  # let other tasks (and a stop request) in between pulls

    async def _pause(self, seconds: float, stop_event: asyncio.Event) -> None:
        """Wait ``seconds`` through ``self.sleep``, or less if ``stop_event`` is set first."""
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(stop_event.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)


__all__ = [
    "Backoff",
    "PullResult",
    "SiemAccessDenied",
    "SiemError",
    "SiemPuller",
    "Sleep",
    "is_retryable",
]
