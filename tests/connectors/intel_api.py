"""What the threat-intel connectors' tests share: a fake vendor API on a local server, and
lookups through the runtime's action runner, as ``quell action run`` makes them.

:class:`FakeApi` records every request (method, path, query, form, headers), refuses one without
the right key in the vendor's header with the vendor's own 401, and answers with a queued
response (``queued``) before its routes when a test queued one. :func:`run_lookups` serves it,
adds an instance of the connector at its address (the key sealed as the instance's secret
``api_key``) and hands a scenario the runtime's action runner, its SSRF guard allowing loopback.
:func:`assert_key_never_shown` makes one lookup that works and one the vendor refuses, and checks
that the key went in the vendor's header and nowhere else: not in the error, the logs (structlog
and the standard library's), nor the audit log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from quell.engine.actions import ActionRunner
from quell.runtime import Runtime
from quell.sdk import AuthError, SecretValue
from tests.fixtures.webapp import serving

KEY = "intel-test-key-9f1c2e7a5b3d4c6e"
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request the fake API received."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeApi:
    """A vendor API: its routes, where it wants the key, and how it refuses a wrong one."""

    routes: list[web.RouteDef]
    key_header: str
    refuse: Callable[[], web.Response]
    key: str = KEY
    key_optional: bool = False  # a request without the header is let through
    seen: list[Seen] = field(default_factory=list)
    queued: list[web.Response] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.add_routes(self.routes)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        form = await request.post() if request.method == "POST" else {}
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                {name: str(value) for name, value in form.items()},
                dict(request.headers),
            )
        )
        given = request.headers.get(self.key_header)
        if given != self.key and not (given is None and self.key_optional):
            return self.refuse()
        if self.queued:
            return self.queued.pop(0)
        return await handler(request)


def run_lookups(
    runtime: Runtime,
    connector: str,
    api: FakeApi,
    scenario: Callable[[ActionRunner], Awaitable[T]],
    *,
    config: Mapping[str, Any] | None = None,
    key: str | None = KEY,
) -> T:
    """Serve ``api``, configure ``connector`` at it (with ``key`` as its secret, if any), and
    run ``scenario`` with the runtime's action runner."""

    async def served() -> T:
        async with serving(api.app()) as base:
            settings = runtime.settings.model_copy(update={"outbound_allow": ["127.0.0.1"]})
            local = dataclasses.replace(runtime, settings=settings)
            secrets = {"api_key": SecretValue(key)} if key is not None else {}
            local.connector_instances.create(
                connector, connector, {"base_url": base, **(config or {})}, secrets
            )
            runner = local.action_runner("cli:test")
            try:
                return await scenario(runner)
            finally:
                await runner.aclose()

    return asyncio.run(served())


async def lookup(runner: ActionRunner, connector: str, kind: str, value: str) -> dict[str, Any]:
    """``{connector}.lookup`` of ``value`` as a ``kind``, called by hand."""
    return await runner.run_once(
        f"{connector}.lookup", {"type": kind, "value": value}, actor="cli:test"
    )


def assert_key_never_shown(
    runtime: Runtime,
    connector: str,
    api: FakeApi,
    inputs: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    *,
    refusal: web.Response | None = None,
) -> None:
    """A lookup of ``inputs`` that works, then one refused (``refusal``, else the API's own
    401 to a key it no longer takes): the key reached the API in its header, and appears in
    no error, log line or audit entry."""
    caplog.set_level(logging.DEBUG)

    async def scenario(runner: ActionRunner) -> tuple[list[Any], AuthError]:
        with capture_logs() as logs:
            await lookup(runner, connector, *inputs)
            if refusal is not None:
                api.queued.append(refusal)
            else:
                api.key = "a-key-the-vendor-revoked"
            with pytest.raises(AuthError) as refused:
                await lookup(runner, connector, *inputs)
        return logs, refused.value

    logs, error = run_lookups(runtime, connector, api, scenario)
    assert [seen.headers.get(api.key_header) for seen in api.seen] == [KEY, KEY]
    assert "api_key" in error.message
    shown = [
        str(error),
        orjson.dumps(error.to_dict()).decode(),
        orjson.dumps(logs, default=str).decode(),
        caplog.text,
        *(
            orjson.dumps(entry.as_dict(), default=str).decode()
            for entry in runtime.audit.list_all()
        ),
    ]
    assert logs, "the runner logged nothing: the check would prove nothing"
    assert all(KEY not in text for text in shown)
