"""Microsoft Graph against a local server that speaks its documented API.

The server plays Entra ID's token endpoint (client credentials, scope checked) and Graph:
users by id or userPrincipalName (``PATCH`` ``accountEnabled``, ``$select`` reads),
``revokeSignInSessions`` and ``memberOf`` paged with ``@odata.nextLink`` (two per page). The
bearer token is checked on every request; errors come as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quell.connectors.graph import Graph, GraphConfig, GroupsIn, UserIn
from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.runtime import Runtime
from quell.sdk import (
    ActionContext,
    AuthError,
    Landed,
    PermanentError,
    RateLimited,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from quell.sdk.http import OutboundPolicy, guard
from tests.fixtures.webapp import serving

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "app-graph-0123"
CLIENT_SECRET = "s3cr3t~graph~XYZ"
JDOE = "87d349ed-44d7-43e1-9a83-5f2406dee5bd"
UPN = "jdoe@corp.example"
PAGE = 2


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "innerError": {"request-id": "r1"}}}
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Tenant:
    """The fake tenant."""

    base: str = ""
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    member_of: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: list[web.Response] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        app.router.add_get("/v1.0/users", self.list_users)
        app.router.add_get("/v1.0/users/{user}", self.get_user)
        app.router.add_patch("/v1.0/users/{user}", self.patch_user)
        app.router.add_post("/v1.0/users/{user}/revokeSignInSessions", self.revoke)
        app.router.add_get("/v1.0/users/{user}/memberOf", self.groups)
        return app

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path.startswith("/v1.0/"):
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or header[7:] not in self.tokens:
                return _error(401, "InvalidAuthenticationToken", "Access token has expired.")
            if self.fail:
                return self.fail.pop(0)
        return await handler(request)

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if request.match_info["tenant"] != TENANT:
            return web.json_response(
                {"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."},
                status=400,
            )
        if form.get("scope") != "https://graph.microsoft.com/.default":
            return web.json_response({"error": "invalid_scope"}, status=400)
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.\r\n"
                    "Trace ID: 0000",
                },
                status=401,
            )
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return web.json_response(
            {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        )

    def _user(self, request: web.Request) -> dict[str, Any] | None:
        key = request.match_info["user"]
        return self.users.get(key) or next(
            (u for u in self.users.values() if u["userPrincipalName"].lower() == key.lower()), None
        )

    def _missing(self, request: web.Request) -> web.Response:
        return _error(
            404,
            "Request_ResourceNotFound",
            f"Resource '{request.match_info['user']}' does not exist or one of its queried "
            "reference-property objects are not present.",
        )

    async def list_users(self, request: web.Request) -> web.Response:
        top = int(request.query.get("$top", "100"))
        return web.json_response({"value": [{"id": u} for u in list(self.users)[:top]]})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return self._missing(request)
        fields = request.query.get("$select", "id").split(",")
        return web.json_response({k: user[k] for k in fields if k in user})

    async def patch_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return self._missing(request)
        body = await request.json()
        if set(body) - {"accountEnabled", "displayName"}:
            return _error(400, "Request_BadRequest", "Invalid property")
        user.update(body)
        return web.Response(status=204)

    async def revoke(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return self._missing(request)
        self.revoked.append(user["id"])
        return web.json_response({"@odata.context": "x", "value": True})

    async def groups(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            return self._missing(request)
        found = self.member_of.get(user["id"], [])
        skip = int(request.query.get("$skiptoken", "0"))
        body: dict[str, Any] = {"value": found[skip : skip + PAGE]}
        if skip + PAGE < len(found):
            body["@odata.nextLink"] = f"{self.base}{request.path}?$skiptoken={skip + PAGE}"
        return web.json_response(body)


def _tenant() -> Tenant:
    groups = [
        {"@odata.type": "#microsoft.graph.group", "id": f"g{n}", "displayName": f"Group {n}"}
        for n in range(5)
    ]
    groups.append(
        {"@odata.type": "#microsoft.graph.directoryRole", "id": "r1", "displayName": "Reader"}
    )
    users = {
        JDOE: {"id": JDOE, "userPrincipalName": UPN, "displayName": "J Doe", "accountEnabled": True}
    }
    return Tenant(users=users, member_of={JDOE: groups})


async def _serve(tenant: Tenant, body: Callable[[str, Tenant], Awaitable[Any]]) -> Any:
    async with serving(tenant.app()) as base:
        tenant.base = base
        return await body(tenant.base, tenant)


def _ctx(
    session: aiohttp.ClientSession, *, secret: str = CLIENT_SECRET, dry_run: bool = False
) -> ActionContext:
    return ActionContext(
        run_id="run_1",
        step_id="disable",
        attempt=1,
        idempotency_key="run_1:disable:1",
        dry_run=dry_run,
        secrets={"client_id": SecretValue(CLIENT_ID), "client_secret": SecretValue(secret)},
        http=session,
    )


def _run(body: Callable[[Graph, aiohttp.ClientSession, Tenant], Awaitable[Any]]) -> Any:
    async def scenario(base: str, tenant: Tenant) -> Any:
        connector = Graph(GraphConfig(tenant_id=TENANT, base_url=base, login_url=base))
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        try:
            return await body(connector, session, tenant)
        finally:
            await session.close()

    return asyncio.run(_serve(_tenant(), scenario))


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Graph)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


def test_disable_revoke_and_enable_through_the_runner(instances: InstanceService) -> None:
    async def body(base: str, tenant: Tenant) -> None:
        instances.create(
            "entra",
            "graph",
            {"tenant_id": TENANT, "base_url": base, "login_url": base},
            {"client_id": SecretValue(CLIENT_ID), "client_secret": SecretValue(CLIENT_SECRET)},
        )
        runner = ActionRunner(
            instances.registry,
            secrets=EnvSecrets({}),
            instances=instances,
            outbound=OutboundPolicy.parse(["127.0.0.1"]),
        )
        try:
            out = await runner.run_once("graph.disable_user", {"user": UPN})
            assert out["account_enabled"] is False
            assert tenant.users[JDOE]["accountEnabled"] is False
            revoked = await runner.run_once("graph.revoke_sessions", {"user": JDOE})
            assert revoked["revoked"] is True
            assert tenant.revoked == [JDOE]
            await runner.run_once("graph.enable_user", {"user": JDOE})
            assert tenant.users[JDOE]["accountEnabled"] is True
            assert TENANT in await runner.health(Graph, "entra")
            assert tenant.token_requests == 1
        finally:
            await runner.aclose()

    asyncio.run(_serve(_tenant(), body))


def test_reconcile_reads_account_enabled_back() -> None:
    async def body(graph: Graph, session: aiohttp.ClientSession, tenant: Tenant) -> None:
        ctx = _ctx(session)
        user = UserIn(user=UPN)
        assert (await graph.is_disabled(ctx, user)).state is Landed.NOT_LANDED
        assert (await graph.is_enabled(ctx, user)).state is Landed.LANDED
        await graph.disable_user(ctx, user)
        landed = await graph.is_disabled(ctx, user)
        assert landed.state is Landed.LANDED
        assert landed.output == {
            "user": UPN, "account_enabled": False, "action": "disable", "simulated": False,
            "would_send": None,
        }  # fmt: skip
        assert (await graph.is_enabled(ctx, user)).state is Landed.NOT_LANDED
        await graph.enable_user(ctx, UserIn(user=JDOE))
        assert (await graph.is_enabled(ctx, user)).state is Landed.LANDED

    _run(body)


def test_groups_page_through_next_links() -> None:
    async def body(graph: Graph, session: aiohttp.ClientSession, tenant: Tenant) -> None:
        ctx = _ctx(session)
        listed = await graph.list_groups(ctx, GroupsIn(user=UPN))
        assert [g.id for g in listed.groups] == ["g0", "g1", "g2", "g3", "g4", "r1"]
        assert listed.groups[-1].type == "#microsoft.graph.directoryRole"
        assert not listed.truncated
        assert tenant.requests.count(("GET", f"/v1.0/users/{UPN}/memberOf")) == 3
        capped = await graph.list_groups(ctx, GroupsIn(user=UPN, max_results=3))
        assert len(capped.groups) == 3
        assert capped.truncated
        tenant.fail.append(web.json_response({"value": [], "@odata.nextLink": "http://x.test/a"}))
        with pytest.raises(PermanentError, match="another host"):
            await graph.list_groups(ctx, GroupsIn(user=UPN))

    _run(body)


def test_one_token_serves_many_calls_and_a_401_fetches_another() -> None:
    async def body(graph: Graph, session: aiohttp.ClientSession, tenant: Tenant) -> None:
        ctx = _ctx(session)
        for _ in range(3):
            await graph.get_user(ctx, UserIn(user=UPN))
        assert tenant.token_requests == 1
        tenant.tokens.clear()
        await graph.disable_user(ctx, UserIn(user=UPN))
        assert tenant.token_requests == 2
        assert tenant.users[JDOE]["accountEnabled"] is False

    _run(body)


def test_bad_credentials_are_an_auth_error_without_the_secret() -> None:
    async def body(graph: Graph, session: aiohttp.ClientSession, tenant: Tenant) -> None:
        wrong = "wrong~graph~secret"
        with pytest.raises(AuthError) as refused:
            await graph.disable_user(_ctx(session, secret=wrong), UserIn(user=UPN))
        assert "AADSTS7000215: Invalid client secret provided." in refused.value.message
        assert wrong not in str(refused.value)
        assert tenant.users[JDOE]["accountEnabled"] is True

    _run(body)


def test_errors_map_to_the_sdk_tree() -> None:
    async def body(graph: Graph, session: aiohttp.ClientSession, tenant: Tenant) -> None:
        ctx = _ctx(session)
        user = UserIn(user=UPN)
        tenant.fail.append(
            _error(429, "TooManyRequests", "Too many requests", **{"Retry-After": "17"})
        )
        with pytest.raises(RateLimited) as limited:
            await graph.disable_user(ctx, user)
        assert limited.value.retry_after == 17
        tenant.fail.append(_error(503, "serviceNotAvailable", "Service unavailable"))
        with pytest.raises(TransientError, match="serviceNotAvailable"):
            await graph.disable_user(ctx, user)
        tenant.fail.append(
            _error(403, "Authorization_RequestDenied", "Insufficient privileges to complete.")
        )
        with pytest.raises(AuthError, match="Insufficient privileges"):
            await graph.disable_user(ctx, user)
        with pytest.raises(TargetNotFound, match=r"ghost@corp\.example"):
            await graph.disable_user(ctx, UserIn(user="ghost@corp.example"))
        tenant.fail.append(_error(400, "Request_BadRequest", "Invalid property"))
        with pytest.raises(PermanentError, match="Request_BadRequest"):
            await graph.disable_user(ctx, user)
        assert tenant.users[JDOE]["accountEnabled"] is True

    _run(body)


def test_a_dry_run_sends_no_write() -> None:
    async def body(graph: Graph, session: aiohttp.ClientSession, tenant: Tenant) -> None:
        ctx = _ctx(session, dry_run=True)
        out = await graph.disable_user(ctx, UserIn(user=UPN))
        assert out.simulated
        assert out.would_send is not None
        assert out.would_send["body"] == {"accountEnabled": False}
        await graph.enable_user(ctx, UserIn(user=UPN))
        await graph.revoke_sessions(ctx, UserIn(user=UPN))
        assert tenant.requests == []
        assert tenant.revoked == []

    _run(body)
