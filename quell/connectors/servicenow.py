"""``servicenow``: incidents in ServiceNow, through the Table API.

- ``create_incident``: ``POST /api/now/table/incident``. The record's ``correlation_id`` is
  ``quell-<hash of the step's idempotency key>``, so a retried attempt finds the incident its
  earlier attempt created (``sysparm_query=correlation_id=…``) instead of opening another,
  and the ``find_incident`` reconcile hook answers whether an attempt landed.
- ``update_incident``: ``PATCH /api/now/table/incident/{sys_id}``.
- ``get_incident``: ``GET /api/now/table/incident/{sys_id}``.
- ``list_incidents``: ``GET /api/now/table/incident`` with ``sysparm_query``, paging with
  ``sysparm_limit``/``sysparm_offset`` while the ``Link`` header names a ``next`` page (or,
  without it, while ``X-Total-Count`` says more are left), for at most ``max_pages`` pages.

Authentication is basic (config ``username``, secret ``password``) or an OAuth bearer token
(``auth: bearer``, secret ``oauth_token``). Errors carry ServiceNow's own
``{"error": {"message", "detail"}}``, trimmed, never a credential.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

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
_SYS_ID = r"^[0-9a-f]{32}$"
_TABLE = "/api/now/table/incident"
CORRELATION_PREFIX = "quell-"
_FIELDS = (
    "sys_id,number,state,short_description,description,urgency,impact,priority,"
    "correlation_id,assignment_group,category,sys_updated_on"
)


class ServiceNowConfig(BaseModel):
    """Where the instance is and how to sign in."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_url": "http://127.0.0.1:9", "username": "quell"}]},
    )

    base_url: HttpUrl = Field(description="The instance, e.g. https://acme.service-now.com.")
    username: str | None = Field(None, max_length=100, description="Basic auth: the user.")
    auth: Literal["basic", "bearer"] = "basic"
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")
    max_pages: int = Field(20, ge=1, le=1000, description="Pages a listing reads at most.")
    page_size: int = Field(100, ge=1, le=10000, description="Records asked for per page.")


def correlation_id(idempotency_key: str) -> str:
    """The ``correlation_id`` a step's incident carries."""
    return CORRELATION_PREFIX + rest.idempotency_tag(idempotency_key)


def servicenow_message(body: Any, text: str) -> str:
    """ServiceNow's error (``{"error": {"message", "detail"}, "status": "failure"}``), trimmed."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error = body["error"]
        parts = [str(error.get(name)) for name in ("message", "detail") if error.get(name)]
        if parts:
            return ": ".join(parts)[:300]
    return text.strip()[:300]


def _has_next(link: str | None) -> bool | None:
    """Whether a ``Link`` header names a next page (None without a Link header)."""
    if not link:
        return None
    return any('rel="next"' in part.replace(" ", "") for part in link.split(","))


class IncidentIn(ActionInput):
    """A new incident."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "short_description": "C2 beacon from web-01 to 203.0.113.7",
                    "description": "Alert 4711. Run run_01 isolated the host.",
                    "urgency": 1,
                    "impact": 2,
                    "category": "security",
                }
            ]
        },
    )

    short_description: str = Field(min_length=1, max_length=160)
    description: str = Field("", max_length=30000)
    urgency: int = Field(3, ge=1, le=3, description="1 high, 2 medium, 3 low.")
    impact: int = Field(3, ge=1, le=3, description="1 high, 2 medium, 3 low.")
    category: str | None = Field(None, max_length=40)
    assignment_group: str | None = Field(None, max_length=100, description="A sys_id or name.")
    caller_id: str | None = Field(None, max_length=100)
    fields: dict[str, str] = Field(default_factory=dict, description="More incident columns.")


class IncidentOut(ActionOutput):
    """An incident created or found."""

    sys_id: str
    number: str
    url: str = ""
    created: bool = False
    simulated: bool = False
    payload: dict[str, Any] | None = Field(None, description="Dry run only: what would be sent.")


