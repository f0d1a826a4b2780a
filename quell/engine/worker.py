"""``quell worker``: an engine and the trigger dispatcher in a process of their own.

Any number of workers may share one PostgreSQL database (cluster mode). SIGTERM or Ctrl+C stops
claiming, lets runs in flight reach a step boundary for a few seconds, and hands the rest back
so another worker takes them at once instead of after their lease.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING, Any

import structlog

from quell import aio
from quell.engine.engine import Engine
from quell.engine.triggers import Dispatcher

if TYPE_CHECKING:
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)

SEARCH_INDEX_EVERY_S = 30.0  # the tick keeps incident search warm; a search catches up anyway


def attach_dispatcher(engine: Engine) -> Dispatcher:
    """Make the engine's tick also turn events and schedules into runs, after checking the
    incidents' SLA clocks (at most every few seconds: a breach is an event it then sees), and
    now and then index changed incidents for search."""
    from quell.cases.search import IncidentSearch
    from quell.cases.sla import SlaService

    dispatcher = Dispatcher(engine)
    sla = SlaService(engine.db, engine.clock)
    search = IncidentSearch(engine.db)
    indexed = [0.0]  # when the search index last caught up (monotonic)

    async def on_tick() -> None:
        await asyncio.to_thread(sla.check_due)
        await asyncio.to_thread(dispatcher.dispatch)
        if time.monotonic() - indexed[0] >= SEARCH_INDEX_EVERY_S:
            try:
                await asyncio.to_thread(search.refresh, rounds=2)
            finally:
                # From the end of this refresh, whether it failed or not: a long one does not
                # start the next at once, and a failing one is not tried again on every tick.
                indexed[0] = time.monotonic()

    engine.on_tick = on_tick  # type: ignore[method-assign]
    return dispatcher


async def serve_worker(runtime: Runtime, stop: asyncio.Event, **options: Any) -> None:
    """Run an engine with triggers until ``stop`` is set."""
    engine = Engine.for_runtime(runtime, **options)
    attach_dispatcher(engine)
    feeds = start_feed_loop(runtime, stop)
    try:
        async with engine:
            log.info("worker_started", owner=engine.owner, concurrency=engine.concurrency)
            await engine.serve(stop)
    finally:
        stop.set()
        await stop_feed_loop(feeds)
    log.info("worker_stopped", owner=engine.owner)


async def stop_feed_loop(task: asyncio.Task[None], grace: float = 5.0) -> None:
    """Let a pull in progress finish for ``grace`` seconds, then cancel it (its page's
    transaction is not committed, and the next pull starts from the checkpoint)."""
    _done, pending = await asyncio.wait({task}, timeout=grace)
    for late in pending:
        late.cancel()
    await asyncio.gather(task, return_exceptions=True)


def start_feed_loop(runtime: Runtime, stop: asyncio.Event) -> asyncio.Task[None]:
    """Pull the intel feeds that are due, in the background, until ``stop`` is set: every
    worker does (a feed is claimed by one at a time)."""
    from quell.intel.feeds import FeedService, run_feed_loop

    return asyncio.create_task(
        run_feed_loop(FeedService.for_runtime(runtime), stop), name="intel-feeds"
    )


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


__all__ = ["attach_dispatcher", "run_worker", "serve_worker", "start_feed_loop", "stop_feed_loop"]
