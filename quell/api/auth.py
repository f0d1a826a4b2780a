"""Authentication (who is calling) and authorization (may they do this) for API routes.

Every route outside :data:`PUBLIC_PATHS`, :data:`CAPABILITY_PATHS` and :data:`SELF_PATHS`
(authenticated, about the caller) declares ``Depends(Authorize(Permission.X))``. The
dependency authenticates the bearer token first, so a route with a permission is always an
authenticated route; the route-by-role test walks every route and fails on one without it.
"""

from __future__ import annotations

import re
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from quell.errors import AuthenticationRequired, PermissionDenied
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.governance.users import SESSION_PREFIX
from quell.runtime import Runtime

# ``POST /api/login`` takes a name and password and is rate-limited by quell.governance.users;
# the OIDC routes are the sign-in at a provider itself (quell.governance.oidc).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/api/login",
        "/api/auth/oidc/{provider}/login",
        "/api/auth/oidc/{provider}/callback",
    }
)
# Routes whose credential is a one-time capability in the path itself (a wait's callback
# token), not a bearer token: they check it themselves and answer 404 to anything else. The
# edge guard lets them through (quell.api.guard.CAPABILITY).
CAPABILITY_PATHS = frozenset({"/api/callbacks/{token}", "/api/approval-links/{token}"})
# About the caller themselves (who am I, end my session, change my password): any valid token
# may ask, whatever its role grants; a custom role without system:read can still sign out.
SELF_PATHS = frozenset({"/api/whoami", "/api/logout", "/api/me/password"})
_PUBLIC_PATTERNS = tuple(
    re.compile(
        "/".join("[^/]+" if part.startswith("{") else re.escape(part) for part in path.split("/"))
    )
    for path in PUBLIC_PATHS
)


def is_public(path: str) -> bool:
    """Whether a request path is one of :data:`PUBLIC_PATHS` (a ``{name}`` in one matches a
    path segment)."""
    return any(pattern.fullmatch(path) for pattern in _PUBLIC_PATTERNS)


_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="qk_… or qs_…",
    description="An API token from `quell token create`, or a session token from "
    "`POST /api/login`.",
)


def get_runtime(request: Request) -> Runtime:
    """The runtime the app was created with."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def authenticate(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller behind the bearer token, or 401."""
    if credentials is None:
        raise AuthenticationRequired(
            "this endpoint needs an 'Authorization: Bearer <token>' header"
        )
    presented = credentials.credentials
    if presented.startswith(SESSION_PREFIX):
        principal = await run_in_threadpool(runtime.users.authenticate, presented)
    else:
        principal = await run_in_threadpool(runtime.tokens.authenticate, presented)
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(actor=principal.name)
    return principal


Authenticated = Annotated[Principal, Depends(authenticate)]
"""A route of :data:`SELF_PATHS`: the caller, authenticated, with no permission asked."""


class Authorize:
    """Route dependency: the caller must hold ``permission`` (403 otherwise)."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(self, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.can(self.permission):
            role = principal.role if principal.role else None
            raise PermissionDenied(
                f"{f'role {role!r}' if role else principal.name} lacks the permission "
                f"{self.permission.value!r}",
                permission=self.permission.value,
                role=role,
            )
        return principal

    def __repr__(self) -> str:
        return f"Authorize({self.permission.value!r})"