class UpdateIn(ActionInput):
    """New values for an incident."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sys_id": "9d385017c611228701d22104cc95c371",
                    "state": 2,
                    "work_notes": "Host isolated by run run_01.",
                }
            ]
        },
    )

    sys_id: str = Field(pattern=_SYS_ID)
    state: int | None = Field(None, ge=1, le=8, description="1 new, 2 in progress, 6 resolved…")
    short_description: str | None = Field(None, min_length=1, max_length=160)
    urgency: int | None = Field(None, ge=1, le=3)
    impact: int | None = Field(None, ge=1, le=3)
    work_notes: str | None = Field(None, max_length=30000, description="Added to the journal.")
    comments: str | None = Field(None, max_length=30000, description="Customer-visible note.")
    close_code: str | None = Field(None, max_length=60)
    close_notes: str | None = Field(None, max_length=4000)
    fields: dict[str, str] = Field(default_factory=dict)


class UpdateOut(ActionOutput):
    """The incident after the update."""

    sys_id: str
    number: str = ""
    state: str = ""
    updated: bool
    simulated: bool = False
    payload: dict[str, Any] | None = None


class GetIn(ActionInput):
    """An incident by sys_id."""

    sys_id: str = Field(pattern=_SYS_ID)


class Incident(ActionOutput):
    """An incident's main columns (as ServiceNow gives them: strings)."""

    sys_id: str
    number: str = ""
    state: str = ""
    short_description: str = ""
    description: str = ""
    urgency: str = ""
    impact: str = ""
    priority: str = ""
    correlation_id: str = ""


class ListIn(ActionInput):
    """Incidents matching an encoded query."""

    query: str = Field("", max_length=4000, description="An encoded query (active=true^…).")
    limit: int = Field(500, ge=1, le=100000, description="Incidents returned at most.")


class ListOut(ActionOutput):
    """Incidents found."""

    incidents: list[Incident]
    count: int
    total: int | None = Field(None, description="X-Total-Count, when the instance sent it.")
    truncated: bool = False


def _incident(record: Mapping[str, Any]) -> Incident:
    def text(name: str) -> str:
        value = record.get(name)
        if isinstance(value, Mapping):  # a reference field: {"link", "value"}
            value = value.get("value")
        return "" if value is None else str(value)

    return Incident(
        sys_id=text("sys_id"),
        number=text("number"),
        state=text("state"),
        short_description=text("short_description"),
        description=text("description"),
        urgency=text("urgency"),
        impact=text("impact"),
        priority=text("priority"),
        correlation_id=text("correlation_id"),
    )


