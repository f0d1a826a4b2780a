"""``quell worker``: an engine and the trigger dispatcher in a process of their own.

Any number of workers may share one PostgreSQL database (cluster mode). SIGTERM or Ctrl+C stops
claiming, lets runs in flight reach a step boundary for a few seconds, and hands the rest back
so another worker takes them at once instead of after their lease.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any

import structlog

from quell import aio
from quell.engine.engine import Engine
from quell.engine.triggers import Dispatcher

if TYPE_CHECKING:
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)


def attach_dispatcher(engine: Engine) -> Dispatcher:
    """Make the engine's tick also turn events and schedules into runs."""
    dispatcher = Dispatcher(engine)

    async def on_tick() -> None:
        await asyncio.to_thread(dispatcher.dispatch)

    engine.on_tick = on_tick  # type: ignore[method-assign]
    return dispatcher


async def serve_worker(runtime: Runtime, stop: asyncio.Event, **options: Any) -> None:
    """Run an engine with triggers until ``stop`` is set."""
    engine = Engine.for_runtime(runtime, **options)
    attach_dispatcher(engine)
    async with engine:
        log.info("worker_started", owner=engine.owner, concurrency=engine.concurrency)
        await engine.serve(stop)
    log.info("worker_stopped", owner=engine.owner)


def run_worker(runtime: Runtime, *, concurrency: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    options: dict[str, Any] = {}
    if concurrency is not None:
        options["concurrency"] = concurrency

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve_worker(runtime, stop, **options)

    aio.run(main(), runtime.settings.event_loop)


__all__ = ["attach_dispatcher", "run_worker", "serve_worker"]
