"""ServiceNow against a local server that speaks the documented Table API.

The server checks basic or bearer auth on every request, keeps incident records (string
columns, a ``number`` sequence, journal fields), answers ``GET /api/now/table/incident`` a page
at a time (``sysparm_limit``/``sysparm_offset``, ``sysparm_query`` of ``field=value`` terms
joined by ``^``, ``X-Total-Count`` and a ``Link`` header with ``next`` while more are left),
answers errors in ServiceNow's shape (``{"error": {"message", "detail"}, "status":
"failure"}``), and can be told to answer any request with a given status.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.connectors.servicenow import (
    GetIn,
    IncidentIn,
    ListIn,
    ServiceNow,
    ServiceNowConfig,
    UpdateIn,
    correlation_id,
)
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

USER = "quell.integration"
PASSWORD = "Sn0w-pa55word-value"
OAUTH = "oauth-access-token-value"
TABLE = "/api/now/table/incident"
REGISTRY = Registry()
REGISTRY.add(ServiceNow)
INCIDENT = {
    "short_description": "C2 beacon from web-01",
    "description": "Alert 4711.",
    "urgency": 1,
    "impact": 2,
    "category": "security",
}
COLUMNS = {"short_description", "description", "urgency", "impact", "category", "state",
           "correlation_id", "correlation_display", "assignment_group", "caller_id",
           "work_notes", "comments", "close_code", "close_notes", "u_mitre"}  # fmt: skip


def _failure(status: int, message: str, detail: str = "") -> web.Response:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return web.json_response(body, status=status)


class FakeServiceNow:
    """The Table API endpoints the connector uses, with state."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str]] = []
        self.faults: dict[str, tuple[int, dict[str, str], Any]] = {}
        self.journal: dict[str, list[str]] = {}

    def add(self, **columns: str) -> dict[str, Any]:
        sys_id = uuid.uuid4().hex
        record = {"sys_id": sys_id, "number": f"INC{10001 + len(self.records):07d}", "state": "1",
                  "urgency": "3", "impact": "3", "priority": "5", "short_description": "",
                  "description": "", "correlation_id": "", **columns}  # fmt: skip
        self.records[sys_id] = record
        self.journal[sys_id] = []
        return record

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        auth = request.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if auth not in (basic, f"Bearer {OAUTH}"):
            return _failure(401, "User Not Authenticated", "Required to provide Auth information")
        fault = self.faults.get(f"{request.method} {request.path}") or self.faults.get("*")
        if fault is not None:
            status, headers, body = fault
            return web.json_response(body, status=status, headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _fields(request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
        wanted = request.query.get("sysparm_fields")
        if not wanted:
            return dict(record)
        return {name: record.get(name, "") for name in wanted.split(",")}

    def _record(self, request: web.Request) -> dict[str, Any] | None:
        return self.records.get(request.match_info["sys_id"])

    async def list(self, request: web.Request) -> web.Response:
        terms = [t for t in request.query.get("sysparm_query", "").split("^") if t]
        hits = list(self.records.values())
        for term in terms:
            if term.startswith("ORDERBY"):
                hits.sort(key=lambda record, name=term[7:]: record.get(name, ""))
                continue
            name, sep, value = term.partition("=")
            if not sep:
                return _failure(400, "Invalid query", f"cannot parse {term!r}")
            hits = [record for record in hits if record.get(name) == value]
        limit = int(request.query.get("sysparm_limit", "10000"))
        offset = int(request.query.get("sysparm_offset", "0"))
        page = [self._fields(request, record) for record in hits[offset : offset + limit]]
        url = request.url.with_query(None)
        links = [f'<{url}?sysparm_offset=0&sysparm_limit={limit}>;rel="first"']
        if offset + limit < len(hits):
            links.append(
                f'<{url}?sysparm_offset={offset + limit}&sysparm_limit={limit}>;rel="next"'
            )
        links.append(f'<{url}?sysparm_offset={max(0, len(hits) - limit)}>;rel="last"')
        headers = {"X-Total-Count": str(len(hits)), "Link": ",".join(links)}
        return web.json_response({"result": page}, headers=headers)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        unknown = set(body) - COLUMNS
        if unknown:
            return _failure(400, "Invalid field", f"incident has no column {sorted(unknown)[0]}")
        if not body.get("short_description"):
            return _failure(400, "Data Policy Exception", "Short description is mandatory")
        record = self.add(**{name: str(value) for name, value in body.items()})
        record["priority"] = str(min(5, int(record["urgency"]) + int(record["impact"]) - 1))
        return web.json_response({"result": record}, status=201)

    async def get(self, request: web.Request) -> web.Response:
        record = self._record(request)
        if record is None:
            return _failure(
                404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
            )
        return web.json_response({"result": self._fields(request, record)})

    async def patch(self, request: web.Request) -> web.Response:
        record = self._record(request)
        if record is None:
            return _failure(
                404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
            )
        body = await request.json()
        for name, value in body.items():
            if name not in COLUMNS:
                return _failure(400, "Invalid field", f"incident has no column {name}")
            if name in ("work_notes", "comments"):
                self.journal[record["sys_id"]].append(f"{name}: {value}")
            else:
                record[name] = value
        return web.json_response({"result": self._fields(request, record)})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_get(TABLE, self.list)
        app.router.add_post(TABLE, self.create)
        app.router.add_get(TABLE + "/{sys_id}", self.get)
        app.router.add_patch(TABLE + "/{sys_id}", self.patch)
        return app

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.seen if method != "GET"]


@asynccontextmanager
async def serve() -> AsyncIterator[tuple[FakeServiceNow, str]]:
    fake = FakeServiceNow()
    async with serving(fake.app()) as base:
        yield fake, base


@asynccontextmanager
async def client(
    base: str, secrets: dict[str, str] | None = None, **config: Any
) -> AsyncIterator[tuple[ServiceNow, Any]]:
    session = guard(OutboundPolicy.parse(["127.0.0.1"]))
    snow = ServiceNow(ServiceNowConfig.model_validate({"base_url": base, "username": USER,
                                                      **config}))  # fmt: skip
    sealed = {k: SecretValue(v) for k, v in (secrets or {"password": PASSWORD}).items()}

    def ctx(key: str = "run_1:step_1", dry_run: bool = False) -> ActionContext:
        return ActionContext(run_id="run_1", step_id="step_1", attempt=1, idempotency_key=key,
                             dry_run=dry_run, secrets=sealed, http=session)  # fmt: skip

    try:
        yield snow, ctx
    finally:
        await session.close()


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, REGISTRY)


