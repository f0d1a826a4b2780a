"""``defender``: Microsoft Defender for Endpoint, through its documented REST API.

- Azure AD (Entra ID) client credentials: ``POST {login_url}/{tenant_id}/oauth2/v2.0/token``
  with scope ``https://api.securitycenter.microsoft.com/.default``; the token is kept until
  shortly before it expires and fetched again, once, when the API answers 401.
- Response actions on a machine: ``POST /api/machines/{id}/isolate`` (``IsolationType`` Full or
  Selective), ``/unisolate``, ``/runAntiVirusScan`` (``ScanType`` Quick or Full); each answers
  a machine action. A machine is found by name with ``GET /api/machines?$filter=computerDnsName
  eq 'name'``.
- Machine actions: ``GET /api/machineactions`` (OData paging by ``@odata.nextLink``, followed
  only on the configured API host). Whether an isolation landed is read from the machine's
  latest Isolate/Unisolate action; each request's comment carries the step's idempotency key,
  so a scan can be found again.

Errors follow Microsoft's ``{"error": {"code", "message"}}`` shape (the token endpoint's
``{"error", "error_description"}``); a 429's wait comes from ``Retry-After``. The client secret
goes in the token request's form only and is never logged nor put in an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

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

VENDOR = "defender"
SCOPE = "https://api.securitycenter.microsoft.com/.default"
MAX_PAGES = rest.MAX_PAGES  # pages a listing follows at most
_MACHINE_ID = r"^[0-9a-fA-F]{40}$"
_MACHINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
_LIVE = frozenset({"Pending", "InProgress", "Succeeded"})  # a machine action that counts


class DefenderConfig(BaseModel):
    """Where the Defender API and the Entra ID token endpoint are, and which tenant."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "tenant_id": "00000000-0000-0000-0000-000000000000",
                    "base_url": "http://127.0.0.1:9",
                    "login_url": "http://127.0.0.1:9",
                }
            ]
        },
    )

    tenant_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,99}$")
    base_url: str = Field(
        "https://api.securitycenter.microsoft.com",
        description="The Defender API (regional: https://api-eu.securitycenter.microsoft.com).",
    )
    login_url: str = "https://login.microsoftonline.com"

    @field_validator("base_url", "login_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return rest.http_url(value)


# -- inputs and outputs ---------------------------------------------------------------------------


class MachineIn(ActionInput):
    """A machine, by Defender machine id or by computer DNS name."""

    machine_id: str | None = Field(None, pattern=_MACHINE_ID)
    machine_name: str | None = Field(None, pattern=_MACHINE_NAME, description="computerDnsName")

    @model_validator(mode="after")
    def _one_of(self) -> MachineIn:
        if (self.machine_id is None) == (self.machine_name is None):
            raise ValueError("give exactly one of machine_id and machine_name")
        return self


_MACHINE_EXAMPLES: list[JsonValue] = [
    {"machine_name": "ws-fin-042.corp.example"},
    {"machine_id": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"},
]


class IsolateIn(MachineIn):
    """A machine to isolate."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"machine_name": "ws-fin-042.corp.example", "isolation_type": "Full"},
                _MACHINE_EXAMPLES[1],
            ]
        },
    )

    comment: str = Field("Isolated by Quell", min_length=1, max_length=1000)
    isolation_type: Literal["Full", "Selective"] = "Full"


class ReleaseIn(MachineIn):
    """A machine to release from isolation."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": _MACHINE_EXAMPLES})

    comment: str = Field("Released by Quell", min_length=1, max_length=1000)


