"""``graph``: Microsoft Graph (Entra ID users), through its documented REST API.

- Entra ID client credentials: ``POST {login_url}/{tenant_id}/oauth2/v2.0/token`` with scope
  ``https://graph.microsoft.com/.default``; the token is kept until shortly before it expires
  and fetched again, once, when Graph answers 401.
- ``PATCH /v1.0/users/{id|userPrincipalName}`` with ``{"accountEnabled": false}`` disables a
  user (``true`` enables); reading ``accountEnabled`` back tells whether one landed.
- ``POST /v1.0/users/{id}/revokeSignInSessions`` invalidates the user's refresh tokens and
  session cookies.
- ``GET /v1.0/users/{id}/memberOf`` lists the user's groups and roles, following
  ``@odata.nextLink`` (only on the configured Graph host, at most ``MAX_PAGES`` pages).

Errors follow Microsoft's ``{"error": {"code", "message"}}`` shape; a 429's wait comes from
``Retry-After``. The client secret goes in the token request's form only and is never logged
nor put in an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ConfigDict, Field, field_validator
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

VENDOR = "graph"
SCOPE = "https://graph.microsoft.com/.default"
MAX_BODY = 4 * 1024 * 1024
MAX_PAGES = 50  # pages a listing follows at most
_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
_EARLY = 60.0  # a token is fetched again this many seconds before it expires
_USER = r"^[^\s/\\?#]{1,255}$"  # an object id or a userPrincipalName


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


class GraphConfig(BaseModel):
    """Where Graph and the Entra ID token endpoint are, and which tenant."""

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
        "https://graph.microsoft.com", description="Graph (national clouds have their own)."
    )
    login_url: str = "https://login.microsoftonline.com"

    @field_validator("base_url", "login_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


# -- inputs and outputs ---------------------------------------------------------------------------


class UserIn(ActionInput):
    """A user, by object id or userPrincipalName."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user": "jdoe@corp.example"},
                {"user": "87d349ed-44d7-43e1-9a83-5f2406dee5bd"},
            ]
        },
    )

    user: str = Field(pattern=_USER, description="Object id or userPrincipalName.")


class AccountOut(ActionOutput):
    """What was asked of the account."""

    user: str
    account_enabled: bool | None = None
    action: str
    simulated: bool = False
    would_send: dict[str, Any] | None = None


class RevokeOut(ActionOutput):
    """Whether Graph revoked the sessions."""

    user: str
    revoked: bool
    simulated: bool = False


class GroupsIn(ActionInput):
    """A user whose groups to list."""

    user: str = Field(pattern=_USER)
    max_results: int = Field(1000, ge=1, le=10_000)


class Group(ActionOutput):
    """A group or directory role the user is a member of."""

    id: str
    type: str | None = Field(None, description="@odata.type, e.g. #microsoft.graph.group")
    display_name: str | None = None


class GroupsOut(ActionOutput):
    """The user's groups and roles."""

    groups: list[Group]
    truncated: bool = False


class UserOut(ActionOutput):
    """A user (a few fields)."""

    id: str
    user_principal_name: str | None = None
    display_name: str | None = None
    account_enabled: bool | None = None


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


def _path(user: str) -> str:
    return f"/v1.0/users/{quote(user, safe='@')}"


