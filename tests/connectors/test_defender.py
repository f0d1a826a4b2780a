"""Defender for Endpoint against a local server that speaks its documented API.

The server plays Entra ID's token endpoint (``POST /{tenant}/oauth2/v2.0/token``, client
credentials, scope checked) and the Defender API: machines (``$filter=computerDnsName eq``),
the isolate / unisolate / runAntiVirusScan response actions (each creating a machine action),
and ``/api/machineactions`` paged with ``@odata.nextLink`` (two per page). Every API request's
bearer token is checked; errors come in Microsoft's ``{"error": {"code", "message"}}`` shape.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from quell.connectors.defender import (
    Defender,
    DefenderConfig,
    FindMachineIn,
    IsolateIn,
    ListActionsIn,
    ReleaseIn,
    ScanIn,
)
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

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "app-0123"
CLIENT_SECRET = "s3cr3t~defender~XYZ"
MACHINE = "1" * 40
OTHER = "2" * 40
PAGE = 2


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "target": "00-abc"}},
        status=status,
        headers=headers,
    )


@dataclass
class Mde:
    """The fake tenant's state."""

    base: str = ""
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: list[web.Response] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self.token)
        app.router.add_get("/api/machines", self.list_machines)
        app.router.add_post("/api/machines/{id}/{verb}", self.machine_action)
        app.router.add_get("/api/machineactions", self.list_actions)
        return app

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path.startswith("/api/"):
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or header[7:] not in self.tokens:
                return _error(401, "Unauthorized", "Authorization token is invalid or expired")
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
        if form.get("scope") != "https://api.securitycenter.microsoft.com/.default":
            return web.json_response({"error": "invalid_scope"}, status=400)
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.\r\n"
                    "Trace ID: 0000\r\nCorrelation ID: 1111",
                },
                status=401,
            )
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return web.json_response(
            {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        )

    async def list_machines(self, request: web.Request) -> web.Response:
        wanted = request.query.get("$filter", "")
        found = [
            m
            for m in self.machines.values()
            if not wanted or wanted == f"computerDnsName eq '{m['computerDnsName']}'"
        ]
        return web.json_response({"@odata.context": "x", "value": found})

    async def machine_action(self, request: web.Request) -> web.Response:
        machine, verb = request.match_info["id"], request.match_info["verb"]
        if machine not in self.machines:
            return _error(404, "ResourceNotFound", f"Machine {machine} was not found")
        body = await request.json()
        kinds = {
            "isolate": "Isolate",
            "unisolate": "Unisolate",
            "runAntiVirusScan": "RunAntiVirusScan",
        }
        if verb not in kinds or not body.get("Comment"):
            return _error(400, "InvalidRequestBody", "Comment is required")
        if verb == "isolate" and body.get("IsolationType") not in ("Full", "Selective"):
            return _error(400, "InvalidRequestBody", "IsolationType is invalid")
        if verb == "runAntiVirusScan" and body.get("ScanType") not in ("Quick", "Full"):
            return _error(400, "InvalidRequestBody", "ScanType is invalid")
        entry = {
            "id": secrets.token_hex(8),
            "type": kinds[verb],
            "status": "Pending",
            "machineId": machine,
            "computerDnsName": self.machines[machine]["computerDnsName"],
            "requestorComment": body["Comment"],
            "creationDateTimeUtc": f"2024-05-01T10:{len(self.actions):02d}:00Z",
        }
        self.actions.append(entry)
        return web.json_response(entry, status=201)

    async def list_actions(self, request: web.Request) -> web.Response:
        wanted = request.query.get("$filter", "")
        found = [
            a for a in self.actions if not wanted or wanted == f"machineId eq '{a['machineId']}'"
        ]
        skip = int(request.query.get("$skip", "0"))
        body: dict[str, Any] = {"value": found[skip : skip + PAGE]}
        if skip + PAGE < len(found):
            link = self.base + "/api/machineactions?" + f"$skip={skip + PAGE}"
            if wanted:
                link += f"&$filter={wanted}"
            body["@odata.nextLink"] = link
        return web.json_response(body)

    def isolated(self, machine: str) -> bool:
        kinds = [a["type"] for a in self.actions if a["machineId"] == machine]
        kinds = [k for k in kinds if k in ("Isolate", "Unisolate")]
        return bool(kinds) and kinds[-1] == "Isolate"


async def _serve(mde: Mde, body: Callable[[str, Mde], Awaitable[Any]]) -> Any:
    async with serving(mde.app()) as base:
        mde.base = base
        return await body(mde.base, mde)


def _mde() -> Mde:
    return Mde(
        machines={
            MACHINE: {
                "id": MACHINE,
                "computerDnsName": "ws-fin-042.corp.example",
                "osPlatform": "Windows10",
            },
            OTHER: {
                "id": OTHER,
                "computerDnsName": "srv-db-01.corp.example",
                "osPlatform": "Linux",
            },
        }
    )


def _ctx(
    session: aiohttp.ClientSession,
    *,
    secret: str = CLIENT_SECRET,
    dry_run: bool = False,
    key: str = "run_1:isolate:1",
    attempt: int = 1,
) -> ActionContext:
    return ActionContext(
        run_id="run_1",
        step_id="isolate",
        attempt=attempt,
        idempotency_key=key,
        dry_run=dry_run,
        secrets={"client_id": SecretValue(CLIENT_ID), "client_secret": SecretValue(secret)},
        http=session,
    )


def _run(
    body: Callable[[Defender, aiohttp.ClientSession, Mde], Awaitable[Any]], tenant: str = TENANT
) -> Any:
    async def scenario(base: str, mde: Mde) -> Any:
        connector = Defender(DefenderConfig(tenant_id=tenant, base_url=base, login_url=base))
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        try:
            return await body(connector, session, mde)
        finally:
            await session.close()

    return asyncio.run(_serve(_mde(), scenario))


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Defender)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


