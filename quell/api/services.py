"""The engine's services as routes use them, wired to the embedded engine when there is one.

Each control (cancel, resume, retry), decision (approve, complete, callback) and manual start
wakes the embedded engine at once, so what was made ready runs without waiting for a poll; on
PostgreSQL the same transactions also ``NOTIFY`` the workers of other processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request

from quell.engine.service import RunService
from quell.engine.waits import WaitService

if TYPE_CHECKING:
    from quell.connectors.registry import Registry
    from quell.engine.embedded import EmbeddedEngine
    from quell.engine.launch import Launcher
    from quell.engine.library import PlaybookLibrary
    from quell.governance.tokens import Principal
    from quell.runtime import Runtime


def embedded_engine(request: Request) -> EmbeddedEngine | None:
    """The engine serving in this process, if the app runs one."""
    found: EmbeddedEngine | None = getattr(request.app.state, "embedded", None)
    return found


def _waker(request: Request) -> Callable[[], None] | None:
    embedded = embedded_engine(request)
    return embedded.engine.wake if embedded is not None else None


def may_grant(runtime: Runtime, principal: Principal, role: str) -> None:
    """A caller grants only what it holds itself: a role whose permissions go beyond the
    caller's is refused (so ``users:manage`` or ``tokens:manage`` is no way to more)."""
    from quell.errors import PermissionDenied

    wanted = runtime.roles.permissions(runtime.roles.parse(role)) or frozenset()
    beyond = sorted(p.value for p in wanted - principal.permissions)
    if beyond:
        raise PermissionDenied(
            f"role {role!r} grants what you do not hold ({', '.join(beyond)})",
            permission=beyond[0],
        )


def may_manage(runtime: Runtime, principal: Principal, name: str) -> None:
    """A caller changes (role, password, e-mail, enabled) only a user whose role grants nothing
    beyond the caller's own: setting an admin's password is otherwise a way to be the admin."""
    from quell.errors import PermissionDenied

    user = runtime.users.get(name)
    held = runtime.roles.permissions(user.role) or frozenset()
    beyond = sorted(p.value for p in held - principal.permissions)
    if beyond:
        raise PermissionDenied(
            f"user {name!r} holds what you do not ({', '.join(beyond)}); only someone who "
            "holds it too can change them",
            permission=beyond[0],
        )


async def audited(
    runtime: Runtime, principal: Principal, action: str, subject: str | None,
    detail: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Record a change made through the API in the audit trail, as the caller (with the
    request's id, from the logging context)."""
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(runtime.audit.record, principal.name, action, subject, detail or {})


def runs(request: Request, runtime: Runtime) -> RunService:
    """Read and control runs."""
    return RunService(runtime.db, runtime.clock, on_change=_waker(request))


def waits(request: Request, runtime: Runtime) -> WaitService:
    """Approvals, tasks and callbacks."""
    return runtime.waits(on_change=_waker(request))


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
    from quell.engine.cacao import attach
    from quell.engine.library import ConfiguredSecrets, PlaybookLibrary

    library = PlaybookLibrary(
        runtime.db,
        runtime.playbooks,
        registry(request, runtime),
        ConfiguredSecrets(EnvSecrets(), runtime.connector_instances),
        review_required=runtime.settings.playbook_review == "required",
        audit=runtime.audit,
    )
    attach(library, runtime)
    return library


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