class ScanIn(MachineIn):
    """A machine to scan with Microsoft Defender Antivirus."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"machine_name": "ws-fin-042.corp.example", "scan_type": "Quick"}]
        },
    )

    comment: str = Field("Scan requested by Quell", min_length=1, max_length=1000)
    scan_type: Literal["Quick", "Full"] = "Quick"


class MachineActionOut(ActionOutput):
    """The machine action Defender created (or, in a dry run, the request)."""

    machine_id: str | None = None
    machine_name: str | None = None
    action_id: str | None = None
    type: str
    status: str | None = None
    simulated: bool = False
    would_send: dict[str, Any] | None = None


class FindMachineIn(ActionInput):
    """A computer DNS name to look up."""

    machine_name: str = Field(pattern=_MACHINE_NAME)


class Machine(ActionOutput):
    """A machine, as Defender describes it (a few fields)."""

    id: str
    computer_dns_name: str | None = None
    os_platform: str | None = None
    health_status: str | None = None
    last_seen: str | None = None


class FindMachineOut(ActionOutput):
    """The machines with that name (usually one)."""

    machines: list[Machine]


class ListActionsIn(ActionInput):
    """Which machine actions to list."""

    machine_id: str | None = Field(None, pattern=_MACHINE_ID, description="Only this machine's.")
    max_results: int = Field(500, ge=1, le=10_000)


class MachineActionInfo(ActionOutput):
    """A machine action."""

    id: str
    type: str | None = None
    status: str | None = None
    machine_id: str | None = None
    computer_dns_name: str | None = None
    requestor_comment: str | None = None
    created: str | None = None


class ListActionsOut(ActionOutput):
    """Machine actions, as Defender lists them."""

    actions: list[MachineActionInfo]
    truncated: bool = False


# -- the connector --------------------------------------------------------------------------------


def _machine(item: dict[str, Any]) -> Machine:
    return Machine(
        id=str(item.get("id")),
        computer_dns_name=item.get("computerDnsName"),
        os_platform=item.get("osPlatform"),
        health_status=item.get("healthStatus"),
        last_seen=item.get("lastSeen"),
    )


def _action_info(item: dict[str, Any]) -> MachineActionInfo:
    return MachineActionInfo(
        id=str(item.get("id")),
        type=item.get("type"),
        status=item.get("status"),
        machine_id=item.get("machineId"),
        computer_dns_name=item.get("computerDnsName"),
        requestor_comment=item.get("requestorComment"),
        created=item.get("creationDateTimeUtc"),
    )


class Defender(Connector):
    """Microsoft Defender for Endpoint: isolate, release and scan machines."""

    name = "defender"
    title = "Microsoft Defender for Endpoint"
    Config = DefenderConfig
    secrets = ("client_id", "client_secret")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, DefenderConfig):
            raise PermanentError(
                f"{VENDOR} needs configuration (tenant_id): quell connector add ... --type defender"
            )
        self.settings = config
        self._api = rest.MicrosoftApi.for_tenant(
            VENDOR, config.base_url, config.login_url, config.tenant_id, SCOPE
        )

    # -- machines --------------------------------------------------------------------------

    async def _find(self, ctx: ActionContext, name: str) -> list[dict[str, Any]]:
        found, _more = await self._api.pages(
            ctx,
            "/api/machines",
            f"find machine {name}",
            [("$filter", f"computerDnsName eq '{name.lower()}'")],
            50,
        )
        return found

    async def _resolve(self, ctx: ActionContext, params: MachineIn) -> str:
        if params.machine_id is not None:
            return params.machine_id
        name = params.machine_name or ""
        found = await self._find(ctx, name)
        if not found:
            raise TargetNotFound(f"{VENDOR}: no machine named {name!r}", details={"name": name})
        if len(found) > 1:
            raise PermanentError(
                f"{VENDOR}: {len(found)} machines are named {name!r}; give the machine_id",
                code="ambiguous_target",
            )
        return str(found[0].get("id"))

    async def _machine_action(
        self, ctx: ActionContext, params: MachineIn, verb: str, kind: str, body: dict[str, Any]
    ) -> MachineActionOut:
        body = {**body, "Comment": f"{body['Comment']} [quell:{ctx.step_idempotency_key}]"}
        if ctx.dry_run:  # resolving a name would need a token, which is a POST
            target = params.machine_id or f"<id of {params.machine_name}>"
            return MachineActionOut(
                machine_id=params.machine_id,
                machine_name=params.machine_name,
                type=kind,
                simulated=True,
                would_send={"method": "POST", "path": f"/api/machines/{target}/{verb}", **body},
            )
        machine_id = await self._resolve(ctx, params)
        reply = await self._api.call(
            ctx,
            "POST",
            f"/api/machines/{machine_id}/{verb}",
            f"{verb} machine {machine_id}",
            json=body,
        )
        answer = reply.body if isinstance(reply.body, dict) else {}
        ctx.log.info("defender_machine_action", action=kind, machine_id=machine_id)
        return MachineActionOut(
            machine_id=machine_id,
            machine_name=params.machine_name,
            action_id=answer.get("id"),
            type=str(answer.get("type") or kind),
            status=answer.get("status"),
        )

    @action(
        "isolate",
        risk=RiskLevel.HIGH,
        title="Isolate a machine from the network",
        supports_dry_run=True,
        reverts="release",
        reconcile="is_isolated",
        openc2=("contain", "device", "er"),
    )
    async def isolate(self, ctx: ActionContext, params: IsolateIn) -> MachineActionOut:
        """Isolate the machine (Full, or Selective to keep Outlook and Teams working)."""
        body = {"Comment": params.comment, "IsolationType": params.isolation_type}
        return await self._machine_action(ctx, params, "isolate", "Isolate", body)

    @action(
        "release",
        risk=RiskLevel.MEDIUM,
        title="Release a machine from isolation",
        supports_dry_run=True,
        reverts="isolate",
        reconcile="is_released",
        openc2=("allow", "device", "er"),
    )
    async def release(self, ctx: ActionContext, params: ReleaseIn) -> MachineActionOut:
        """Give an isolated machine its network back."""
        body = {"Comment": params.comment}
        return await self._machine_action(ctx, params, "unisolate", "Unisolate", body)

    @action(
        "run_av_scan",
        risk=RiskLevel.LOW,
        title="Run an antivirus scan on a machine",
        supports_dry_run=True,
        reconcile="scan_requested",
        openc2=("scan", "device", "er"),
    )
    async def run_av_scan(self, ctx: ActionContext, params: ScanIn) -> MachineActionOut:
        """Start a Quick or Full Microsoft Defender Antivirus scan."""
        body = {"Comment": params.comment, "ScanType": params.scan_type}
        return await self._machine_action(ctx, params, "runAntiVirusScan", "RunAntiVirusScan", body)

    @action("find_machine", risk=RiskLevel.READ, idempotent=True, title="Find a machine by name")
    async def find_machine(self, ctx: ActionContext, params: FindMachineIn) -> FindMachineOut:
        """The machines whose computer DNS name is ``machine_name``."""
        return FindMachineOut(
            machines=[_machine(m) for m in await self._find(ctx, params.machine_name)]
        )

    @action("list_machine_actions", risk=RiskLevel.READ, idempotent=True, title="List actions")
    async def list_machine_actions(
        self, ctx: ActionContext, params: ListActionsIn
    ) -> ListActionsOut:
        """Machine actions (isolations, scans, ...), of one machine or all, paged."""
        query = [("$filter", f"machineId eq '{params.machine_id}'")] if params.machine_id else []
        items, more = await self._api.pages(
            ctx, "/api/machineactions", "list machine actions", query, params.max_results
        )
        return ListActionsOut(actions=[_action_info(item) for item in items], truncated=more)

    # -- health and reconcile hooks ----------------------------------------------------------

    async def health(self, ctx: ActionContext) -> str:
        """A token is granted and the machine list can be read."""
        reply = await self._api.call(
            ctx, "GET", "/api/machines", "list machines", params=[("$top", "1")]
        )
        body = reply.body if isinstance(reply.body, dict) else {}
        seen = len(body.get("value") or [])
        return (
            f"{VENDOR} at {self.settings.base_url}: token granted for tenant "
            f"{self.settings.tenant_id}; machine list readable ({seen} on the first page)"
        )

    async def _actions_of(
        self, ctx: ActionContext, params: MachineIn
    ) -> tuple[str, list[MachineActionInfo]]:
        machine_id = await self._resolve(ctx, params)
        listed = await self.list_machine_actions(ctx, ListActionsIn(machine_id=machine_id))
        mine = [item for item in listed.actions if item.machine_id in (None, machine_id)]
        return machine_id, mine

    async def _isolation(
        self, ctx: ActionContext, params: MachineIn, wanted: str
    ) -> Reconciliation:
        machine_id, actions = await self._actions_of(ctx, params)
        relevant = [
            (item.created or "", number, item)
            for number, item in enumerate(actions)
            if item.type in ("Isolate", "Unisolate") and item.status in _LIVE
        ]
        if not relevant:
            return Reconciliation(Landed.NOT_LANDED, detail="no isolation action on the machine")
        latest = max(relevant, key=lambda entry: (entry[0], entry[1]))[2]
        if latest.type != wanted:
            return Reconciliation(
                Landed.NOT_LANDED, detail=f"latest: {latest.type} {latest.status}"
            )
        output = MachineActionOut(
            machine_id=machine_id,
            machine_name=params.machine_name,
            action_id=latest.id,
            type=wanted,
            status=latest.status,
        )
        return Reconciliation(
            Landed.LANDED, output.model_dump(mode="json"), f"{latest.type} {latest.status}"
        )

    async def is_isolated(self, ctx: ActionContext, params: IsolateIn) -> Reconciliation:
        """Whether the machine's latest Isolate/Unisolate action is an isolation."""
        return await self._isolation(ctx, params, "Isolate")

    async def is_released(self, ctx: ActionContext, params: ReleaseIn) -> Reconciliation:
        """Whether the machine's latest Isolate/Unisolate action is a release."""
        return await self._isolation(ctx, params, "Unisolate")

    async def scan_requested(self, ctx: ActionContext, params: ScanIn) -> Reconciliation:
        """Whether a scan carrying this step's idempotency key was requested."""
        machine_id, actions = await self._actions_of(ctx, params)
        tag = f"[quell:{ctx.step_idempotency_key}]"
        for item in actions:
            if item.type == "RunAntiVirusScan" and tag in (item.requestor_comment or ""):
                output = MachineActionOut(
                    machine_id=machine_id,
                    machine_name=params.machine_name,
                    action_id=item.id,
                    type="RunAntiVirusScan",
                    status=item.status,
                )
                return Reconciliation(Landed.LANDED, output.model_dump(mode="json"), item.id)
        return Reconciliation(Landed.NOT_LANDED, detail="no scan carries this step's key")


__all__ = [
    "Defender",
    "DefenderConfig",
    "FindMachineIn",
    "IsolateIn",
    "ListActionsIn",
    "MachineActionOut",
    "ReleaseIn",
    "ScanIn",
]
