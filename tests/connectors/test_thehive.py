"""TheHive against a local server that speaks the documented TheHive 5 API v1.

The server checks ``Authorization: Bearer <key>`` on every request, keeps alerts (refusing a
second one with the same type, source and sourceRef with HTTP 400, as TheHive does), cases and
their observables (refusing a duplicate observable with 400), answers the query API
(``POST /api/v1/query``: ``listAlert``, ``listCase``, ``getCase`` + ``observables``,
``filter`` with ``_eq``/``_and``, ``sort``, ``page`` from/to), answers errors in TheHive's
shape (``{"type", "message"}``), and can be told to answer any request with a given status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from quell.connectors.instances import InstanceService
from quell.connectors.registry import Registry
from quell.connectors.thehive import (
    AlertIn,
    CaseIn,
    CaseObservableIn,
    GetIn,
    ListAlertsIn,
    TheHive,
    TheHiveConfig,
    key_hash,
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

API_KEY = "hive-api-key-value-0123456789"
REGISTRY = Registry()
REGISTRY.add(TheHive)
ALERT = {
    "title": "C2 beacon from web-01",
    "description": "Suricata alert 4711.",
    "type": "suricata",
    "source": "quell",
    "severity": 3,
    "tags": ["c2"],
    "observables": [{"dataType": "ip", "data": "203.0.113.7", "ioc": True}],
}
CASE = {"title": "Compromise of web-01", "description": "After alert 4711.", "severity": 3}


def _problem(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": kind, "message": message}, status=status)


def _matches(item: dict[str, Any], condition: dict[str, Any]) -> bool:
    if "_and" in condition:
        return all(_matches(item, part) for part in condition["_and"])
    if "_eq" in condition:
        field, value = condition["_eq"]["_field"], condition["_eq"]["_value"]
        have = item.get(field)
        return value in have if isinstance(have, list) else have == value
    raise ValueError(f"unsupported filter {condition}")


class FakeHive:
    """The TheHive 5 endpoints the connector uses, with state."""

    def __init__(self) -> None:
        self.alerts: dict[str, dict[str, Any]] = {}
        self.cases: dict[str, dict[str, Any]] = {}
        self.observables: dict[str, list[dict[str, Any]]] = {}
        self.seen: list[tuple[str, str]] = []
        self.queries: list[list[dict[str, Any]]] = []
        self.faults: dict[str, tuple[int, dict[str, str], Any]] = {}
        self.counter = 4096

    def _id(self) -> str:
        self.counter += 8
        return f"~{self.counter}"

    def add_alert(self, **fields: Any) -> dict[str, Any]:
        alert = {"_id": self._id(), "_type": "Alert", "status": "New", "severity": 2,
                 "tags": [], "_createdAt": self.counter, **fields}  # fmt: skip
        self.alerts[alert["_id"]] = alert
        return alert

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _problem(401, "AuthenticationError", "Authentication failure")
        fault = self.faults.get(f"{request.method} {request.path}") or self.faults.get("*")
        if fault is not None:
            status, headers, body = fault
            return web.json_response(body, status=status, headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    async def current(self, request: web.Request) -> web.Response:
        return web.json_response({"_id": "~8", "login": "quell@soc.local", "name": "Quell",
                                  "organisation": "soc"})  # fmt: skip

    async def create_alert(self, request: web.Request) -> web.Response:
        body = await request.json()
        for name in ("type", "source", "sourceRef", "title", "description"):
            if not body.get(name):
                return _problem(400, "AttributeCheckingError", f"Attribute {name} is missing")
        if not 1 <= body.get("severity", 2) <= 4 or not 0 <= body.get("tlp", 2) <= 4:
            return _problem(400, "AttributeCheckingError", "Invalid severity or tlp")
        for alert in self.alerts.values():
            if (alert["type"], alert["source"], alert["sourceRef"]) == (
                body["type"], body["source"], body["sourceRef"],
            ):  # fmt: skip
                return _problem(400, "CreateError", (
                    f"Alert ({body['type']}, {body['source']}, {body['sourceRef']}) "
                    "already exists in organisation soc"
                ))  # fmt: skip
        observables = body.pop("observables", [])
        alert = self.add_alert(**body)
        self.observables[alert["_id"]] = observables
        return web.json_response(alert, status=201)

    async def get_alert(self, request: web.Request) -> web.Response:
        alert = self.alerts.get(request.match_info["id"])
        if alert is None:
            return _problem(404, "NotFoundError", f"Alert {request.match_info['id']} not found")
        return web.json_response(alert)

    async def create_case(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("title") or not body.get("description"):
            return _problem(400, "AttributeCheckingError", "Attribute title is missing")
        case = {"_id": self._id(), "_type": "Case", "number": len(self.cases) + 1,
                "status": "New", "stage": "New", "tags": [], **body}  # fmt: skip
        self.cases[case["_id"]] = case
        self.observables[case["_id"]] = []
        return web.json_response(case, status=201)

    async def get_case(self, request: web.Request) -> web.Response:
        case = self.cases.get(request.match_info["id"])
        if case is None:
            return _problem(404, "NotFoundError", f"Case {request.match_info['id']} not found")
        return web.json_response(case)

    async def add_observable(self, request: web.Request) -> web.Response:
        case_id = request.match_info["id"]
        if case_id not in self.cases:
            return _problem(404, "NotFoundError", f"Case {case_id} not found")
        body = await request.json()
        if not body.get("dataType") or not body.get("data"):
            return _problem(400, "AttributeCheckingError", "Attribute data is missing")
        held = self.observables[case_id]
        if any((o["dataType"], o["data"]) == (body["dataType"], body["data"]) for o in held):
            return _problem(400, "CreateError", "Observable already exists")
        observable = {"_id": self._id(), "_type": "Observable", **body}
        held.append(observable)
        return web.json_response([observable], status=201)

    async def query(self, request: web.Request) -> web.Response:
        steps = (await request.json())["query"]
        self.queries.append(steps)
        items: list[dict[str, Any]] = []
        for step in steps:
            name = step["_name"]
            if name == "listAlert":
                items = list(self.alerts.values())
            elif name == "listCase":
                items = list(self.cases.values())
            elif name == "getCase":
                if step["idOrName"] not in self.cases:
                    return _problem(404, "NotFoundError", f"Case {step['idOrName']} not found")
                items = [self.cases[step["idOrName"]]]
            elif name == "observables":
                items = [o for case in items for o in self.observables[case["_id"]]]
            elif name == "filter":
                condition = {key: value for key, value in step.items() if key != "_name"}
                items = [item for item in items if _matches(item, condition)]
            elif name == "sort":
                items.sort(key=lambda item: item.get("_createdAt", 0), reverse=True)
            elif name == "page":
                items = items[step["from"] : step["to"]]
            else:
                return _problem(400, "BadRequest", f"Unknown query operation {name}")
        return web.json_response(items)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        app.router.add_get("/api/v1/user/current", self.current)
        app.router.add_post("/api/v1/alert", self.create_alert)
        app.router.add_get("/api/v1/alert/{id}", self.get_alert)
        app.router.add_post("/api/v1/case", self.create_case)
        app.router.add_get("/api/v1/case/{id}", self.get_case)
        app.router.add_post("/api/v1/case/{id}/observable", self.add_observable)
        app.router.add_post("/api/v1/query", self.query)
        return app

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.seen if method != "GET"]


@asynccontextmanager
async def serve() -> AsyncIterator[tuple[FakeHive, str]]:
    fake = FakeHive()
    async with serving(fake.app()) as base:
        yield fake, base


@asynccontextmanager
async def client(
    base: str, key: str = API_KEY, **config: Any
) -> AsyncIterator[tuple[TheHive, Any]]:
    session = guard(OutboundPolicy.parse(["127.0.0.1"]))
    hive = TheHive(TheHiveConfig.model_validate({"base_url": base, **config}))

    def ctx(idem: str = "run_1:step_1", dry_run: bool = False) -> ActionContext:
        return ActionContext(run_id="run_1", step_id="step_1", attempt=1, idempotency_key=idem,
                             dry_run=dry_run, secrets={"api_key": SecretValue(key)},
                             http=session)  # fmt: skip

    try:
        yield hive, ctx
    finally:
        await session.close()


@pytest.fixture
def instances(runtime: Runtime) -> InstanceService:
    return InstanceService(runtime.db, runtime.clock, runtime.secret_box, REGISTRY)


def test_every_action_through_the_runner(instances: InstanceService) -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            instances.create("hive", "thehive", {"base_url": base, "organisation": "soc"},
                             {"api_key": SecretValue(API_KEY)})  # fmt: skip
            runner = ActionRunner(REGISTRY, secrets=EnvSecrets({}), instances=instances,
                                  outbound=OutboundPolicy.parse(["127.0.0.1"]))  # fmt: skip
            try:
                health = await runner.health(TheHive, "hive")
                assert "signed in as quell@soc.local (soc)" in health
                alert = await runner.run_once("thehive.create_alert", ALERT, instance="hive")
                assert alert["created"] is True
                stored = fake.alerts[alert["id"]]
                assert (stored["type"], stored["source"]) == ("suricata", "quell")
                assert stored["sourceRef"] == alert["source_ref"]
                assert alert["source_ref"].startswith("quell-")
                assert (stored["severity"], stored["tlp"], stored["pap"]) == (3, 2, 2)
                assert fake.observables[alert["id"]] == [
                    {"dataType": "ip", "data": "203.0.113.7", "ioc": True, "sighted": False,
                     "tags": []},
                ]  # fmt: skip
                read = await runner.run_once("thehive.get_alert", {"id": alert["id"]},
                                             instance="hive")  # fmt: skip
                assert (read["title"], read["status"], read["severity"]) == (
                    ALERT["title"], "New", 3,
                )  # fmt: skip

                case = await runner.run_once("thehive.create_case", CASE, instance="hive")
                assert (case["created"], case["number"]) == (True, 1)
                observable = {"dataType": "domain", "data": "evil.example", "ioc": True}
                added = await runner.run_once(
                    "thehive.add_observable",
                    {"case_id": case["id"], "observable": observable},
                    instance="hive",
                )
                assert added["created"] is True
                assert fake.observables[case["id"]][0]["data"] == "evil.example"
                got = await runner.run_once("thehive.get_case", {"id": case["id"]},
                                            instance="hive")  # fmt: skip
                assert got["title"] == CASE["title"]
                listed = await runner.run_once("thehive.list_alerts", {"source": "quell"},
                                               instance="hive")  # fmt: skip
                assert [item["id"] for item in listed["alerts"]] == [alert["id"]]
            finally:
                await runner.aclose()

    asyncio.run(scenario())


def test_a_duplicate_alert_is_found_not_doubled_and_reconciles() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (hive, ctx):
            params = AlertIn.model_validate(ALERT)
            assert (await hive.find_alert(ctx(), params)).state is Landed.NOT_LANDED
            first = await hive.create_alert(ctx(), params)
            assert first.created
            landed = await hive.find_alert(ctx(), params)
            assert landed.state is Landed.LANDED
            assert landed.output is not None
            assert landed.output["id"] == first.id
            retried = await hive.create_alert(ctx(), params)
            assert (retried.id, retried.created) == (first.id, False)
            assert len(fake.alerts) == 1
            # TheHive said 400 on the retry; the connector then looked the alert up.
            assert fake.writes()[-2:] == [("POST", "/api/v1/alert"), ("POST", "/api/v1/query")]
            assert fake.queries[-1][1]["_and"][2] == {
                "_eq": {"_field": "sourceRef", "_value": f"quell-{key_hash('run_1:step_1')}"}
            }
            other = await hive.create_alert(ctx("run_2:step_1"), params)
            assert other.id != first.id
            assert len(fake.alerts) == 2

    asyncio.run(scenario())


def test_cases_and_observables_are_idempotent() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (hive, ctx):
            params = CaseIn.model_validate(CASE)
            assert (await hive.find_case(ctx(), params)).state is Landed.NOT_LANDED
            first = await hive.create_case(ctx(), params)
            assert (await hive.find_case(ctx(), params)).state is Landed.LANDED
            again = await hive.create_case(ctx(), params)
            assert (again.id, again.created, again.number) == (first.id, False, 1)
            assert len(fake.cases) == 1
            observable = CaseObservableIn.model_validate(
                {"case_id": first.id, "observable": {"dataType": "ip", "data": "198.51.100.9"}}
            )
            added = await hive.add_observable(ctx(), observable)
            repeat = await hive.add_observable(ctx(), observable)
            assert (repeat.id, repeat.created) == (added.id, False)
            assert len(fake.observables[first.id]) == 1

    asyncio.run(scenario())


def test_listing_pages_within_bounds() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            made = [fake.add_alert(type="t", source="s", sourceRef=f"r{n}", title=f"a{n}")
                    for n in range(7)]  # fmt: skip
            fake.add_alert(type="t", source="other", sourceRef="x", title="other")
            newest_first = [alert["_id"] for alert in reversed(made)]
            async with client(base, page_size=3) as (hive, ctx):
                found = await hive.list_alerts(ctx(), ListAlertsIn(source="s"))
                assert [alert.id for alert in found.alerts] == newest_first
                assert not found.truncated
                pages = [steps[-1] for steps in fake.queries]
                assert pages == [{"_name": "page", "from": n, "to": n + 3} for n in (0, 3, 6)]
                limited = await hive.list_alerts(ctx(), ListAlertsIn(source="s", limit=3))
                assert (limited.count, limited.truncated) == (3, True)
            async with client(base, page_size=2, max_pages=2) as (hive, ctx):
                bounded = await hive.list_alerts(ctx(), ListAlertsIn())
                assert (bounded.count, bounded.truncated) == (4, True)

    asyncio.run(scenario())


def test_a_dry_run_only_reads() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base), client(base) as (hive, ctx):
            alert = await hive.create_alert(ctx(dry_run=True), AlertIn.model_validate(ALERT))
            assert alert.simulated
            assert alert.payload is not None
            assert alert.payload["sourceRef"] == alert.source_ref
            case = await hive.create_case(ctx(dry_run=True), CaseIn.model_validate(CASE))
            assert case.simulated
            real = await hive.create_case(ctx("setup"), CaseIn.model_validate(CASE))
            fake.seen.clear()
            observable = {"dataType": "ip", "data": "198.51.100.9"}
            added = await hive.add_observable(
                ctx(dry_run=True),
                CaseObservableIn.model_validate({"case_id": real.id, "observable": observable}),
            )
            assert added.simulated
            assert fake.writes() == []
            assert fake.seen == [("GET", f"/api/v1/case/{real.id}")]
            assert fake.alerts == {}
            assert fake.observables[real.id] == []
            with pytest.raises(TargetNotFound, match="case ~1 not found"):
                await hive.add_observable(
                    ctx(dry_run=True),
                    CaseObservableIn.model_validate({"case_id": "~1", "observable": observable}),
                )

    asyncio.run(scenario())


def test_errors_map_to_the_sdk_tree_without_secrets() -> None:
    async def scenario() -> None:
        async with serve() as (fake, base):
            async with client(base, key="wrong-key-value") as (hive, ctx):
                with pytest.raises(AuthError) as refused:
                    await hive.health(ctx())
                assert "AuthenticationError: Authentication failure" in refused.value.message
                assert "wrong-key-value" not in str(refused.value)
            async with client(base) as (hive, ctx):
                with pytest.raises(TargetNotFound, match="alert ~9 not found"):
                    await hive.get_alert(ctx(), GetIn(id="~9"))
                missing = CaseObservableIn.model_validate(
                    {"case_id": "~9", "observable": {"dataType": "ip", "data": "198.51.100.9"}}
                )
                with pytest.raises(TargetNotFound, match="case ~9"):
                    await hive.add_observable(ctx(), missing)
                fake.faults["POST /api/v1/alert"] = (
                    400, {}, {"type": "AttributeCheckingError", "message": "Invalid tlp"},
                )  # fmt: skip
                with pytest.raises(PermanentError, match="AttributeCheckingError: Invalid tlp"):
                    await hive.create_alert(ctx(), AlertIn.model_validate(ALERT))
                fake.faults["*"] = (429, {"Retry-After": "5"}, {"type": "TooMany", "message": ""})
                with pytest.raises(RateLimited) as limited:
                    await hive.health(ctx())
                assert limited.value.retry_after == 5
                fake.faults["*"] = (500, {}, {"type": "InternalError", "message": "db down"})
                with pytest.raises(TransientError, match="db down"):
                    await hive.health(ctx())
                fake.faults["*"] = (403, {}, {"type": "AuthorizationError", "message": API_KEY})
                with pytest.raises(AuthError) as forbidden:
                    await hive.health(ctx())
                assert API_KEY not in str(forbidden.value)

    asyncio.run(scenario())
