"""The SSRF guard on actions' HTTP client, against a real server on loopback.

Refused destinations are refused before any connection is made: these tests tell a refusal by
its exception type (``OutboundBlocked``), never by a failed connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quell import aio
from quell.connectors.http import Http, RequestIn
from quell.sdk import ActionContext, PermanentError
from quell.sdk.http import GuardedConnector, OutboundBlocked, OutboundPolicy, guard
from tests.fixtures.webapp import serving

LOOPBACK_ONLY = OutboundPolicy.parse(["127.0.0.1"])


async def _with_server(
    body: Callable[[str, list[str]], Awaitable[Any]],
) -> Any:
    """Serve on 127.0.0.1:0 and run ``body(base_url, paths_hit)``."""
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    async def bounce(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/bounce", bounce)
    async with serving(app) as base:
        return await body(base, hits)


def _run(body: Callable[[str, list[str]], Awaitable[Any]]) -> Any:
    return aio.run(_with_server(body))


async def _get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


def test_an_allowed_address_is_reached_and_others_are_refused_before_connecting() -> None:
    async def body(base: str, hits: list[str]) -> None:
        async with guard(LOOPBACK_ONLY) as session:
            assert await _get(session, f"{base}/ok") == 200
            assert await _get(session, f"{base}/ok") == 200  # pooled, checked again
            port = base.rsplit(":", 1)[1]
            # 127.0.0.2 is loopback too (Linux routes all of 127/8 to lo), but not allowed.
            for url in (
                f"http://127.0.0.2:{port}/ok",
                "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.1/",
                "http://[::1]/",
                "http://0.0.0.0/",
                "http://224.0.0.1/",
            ):
                with pytest.raises(OutboundBlocked, match="is blocked"):
                    await _get(session, url)
        assert hits == ["/ok", "/ok"]

    _run(body)


def test_the_default_policy_refuses_loopback_and_names_resolving_to_it() -> None:
    async def body(base: str, hits: list[str]) -> None:
        port = base.rsplit(":", 1)[1]
        async with guard(OutboundPolicy()) as session:
            with pytest.raises(OutboundBlocked, match=r"127\.0\.0\.1"):
                await _get(session, f"{base}/ok")
            # A name is checked on what it resolves to.
            with pytest.raises((OutboundBlocked, aiohttp.ClientConnectorError)) as caught:
                await _get(session, f"http://localhost:{port}/ok")
            error = caught.value
            blocked = error if isinstance(error, OutboundBlocked) else error.__cause__
            assert isinstance(blocked, OutboundBlocked), error
            assert "localhost" in str(blocked)
        assert hits == []

    _run(body)


def test_a_redirect_to_a_refused_address_is_not_followed() -> None:
    async def body(base: str, hits: list[str]) -> None:
        async with guard(LOOPBACK_ONLY) as session:
            # Allowed hop to allowed hop: followed.
            assert await _get(session, f"{base}/bounce?to={base}/ok") == 200
            with pytest.raises(OutboundBlocked, match=r"169\.254\.169\.254"):
                await _get(session, f"{base}/bounce?to=http://169.254.169.254/latest/")
        assert hits == ["/bounce", "/ok", "/bounce"]

    _run(body)


def test_a_host_name_on_the_allow_list_is_allowed() -> None:
    async def body(base: str, hits: list[str]) -> None:
        port = base.rsplit(":", 1)[1]
        async with guard(OutboundPolicy.parse(["localhost"])) as session:
            assert await _get(session, f"http://localhost:{port}/ok") == 200
            with pytest.raises(OutboundBlocked):  # the name is allowed, not its address
                await _get(session, f"{base}/ok")
        assert hits == ["/ok"]

    _run(body)


def test_the_http_action_fails_its_step_naming_the_host_but_not_the_query() -> None:
    async def body(base: str, hits: list[str]) -> str:
        async with guard(OutboundPolicy()) as session:
            ctx = ActionContext(
                run_id="run_x",
                step_id="block",
                attempt=1,
                idempotency_key="run_x:block:1",
                http=session,
            )
            params = RequestIn.model_validate(
                {"url": f"{base}/ok?api_key=s3cr3t", "method": "POST", "json": {"ip": "x"}}
            )
            with pytest.raises(PermanentError) as caught:
                await Http().request(ctx, params)
        assert hits == []
        assert caught.value.code == "outbound_blocked"
        return str(caught.value)

    message = _run(body)
    assert "127.0.0.1" in message
    assert "s3cr3t" not in message
    assert "api_key" not in message


def test_the_event_loop_setting_picks_the_loop() -> None:
    from quell.settings import EventLoop

    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert aio.run(kind(), EventLoop.ASYNCIO) == "asyncio"
    import gc

    assert gc.get_threshold() == aio.GC_THRESHOLDS  # the process is tuned for an engine
    assert gc.get_freeze_count() > 0
    assert aio.loop_name(EventLoop.ASYNCIO) == "asyncio"
    uvloop = pytest.importorskip("uvloop")
    assert aio.run(kind(), EventLoop.AUTO) == "uvloop"
    assert aio.run(kind(), EventLoop.UVLOOP) == "uvloop"
    assert aio.loop_name(EventLoop.AUTO) == "uvloop"
    assert uvloop is not None


def test_a_connection_that_cannot_be_made_is_tried_again_before_failing() -> None:
    import socket

    async def scenario() -> tuple[int, int]:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        session = guard(LOOPBACK_ONLY)
        connector = session.connector
        assert isinstance(connector, GuardedConnector)
        async with session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await _get(session, f"http://127.0.0.1:{port}/")
            refused = connector.connect_retries
            with pytest.raises(OutboundBlocked):  # a refusal by policy: no retry
                await _get(session, "http://10.0.0.1/")
        return refused, connector.connect_retries

    refused, after = aio.run(scenario())
    assert refused == 2  # three attempts in all
    assert after == 2


def test_a_cookie_one_call_was_given_is_not_sent_with_the_next() -> None:
    """Every run's actions share one HTTP pool: a cookie a server set in one run's call must
    not go out with another run's (nor with the connector harness's calls)."""
    from quell.connectors.registry import Registry
    from quell.engine.actions import ActionRunner, EnvSecrets
    from quell.sdk.testing import Harness

    cookies: list[str | None] = []

    async def login(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "run-a-secret")
        return response

    # By name: aiohttp's cookie jar keeps no cookie of a bare IP address anyway.
    policy = OutboundPolicy.parse(["localhost", "127.0.0.1"])

    async def body() -> None:
        app = web.Application()
        app.router.add_post("/login", login)
        registry = Registry()
        registry.add(Http)
        async with serving(app) as served:
            base = served.replace("127.0.0.1", "localhost")
            runner = ActionRunner(registry, secrets=EnvSecrets({}), outbound=policy)
            try:
                for _ in range(2):
                    done = await runner.run_once(
                        "http.request", {"url": f"{base}/login", "method": "POST"}, record=False
                    )
                    assert done["status"] == 200
            finally:
                await runner.aclose()
            async with Harness(Http, allow=["localhost", "127.0.0.1"]) as harness:
                for _ in range(2):
                    await harness.call("request", {"url": f"{base}/login", "method": "POST"})
        # The control: a session that keeps cookies sends it back, so the server did set one.
        async with serving(app) as served, guard(policy) as session:
            for _ in range(2):
                async with session.post(
                    f"{served.replace('127.0.0.1', 'localhost')}/login"
                ) as response:
                    assert response.status == 200

    aio.run(body())
    assert cookies == [None, None, None, None, None, "session=run-a-secret"]
