"""``thehive``: alerts, cases and observables in TheHive 5, through its API v1.

- ``create_alert``: ``POST /api/v1/alert`` with ``type``, ``source`` and ``sourceRef`` =
  ``quell-<hash of the step's idempotency key>``. TheHive refuses a second alert with the same
  type, source and sourceRef (HTTP 400); the connector then finds the existing alert with
  ``POST /api/v1/query`` and returns it, so a retried attempt never makes a duplicate. The
  ``find_alert`` reconcile hook asks the same query.
- ``create_case``: ``POST /api/v1/case``, tagged ``quell:<hash>``; a retried attempt finds the
  case by that tag instead of opening another (``find_case`` reconciles).
- ``add_observable``: ``POST /api/v1/case/{id}/observable``; an observable the case already
  holds (TheHive answers 400) is found and returned.
- ``get_alert``, ``get_case``: ``GET /api/v1/alert/{id}``, ``GET /api/v1/case/{id}``.
- ``list_alerts``: the query API's ``listAlert`` with ``page`` steps, at most ``max_pages``.

Authentication is ``Authorization: Bearer <api_key>`` (secret ``api_key``), with an optional
``X-Organisation``. Errors carry TheHive's ``{"type", "message"}``, trimmed, never the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from quell.connectors import rest
from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    Landed,
    PermanentError,
    Reconciliation,
    RiskLevel,
    action,
)

MAX_BODY = 8 * 1024 * 1024
_ID = r"^~?[A-Za-z0-9_-]{1,64}$"
SOURCE_REF_PREFIX = "quell-"
CASE_TAG_PREFIX = "quell:"


class TheHiveConfig(BaseModel):
    """Where TheHive is and which organisation to act in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_url": "http://127.0.0.1:9"}]},
    )

    base_url: HttpUrl = Field(description="TheHive's address, e.g. https://thehive.corp:9000.")
    organisation: str | None = Field(None, max_length=100, description="X-Organisation.")
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")
    max_pages: int = Field(20, ge=1, le=1000, description="Pages a listing reads at most.")
    page_size: int = Field(100, ge=1, le=1000, description="Results asked for per page.")


def key_hash(idempotency_key: str) -> str:
    """A short, stable digest of an idempotency key."""
    return rest.idempotency_tag(idempotency_key)


def thehive_message(body: Any, text: str) -> str:
    """TheHive's error (``{"type": "...", "message": "..."}``), trimmed."""
    if isinstance(body, Mapping) and body.get("message"):
        kind = f"{body['type']}: " if body.get("type") else ""
        return f"{kind}{body['message']}"[:300]
    return text.strip()[:300]


def _eq(field: str, value: Any) -> dict[str, Any]:
    return {"_eq": {"_field": field, "_value": value}}


class ObservableIn(BaseModel):
    """An observable: a piece of data of a type TheHive knows (ip, domain, hash, …)."""

    model_config = ConfigDict(extra="forbid")

    dataType: str = Field(min_length=1, max_length=60)  # TheHive's field name
    data: str = Field(min_length=1, max_length=10000)
    message: str | None = Field(None, max_length=10000)
    tlp: int | None = Field(None, ge=0, le=4)
    ioc: bool = False
    sighted: bool = False
    tags: list[str] = Field(default_factory=list, max_length=50)


class AlertIn(ActionInput):
    """A new alert."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "C2 beacon from web-01",
                    "description": "Suricata alert 4711: web-01 beacons to 203.0.113.7.",
                    "type": "suricata",
                    "source": "quell",
                    "severity": 3,
                    "tags": ["c2"],
                    "observables": [{"dataType": "ip", "data": "203.0.113.7", "ioc": True}],
                }
            ]
        },
    )

    title: str = Field(min_length=1, max_length=512)
    description: str = Field(min_length=1, max_length=1048576)
    type: str = Field("quell", min_length=1, max_length=100)
    source: str = Field("quell", min_length=1, max_length=100)
    severity: int = Field(2, ge=1, le=4, description="1 low, 2 medium, 3 high, 4 critical.")
    tlp: int = Field(2, ge=0, le=4, description="0 clear, 1 green, 2 amber, 3 amber+strict, 4 red.")
    pap: int = Field(2, ge=0, le=3, description="0 clear, 1 green, 2 amber, 3 red.")
    tags: list[str] = Field(default_factory=list, max_length=50)
    observables: list[ObservableIn] = Field(default_factory=list, max_length=500)


class CreatedOut(ActionOutput):
    """An alert, case or observable created or found."""

    id: str
    number: int | None = Field(None, description="A case's number.")
    source_ref: str | None = Field(None, description="An alert's sourceRef.")
    created: bool = False
    simulated: bool = False
    payload: dict[str, Any] | None = Field(None, description="Dry run only: what would be sent.")


class CaseIn(ActionInput):
    """A new case."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Compromise of web-01",
                    "description": "Opened by run run_01 after alert 4711.",
                    "severity": 3,
                    "tags": ["incident"],
                }
            ]
        },
    )

    title: str = Field(min_length=1, max_length=512)
    description: str = Field(min_length=1, max_length=1048576)
    severity: int = Field(2, ge=1, le=4)
    tlp: int = Field(2, ge=0, le=4)
    pap: int = Field(2, ge=0, le=3)
    tags: list[str] = Field(default_factory=list, max_length=50)
    assignee: str | None = Field(None, max_length=200)