def test_every_action_through_the_runner(instances: InstanceService) -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            instances.create("snow", "servicenow", {"base_url": base, "username": USER},
                             {"password": SecretValue(PASSWORD)})  # fmt: skip
            runner = ActionRunner(REGISTRY, secrets=EnvSecrets({}), instances=instances,
                                  outbound=OutboundPolicy.parse(["127.0.0.1"]))  # fmt: skip
            try:
                assert "incident table readable" in await runner.health(ServiceNow, "snow")
                made = await runner.run_once(
                    "servicenow.create_incident",
                    {**INCIDENT, "fields": {"u_mitre": "T1071"}},
                    instance="snow",
                )
                assert made["created"] is True
                assert made["number"] == "INC0010001"
                stored = fake.records[made["sys_id"]]
                assert stored["short_description"] == INCIDENT["short_description"]
                assert (stored["urgency"], stored["impact"], stored["u_mitre"]) == (
                    "1",
                    "2",
                    "T1071",
                )
                assert stored["correlation_id"].startswith("quell-")

                updated = await runner.run_once(
                    "servicenow.update_incident",
                    {"sys_id": made["sys_id"], "state": 2, "work_notes": "Isolated."},
                    instance="snow",
                )
                assert (updated["updated"], updated["state"]) == (True, "2")
                assert fake.journal[made["sys_id"]] == ["work_notes: Isolated."]

                read = await runner.run_once(
                    "servicenow.get_incident", {"sys_id": made["sys_id"]}, instance="snow"
                )
                assert (read["number"], read["state"]) == ("INC0010001", "2")
                listed = await runner.run_once(
                    "servicenow.list_incidents", {"query": "state=2"}, instance="snow"
                )
                assert [item["sys_id"] for item in listed["incidents"]] == [made["sys_id"]]
                assert listed["total"] == 1
            finally:
                await runner.aclose()

    asyncio.run(scenario())


