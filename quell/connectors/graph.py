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

from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

VENDOR = "graph"
SCOPE = "https://graph.microsoft.com/.default"
MAX_PAGES = rest.MAX_PAGES  # pages a listing follows at most
_USER = r"^[^\s/\\?#]{1,255}$"  # an object id or a userPrincipalName


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
        return rest.http_url(value)


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
        self._api = rest.MicrosoftApi.for_tenant(
            VENDOR, config.base_url, config.login_url, config.tenant_id, SCOPE
        )

    # -- users -----------------------------------------------------------------------------

    async def _read_user(self, ctx: ActionContext, user: str) -> dict[str, Any]:
        reply = await self._api.call(
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
        await self._api.call(
            ctx, "PATCH", _path(params.user), f"{name} user {params.user}", json=body
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
        reply = await self._api.call(
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
        items, more = await self._api.pages(
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
        await self._api.call(
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
