"""Embedded mode: an engine and the trigger dispatcher inside the API server's event loop.

``quell serve`` starts one in its lifespan (unless ``--no-worker`` or
``QUELL_EMBEDDED_WORKER=0``), so one process serves the API and runs the playbooks: runs
started through the API begin at once in this engine, decisions and run controls wake it, and
the dispatcher turns stored alerts and incidents (the outbox) and cron schedules into runs.
Stopping it stops claiming, gives the runs in flight a few seconds to reach a step boundary,
and hands the rest back as ``ready``, so a worker (or the next start) takes them at once
instead of after their lease.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from quell.engine.engine import Engine
from quell.engine.triggers import Dispatcher
from quell.engine.worker import attach_dispatcher, start_feed_loop, stop_feed_loop

if TYPE_CHECKING:
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)


class EmbeddedEngine:
    """An engine with triggers, serving in the running event loop until :meth:`stop`."""

    def __init__(self, runtime: Runtime, *, grace: float = 5.0, **options: Any) -> None:
        self.engine = Engine.for_runtime(runtime, **options)
        self.dispatcher: Dispatcher = attach_dispatcher(self.engine)
        self.grace = grace
        self._stop = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self._feeds: asyncio.Task[None] | None = None
        self._runtime = runtime
        self._stopped = False

    @property
    def serving(self) -> bool:
        """Whether the engine claims and runs work now (started and not stopping)."""
        return self._serving is not None and not self._serving.done() and not self._stop.is_set()

    async def start(self) -> None:
        """Start serving in the running loop; returns at once."""
        await self.engine.__aenter__()
        self._serving = asyncio.create_task(self.engine.serve(self._stop), name="embedded-engine")
        self._feeds = start_feed_loop(self._runtime, self._stop)
        log.info(
            "embedded_worker_started",
            owner=self.engine.owner,
            concurrency=self.engine.concurrency,
        )

    async def stop(self) -> None:
        """Stop claiming, let runs in flight finish for ``grace`` seconds, hand the rest back."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._serving is not None:
            try:
                await self._serving
            except Exception as exc:  # shutting down anyway; say why
                log.error("embedded_worker_failed", error=type(exc).__name__, exc_info=exc)
        await self.engine.shutdown(self.grace)
        if self._feeds is not None:
            await stop_feed_loop(self._feeds, self.grace)
        log.info("embedded_worker_stopped", owner=self.engine.owner)


__all__ = ["EmbeddedEngine"]
