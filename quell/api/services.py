"""The engine's services as routes use them, wired to the embedded engine when there is one.

Each control (cancel, resume, retry), decision (approve, complete, callback) and manual start
wakes the embedded engine at once, so what was made ready runs without waiting for a poll; on
PostgreSQL the same transactions also ``NOTIFY`` the workers of other processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import Request

from quell.engine.execution import callback_secret
from quell.engine.service import RunService
from quell.engine.waits import WaitService

if TYPE_CHECKING:
    from quell.connectors.registry import Registry
    from quell.engine.embedded import EmbeddedEngine
    from quell.engine.launch import Launcher
    from quell.engine.library import PlaybookLibrary
    from quell.runtime import Runtime


def embedded_engine(request: Request) -> EmbeddedEngine | None:
    """The engine serving in this process, if the app runs one."""
    found: EmbeddedEngine | None = getattr(request.app.state, "embedded", None)
    return found


def _waker(request: Request) -> Callable[[], None] | None:
    embedded = embedded_engine(request)
    return embedded.engine.wake if embedded is not None else None


def runs(request: Request, runtime: Runtime) -> RunService:
    """Read and control runs."""
    return RunService(runtime.db, runtime.clock, on_change=_waker(request))


def waits(request: Request, runtime: Runtime) -> WaitService:
    """Approvals, tasks and callbacks."""
    secret = callback_secret(runtime.secret_key.reveal().encode())
    return WaitService(runtime.db, runtime.clock, on_change=_waker(request), callback_secret=secret)


def registry(request: Request, runtime: Runtime) -> Registry:
    """The installed actions: the embedded engine's, else discovered once per app."""
    embedded = embedded_engine(request)
    if embedded is not None:
        return embedded.engine.actions.registry
    found: Registry | None = getattr(request.app.state, "registry", None)
    if found is None:
        from quell.connectors.registry import Registry

        found = request.app.state.registry = Registry.discover(runtime.settings.plugins)
    return found


def library(request: Request, runtime: Runtime) -> PlaybookLibrary:
    """Compile, store and show playbooks against the installed actions and secrets."""
    from quell.engine.actions import EnvSecrets
    from quell.engine.library import PlaybookLibrary

    return PlaybookLibrary(runtime.db, runtime.playbooks, registry(request, runtime), EnvSecrets())


def launcher(request: Request, runtime: Runtime) -> Launcher:
    """Starts manual runs (in the embedded engine when it serves); one per app."""
    found: Launcher | None = getattr(request.app.state, "launcher", None)
    if found is None:
        from quell.engine.launch import Launcher

        found = Launcher(
            runtime, embedded=embedded_engine(request), registry=registry(request, runtime)
        )
        request.app.state.launcher = found
    return found
