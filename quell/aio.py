"""The event loop Quell's processes run on.

``quell serve`` runs under uvicorn, which takes uvloop when it is installed; ``quell worker``,
``quell playbook run`` and ``quell playbook test`` run their engine on the same loop, chosen by
the ``event_loop`` setting (``QUELL_EVENT_LOOP``): ``auto`` (uvloop where installed, else
asyncio's own loop), ``asyncio`` or ``uvloop``. uvloop is a dependency on Linux and macOS with
CPython; on an engine bound by the CPU it does the same work with about a tenth less of it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from quell.errors import ConfigurationError
from quell.settings import EventLoop

T = TypeVar("T")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_factory(choice: EventLoop = EventLoop.AUTO) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of the chosen kind."""
    if choice is EventLoop.ASYNCIO:
        return asyncio.new_event_loop
    factory = _uvloop_factory()
    if factory is not None:
        return factory
    if choice is EventLoop.UVLOOP:
        raise ConfigurationError(
            "event_loop is uvloop but uvloop is not installed (pip install uvloop), "
            "or set QUELL_EVENT_LOOP=asyncio"
        )
    return asyncio.new_event_loop


def loop_name(choice: EventLoop = EventLoop.AUTO) -> str:
    """``uvloop`` or ``asyncio``: the loop ``choice`` gives here (uvicorn's ``loop=``)."""
    return "asyncio" if loop_factory(choice) is asyncio.new_event_loop else "uvloop"


GC_THRESHOLDS = (20_000, 50, 100)  # young collections every 20,000 allocations, not 700


def tune_gc() -> None:
    """Fewer and cheaper garbage collections for a long-running Quell process.

    An engine allocates many short-lived objects and few reference cycles, so CPython's default
    (a young-generation collection every 700 allocations, each full one walking every live
    object) spends time finding little: what is alive after start-up (modules, the connector
    registry, compiled playbooks) is moved out of the collector's way, and the young generation
    is collected every 20,000 allocations. On the engine benchmark this cut CPU per run by about
    a tenth with the same peak memory. Ingest is alike: a batch becomes tens of thousands of
    objects (parsed records, rows, their pickles between processes) with no cycles among them.
    Called by ``quell serve``, ``quell worker``, ``quell ingest file``, each staging worker process
    and :func:`run`; harmless to call twice."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Coroutine[Any, Any, T], choice: EventLoop = EventLoop.AUTO) -> T:
    """``asyncio.run(main)`` on the chosen loop, in a process tuned for it (:func:`tune_gc`)."""
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


__all__ = ["GC_THRESHOLDS", "loop_factory", "loop_name", "run", "tune_gc"]