class ServiceNow(Connector):
    """ServiceNow incidents through the Table API: create, update, read, list."""

    name = "servicenow"
    title = "ServiceNow"
    Config = ServiceNowConfig
    secrets = ("password", "oauth_token")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, ServiceNowConfig):
            raise PermanentError("servicenow: the instance needs a config with base_url")
        self.settings = config
        self.base = str(config.base_url).rstrip("/")
        self._site = rest.Site("servicenow", self.base, config.timeout, MAX_BODY)

    # -- HTTP ----------------------------------------------------------------------------------

    def _headers(self, ctx: ActionContext) -> tuple[dict[str, str], str]:
        if self.settings.auth == "bearer":
            token = ctx.secret("oauth_token").reveal()
            authorization = f"Bearer {token}"
        else:
            if not self.settings.username:
                raise PermanentError("servicenow: basic auth needs the config's username")
            token = ctx.secret("password").reveal()
            pair = f"{self.settings.username}:{token}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        return {"Authorization": authorization, "Accept": "application/json"}, token

    async def _call(
        self,
        ctx: ActionContext,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """Send one request; the parsed answer and its headers, or an ActionError."""
        headers, token = self._headers(ctx)
        where = f"servicenow: {method} {path}"
        reply = await self._site.request(
            ctx,
            method,
            path,
            headers=headers,
            params=params,
            json=body,
        )
        rest.raise_for_call(
            reply,
            vendor="servicenow",
            where=where,
            what=what,
            message=rest.scrub(servicenow_message(reply.body, reply.text), (token,)),
            unauthorized=(
                "ServiceNow refused the credentials{detail} "
                "(check username and password, or the OAuth token)"
            ),
        )
        return reply.body, reply.headers

    def _url(self, sys_id: str) -> str:
        return f"{self.base}/nav_to.do?uri=incident.do?sys_id={sys_id}"

    async def _list(
        self, ctx: ActionContext, query: str, limit: int
    ) -> tuple[list[dict[str, Any]], int | None, bool]:
        """Records matching ``query``: offset paging, at most ``max_pages`` pages."""
        found: list[dict[str, Any]] = []
        total: int | None = None
        for _page in range(self.settings.max_pages):
            size = min(self.settings.page_size, limit - len(found))
            params = {
                "sysparm_limit": str(size),
                "sysparm_offset": str(len(found)),
                "sysparm_fields": _FIELDS,
                "sysparm_display_value": "false",
                "sysparm_exclude_reference_link": "true",
            }
            if query:
                params["sysparm_query"] = query
            answer, headers = await self._call(ctx, "GET", _TABLE, what="incidents", params=params)
            page = answer.get("result") if isinstance(answer, Mapping) else None
            records = [item for item in page or [] if isinstance(item, dict)]
            found += records
            if headers.get("X-Total-Count", "").isdigit():
                total = int(headers["X-Total-Count"])
            more = _has_next(headers.get("Link"))
            if more is None:
                more = len(found) < total if total is not None else len(records) == size
            if not records or not more:
                return found, total, False
            if len(found) >= limit:
                return found[:limit], total, True
        return found, total, True

    # -- actions -------------------------------------------------------------------------------

    @staticmethod
    def create_payload(params: IncidentIn, correlation: str) -> dict[str, str]:
        """The ``POST /api/now/table/incident`` body for ``params``."""
        payload: dict[str, str] = dict(params.fields)
        payload.update(
            {
                "short_description": params.short_description,
                "urgency": str(params.urgency),
                "impact": str(params.impact),
                "correlation_id": correlation,
                "correlation_display": "Quell",
            }
        )
        optional = {
            "description": params.description,
            "category": params.category,
            "assignment_group": params.assignment_group,
            "caller_id": params.caller_id,
        }
        payload.update({name: value for name, value in optional.items() if value})
        return payload

    @action(
        "create_incident",
        risk=RiskLevel.LOW,
        title="Open a ServiceNow incident",
        supports_dry_run=True,
        reconcile="find_incident",
    )
    async def create_incident(self, ctx: ActionContext, params: IncidentIn) -> IncidentOut:
        """Open an incident, or return the one an earlier attempt of this step opened."""
        correlation = correlation_id(ctx.step_idempotency_key)
        payload = self.create_payload(params, correlation)
        if ctx.dry_run:
            return IncidentOut(sys_id="", number="", simulated=True, payload=payload)
        existing = await self._find(ctx, correlation)
        if existing is not None:
            ctx.log.info("servicenow_incident_exists", number=existing.number)
            return existing
        answer, _ = await self._call(ctx, "POST", _TABLE, what="incident table", body=payload)
        record = answer.get("result") if isinstance(answer, Mapping) else None
        made = _incident(record if isinstance(record, Mapping) else {})
        return IncidentOut(
            sys_id=made.sys_id, number=made.number, url=self._url(made.sys_id), created=True
        )

    async def _find(self, ctx: ActionContext, correlation: str) -> IncidentOut | None:
        records, _, _ = await self._list(ctx, f"correlation_id={correlation}", 1)
        if not records:
            return None
        found = _incident(records[0])
        return IncidentOut(sys_id=found.sys_id, number=found.number, url=self._url(found.sys_id))

    async def find_incident(self, ctx: ActionContext, params: IncidentIn) -> Reconciliation:
        """Reconcile ``create_incident``: is there an incident with this step's correlation?"""
        correlation = correlation_id(ctx.step_idempotency_key)
        found = await self._find(ctx, correlation)
        if found is None:
            return Reconciliation(
                Landed.NOT_LANDED, detail=f"no incident has correlation_id {correlation}"
            )
        return Reconciliation(
            Landed.LANDED, found.model_dump(mode="json"), detail=f"incident {found.number}"
        )

    @staticmethod
    def update_payload(params: UpdateIn) -> dict[str, str]:
        """The ``PATCH`` body for ``params``: only the columns given."""
        payload: dict[str, str] = dict(params.fields)
        named = {
            "state": params.state,
            "short_description": params.short_description,
            "urgency": params.urgency,
            "impact": params.impact,
            "work_notes": params.work_notes,
            "comments": params.comments,
            "close_code": params.close_code,
            "close_notes": params.close_notes,
        }
        payload.update({name: str(value) for name, value in named.items() if value is not None})
        return payload

    @action(
        "update_incident",
        risk=RiskLevel.LOW,
        title="Update a ServiceNow incident",
        supports_dry_run=True,
    )
    async def update_incident(self, ctx: ActionContext, params: UpdateIn) -> UpdateOut:
        """Set columns of an incident (state, notes, …); a dry run reads it and says what
        would change."""
        payload = self.update_payload(params)
        path = f"{_TABLE}/{params.sys_id}"
        what = f"incident {params.sys_id}"
        if ctx.dry_run:
            answer, _ = await self._call(
                ctx, "GET", path, what=what, params={"sysparm_fields": _FIELDS}
            )
            record = answer.get("result") if isinstance(answer, Mapping) else None
            current = _incident(record if isinstance(record, Mapping) else {})
            return UpdateOut(
                sys_id=params.sys_id,
                number=current.number,
                state=current.state,
                updated=False,
                simulated=True,
                payload=payload,
            )
        if not payload:
            return UpdateOut(sys_id=params.sys_id, updated=False)
        answer, _ = await self._call(
            ctx, "PATCH", path, what=what, params={"sysparm_fields": _FIELDS}, body=payload
        )
        record = answer.get("result") if isinstance(answer, Mapping) else None
        after = _incident(record if isinstance(record, Mapping) else {})
        return UpdateOut(sys_id=params.sys_id, number=after.number, state=after.state, updated=True)

    @action("get_incident", risk=RiskLevel.READ, title="Read a ServiceNow incident")
    async def get_incident(self, ctx: ActionContext, params: GetIn) -> Incident:
        """An incident's main columns."""
        answer, _ = await self._call(
            ctx,
            "GET",
            f"{_TABLE}/{params.sys_id}",
            what=f"incident {params.sys_id}",
            params={"sysparm_fields": _FIELDS, "sysparm_exclude_reference_link": "true"},
        )
        record = answer.get("result") if isinstance(answer, Mapping) else None
        return _incident(record if isinstance(record, Mapping) else {})

    @action("list_incidents", risk=RiskLevel.READ, title="List ServiceNow incidents")
    async def list_incidents(self, ctx: ActionContext, params: ListIn) -> ListOut:
        """Incidents matching ``query``, page after page up to ``limit`` (and ``max_pages``)."""
        records, total, truncated = await self._list(ctx, params.query, params.limit)
        incidents = [_incident(record) for record in records]
        return ListOut(incidents=incidents, count=len(incidents), total=total, truncated=truncated)

    async def health(self, ctx: ActionContext) -> str:
        """Read one incident's id: the credentials work and may read the table."""
        await self._call(
            ctx,
            "GET",
            _TABLE,
            what="incident table",
            params={"sysparm_limit": "1", "sysparm_fields": "sys_id"},
        )
        return f"servicenow at {self.base}: incident table readable"


__all__ = [
    "GetIn",
    "Incident",
    "IncidentIn",
    "IncidentOut",
    "ListIn",
    "ListOut",
    "ServiceNow",
    "ServiceNowConfig",
    "UpdateIn",
    "UpdateOut",
    "correlation_id",
    "servicenow_message",
]
