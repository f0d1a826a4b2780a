"""Every route, every role: a route without authorization fails this suite.

The matrix is derived from the app, not written down: each route declares the permission it
needs through ``Authorize``; the test finds it, then calls the route over real HTTP with no
token (401), with each role's token (403 exactly when the role lacks the permission). The few
routes whose credential is a one-time token in the path (``CAPABILITY_PATHS``) declare none,
and answer 404 to a made-up token whoever calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from quell.api.auth import CAPABILITY_PATHS, PUBLIC_PATHS, SELF_PATHS, authenticate
from quell.governance.permissions import Permission, Role, permissions_of
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer


def _permissions(dependant: Dependant) -> set[Permission]:
    """Permissions declared by authorizing dependencies (Authorize and its kin)."""
    found = set()
    for dependency in dependant.dependencies:
        permission = getattr(dependency.call, "permission", None)
        if isinstance(permission, Permission):
            found.add(permission)
        found |= _permissions(dependency)
    return found


def _authenticates(dependant: Dependant) -> bool:
    return any(
        dependency.call is authenticate or _authenticates(dependency)
        for dependency in dependant.dependencies
    )


def api_routes(routes: Iterable[object]) -> Iterator[APIRoute]:
    """Every APIRoute, looking inside included routers (FastAPI >= 0.163 keeps them nested).

    Any other kind of route (a Starlette Route, a Mount) could not be checked for
    authorization, so it fails the suite.
    """
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
            continue
        inner = getattr(route, "original_router", None)
        if inner is None:
            raise AssertionError(f"route {route!r} is not an APIRoute: it cannot be checked")
        yield from api_routes(inner.routes)


SELF = "self"  # a route about the caller: any valid token, no permission


def _routes(server: LiveServer) -> list[tuple[str, str, Permission | str | None]]:
    """(method, path, permission) for every route; permission None for public and capability
    routes."""
    table = []
    for route in api_routes(server.app.routes):
        permissions = _permissions(route.dependant)
        if route.path in PUBLIC_PATHS | CAPABILITY_PATHS:
            assert not permissions, f"route {route.path} must not ask for a permission"
            table.extend((method, route.path, None) for method in sorted(route.methods))
            continue
        if route.path in SELF_PATHS:  # authenticated, whatever the role grants
            assert not permissions, f"route {route.path} must not ask for a permission"
            assert _authenticates(route.dependant), f"route {route.path} must authenticate"
            table.extend((method, route.path, SELF) for method in sorted(route.methods))
            continue
        assert len(permissions) == 1, (
            f"{sorted(route.methods)} {route.path} must declare exactly one "
            f"Depends(Authorize(...)); found {permissions or 'none'}"
        )
        (permission,) = permissions
        table.extend((method, route.path, permission) for method in sorted(route.methods))
    return table


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "matrix-probe", path)


def _call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    body = {} if method in {"POST", "PUT", "PATCH"} else None
    return client.request(method, _concrete(path), json=body)


def test_every_route_declares_exactly_one_permission_or_is_public(live_server: LiveServer) -> None:
    table = _routes(live_server)
    unguarded = {path for _, path, permission in table if permission is None}
    assert unguarded == set(PUBLIC_PATHS | CAPABILITY_PATHS)
    assert len(table) > len(unguarded)


def test_every_protected_route_refuses_a_caller_without_token(live_server: LiveServer) -> None:
    with live_server.client() as client:
        for method, path, permission in _routes(live_server):
            if permission is None:
                continue
            for body in (b"{}", b"{not json", b"x" * 100_000):
                response = client.request(
                    method,
                    _concrete(path),
                    content=body if method in {"POST", "PUT", "PATCH"} else None,
                    headers={"content-type": "application/json"},
                )
                assert response.status_code == 401, (method, path, response.text)
                if method != "HEAD":
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("role", list(Role), ids=[role.value for role in Role])
def test_every_route_answers_each_role_by_its_permissions(
    live_server: LiveServer, role_tokens: dict[Role, str], role: Role
) -> None:
    _answers_by_permissions(live_server, role_tokens[role], permissions_of(role), role.value)


def test_every_route_answers_a_custom_role_by_its_permissions(
    live_server: LiveServer, runtime: Runtime
) -> None:
    # Without system:read (the README's triage role): it could not even sign out before.
    granted = ["alerts:read", "incidents:read", "incidents:write", "intel:read"]
    runtime.roles.define("triage", granted, description="first-line triage", by="test")
    token = runtime.tokens.create("test-triage", "triage")[1].reveal()
    permissions = frozenset(Permission(name) for name in granted)
    _answers_by_permissions(live_server, token, permissions, "triage")


def _answers_by_permissions(
    live_server: LiveServer, token: str, granted: frozenset[Permission], role: str
) -> None:
    with live_server.client(token) as client:
        for method, path, permission in _routes(live_server):
            response = _call(client, method, path)
            if path in CAPABILITY_PATHS:
                assert response.status_code == 404, (role, method, path, response.text)
            elif path == "/api/login":  # public; an empty body is not a login
                assert response.status_code == 422, (method, path, response.text)
            elif path.startswith("/api/auth/oidc/"):  # public; no provider of that name
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["field"] == "provider"
            elif permission is None:
                assert response.status_code in {200, 503}, (method, path)
            elif permission == SELF:  # never refused for the role (an empty body: 422)
                assert response.status_code in {200, 422}, (role, method, path, response.text)
            elif permission in granted:
                assert response.status_code not in {401, 403}, (role, method, path, response.text)
            else:
                assert response.status_code == 403, (role, method, path, response.text)
                if method != "HEAD":
                    assert response.json()["permission"] == permission.value


def test_public_routes_answer_without_token(live_server: LiveServer) -> None:
    with live_server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"


def test_capability_routes_need_no_bearer_and_refuse_a_made_up_token(
    live_server: LiveServer,
) -> None:
    with live_server.client() as client:
        for method, path, _ in _routes(live_server):
            if path not in CAPABILITY_PATHS:
                continue
            response = _call(client, method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "not_found"
            assert "matrix-probe" not in response.text
            too_big = client.request(method, _concrete(path), content=b"x" * (2 * 1024 * 1024))
            assert too_big.status_code == 413, (method, path)
