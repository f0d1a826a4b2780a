"""The event loop Quell's processes run on.

``quell serve`` runs under uvicorn, which takes uvloop when it is installed; ``quell worker``,
``quell playbook run`` and ``quell playbook test`` run their engine on the same loop, chosen by
the ``event_loop`` setting (``QUELL_EVENT_LOOP``): ``auto`` (uvloop where installed, else
asyncio's own loop), ``asyncio`` or ``uvloop``. uvloop is a dependency on Linux and macOS with
CPython; on an engine bound by the CPU it does the same work with about a tenth less of it.
"""

from __future__ import annotations

import asyncio
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


def run(main: Coroutine[Any, Any, T], choice: EventLoop = EventLoop.AUTO) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


__all__ = ["loop_factory", "loop_name", "run"]
