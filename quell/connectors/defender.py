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

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator
from yarl import URL

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    Landed,
    PermanentError,
    RateLimited,
    Reconciliation,
    RiskLevel,
    SecretValue,
    TargetNotFound,
    TransientError,
    action,
)
from quell.sdk.http import OutboundBlocked

VENDOR = "defender"
SCOPE = "https://api.securitycenter.microsoft.com/.default"
MAX_BODY = 4 * 1024 * 1024
MAX_PAGES = 50  # pages a listing follows at most
_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
_EARLY = 60.0  # a token is fetched again this many seconds before it expires
_MACHINE_ID = r"^[0-9a-fA-F]{40}$"
_MACHINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
_LIVE = frozenset({"Pending", "InProgress", "Succeeded"})  # a machine action that counts


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


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
        return _http_url(value)


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


# -- HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # parsed JSON, or None
    text: str


@dataclass
class _Token:
    client_id: SecretValue
    client_secret: SecretValue
    value: SecretValue
    expires: float  # time.monotonic()


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    value = headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _message(reply: _Reply) -> str:
    """Microsoft's error message, trimmed."""
    body = reply.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            text = f"{code}: {message}" if code and message else str(message or code or "")
            if text:
                return text[:300]
        if isinstance(error, str):
            description = str(body.get("error_description") or "").split("\n", 1)[0].strip()
            return f"{error}: {description}"[:300] if description else error[:300]
    return reply.text.strip()[:200] or f"HTTP {reply.status}"


def _scrub(text: str, secrets: tuple[SecretValue, ...]) -> str:
    for secret in secrets:
        plain = secret.reveal()
        if plain and plain in text:
            text = text.replace(plain, "**********")
    return text


async def _exchange(
    ctx: ActionContext,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    params: list[tuple[str, str]] | None = None,
    payload: Any = None,
    form: dict[str, str] | None = None,
) -> _Reply:
    """One request; transport failures become Transient/PermanentError (never the URL query)."""
    data: Any = None
    if payload is not None:
        data = orjson.dumps(payload)
        headers = {**headers, "Content-Type": "application/json"}
    elif form is not None:
        data = aiohttp.FormData(form)
    try:
        async with ctx.client.request(
            method,
            url,
            headers={"Accept": "application/json", **headers},
            params=params,
            data=data,
            allow_redirects=False,
            timeout=_TIMEOUT,
        ) as response:
            content = await response.content.read(MAX_BODY)
            status, reply_headers = response.status, response.headers
    except OutboundBlocked as exc:
        raise PermanentError(str(exc), code="outbound_blocked") from None
    except TimeoutError:
        raise TransientError(f"{VENDOR}: {method} timed out") from None
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        if isinstance(exc.__cause__, OutboundBlocked):
            raise PermanentError(str(exc.__cause__), code="outbound_blocked") from None
        raise TransientError(f"{VENDOR}: {method} failed: {type(exc).__name__}") from None
    text = content.decode("utf-8", "replace")
    body: Any = None
    if content:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
    return _Reply(status, reply_headers, body, text)


def _raise_for(reply: _Reply, what: str, secrets: tuple[SecretValue, ...]) -> None:
    """Map a non-2xx reply to the SDK's errors; ``what`` names the request (and target)."""
    if 200 <= reply.status < 300:
        return
    message = _scrub(_message(reply), secrets)
    text = f"{VENDOR}: {what}: HTTP {reply.status}: {message}"
    if reply.status == 429:
        raise RateLimited(text, retry_after=_retry_after(reply.headers))
    if reply.status >= 500:
        raise TransientError(text)
    if reply.status in (401, 403):
        raise AuthError(text, details={"status": reply.status})
    if reply.status == 404:
        raise TargetNotFound(text, details={"status": reply.status})
    raise PermanentError(text, details={"status": reply.status})