def test_isolate_and_release_through_the_runner(instances: InstanceService) -> None:
    async def body(base: str, mde: Mde) -> None:
        instances.create(
            "mde",
            "defender",
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
            out = await runner.run_once(
                "defender.isolate",
                {"machine_name": "ws-fin-042.corp.example", "isolation_type": "Selective"},
            )
            assert out["machine_id"] == MACHINE
            assert out["type"] == "Isolate"
            assert out["status"] == "Pending"
            assert mde.isolated(MACHINE)
            assert not mde.isolated(OTHER)
            await runner.run_once("defender.release", {"machine_id": MACHINE})
            assert not mde.isolated(MACHINE)
            health = await runner.health(Defender, "mde")
            assert TENANT in health
            assert mde.token_requests == 1
        finally:
            await runner.aclose()

    asyncio.run(_serve(_mde(), body))


def test_reconcile_reads_the_latest_isolation_action() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        ctx = _ctx(session)
        isolate = IsolateIn(machine_name="ws-fin-042.corp.example")
        release = ReleaseIn(machine_id=MACHINE)
        assert (await mde_c.is_isolated(ctx, isolate)).state is Landed.NOT_LANDED
        assert (await mde_c.is_released(ctx, release)).state is Landed.NOT_LANDED
        out = await mde_c.isolate(ctx, isolate)
        landed = await mde_c.is_isolated(ctx, isolate)
        assert landed.state is Landed.LANDED
        assert landed.output is not None
        assert landed.output["action_id"] == out.action_id
        assert (await mde_c.is_released(ctx, release)).state is Landed.NOT_LANDED
        await mde_c.release(ctx, release)
        assert (await mde_c.is_released(ctx, release)).state is Landed.LANDED
        assert (await mde_c.is_isolated(ctx, isolate)).state is Landed.NOT_LANDED

    _run(body)


def test_a_scan_is_requested_and_found_again_by_its_key() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        scan = ScanIn(machine_id=MACHINE, scan_type="Full")
        ctx = _ctx(session, key="run_9:scan:1")
        assert (await mde_c.scan_requested(ctx, scan)).state is Landed.NOT_LANDED
        out = await mde_c.run_av_scan(ctx, scan)
        assert out.type == "RunAntiVirusScan"
        assert "[quell:run_9:scan]" in mde.actions[-1]["requestorComment"]
        assert (await mde_c.scan_requested(ctx, scan)).state is Landed.LANDED
        retried = _ctx(session, key="run_9:scan:2", attempt=2)  # a later attempt of the step
        assert (await mde_c.scan_requested(retried, scan)).state is Landed.LANDED
        other = _ctx(session, key="run_9:rescan:1")  # another step
        assert (await mde_c.scan_requested(other, scan)).state is Landed.NOT_LANDED

    _run(body)


def test_machine_actions_page_through_next_links() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        ctx = _ctx(session)
        for number in range(4):
            await mde_c.run_av_scan(ctx, ScanIn(machine_id=MACHINE, comment=f"scan {number}"))
        await mde_c.isolate(ctx, IsolateIn(machine_id=OTHER))
        before = len(mde.requests)
        listed = await mde_c.list_machine_actions(ctx, ListActionsIn())
        assert len(listed.actions) == 5
        assert not listed.truncated
        assert len(mde.requests) - before == 3  # 2 + 2 + 1
        only = await mde_c.list_machine_actions(ctx, ListActionsIn(machine_id=MACHINE))
        assert {a.machine_id for a in only.actions} == {MACHINE}
        assert len(only.actions) == 4
        capped = await mde_c.list_machine_actions(ctx, ListActionsIn(max_results=3))
        assert len(capped.actions) == 3
        assert capped.truncated
        found = await mde_c.find_machine(ctx, FindMachineIn(machine_name="srv-db-01.corp.example"))
        assert [m.id for m in found.machines] == [OTHER]

    _run(body)


def test_a_next_link_to_another_host_is_not_followed() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        ctx = _ctx(session)
        mde.fail.append(
            web.json_response({"value": [], "@odata.nextLink": "http://127.0.0.2:1/api/steal"})
        )
        with pytest.raises(PermanentError, match="another host"):
            await mde_c.list_machine_actions(ctx, ListActionsIn())

    _run(body)


def test_one_token_serves_many_calls_and_a_401_fetches_another() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        ctx = _ctx(session)
        for _ in range(3):
            await mde_c.list_machine_actions(ctx, ListActionsIn())
        assert mde.token_requests == 1
        mde.tokens.clear()
        await mde_c.isolate(ctx, IsolateIn(machine_id=MACHINE))
        assert mde.token_requests == 2
        assert mde.isolated(MACHINE)

    _run(body)


def test_bad_credentials_are_an_auth_error_without_the_secret() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        wrong = "wrong~secret~value"
        with pytest.raises(AuthError) as refused:
            await mde_c.isolate(_ctx(session, secret=wrong), IsolateIn(machine_id=MACHINE))
        assert "AADSTS7000215: Invalid client secret provided." in refused.value.message
        assert "Correlation" not in refused.value.message
        assert wrong not in str(refused.value)
        assert CLIENT_SECRET not in str(refused.value)
        assert not mde.isolated(MACHINE)

    _run(body)


def test_an_unknown_tenant_is_an_auth_error() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        with pytest.raises(AuthError, match="Tenant not found"):
            await mde_c.health(_ctx(session))

    _run(body, tenant="nosuch.example")


def test_errors_map_to_the_sdk_tree() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        ctx = _ctx(session)
        isolate = IsolateIn(machine_id=MACHINE)
        mde.fail.append(
            _error(429, "TooManyRequests", "Rate limit is exceeded", **{"Retry-After": "30"})
        )
        with pytest.raises(RateLimited) as limited:
            await mde_c.isolate(ctx, isolate)
        assert limited.value.retry_after == 30
        mde.fail.append(_error(503, "ServiceUnavailable", "try later"))
        with pytest.raises(TransientError, match="ServiceUnavailable: try later"):
            await mde_c.isolate(ctx, isolate)
        mde.fail.append(_error(403, "Forbidden", "Missing application role Machine.Isolate"))
        with pytest.raises(AuthError, match=r"Machine\.Isolate"):
            await mde_c.isolate(ctx, isolate)
        with pytest.raises(TargetNotFound, match="3" * 40):
            await mde_c.isolate(ctx, IsolateIn(machine_id="3" * 40))
        with pytest.raises(
            TargetNotFound, match=re.escape("no machine named 'ghost.corp.example'")
        ):
            await mde_c.isolate(ctx, IsolateIn(machine_name="ghost.corp.example"))
        mde.fail.append(_error(400, "ActiveRequestAlreadyExists", "Action is already in progress"))
        with pytest.raises(PermanentError, match="ActiveRequestAlreadyExists"):
            await mde_c.isolate(ctx, isolate)
        assert mde.actions == []

    _run(body)


def test_a_dry_run_sends_no_write() -> None:
    async def body(mde_c: Defender, session: aiohttp.ClientSession, mde: Mde) -> None:
        ctx = _ctx(session, dry_run=True)
        out = await mde_c.isolate(ctx, IsolateIn(machine_name="ws-fin-042.corp.example"))
        assert out.simulated
        assert out.would_send is not None
        assert out.would_send["IsolationType"] == "Full"
        await mde_c.release(ctx, ReleaseIn(machine_id=MACHINE))
        await mde_c.run_av_scan(ctx, ScanIn(machine_id=MACHINE))
        assert mde.requests == []
        assert mde.actions == []

    _run(body)
