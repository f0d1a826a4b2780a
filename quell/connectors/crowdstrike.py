"""``crowdstrike``: CrowdStrike Falcon, through its documented REST API.

- OAuth2 client credentials: ``POST /oauth2/token`` (form ``client_id`` / ``client_secret``)
  gives a bearer token, kept until shortly before it expires and fetched again, once, when the
  API answers 401.
- Host containment: ``POST /devices/entities/devices-actions/v2?action_name=contain`` (and
  ``lift_containment``) with ``{"ids": [device_id]}``; a hostname is resolved to a device id with
  ``GET /devices/queries/devices/v1?filter=hostname:'NAME'``; the device's ``status``
  (``GET /devices/entities/devices/v2?ids=``) tells whether a containment landed.
- Custom IOCs: ``POST /iocs/entities/indicators/v1`` creates, ``GET /iocs/queries/indicators/v1``
  lists (``offset``/``limit`` paging, ``meta.pagination.total``), ``DELETE
  /iocs/entities/indicators/v1?ids=`` deletes.

Errors follow Falcon's ``{"errors": [{"code", "message"}]}`` shape; a 429's wait comes from
``Retry-After`` or Falcon's ``X-RateLimit-RetryAfter`` (epoch seconds). The client secret is
sent in the token request's form only, and never logged nor put in an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    TargetNotFound,
    action,
)

VENDOR = "crowdstrike"
MAX_PAGES = rest.MAX_PAGES  # pages a listing follows at most
_HOSTNAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
_DEVICE_ID = r"^[0-9a-fA-F]{32}$"
_CONTAINED = frozenset({"contained", "containment_pending"})
_LIFTED = frozenset({"normal", "lift_containment_pending"})


class CrowdstrikeConfig(BaseModel):
    """Where the Falcon API is (its cloud's base URL)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        "https://api.crowdstrike.com",
        description="The Falcon cloud's API URL (us-2: https://api.us-2.crowdstrike.com, ...).",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("base_url must be an http(s) URL")
        return value.rstrip("/")


# -- inputs and outputs ---------------------------------------------------------------------------


class HostIn(ActionInput):
    """A host, by Falcon device id (agent id) or by hostname."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"hostname": "WS-FIN-042"},
                {"device_id": "0123456789abcdef0123456789abcdef"},
            ]
        },
    )

    device_id: str | None = Field(None, pattern=_DEVICE_ID, description="The Falcon device id.")
    hostname: str | None = Field(None, pattern=_HOSTNAME, description="Resolved to a device id.")

    @model_validator(mode="after")
    def _one_of(self) -> HostIn:
        if (self.device_id is None) == (self.hostname is None):
            raise ValueError("give exactly one of device_id and hostname")
        return self


class HostOut(ActionOutput):
    """What was asked of the host."""

    device_id: str | None = None
    hostname: str | None = None
    action: str
    simulated: bool = False
    would_send: dict[str, Any] | None = Field(None, description="Dry run only: the request.")


class FindDeviceIn(ActionInput):
    """A hostname to look up."""

    hostname: str = Field(pattern=_HOSTNAME)


class FindDeviceOut(ActionOutput):
    """The device ids carrying that hostname (usually one)."""

    hostname: str
    device_ids: list[str]


class DeviceIn(ActionInput):
    """A device id."""

    device_id: str = Field(pattern=_DEVICE_ID)


class DeviceOut(ActionOutput):
    """A device as Falcon describes it (a few fields)."""

    device_id: str
    hostname: str | None = None
    status: str | None = None
    platform_name: str | None = None
    last_seen: str | None = None


IocType = Literal["sha256", "md5", "domain", "ipv4", "ipv6"]
IocAction = Literal["no_action", "allow", "prevent_no_ui", "detect", "prevent"]
Severity = Literal["informational", "low", "medium", "high", "critical"]
Platform = Literal["windows", "mac", "linux"]


def _all_platforms() -> list[Platform]:
    return ["windows", "mac", "linux"]


class IocIn(ActionInput):
    """A custom indicator of compromise."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "type": "domain",
                    "value": "evil.example",
                    "action": "detect",
                    "severity": "high",
                    "description": "C2 domain from incident 4711",
                }
            ]
        },
    )

    type: IocType
    value: str = Field(min_length=1, max_length=255)
    action: IocAction = "detect"
    severity: Severity = "high"
    description: str = Field("", max_length=4096)
    platforms: list[Platform] = Field(default_factory=_all_platforms, min_length=1)
    expiration: str | None = Field(None, description="RFC 3339 time the IOC expires.")
    tags: list[str] = Field(default_factory=list, max_length=20)
    applied_globally: bool = True

    def indicator(self) -> dict[str, Any]:
        """The indicator as ``POST /iocs/entities/indicators/v1`` takes it."""
        body: dict[str, Any] = {
            "type": self.type,
            "value": self.value,
            "action": self.action,
            "severity": self.severity,
            "description": self.description,
            "platforms": list(self.platforms),
            "applied_globally": self.applied_globally,
            "tags": list(self.tags),
        }
        if self.expiration is not None:
            body["expiration"] = self.expiration
        return body