def _same_origin(link: str, base: str) -> bool:
    """Whether a next-page link points at the configured API (the token goes nowhere else)."""
    there, here = URL(link), URL(base)
    return (there.scheme, there.host, there.port) == (here.scheme, here.host, here.port)


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
        self._token: _Token | None = None

    # -- auth ------------------------------------------------------------------------------

    def _credentials(self, ctx: ActionContext) -> tuple[SecretValue, SecretValue]:
        return ctx.secret("client_id"), ctx.secret("client_secret")

    async def _bearer(self, ctx: ActionContext, *, fresh: bool = False) -> SecretValue:
        """A valid token for the context's credentials: the cached one, else a new one."""
        client_id, client_secret = self._credentials(ctx)
        token = self._token
        if (
            not fresh
            and token is not None
            and token.client_id == client_id
            and token.client_secret == client_secret
            and token.expires > time.monotonic()
        ):
            return token.value
        self._token = None
        settings = self.settings
        reply = await _exchange(
            ctx,
            "POST",
            f"{settings.login_url}/{settings.tenant_id}/oauth2/v2.0/token",
            headers={},
            form={
                "grant_type": "client_credentials",
                "client_id": client_id.reveal(),
                "client_secret": client_secret.reveal(),
                "scope": SCOPE,
            },
        )
        secrets = (client_id, client_secret)
        if reply.status in (400, 401, 403):
            raise AuthError(
                f"{VENDOR}: Entra ID refused the app's credentials for tenant "
                f"{settings.tenant_id} (HTTP {reply.status}: {_scrub(_message(reply), secrets)}); "
                "check tenant_id, client_id and client_secret"
            )
        _raise_for(reply, "token request", secrets)
        body = reply.body if isinstance(reply.body, dict) else {}
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise PermanentError(f"{VENDOR}: the token answer has no access_token")
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 3599.0
        self._token = _Token(
            client_id,
            client_secret,
            SecretValue(value),
            time.monotonic() + max(0.0, seconds - min(_EARLY, seconds / 2)),
        )
        return self._token.value

    async def _api(
        self,
        ctx: ActionContext,
        method: str,
        path_or_url: str,
        what: str,
        *,
        params: list[tuple[str, str]] | None = None,
        payload: Any = None,
    ) -> _Reply:
        """An authenticated call; a 401 fetches a new token and tries once more."""
        secrets = self._credentials(ctx)
        url = path_or_url if "://" in path_or_url else f"{self.settings.base_url}{path_or_url}"
        for attempt in range(2):
            token = await self._bearer(ctx, fresh=attempt > 0)
            reply = await _exchange(
                ctx,
                method,
                url,
                headers={"Authorization": f"Bearer {token.reveal()}"},
                params=params,
                payload=payload,
            )
            if reply.status != 401:
                break
            self._token = None
        if reply.status == 401:
            raise AuthError(
                f"{VENDOR}: {what}: the API refused a fresh token (HTTP 401: "
                f"{_scrub(_message(reply), secrets)})"
            )
        _raise_for(reply, what, secrets)
        return reply

    async def _pages(
        self, ctx: ActionContext, path: str, what: str, params: list[tuple[str, str]], most: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Items of an OData listing, following ``@odata.nextLink`` (bounded); and whether
        more were left."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        query: list[tuple[str, str]] | None = params
        for _page in range(MAX_PAGES):
            if url is None:
                break
            reply = await self._api(ctx, "GET", url, what, params=query)
            body = reply.body if isinstance(reply.body, dict) else {}
            items.extend(item for item in body.get("value") or [] if isinstance(item, dict))
            link = body.get("@odata.nextLink")
            url, query = None, None
            if isinstance(link, str) and link:
                if not _same_origin(link, self.settings.base_url):
                    raise PermanentError(f"{VENDOR}: {what}: a next page on another host")
                url = link
            if len(items) >= most:
                break
        return items[:most], url is not None or len(items) > most

    # -- machines --------------------------------------------------------------------------

    async def _find(self, ctx: ActionContext, name: str) -> list[dict[str, Any]]:
        found, _more = await self._pages(
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
        body = {**body, "Comment": f"{body['Comment']} [quell:{ctx.idempotency_key}]"}
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
        reply = await self._api(
            ctx,
            "POST",
            f"/api/machines/{machine_id}/{verb}",
            f"{verb} machine {machine_id}",
            payload=body,
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
        items, more = await self._pages(
            ctx, "/api/machineactions", "list machine actions", query, params.max_results
        )
        return ListActionsOut(actions=[_action_info(item) for item in items], truncated=more)

    # -- health and reconcile hooks ----------------------------------------------------------

    async def health(self, ctx: ActionContext) -> str:
        """A token is granted and the machine list can be read."""
        reply = await self._api(
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
        tag = f"[quell:{ctx.idempotency_key}]"
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