class CaseObservableIn(ActionInput):
    """An observable to add to a case."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "case_id": "~41016",
                    "observable": {"dataType": "domain", "data": "evil.example", "ioc": True},
                }
            ]
        },
    )

    case_id: str = Field(pattern=_ID)
    observable: ObservableIn


class GetIn(ActionInput):
    """An alert or case by id."""

    id: str = Field(pattern=_ID)


class Entity(ActionOutput):
    """An alert or case as TheHive gives it (main fields; the rest kept as extras)."""

    id: str
    title: str = ""
    status: str = ""
    severity: int | None = None
    tags: list[str] = Field(default_factory=list)


class ListAlertsIn(ActionInput):
    """Alerts, optionally filtered."""

    source: str | None = Field(None, max_length=100)
    type: str | None = Field(None, max_length=100)
    status: str | None = Field(None, max_length=40, description="New, InProgress, Imported…")
    limit: int = Field(500, ge=1, le=100000)


class ListAlertsOut(ActionOutput):
    """Alerts found."""

    alerts: list[Entity]
    count: int
    truncated: bool = False


def _entity(body: Mapping[str, Any]) -> Entity:
    severity = body.get("severity")
    return Entity(
        id=str(body.get("_id", "")),
        title=str(body.get("title") or ""),
        status=str(body.get("status") or body.get("stage") or ""),
        severity=severity if isinstance(severity, int) else None,
        tags=[str(tag) for tag in body.get("tags") or []],
    )


class TheHive(Connector):
    """TheHive 5: alerts, cases and observables."""

    name = "thehive"
    title = "TheHive 5"
    Config = TheHiveConfig
    secrets = ("api_key",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, TheHiveConfig):
            raise PermanentError("thehive: the instance needs a config with base_url")
        self.settings = config
        self.base = str(config.base_url).rstrip("/")
        self._site = rest.Site("thehive", self.base, config.timeout, MAX_BODY)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _call(
        self, ctx: ActionContext, method: str, path: str, *, what: str, body: Any = None
    ) -> tuple[int, Any, str]:
        """Send one request; ``(status, parsed answer, TheHive's message)`` for 2xx and 400,
        an ActionError for anything else."""
        key = ctx.secret("api_key").reveal()
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        if self.settings.organisation:
            headers["X-Organisation"] = self.settings.organisation
        where = f"thehive: {method} {path}"
        reply = await self._site.request(
            ctx,
            method,
            path,
            headers=headers,
            json=body,
        )
        message = rest.scrub(thehive_message(reply.body, reply.text), (key,))
        if reply.status != 400:
            rest.raise_for_call(
                reply,
                vendor="thehive",
                where=where,
                what=what,
                message=message,
                unauthorized="TheHive refused the API key{detail}",
                forbidden="the key may not do this{detail}",
            )
        return reply.status, reply.body, message

    async def _ok(
        self, ctx: ActionContext, method: str, path: str, *, what: str, body: Any = None
    ) -> Any:
        """A request whose 400 is a plain refusal."""
        status, parsed, message = await self._call(ctx, method, path, what=what, body=body)
        if status == 400:
            raise PermanentError(
                f"thehive: {method} {path}: HTTP 400 ({message})", details={"status": 400}
            )
        return parsed

    async def _query(
        self, ctx: ActionContext, steps: list[dict[str, Any]], limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Run a query, a page at a time (``page`` from/to), for at most ``max_pages``."""
        found: list[dict[str, Any]] = []
        for _page in range(self.settings.max_pages):
            size = min(self.settings.page_size, limit - len(found))
            start = len(found)
            page = {"_name": "page", "from": start, "to": start + size}
            answer = await self._ok(
                ctx, "POST", "/api/v1/query", what="query", body={"query": [*steps, page]}
            )
            items = [item for item in answer or [] if isinstance(item, dict)]
            found += items
            if len(items) < size:
                return found, False
            if len(found) >= limit:
                return found[:limit], True
        return found, True

    # -- alerts --------------------------------------------------------------------------------

    @staticmethod
    def alert_payload(params: AlertIn, source_ref: str) -> dict[str, Any]:
        """The ``POST /api/v1/alert`` body for ``params``."""
        payload = params.model_dump(exclude_none=True, exclude={"observables"})
        payload["sourceRef"] = source_ref
        if params.observables:
            payload["observables"] = [
                item.model_dump(exclude_none=True) for item in params.observables
            ]
        return payload

    async def _find_alert(
        self, ctx: ActionContext, type_: str, source: str, source_ref: str
    ) -> CreatedOut | None:
        steps: list[dict[str, Any]] = [
            {"_name": "listAlert"},
            {
                "_name": "filter",
                "_and": [_eq("type", type_), _eq("source", source), _eq("sourceRef", source_ref)],
            },
        ]
        alerts, _ = await self._query(ctx, steps, 1)
        if not alerts:
            return None
        return CreatedOut(id=str(alerts[0].get("_id", "")), source_ref=source_ref)

    @action(
        "create_alert",
        risk=RiskLevel.LOW,
        title="Raise a TheHive alert",
        supports_dry_run=True,
        reconcile="find_alert",
    )
    async def create_alert(self, ctx: ActionContext, params: AlertIn) -> CreatedOut:
        """Create an alert with its observables; when TheHive says one with this step's
        sourceRef exists, return that one."""
        source_ref = SOURCE_REF_PREFIX + key_hash(ctx.step_idempotency_key)
        payload = self.alert_payload(params, source_ref)
        if ctx.dry_run:
            return CreatedOut(id="", source_ref=source_ref, simulated=True, payload=payload)
        status, answer, message = await self._call(
            ctx, "POST", "/api/v1/alert", what="alert", body=payload
        )
        if status == 400:
            existing = await self._find_alert(ctx, params.type, params.source, source_ref)
            if existing is None:
                raise PermanentError(
                    f"thehive: POST /api/v1/alert: HTTP 400 ({message})", details={"status": 400}
                )
            ctx.log.info("thehive_alert_exists", alert=existing.id)
            return existing
        body = answer if isinstance(answer, Mapping) else {}
        return CreatedOut(id=str(body.get("_id", "")), source_ref=source_ref, created=True)

    async def find_alert(self, ctx: ActionContext, params: AlertIn) -> Reconciliation:
        """Reconcile ``create_alert``: is there an alert with this step's sourceRef?"""
        source_ref = SOURCE_REF_PREFIX + key_hash(ctx.step_idempotency_key)
        found = await self._find_alert(ctx, params.type, params.source, source_ref)
        if found is None:
            return Reconciliation(Landed.NOT_LANDED, detail=f"no alert has sourceRef {source_ref}")
        return Reconciliation(
            Landed.LANDED, found.model_dump(mode="json"), detail=f"alert {found.id}"
        )

    @action("get_alert", risk=RiskLevel.READ, title="Read a TheHive alert")
    async def get_alert(self, ctx: ActionContext, params: GetIn) -> Entity:
        """An alert's title, status, severity and tags."""
        answer = await self._ok(ctx, "GET", f"/api/v1/alert/{params.id}", what=f"alert {params.id}")
        return _entity(answer if isinstance(answer, Mapping) else {})

    @action("list_alerts", risk=RiskLevel.READ, title="List TheHive alerts")
    async def list_alerts(self, ctx: ActionContext, params: ListAlertsIn) -> ListAlertsOut:
        """Alerts matching the filters, newest first, page after page up to ``limit``."""
        steps: list[dict[str, Any]] = [{"_name": "listAlert"}]
        terms = [
            _eq(name, value)
            for name, value in (
                ("source", params.source),
                ("type", params.type),
                ("status", params.status),
            )
            if value is not None
        ]
        if terms:
            steps.append({"_name": "filter", "_and": terms})
        steps.append({"_name": "sort", "_fields": [{"_createdAt": "desc"}]})
        alerts, truncated = await self._query(ctx, steps, params.limit)
        entities = [_entity(alert) for alert in alerts]
        return ListAlertsOut(alerts=entities, count=len(entities), truncated=truncated)

    # -- cases ---------------------------------------------------------------------------------

    async def _find_case(self, ctx: ActionContext, tag: str) -> CreatedOut | None:
        steps: list[dict[str, Any]] = [
            {"_name": "listCase"},
            {"_name": "filter", **_eq("tags", tag)},
        ]
        cases, _ = await self._query(ctx, steps, 1)
        if not cases:
            return None
        number = cases[0].get("number")
        return CreatedOut(
            id=str(cases[0].get("_id", "")), number=number if isinstance(number, int) else None
        )

    @action(
        "create_case",
        risk=RiskLevel.LOW,
        title="Open a TheHive case",
        supports_dry_run=True,
        reconcile="find_case",
    )
    async def create_case(self, ctx: ActionContext, params: CaseIn) -> CreatedOut:
        """Open a case, or return the one an earlier attempt of this step opened."""
        tag = CASE_TAG_PREFIX + key_hash(ctx.step_idempotency_key)
        payload = params.model_dump(exclude_none=True)
        payload["tags"] = [*params.tags, tag]
        if ctx.dry_run:
            return CreatedOut(id="", simulated=True, payload=payload)
        existing = await self._find_case(ctx, tag)
        if existing is not None:
            return existing
        answer = await self._ok(ctx, "POST", "/api/v1/case", what="case", body=payload)
        body = answer if isinstance(answer, Mapping) else {}
        number = body.get("number")
        return CreatedOut(
            id=str(body.get("_id", "")),
            number=number if isinstance(number, int) else None,
            created=True,
        )

    async def find_case(self, ctx: ActionContext, params: CaseIn) -> Reconciliation:
        """Reconcile ``create_case``: is there a case tagged with this step's key?"""
        tag = CASE_TAG_PREFIX + key_hash(ctx.step_idempotency_key)
        found = await self._find_case(ctx, tag)
        if found is None:
            return Reconciliation(Landed.NOT_LANDED, detail=f"no case is tagged {tag}")
        return Reconciliation(
            Landed.LANDED, found.model_dump(mode="json"), detail=f"case {found.id}"
        )

    @action("get_case", risk=RiskLevel.READ, title="Read a TheHive case")
    async def get_case(self, ctx: ActionContext, params: GetIn) -> Entity:
        """A case's title, status, severity and tags."""
        answer = await self._ok(ctx, "GET", f"/api/v1/case/{params.id}", what=f"case {params.id}")
        return _entity(answer if isinstance(answer, Mapping) else {})

    @action(
        "add_observable",
        risk=RiskLevel.LOW,
        title="Add an observable to a TheHive case",
        supports_dry_run=True,
    )
    async def add_observable(self, ctx: ActionContext, params: CaseObservableIn) -> CreatedOut:
        """Add the observable; when the case already holds it (TheHive answers 400), return
        the one it holds. A dry run reads the case, so a missing case shows."""
        path = f"/api/v1/case/{params.case_id}"
        what = f"case {params.case_id}"
        payload = params.observable.model_dump(exclude_none=True)
        if ctx.dry_run:
            await self._ok(ctx, "GET", path, what=what)
            return CreatedOut(id="", simulated=True, payload=payload)
        status, answer, message = await self._call(
            ctx, "POST", f"{path}/observable", what=what, body=payload
        )
        if status == 400:
            steps: list[dict[str, Any]] = [
                {"_name": "getCase", "idOrName": params.case_id},
                {"_name": "observables"},
                {
                    "_name": "filter",
                    "_and": [
                        _eq("dataType", params.observable.dataType),
                        _eq("data", params.observable.data),
                    ],
                },
            ]
            held, _ = await self._query(ctx, steps, 1)
            if not held:
                raise PermanentError(
                    f"thehive: POST {path}/observable: HTTP 400 ({message})",
                    details={"status": 400},
                )
            return CreatedOut(id=str(held[0].get("_id", "")))
        # TheHive 5 answers with the list of observables it created.
        first = answer[0] if isinstance(answer, list) and answer else answer
        body = first if isinstance(first, Mapping) else {}
        return CreatedOut(id=str(body.get("_id", "")), created=True)

    async def health(self, ctx: ActionContext) -> str:
        """Who the key belongs to (``GET /api/v1/user/current``)."""
        answer = await self._ok(ctx, "GET", "/api/v1/user/current", what="current user")
        body = answer if isinstance(answer, Mapping) else {}
        who = body.get("login") or body.get("name") or "?"
        org = body.get("organisation")
        return f"thehive at {self.base}: signed in as {who}" + (f" ({org})" if org else "")


__all__ = [
    "AlertIn",
    "CaseIn",
    "CaseObservableIn",
    "CreatedOut",
    "Entity",
    "GetIn",
    "ListAlertsIn",
    "ListAlertsOut",
    "ObservableIn",
    "TheHive",
    "TheHiveConfig",
    "key_hash",
    "thehive_message",
]