class IocOut(ActionOutput):
    """The created indicator."""

    id: str | None = None
    type: str
    value: str
    simulated: bool = False
    would_send: dict[str, Any] | None = None


class ListIocsIn(ActionInput):
    """Which IOCs to list (a Falcon FQL filter, e.g. ``type:'domain'``)."""

    filter: str | None = Field(None, max_length=1000)
    page_size: int = Field(100, ge=1, le=2000)
    max_results: int = Field(1000, ge=1, le=100_000)


class ListIocsOut(ActionOutput):
    """IOC ids, and how many match in all."""

    ids: list[str]
    total: int
    truncated: bool = False


class DeleteIocsIn(ActionInput):
    """IOC ids to delete."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"ids": ["5b2d3c1e9f0a4b7c8d6e1f2a3b4c5d6e"]}]},
    )

    ids: list[str] = Field(min_length=1, max_length=500)


class DeleteIocsOut(ActionOutput):
    """What was deleted."""

    deleted: list[str]
    already_gone: list[str] = Field(default_factory=list)
    simulated: bool = False


# -- HTTP -----------------------------------------------------------------------------------------


def _message(reply: rest.Reply) -> str:
    """Falcon's error message(s), trimmed."""
    body = reply.body
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = [
                str(item.get("message") or item.get("code"))
                for item in errors[:3]
                if isinstance(item, dict)
            ]
            if parts:
                return "; ".join(parts)[:300]
        for key in ("message", "error_description", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return reply.text.strip()[:200] or f"HTTP {reply.status}"


_FALCON = rest.Vendor(VENDOR, _message, reset_header="X-RateLimit-RetryAfter")


# -- the connector --------------------------------------------------------------------------------


class Crowdstrike(Connector):
    """CrowdStrike Falcon: contain hosts and manage custom IOCs."""

    name = "crowdstrike"
    title = "CrowdStrike Falcon"
    Config = CrowdstrikeConfig
    secrets = ("client_id", "client_secret")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, CrowdstrikeConfig) else CrowdstrikeConfig()
        self._auth = rest.ClientCredentials(
            _FALCON,
            f"{self.settings.base_url}/oauth2/token",
            lambda status, message: (
                f"the API client credentials were refused (HTTP {status}: {message}); "
                "check client_id and client_secret"
            ),
            lifetime=1799.0,
        )

    @property
    def token_requests(self) -> int:
        """How many tokens were fetched (for health and tests)."""
        return self._auth.requests

    async def _api(
        self,
        ctx: ActionContext,
        method: str,
        path: str,
        what: str,
        *,
        params: rest.Params | None = None,
        payload: Any = None,
    ) -> rest.Reply:
        """An authenticated call; a 401 fetches a new token and tries once more."""
        url = f"{self.settings.base_url}{path}"
        return await self._auth.call(ctx, method, url, what, params=params, json=payload)

    # -- hosts -----------------------------------------------------------------------------

    async def _device_ids(self, ctx: ActionContext, hostname: str) -> list[str]:
        reply = await self._api(
            ctx,
            "GET",
            "/devices/queries/devices/v1",
            f"find host {hostname}",
            params=[("filter", f"hostname:'{hostname}'"), ("limit", "100")],
        )
        resources = reply.body.get("resources") if isinstance(reply.body, dict) else None
        return [str(item) for item in resources or [] if isinstance(item, str)]

    async def _resolve(self, ctx: ActionContext, params: HostIn) -> str:
        if params.device_id is not None:
            return params.device_id
        if params.hostname is None:  # the model guarantees one of them
            raise PermanentError(f"{VENDOR}: give a device_id or a hostname")
        found = await self._device_ids(ctx, params.hostname)
        if not found:
            raise TargetNotFound(
                f"{VENDOR}: no host named {params.hostname!r}",
                details={"hostname": params.hostname},
            )
        if len(found) > 1:
            raise PermanentError(
                f"{VENDOR}: {len(found)} hosts are named {params.hostname!r}; give the device_id",
                code="ambiguous_target",
                details={"hostname": params.hostname, "device_ids": found[:20]},
            )
        return found[0]

    async def _device(self, ctx: ActionContext, device_id: str) -> dict[str, Any]:
        reply = await self._api(
            ctx,
            "GET",
            "/devices/entities/devices/v2",
            f"read host {device_id}",
            params=[("ids", device_id)],
        )
        resources = reply.body.get("resources") if isinstance(reply.body, dict) else None
        for item in resources or []:
            if isinstance(item, dict) and item.get("device_id") == device_id:
                return item
        raise TargetNotFound(f"{VENDOR}: no host {device_id}", details={"device_id": device_id})

    async def _host_action(self, ctx: ActionContext, params: HostIn, name: str) -> HostOut:
        if ctx.dry_run:  # resolving a hostname would need a token, which is a POST
            return HostOut(
                device_id=params.device_id,
                hostname=params.hostname,
                action=name,
                simulated=True,
                would_send={
                    "method": "POST",
                    "path": f"/devices/entities/devices-actions/v2?action_name={name}",
                    "body": {"ids": [params.device_id or f"<device of {params.hostname}>"]},
                },
            )
        device_id = await self._resolve(ctx, params)
        await self._api(
            ctx,
            "POST",
            "/devices/entities/devices-actions/v2",
            f"{name} host {device_id}",
            params=[("action_name", name)],
            payload={"ids": [device_id]},
        )
        ctx.log.info("crowdstrike_host_action", action=name, device_id=device_id)
        return HostOut(device_id=device_id, hostname=params.hostname, action=name)

    @action(
        "contain",
        risk=RiskLevel.HIGH,
        title="Contain a host (network isolation)",
        idempotent=True,
        supports_dry_run=True,
        reverts="lift_containment",
        reconcile="is_contained",
        openc2=("contain", "device", "er"),
    )
    async def contain(self, ctx: ActionContext, params: HostIn) -> HostOut:
        """Cut the host off the network except for the Falcon cloud."""
        return await self._host_action(ctx, params, "contain")

    @action(
        "lift_containment",
        risk=RiskLevel.MEDIUM,
        title="Lift a host's containment",
        idempotent=True,
        supports_dry_run=True,
        reverts="contain",
        reconcile="is_lifted",
        openc2=("allow", "device", "er"),
    )
    async def lift_containment(self, ctx: ActionContext, params: HostIn) -> HostOut:
        """Give a contained host its network back."""
        return await self._host_action(ctx, params, "lift_containment")

    @action("find_device", risk=RiskLevel.READ, idempotent=True, title="Find a host by name")
    async def find_device(self, ctx: ActionContext, params: FindDeviceIn) -> FindDeviceOut:
        """The device ids of the hosts with this hostname."""
        ids = await self._device_ids(ctx, params.hostname)
        return FindDeviceOut(hostname=params.hostname, device_ids=ids)

    @action("get_device", risk=RiskLevel.READ, idempotent=True, title="Read a host's state")
    async def get_device(self, ctx: ActionContext, params: DeviceIn) -> DeviceOut:
        """A host's name, platform, last contact and containment status."""
        found = await self._device(ctx, params.device_id)
        return DeviceOut(
            device_id=params.device_id,
            hostname=found.get("hostname"),
            status=found.get("status"),
            platform_name=found.get("platform_name"),
            last_seen=found.get("last_seen"),
        )

    # -- IOCs ------------------------------------------------------------------------------

    @action(
        "create_ioc",
        risk=RiskLevel.MEDIUM,
        title="Create a custom IOC",
        supports_dry_run=True,
        reverts="delete_ioc",
        reconcile="ioc_exists",
    )
    async def create_ioc(self, ctx: ActionContext, params: IocIn) -> IocOut:
        """Add a custom indicator (hash, domain or address) with a detect/prevent action."""
        body = {"indicators": [params.indicator()], "comment": f"quell {ctx.step_idempotency_key}"}
        if ctx.dry_run:
            return IocOut(type=params.type, value=params.value, simulated=True, would_send=body)
        reply = await self._api(
            ctx,
            "POST",
            "/iocs/entities/indicators/v1",
            f"create IOC {params.type}:{params.value}",
            payload=body,
        )
        resources = reply.body.get("resources") if isinstance(reply.body, dict) else None
        first = resources[0] if isinstance(resources, list) and resources else {}
        ioc_id = first.get("id") if isinstance(first, dict) else None
        ctx.log.info("crowdstrike_ioc_created", ioc_id=ioc_id, type=params.type)
        return IocOut(id=ioc_id, type=params.type, value=params.value)

    @action("list_iocs", risk=RiskLevel.READ, idempotent=True, title="List custom IOC ids")
    async def list_iocs(self, ctx: ActionContext, params: ListIocsIn) -> ListIocsOut:
        """The ids of the custom IOCs matching ``filter`` (paged, at most ``max_results``)."""
        ids: list[str] = []
        total = 0
        offset = 0
        for _page in range(MAX_PAGES):
            query = [("offset", str(offset)), ("limit", str(params.page_size))]
            if params.filter:
                query.append(("filter", params.filter))
            reply = await self._api(
                ctx, "GET", "/iocs/queries/indicators/v1", "list IOCs", params=query
            )
            body = reply.body if isinstance(reply.body, dict) else {}
            page = [str(item) for item in body.get("resources") or [] if isinstance(item, str)]
            pagination = (body.get("meta") or {}).get("pagination") or {}
            total = int(pagination.get("total") or 0)
            ids.extend(page)
            offset += len(page)
            if not page or offset >= total or len(ids) >= params.max_results:
                break
        truncated = len(ids) < total
        return ListIocsOut(ids=ids[: params.max_results], total=total, truncated=truncated)

    @action(
        "delete_ioc",
        risk=RiskLevel.MEDIUM,
        title="Delete custom IOCs",
        idempotent=True,
        supports_dry_run=True,
        reconcile="iocs_gone",
    )
    async def delete_ioc(self, ctx: ActionContext, params: DeleteIocsIn) -> DeleteIocsOut:
        """Delete custom IOCs by id."""
        if ctx.dry_run:
            return DeleteIocsOut(deleted=list(params.ids), simulated=True)
        try:
            await self._api(
                ctx,
                "DELETE",
                "/iocs/entities/indicators/v1",
                f"delete IOC(s) {', '.join(params.ids[:5])}",
                params=[("ids", ioc) for ioc in params.ids],
            )
        except TargetNotFound:  # deleted already: a repeat changes nothing
            return DeleteIocsOut(deleted=[], already_gone=list(params.ids))
        ctx.log.info("crowdstrike_iocs_deleted", count=len(params.ids))
        return DeleteIocsOut(deleted=list(params.ids))

    # -- health and reconcile hooks ----------------------------------------------------------

    async def health(self, ctx: ActionContext) -> str:
        """A token is granted and the device list can be read."""
        reply = await self._api(
            ctx, "GET", "/devices/queries/devices/v1", "list hosts", params=[("limit", "1")]
        )
        body = reply.body if isinstance(reply.body, dict) else {}
        total = ((body.get("meta") or {}).get("pagination") or {}).get("total")
        return f"{VENDOR} at {self.settings.base_url}: token granted; {total} host(s) visible"

    async def _status(self, ctx: ActionContext, params: HostIn) -> tuple[str, str | None]:
        device_id = await self._resolve(ctx, params)
        return device_id, (await self._device(ctx, device_id)).get("status")

    async def is_contained(self, ctx: ActionContext, params: HostIn) -> Reconciliation:
        """Whether the host is contained (or its containment is pending)."""
        device_id, status = await self._status(ctx, params)
        if status in _CONTAINED:
            output = HostOut(device_id=device_id, hostname=params.hostname, action="contain")
            return Reconciliation(Landed.LANDED, output.model_dump(mode="json"), f"status {status}")
        return Reconciliation(Landed.NOT_LANDED, detail=f"status {status}")

    async def is_lifted(self, ctx: ActionContext, params: HostIn) -> Reconciliation:
        """Whether the host is back to normal (or its lift is pending)."""
        device_id, status = await self._status(ctx, params)
        if status in _LIFTED:
            output = HostOut(
                device_id=device_id, hostname=params.hostname, action="lift_containment"
            )
            return Reconciliation(Landed.LANDED, output.model_dump(mode="json"), f"status {status}")
        return Reconciliation(Landed.NOT_LANDED, detail=f"status {status}")

    async def ioc_exists(self, ctx: ActionContext, params: IocIn) -> Reconciliation:
        """Whether an IOC of this type and value exists."""
        value = params.value.replace("\\", "\\\\").replace("'", "\\'")
        found = await self.list_iocs(
            ctx, ListIocsIn(filter=f"type:'{params.type}'+value:'{value}'", max_results=10)
        )
        if not found.ids:
            return Reconciliation(Landed.NOT_LANDED, detail="no such IOC")
        output = IocOut(id=found.ids[0], type=params.type, value=params.value)
        return Reconciliation(Landed.LANDED, output.model_dump(mode="json"), f"IOC {found.ids[0]}")

    async def iocs_gone(self, ctx: ActionContext, params: DeleteIocsIn) -> Reconciliation:
        """Whether none of the IOCs is left."""
        try:
            reply = await self._api(
                ctx,
                "GET",
                "/iocs/entities/indicators/v1",
                "read IOCs",
                params=[("ids", ioc) for ioc in params.ids],
            )
            resources = reply.mapping().get("resources")
        except TargetNotFound:
            resources = None
        left = [item.get("id") for item in resources or [] if isinstance(item, dict)]
        if left:
            return Reconciliation(Landed.NOT_LANDED, detail=f"{len(left)} IOC(s) left")
        output = DeleteIocsOut(deleted=list(params.ids)).model_dump(mode="json")
        return Reconciliation(Landed.LANDED, output, "no IOC left")


__all__ = [
    "Crowdstrike",
    "CrowdstrikeConfig",
    "DeleteIocsIn",
    "HostIn",
    "HostOut",
    "IocIn",
    "IocOut",
    "ListIocsIn",
    "ListIocsOut",
]