class Graph(Connector):
    """Microsoft Graph / Entra ID: disable and enable users, revoke their sessions."""

    name = "graph"
    title = "Microsoft Graph (Entra ID)"
    Config = GraphConfig
    secrets = ("client_id", "client_secret")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, GraphConfig):
            raise PermanentError(
                f"{VENDOR} needs configuration (tenant_id): quell connector add ... --type graph"
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

    # -- users -----------------------------------------------------------------------------

    async def _read_user(self, ctx: ActionContext, user: str) -> dict[str, Any]:
        reply = await self._api(
            ctx,
            "GET",
            _path(user),
            f"read user {user}",
            params=[("$select", "id,userPrincipalName,displayName,accountEnabled")],
        )
        if not isinstance(reply.body, dict) or not reply.body.get("id"):
            raise PermanentError(f"{VENDOR}: read user {user}: not a user")
        return reply.body

    async def _set_enabled(self, ctx: ActionContext, params: UserIn, enabled: bool) -> AccountOut:
        name = "enable" if enabled else "disable"
        body = {"accountEnabled": enabled}
        if ctx.dry_run:  # reading the user would need a token, which is a POST
            sent = {"method": "PATCH", "path": _path(params.user), "body": body}
            return AccountOut(user=params.user, action=name, simulated=True, would_send=sent)
        await self._api(
            ctx, "PATCH", _path(params.user), f"{name} user {params.user}", payload=body
        )
        ctx.log.info("graph_account_changed", action=name)
        return AccountOut(user=params.user, account_enabled=enabled, action=name)

    @action(
        "disable_user",
        risk=RiskLevel.HIGH,
        title="Disable a user account",
        idempotent=True,
        supports_dry_run=True,
        reverts="enable_user",
        reconcile="is_disabled",
        openc2=("set", "er:account", "er"),
    )
    async def disable_user(self, ctx: ActionContext, params: UserIn) -> AccountOut:
        """Block the user's sign-ins (``accountEnabled: false``)."""
        return await self._set_enabled(ctx, params, enabled=False)

    @action(
        "enable_user",
        risk=RiskLevel.MEDIUM,
        title="Enable a user account",
        idempotent=True,
        supports_dry_run=True,
        reverts="disable_user",
        reconcile="is_enabled",
    )
    async def enable_user(self, ctx: ActionContext, params: UserIn) -> AccountOut:
        """Allow the user to sign in again (``accountEnabled: true``)."""
        return await self._set_enabled(ctx, params, enabled=True)

    @action(
        "revoke_sessions",
        risk=RiskLevel.MEDIUM,
        title="Revoke a user's sign-in sessions",
        idempotent=True,
        supports_dry_run=True,
    )
    async def revoke_sessions(self, ctx: ActionContext, params: UserIn) -> RevokeOut:
        """Invalidate the user's refresh tokens and session cookies: they must sign in again."""
        if ctx.dry_run:
            return RevokeOut(user=params.user, revoked=False, simulated=True)
        reply = await self._api(
            ctx,
            "POST",
            f"{_path(params.user)}/revokeSignInSessions",
            f"revoke sessions of {params.user}",
        )
        body = reply.body if isinstance(reply.body, dict) else {}
        ctx.log.info("graph_sessions_revoked")
        return RevokeOut(user=params.user, revoked=body.get("value") is True)

    @action("get_user", risk=RiskLevel.READ, idempotent=True, title="Read a user")
    async def get_user(self, ctx: ActionContext, params: UserIn) -> UserOut:
        """A user's id, principal name, display name and whether the account is enabled."""
        found = await self._read_user(ctx, params.user)
        return UserOut(
            id=str(found["id"]),
            user_principal_name=found.get("userPrincipalName"),
            display_name=found.get("displayName"),
            account_enabled=found.get("accountEnabled"),
        )

    @action("list_groups", risk=RiskLevel.READ, idempotent=True, title="List a user's groups")
    async def list_groups(self, ctx: ActionContext, params: GroupsIn) -> GroupsOut:
        """The groups and directory roles the user is a direct member of (paged)."""
        items, more = await self._pages(
            ctx,
            f"{_path(params.user)}/memberOf",
            f"list groups of {params.user}",
            [],
            params.max_results,
        )
        groups = [
            Group(
                id=str(item.get("id")),
                type=item.get("@odata.type"),
                display_name=item.get("displayName"),
            )
            for item in items
        ]
        return GroupsOut(groups=groups, truncated=more)

    # -- health and reconcile hooks ----------------------------------------------------------

    async def health(self, ctx: ActionContext) -> str:
        """A token is granted and the user list can be read."""
        await self._api(
            ctx, "GET", "/v1.0/users", "list users", params=[("$top", "1"), ("$select", "id")]
        )
        return (
            f"{VENDOR} at {self.settings.base_url}: token granted for tenant "
            f"{self.settings.tenant_id}; users readable"
        )

    async def _enabled_is(self, ctx: ActionContext, params: UserIn, wanted: bool) -> Reconciliation:
        found = await self._read_user(ctx, params.user)
        enabled = found.get("accountEnabled")
        if enabled is not wanted:
            return Reconciliation(Landed.NOT_LANDED, detail=f"accountEnabled {enabled}")
        name = "enable" if wanted else "disable"
        output = AccountOut(user=params.user, account_enabled=wanted, action=name)
        return Reconciliation(
            Landed.LANDED, output.model_dump(mode="json"), f"accountEnabled {enabled}"
        )

    async def is_disabled(self, ctx: ActionContext, params: UserIn) -> Reconciliation:
        """Whether the account is disabled (``accountEnabled`` false)."""
        return await self._enabled_is(ctx, params, wanted=False)

    async def is_enabled(self, ctx: ActionContext, params: UserIn) -> Reconciliation:
        """Whether the account is enabled (``accountEnabled`` true)."""
        return await self._enabled_is(ctx, params, wanted=True)


__all__ = ["AccountOut", "Graph", "GraphConfig", "GroupsIn", "GroupsOut", "UserIn", "UserOut"]
