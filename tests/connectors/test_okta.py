"""Okta against a local server that speaks the documented Management API.

The server checks ``Authorization: SSWS <token>`` on every request, keeps users (with
``status``) and their sessions, suspends only ACTIVE users and unsuspends only SUSPENDED ones
(``E0000001`` otherwise, as Okta does), answers ``search`` for ``profile.login eq "x"`` and
``status eq "X"`` paged by ``after`` cursors in ``Link: <...>; rel="next"`` headers, and
errors in Okta's ``{"errorCode", "errorSummary"}`` shape (429s with ``X-Rate-Limit-Reset``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quell.connectors.instances import InstanceService
from quell.connectors.okta import ClearSessionsIn, FindUsersIn, GetUserIn, Okta, OktaConfig, UserIn
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

TOKEN = "00aBcDeFgHiJkLmNoPqRsTuVwXyZ-okta-token"
JDOE = "00u1jdoe0000000000a7"
_SEARCH = re.compile(r'^(profile\.login|status) eq "([^"]*)"$')


def _error(status: int, code: str, summary: str, **headers: str) -> web.Response:
    body = {"errorCode": code, "errorSummary": summary, "errorLink": code, "errorId": "oae1",
            "errorCauses": []}  # fmt: skip
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Org:
    """The fake Okta org."""

    base: str = ""
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: list[web.Response] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/v1/users", self.search)
        app.router.add_get("/api/v1/users/{id}", self.get_user)
        app.router.add_post("/api/v1/users/{id}/lifecycle/{verb}", self.lifecycle)
        app.router.add_delete("/api/v1/users/{id}/sessions", self.clear_sessions)
        return app

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"SSWS {TOKEN}":
            return _error(401, "E0000011", "Invalid token provided")
        if self.fail:
            return self.fail.pop(0)
        return await handler(request)

    def _find(self, key: str) -> dict[str, Any] | None:
        if key == "me":
            return {
                "id": "00uadmin",
                "status": "ACTIVE",
                "profile": {"login": "admin@corp.example"},
            }
        if key in self.users:
            return self.users[key]
        return next((u for u in self.users.values() if u["profile"]["login"] == key), None)

    async def search(self, request: web.Request) -> web.Response:
        matched = _SEARCH.match(request.query.get("search", ""))
        if matched is None:
            return _error(400, "E0000031", "Invalid search.")
        prop, value = matched.groups()
        found = [
            u
            for u in sorted(self.users.values(), key=lambda u: u["id"])
            if (u["profile"]["login"] if prop == "profile.login" else u["status"]) == value
        ]
        after = request.query.get("after")
        if after:
            found = [u for u in found if u["id"] > after]
        limit = int(request.query.get("limit", "200"))
        page = found[:limit]
        response = web.json_response(page)
        response.headers.add("Link", f'<{self.base}{request.path_qs}>; rel="self"')
        if len(found) > limit:
            query = {k: v for k, v in request.query.items() if k != "after"}
            query["after"] = page[-1]["id"]
            url = request.url.with_query(query).with_scheme("http")
            response.headers.add("Link", f'<{self.base}{url.path_qs}>; rel="next"')
        return response

    async def get_user(self, request: web.Request) -> web.Response:
        user = self._find(request.match_info["id"])
        if user is None:
            return _error(
                404, "E0000007", f"Not found: Resource not found: {request.match_info['id']} (User)"
            )
        return web.json_response(user)

    async def lifecycle(self, request: web.Request) -> web.Response:
        user = self.users.get(request.match_info["id"])
        if user is None:
            return _error(404, "E0000007", "Not found: Resource not found (User)")
        verb = request.match_info["verb"]
        before, after = {"suspend": ("ACTIVE", "SUSPENDED"), "unsuspend": ("SUSPENDED", "ACTIVE")}[
            verb
        ]
        if user["status"] != before:
            return _error(
                400, "E0000001", f"Api validation failed: cannot {verb} a {user['status']} user"
            )
        user["status"] = after
        return web.json_response({})

    async def clear_sessions(self, request: web.Request) -> web.Response:
        user_id = request.match_info["id"]
        if user_id not in self.users:
            return _error(404, "E0000007", "Not found: Resource not found (User)")
        self.sessions[user_id] = 0
        return web.Response(status=204)


def _org() -> Org:
    users = {
        JDOE: {
            "id": JDOE,
            "status": "ACTIVE",
            "profile": {"login": "jdoe@corp.example", "email": "jdoe@corp.example"},
        },
    }
    for number in range(7):
        user_id = f"00u2user{number:012d}"
        users[user_id] = {"id": user_id, "status": "ACTIVE" if number % 3 else "SUSPENDED",
                          "profile": {"login": f"user{number}@corp.example"}}  # fmt: skip
    return Org(users=users, sessions={JDOE: 3})


async def _serve(org: Org, body: Callable[[str, Org], Awaitable[Any]]) -> Any:
    async with serving(org.app()) as base:
        org.base = base
        return await body(org.base, org)


def _ctx(
    session: aiohttp.ClientSession, *, token: str = TOKEN, dry_run: bool = False
) -> ActionContext:
    return ActionContext(
        run_id="run_1",
        step_id="suspend",
        attempt=1,
        idempotency_key="run_1:suspend:1",
        dry_run=dry_run,
        secrets={"api_token": SecretValue(token)},
        http=session,
    )


def _run(body: Callable[[Okta, aiohttp.ClientSession, Org], Awaitable[Any]]) -> Any:
    async def scenario(base: str, org: Org) -> Any:
        connector = Okta(OktaConfig(base_url=base))
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        try:
            return await body(connector, session, org)
        finally:
            await session.close()

    return asyncio.run(_serve(_org(), scenario))


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Okta)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


def test_suspend_and_unsuspend_through_the_runner(instances: InstanceService) -> None:
    async def body(base: str, org: Org) -> None:
        instances.create("okta", "okta", {"base_url": base}, {"api_token": SecretValue(TOKEN)})
        runner = ActionRunner(
            instances.registry,
            secrets=EnvSecrets({}),
            instances=instances,
            outbound=OutboundPolicy.parse(["127.0.0.1"]),
        )
        try:
            out = await runner.run_once("okta.suspend", {"login": "jdoe@corp.example"})
            assert out["user_id"] == JDOE
            assert out["status"] == "SUSPENDED"
            assert org.users[JDOE]["status"] == "SUSPENDED"
            again = await runner.run_once("okta.suspend", {"user_id": JDOE})
            assert again["already"] is True
            await runner.run_once("okta.clear_sessions", {"user_id": JDOE, "oauth_tokens": True})
            assert org.sessions[JDOE] == 0
            await runner.run_once("okta.unsuspend", {"login": "jdoe@corp.example"})
            assert org.users[JDOE]["status"] == "ACTIVE"
            assert "admin@corp.example" in await runner.health(Okta, "okta")
        finally:
            await runner.aclose()

    asyncio.run(_serve(_org(), body))


def test_reconcile_reads_the_user_status_back() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        ctx = _ctx(session)
        user = UserIn(login="jdoe@corp.example")
        assert (await okta.is_suspended(ctx, user)).state is Landed.NOT_LANDED
        assert (await okta.is_active(ctx, user)).state is Landed.LANDED
        await okta.suspend(ctx, user)
        landed = await okta.is_suspended(ctx, user)
        assert landed.state is Landed.LANDED
        assert landed.output is not None
        assert landed.output["user_id"] == JDOE
        assert (await okta.is_active(ctx, user)).state is Landed.NOT_LANDED
        await okta.unsuspend(ctx, UserIn(user_id=JDOE))
        assert (await okta.is_active(ctx, user)).state is Landed.LANDED

    _run(body)


def test_search_follows_link_headers_across_pages() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        ctx = _ctx(session)
        found = await okta.find_users(ctx, FindUsersIn(search='status eq "ACTIVE"', page_size=2))
        active = sorted(u["id"] for u in org.users.values() if u["status"] == "ACTIVE")
        assert sorted(u.id for u in found.users) == active
        assert len(active) == 5
        assert not found.truncated
        assert org.requests.count(("GET", "/api/v1/users")) == 3
        capped = await okta.find_users(
            ctx, FindUsersIn(search='status eq "ACTIVE"', page_size=2, max_results=3)
        )
        assert len(capped.users) == 3
        assert capped.truncated
        one = await okta.find_users(ctx, FindUsersIn(login="user4@corp.example"))
        assert [u.login for u in one.users] == ["user4@corp.example"]
        read = await okta.get_user(ctx, GetUserIn(user="jdoe@corp.example"))
        assert read.id == JDOE

    _run(body)


def test_a_next_link_to_another_host_is_not_followed() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        evil = web.json_response([], headers={"Link": '<http://127.0.0.2:1/x>; rel="next"'})
        org.fail.append(evil)
        with pytest.raises(PermanentError, match="another host"):
            await okta.find_users(_ctx(session), FindUsersIn(search='status eq "ACTIVE"'))

    _run(body)


def test_unknown_users_and_refused_transitions() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        ctx = _ctx(session)
        with pytest.raises(
            TargetNotFound, match=re.escape("no user with login 'ghost@corp.example'")
        ):
            await okta.suspend(ctx, UserIn(login="ghost@corp.example"))
        with pytest.raises(TargetNotFound, match="00uGhost"):
            await okta.clear_sessions(ctx, ClearSessionsIn(user_id="00uGhost"))
        org.users[JDOE]["status"] = "DEPROVISIONED"
        with pytest.raises(PermanentError, match="E0000001: Api validation failed") as refused:
            await okta.suspend(ctx, UserIn(user_id=JDOE))
        assert not refused.value.retryable

    _run(body)


def test_a_bad_token_is_an_auth_error_without_the_token() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        wrong = "00wrongTOKENvalue"
        with pytest.raises(AuthError) as refused:
            await okta.suspend(_ctx(session, token=wrong), UserIn(user_id=JDOE))
        assert "E0000011: Invalid token provided" in refused.value.message
        assert "api_token" in refused.value.message
        assert wrong not in str(refused.value)
        assert org.users[JDOE]["status"] == "ACTIVE"

    _run(body)


def test_rate_limits_and_server_errors() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        ctx = _ctx(session)
        reset = str(int(time.time()) + 45)
        headers = {"X-Rate-Limit-Reset": reset, "X-Rate-Limit-Remaining": "0"}
        org.fail.append(_error(429, "E0000047", "API call exceeded rate limit", **headers))
        with pytest.raises(RateLimited) as limited:
            await okta.suspend(ctx, UserIn(user_id=JDOE))
        assert limited.value.retry_after is not None
        assert 1 <= limited.value.retry_after <= 46
        org.fail.append(_error(429, "E0000047", "slow down", **{"Retry-After": "9"}))
        with pytest.raises(RateLimited) as told:
            await okta.suspend(ctx, UserIn(user_id=JDOE))
        assert told.value.retry_after == 9
        org.fail.append(_error(500, "E0000009", "Internal Server Error"))
        with pytest.raises(TransientError, match="E0000009"):
            await okta.suspend(ctx, UserIn(user_id=JDOE))
        org.fail.append(
            _error(403, "E0000006", "You do not have permission to perform the requested action")
        )
        with pytest.raises(AuthError, match="E0000006"):
            await okta.suspend(ctx, UserIn(user_id=JDOE))
        assert org.users[JDOE]["status"] == "ACTIVE"

    _run(body)


def test_a_dry_run_reads_but_sends_no_write() -> None:
    async def body(okta: Okta, session: aiohttp.ClientSession, org: Org) -> None:
        ctx = _ctx(session, dry_run=True)
        out = await okta.suspend(ctx, UserIn(login="jdoe@corp.example"))
        assert out.simulated
        assert out.user_id == JDOE  # resolved with a GET
        assert out.would_send == {
            "method": "POST",
            "path": f"/api/v1/users/{JDOE}/lifecycle/suspend",
        }
        await okta.unsuspend(ctx, UserIn(user_id="00u2user000000000000"))
        await okta.clear_sessions(ctx, ClearSessionsIn(user_id=JDOE))
        assert [r for r in org.requests if r[0] != "GET"] == []
        assert org.users[JDOE]["status"] == "ACTIVE"
        assert org.sessions[JDOE] == 3

    _run(body)