def test_create_is_idempotent_and_reconciles() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (snow, ctx):
            params = IncidentIn.model_validate(INCIDENT)
            assert (await snow.find_incident(ctx(), params)).state is Landed.NOT_LANDED
            first = await snow.create_incident(ctx(), params)
            assert first.created
            assert fake.records[first.sys_id]["correlation_id"] == correlation_id("run_1:step_1")
            landed = await snow.find_incident(ctx(), params)
            assert landed.state is Landed.LANDED
            assert landed.output is not None
            assert (landed.output["sys_id"], landed.output["number"]) == (
                first.sys_id,
                first.number,
            )
            again = await snow.create_incident(ctx(), params)
            assert (again.sys_id, again.created) == (first.sys_id, False)
            assert len(fake.records) == 1
            other = await snow.create_incident(ctx("run_2:step_1"), params)
            assert other.sys_id != first.sys_id
            assert fake.writes() == [("POST", TABLE), ("POST", TABLE)]

    asyncio.run(scenario())


def test_listing_pages_by_offset_within_bounds() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            numbers = [fake.add(short_description=f"n{n}", state="1")["number"] for n in range(7)]
            fake.add(short_description="closed", state="7")
            async with client(base, page_size=3) as (snow, ctx):
                found = await snow.list_incidents(ctx(), ListIn(query="state=1^ORDERBYnumber"))
                assert [item.number for item in found.incidents] == numbers
                assert (found.total, found.truncated) == (7, False)
                assert fake.seen.count(("GET", TABLE)) == 3
                limited = await snow.list_incidents(ctx(), ListIn(query="state=1", limit=5))
                assert (limited.count, limited.truncated) == (5, True)
            async with client(base, page_size=2, max_pages=2) as (snow, ctx):
                bounded = await snow.list_incidents(ctx(), ListIn())
                assert (bounded.count, bounded.total, bounded.truncated) == (4, 8, True)

    asyncio.run(scenario())


def test_a_dry_run_only_reads() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (snow, ctx):
            record = fake.add(short_description="open")
            made = await snow.create_incident(
                ctx(dry_run=True), IncidentIn.model_validate(INCIDENT)
            )
            assert made.simulated
            assert made.payload is not None
            assert made.payload["correlation_id"] == correlation_id("run_1:step_1")
            changed = await snow.update_incident(
                ctx(dry_run=True), UpdateIn(sys_id=record["sys_id"], state=6, close_notes="ok")
            )
            assert (changed.simulated, changed.number, changed.state) == (True, "INC0010001", "1")
            assert changed.payload == {"state": "6", "close_notes": "ok"}
            assert fake.writes() == []
            assert record["state"] == "1"
            assert len(fake.records) == 1

    asyncio.run(scenario())


def test_errors_map_to_the_sdk_tree_without_secrets() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            async with client(base, {"password": "wrong-password-value"}) as (snow, ctx):
                with pytest.raises(AuthError) as refused:
                    await snow.health(ctx())
                assert "User Not Authenticated" in refused.value.message
                assert "wrong-password-value" not in str(refused.value)
            async with client(base, {"oauth_token": OAUTH}, auth="bearer") as (snow, ctx):
                assert "readable" in await snow.health(ctx())
            async with client(base) as (snow, ctx):
                missing = "0" * 32
                with pytest.raises(TargetNotFound, match=f"incident {missing} not found"):
                    await snow.get_incident(ctx(), GetIn(sys_id=missing))
                with pytest.raises(TargetNotFound, match="No Record found"):
                    await snow.update_incident(ctx(), UpdateIn(sys_id=missing, state=2))
                params = IncidentIn.model_validate({**INCIDENT, "fields": {"bogus": "1"}})
                with pytest.raises(PermanentError, match="Invalid field: incident has no column"):
                    await snow.create_incident(ctx(), params)
                fake.faults["*"] = (429, {"Retry-After": "30"}, {"error": {"message": "slow"}})
                with pytest.raises(RateLimited) as limited:
                    await snow.health(ctx())
                assert limited.value.retry_after == 30
                fake.faults["*"] = (500, {}, {"error": {"message": "boom"}, "status": "failure"})
                with pytest.raises(TransientError, match=r"HTTP 500 \(boom\)"):
                    await snow.health(ctx())
                fake.faults["*"] = (403, {}, {"error": {"message": f"ACL {PASSWORD}"}})
                with pytest.raises(AuthError) as forbidden:
                    await snow.health(ctx())
                assert PASSWORD not in str(forbidden.value)

    asyncio.run(scenario())
