"""CrowdStrike Falcon against a local server that speaks Falcon's documented API.

The server grants OAuth2 client-credentials tokens (``POST /oauth2/token``), checks the bearer
token on every other request, keeps devices (with ``status``) and custom IOCs, pages IOC
queries by ``offset``/``limit`` with ``meta.pagination.total``, and answers errors in Falcon's
``{"errors": [{"code", "message"}]}`` shape. The connector's own HTTP code talks to it over
loopback through the SSRF-guarded client.
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

from quell.connectors.crowdstrike import (
    Crowdstrike,
    CrowdstrikeConfig,
    DeleteIocsIn,
    DeviceIn,
    FindDeviceIn,
    HostIn,
    IocIn,
    ListIocsIn,
)
from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.engine.actions import ActionRunner, EnvSecrets
from quell.runtime import Runtime
from quell.sdk import (
    ActionContext,
    AuthError,
    Landed,
    RateLimited,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from quell.sdk.http import OutboundPolicy, guard
from tests.fixtures.webapp import serving

CLIENT_ID = "cid-0123456789"
CLIENT_SECRET = "s3cr3t-falcon-key-XYZ"
HOST_ID = "a" * 32
OTHER_ID = "b" * 32


def _errors(status: int, code: int, message: str, **headers: str) -> web.Response:
    body = {"meta": {}, "resources": [], "errors": [{"code": code, "message": message}]}
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Falcon:
    """The fake Falcon cloud's state."""

    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    iocs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail: list[web.Response] = field(default_factory=list)  # answers to give first, in order

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/oauth2/token", self.token)
        app.router.add_get("/devices/queries/devices/v1", self.query_devices)
        app.router.add_get("/devices/entities/devices/v2", self.get_devices)
        app.router.add_post("/devices/entities/devices-actions/v2", self.device_action)
        app.router.add_post("/iocs/entities/indicators/v1", self.create_iocs)
        app.router.add_get("/iocs/entities/indicators/v1", self.get_iocs)
        app.router.add_delete("/iocs/entities/indicators/v1", self.delete_iocs)
        app.router.add_get("/iocs/queries/indicators/v1", self.query_iocs)
        return app

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path != "/oauth2/token":
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or header[7:] not in self.tokens:
                return _errors(401, 401, "access denied, invalid bearer token")
        if self.fail:
            return self.fail.pop(0)
        return await handler(request)

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return _errors(401, 401, "access denied, invalid client credentials")
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": 1799}, status=201
        )

    async def query_devices(self, request: web.Request) -> web.Response:
        wanted = request.query.get("filter", "")
        ids = [
            key
            for key, device in self.devices.items()
            if not wanted or wanted == f"hostname:'{device['hostname']}'"
        ]
        meta = {"pagination": {"offset": 0, "limit": 100, "total": len(ids)}}
        return web.json_response({"meta": meta, "resources": ids, "errors": []})

    async def get_devices(self, request: web.Request) -> web.Response:
        ids = request.query.getall("ids", [])
        found = [{"device_id": i, **self.devices[i]} for i in ids if i in self.devices]
        if not found:
            return _errors(404, 404, "Device not found")
        return web.json_response({"meta": {}, "resources": found, "errors": []})

    async def device_action(self, request: web.Request) -> web.Response:
        name = request.query.get("action_name")
        body = await request.json()
        ids = body.get("ids") or []
        if name not in ("contain", "lift_containment") or len(ids) != 1:
            return _errors(400, 400, "invalid action_name or ids")
        if ids[0] not in self.devices:
            return _errors(404, 404, f"Device {ids[0]} not found")
        self.devices[ids[0]]["status"] = "contained" if name == "contain" else "normal"
        return web.json_response(
            {"meta": {}, "resources": [{"id": ids[0], "path": ""}], "errors": []}, status=202
        )

    async def create_iocs(self, request: web.Request) -> web.Response:
        body = await request.json()
        made = []
        for indicator in body.get("indicators") or []:
            if not indicator.get("value") or indicator.get("type") not in (
                "domain",
                "sha256",
                "md5",
                "ipv4",
                "ipv6",
            ):
                return _errors(400, 400, "invalid indicator")  # fmt: skip
            ioc_id = secrets.token_hex(32)
            self.iocs[ioc_id] = {"id": ioc_id, **indicator}
            made.append(self.iocs[ioc_id])
        return web.json_response({"meta": {}, "resources": made, "errors": []}, status=201)

    async def get_iocs(self, request: web.Request) -> web.Response:
        found = [self.iocs[i] for i in request.query.getall("ids", []) if i in self.iocs]
        if not found:
            return _errors(404, 404, "Could not find any IOCs matching the ids")
        return web.json_response({"meta": {}, "resources": found, "errors": []})

    async def delete_iocs(self, request: web.Request) -> web.Response:
        ids = request.query.getall("ids", [])
        if not any(i in self.iocs for i in ids):
            return _errors(404, 404, "Could not find any IOCs matching the ids")
        for i in ids:
            self.iocs.pop(i, None)
        return web.json_response({"meta": {}, "resources": ids, "errors": []})

    async def query_iocs(self, request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", "100"))
        items = sorted(self.iocs.values(), key=lambda ioc: ioc["id"])
        wanted = request.query.get("filter")
        if wanted:
            items = [i for i in items if wanted == f"type:'{i['type']}'+value:'{i['value']}'"]
        page = [ioc["id"] for ioc in items[offset : offset + limit]]
        meta = {"pagination": {"offset": offset, "limit": limit, "total": len(items)}}
        return web.json_response({"meta": meta, "resources": page, "errors": []})


Body = Callable[[str, Falcon], Awaitable[Any]]


async def _serve(falcon: Falcon, body: Body) -> Any:
    async with serving(falcon.app()) as base:
        return await body(base, falcon)


def _falcon() -> Falcon:
    return Falcon(
        devices={
            HOST_ID: {"hostname": "WS-FIN-042", "status": "normal", "platform_name": "Windows"},
            OTHER_ID: {"hostname": "SRV-DB-01", "status": "normal", "platform_name": "Linux"},
        }
    )


def _ctx(
    session: aiohttp.ClientSession, *, secret: str = CLIENT_SECRET, dry_run: bool = False
) -> ActionContext:
    return ActionContext(
        run_id="run_1",
        step_id="contain",
        attempt=1,
        idempotency_key="run_1:contain:1",
        dry_run=dry_run,
        secrets={"client_id": SecretValue(CLIENT_ID), "client_secret": SecretValue(secret)},
        http=session,
    )


def _run(body: Callable[[Crowdstrike, aiohttp.ClientSession, Falcon], Awaitable[Any]]) -> Any:
    """Run ``body`` with a connector pointed at a fresh fake Falcon."""

    async def scenario(base: str, falcon: Falcon) -> Any:
        connector = Crowdstrike(CrowdstrikeConfig(base_url=base))
        session = guard(OutboundPolicy.parse(["127.0.0.1"]))
        try:
            return await body(connector, session, falcon)
        finally:
            await session.close()

    return asyncio.run(_serve(_falcon(), scenario))


# -- through the engine ----------------------------------------------------------------------------


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    registry = Registry()
    registry.add(Crowdstrike)
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, registry)


def test_contain_and_lift_through_the_runner(instances: InstanceService) -> None:
    async def body(base: str, falcon: Falcon) -> None:
        instances.create(
            "falcon",
            "crowdstrike",
            {"base_url": base},
            {"client_id": SecretValue(CLIENT_ID), "client_secret": SecretValue(CLIENT_SECRET)},
        )
        runner = ActionRunner(
            instances.registry,
            secrets=EnvSecrets({}),
            instances=instances,
            outbound=OutboundPolicy.parse(["127.0.0.1"]),
        )
        try:
            out = await runner.run_once("crowdstrike.contain", {"hostname": "WS-FIN-042"})
            assert out["device_id"] == HOST_ID
            assert falcon.devices[HOST_ID]["status"] == "contained"
            assert falcon.devices[OTHER_ID]["status"] == "normal"
            await runner.run_once("crowdstrike.lift_containment", {"device_id": HOST_ID})
            assert falcon.devices[HOST_ID]["status"] == "normal"
            dry = await runner.run_once("crowdstrike.contain", {"device_id": HOST_ID}, dry_run=True)
            assert dry["simulated"] is True
            assert falcon.devices[HOST_ID]["status"] == "normal"
            health = await runner.health(Crowdstrike, "falcon")
            assert "2 host(s)" in health
            assert falcon.token_requests == 1  # one token served every call
        finally:
            await runner.aclose()

    asyncio.run(_serve(_falcon(), body))


# -- direct calls ----------------------------------------------------------------------------------


def test_reconcile_reads_the_containment_status_back() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        ctx = _ctx(session)
        host = HostIn(hostname="WS-FIN-042")
        assert (await cs.is_contained(ctx, host)).state is Landed.NOT_LANDED
        assert (await cs.is_lifted(ctx, host)).state is Landed.LANDED
        await cs.contain(ctx, host)
        landed = await cs.is_contained(ctx, host)
        assert landed.state is Landed.LANDED
        assert landed.output is not None
        assert landed.output["device_id"] == HOST_ID
        assert (await cs.is_lifted(ctx, host)).state is Landed.NOT_LANDED
        await cs.lift_containment(ctx, host)
        assert (await cs.is_lifted(ctx, host)).state is Landed.LANDED

    _run(body)


def test_an_unknown_host_is_named() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        with pytest.raises(TargetNotFound, match="no host named 'WS-GONE'"):
            await cs.contain(_ctx(session), HostIn(hostname="WS-GONE"))
        with pytest.raises(TargetNotFound, match="c" * 32):
            await cs.contain(_ctx(session), HostIn(device_id="c" * 32))
        assert ("POST", "/devices/entities/devices-actions/v2") in falcon.requests

    _run(body)


def test_iocs_are_created_listed_across_pages_and_deleted() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        ctx = _ctx(session)
        made = []
        for number in range(7):
            ioc = IocIn(type="domain", value=f"evil{number}.example", description="c2")
            assert (await cs.ioc_exists(ctx, ioc)).state is Landed.NOT_LANDED
            made.append(await cs.create_ioc(ctx, ioc))
            assert (await cs.ioc_exists(ctx, ioc)).state is Landed.LANDED
        assert len(falcon.iocs) == 7
        assert falcon.iocs[made[0].id or ""]["action"] == "detect"
        listed = await cs.list_iocs(ctx, ListIocsIn(page_size=3))
        assert sorted(listed.ids) == sorted(item.id for item in made)
        assert listed.total == 7
        pages = [p for p in falcon.requests if p == ("GET", "/iocs/queries/indicators/v1")]
        assert len(pages) >= 3 + 7 * 2  # 3 pages for the listing, 2 checks per create
        capped = await cs.list_iocs(ctx, ListIocsIn(page_size=2, max_results=3))
        assert len(capped.ids) == 3
        assert capped.truncated is True
        doomed = DeleteIocsIn(ids=[made[0].id or "", made[1].id or ""])
        assert (await cs.iocs_gone(ctx, doomed)).state is Landed.NOT_LANDED
        out = await cs.delete_ioc(ctx, doomed)
        assert out.deleted == doomed.ids
        assert len(falcon.iocs) == 5
        assert (await cs.iocs_gone(ctx, doomed)).state is Landed.LANDED
        again = await cs.delete_ioc(ctx, doomed)
        assert again.already_gone == doomed.ids

    _run(body)


def test_one_token_serves_many_calls_and_a_401_fetches_another() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        ctx = _ctx(session)
        for _ in range(3):
            await cs.find_device(ctx, FindDeviceIn(hostname="WS-FIN-042"))
        assert falcon.token_requests == 1
        falcon.tokens.clear()  # revoked (or expired early) at Falcon's end
        found = await cs.find_device(ctx, FindDeviceIn(hostname="WS-FIN-042"))
        assert found.device_ids == [HOST_ID]
        assert falcon.token_requests == 2
        await cs.get_device(ctx, DeviceIn(device_id=HOST_ID))
        assert falcon.token_requests == 2

    _run(body)


def test_bad_credentials_are_an_auth_error_without_the_secret() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        wrong = "wrong-secret-value-123"
        with pytest.raises(AuthError) as refused:
            await cs.contain(_ctx(session, secret=wrong), HostIn(device_id=HOST_ID))
        assert "credentials were refused" in refused.value.message
        assert "invalid client credentials" in refused.value.message
        assert wrong not in str(refused.value)
        assert wrong not in repr(refused.value.to_dict())
        assert falcon.devices[HOST_ID]["status"] == "normal"

    _run(body)


def test_errors_map_to_the_sdk_tree() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        ctx = _ctx(session)
        host = HostIn(device_id=HOST_ID)
        falcon.fail.append(_errors(429, 429, "API rate limit exceeded.", **{"Retry-After": "12"}))
        with pytest.raises(RateLimited) as limited:
            await cs.contain(ctx, host)
        assert limited.value.retry_after == 12
        assert limited.value.retryable
        falcon.fail.append(_errors(500, 500, "internal error"))
        with pytest.raises(TransientError, match="HTTP 500: internal error"):
            await cs.contain(ctx, host)
        falcon.fail.append(_errors(403, 403, "access denied, authorization failed"))
        with pytest.raises(AuthError, match="authorization failed"):
            await cs.contain(ctx, host)
        falcon.fail.append(_errors(400, 400, "Invalid indicator value. " + "x" * 1000))
        with pytest.raises(Exception, match="Invalid indicator value") as refused:
            await cs.create_ioc(ctx, IocIn(type="md5", value="nothex"))
        assert not refused.value.retryable  # type: ignore[attr-defined]
        assert len(str(refused.value)) < 500
        assert falcon.devices[HOST_ID]["status"] == "normal"

    _run(body)


def test_a_dry_run_sends_no_write() -> None:
    async def body(cs: Crowdstrike, session: aiohttp.ClientSession, falcon: Falcon) -> None:
        ctx = _ctx(session, dry_run=True)
        out = await cs.contain(ctx, HostIn(hostname="WS-FIN-042"))
        assert out.simulated
        await cs.lift_containment(ctx, HostIn(device_id=HOST_ID))
        ioc = await cs.create_ioc(ctx, IocIn(type="domain", value="evil.example"))
        assert ioc.would_send is not None
        await cs.delete_ioc(ctx, DeleteIocsIn(ids=["x"]))
        assert [r for r in falcon.requests if r[0] != "GET"] == []
        assert falcon.iocs == {}

    _run(body)
