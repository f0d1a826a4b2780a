"""``okta``: Okta user lifecycle and sessions, through the documented Management API.

- Requests carry ``Authorization: SSWS <api_token>`` (the instance's secret ``api_token``).
- ``POST /api/v1/users/{id}/lifecycle/suspend`` and ``.../unsuspend``; a user's ``status``
  (``SUSPENDED`` / ``ACTIVE``, from ``GET /api/v1/users/{id}``) tells whether one landed.
- ``DELETE /api/v1/users/{id}/sessions`` ends every session of the user.
- ``GET /api/v1/users?search=profile.login eq "x"`` finds a user; listings follow the
  ``Link: <...>; rel="next"`` header (only on the configured org, at most ``MAX_PAGES`` pages).

Errors follow Okta's ``{"errorCode", "errorSummary"}`` shape; a 429's wait comes from
``Retry-After`` or Okta's ``X-Rate-Limit-Reset`` (epoch seconds). The token is never logged
nor put in an error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

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

VENDOR = "okta"
MAX_PAGES = rest.MAX_PAGES  # pages a listing follows at most
_USER_ID = r"^[A-Za-z0-9]{1,64}$"
_LOGIN = r"^[^\"\\\s]{1,255}$"  # no quote, backslash or space: it goes into a search string


class OktaConfig(BaseModel):
    """The Okta org."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"base_url": "http://127.0.0.1:9"}]}
    )

    base_url: str = Field(description="The org URL, e.g. https://example.okta.com.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("base_url must be an http(s) URL")
        return value.rstrip("/")


# -- inputs and outputs ---------------------------------------------------------------------------


class UserIn(ActionInput):
    """A user, by Okta user id or by login."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"login": "jdoe@corp.example"}, {"user_id": "00u1ab2cd3EF4gh5i6j7"}]
        },
    )

    user_id: str | None = Field(None, pattern=_USER_ID)
    login: str | None = Field(None, pattern=_LOGIN, description="profile.login")

    @model_validator(mode="after")
    def _one_of(self) -> UserIn:
        if (self.user_id is None) == (self.login is None):
            raise ValueError("give exactly one of user_id and login")
        return self


class ClearSessionsIn(UserIn):
    """A user whose sessions to end."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"login": "jdoe@corp.example"}]}
    )

    oauth_tokens: bool = Field(False, description="Also revoke the user's OAuth tokens.")


class LifecycleOut(ActionOutput):
    """What was asked of the user, and the status seen."""

    user_id: str | None = None
    login: str | None = None
    action: str
    status: str | None = None
    already: bool = Field(False, description="The user was in that state already.")
    simulated: bool = False
    would_send: dict[str, Any] | None = None


class User(ActionOutput):
    """A user (a few fields)."""

    id: str
    login: str | None = None
    email: str | None = None
    status: str | None = None
    last_login: str | None = None


class FindUsersIn(ActionInput):
    """A login to find, or an Okta search expression (``status eq "ACTIVE"``)."""

    login: str | None = Field(None, pattern=_LOGIN)
    search: str | None = Field(None, max_length=1000)
    page_size: int = Field(200, ge=1, le=200)
    max_results: int = Field(1000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one_of(self) -> FindUsersIn:
        if (self.login is None) == (self.search is None):
            raise ValueError("give exactly one of login and search")
        return self


class FindUsersOut(ActionOutput):
    """The users found."""

    users: list[User]
    truncated: bool = False


class GetUserIn(ActionInput):
    """A user id (or login) to read."""

    user: str = Field(pattern=_LOGIN)


# -- HTTP -----------------------------------------------------------------------------------------


def _message(reply: rest.Reply) -> str:
    """Okta's error summary (and first cause), trimmed."""
    body = reply.body
    if isinstance(body, dict) and body.get("errorSummary"):
        text = f"{body.get('errorCode', '')}: {body['errorSummary']}".lstrip(": ")
        causes = body.get("errorCauses")
        if isinstance(causes, list) and causes and isinstance(causes[0], dict):
            cause = causes[0].get("errorSummary")
            if cause:
                text += f" ({cause})"
        return text[:300]
    return reply.text.strip()[:200] or f"HTTP {reply.status}"


# a 429's wait: ``Retry-After``, else ``X-Rate-Limit-Reset`` (epoch), at least a second
_OKTA = rest.Vendor(
    VENDOR,
    _message,
    reset_header="X-Rate-Limit-Reset",
    reset_floor=1.0,
    unauthorized_hint="; check the instance's api_token",
)


def _page(reply: rest.Reply) -> rest.Page:
    if not isinstance(reply.body, list):
        raise PermanentError(f"{VENDOR}: search users: the answer is not a list")
    return [item for item in reply.body if isinstance(item, dict)], rest.next_link(reply.headers)


def _user(item: dict[str, Any]) -> User:
    found = item.get("profile")
    profile: dict[str, Any] = found if isinstance(found, dict) else {}
    return User(
        id=str(item.get("id")),
        login=profile.get("login"),
        email=profile.get("email"),
        status=item.get("status"),
        last_login=item.get("lastLogin"),
    )


# -- the connector --------------------------------------------------------------------------------

_TARGET = {"suspend": "SUSPENDED", "unsuspend": "ACTIVE"}


class Okta(Connector):
    """Okta: suspend and unsuspend users, end their sessions, find them."""

    name = "okta"
    title = "Okta"
    Config = OktaConfig
    secrets = ("api_token",)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, OktaConfig):
            raise PermanentError(f"{VENDOR} needs configuration (base_url, the org URL)")
        self.settings = config

    async def _api(
        self,
        ctx: ActionContext,
        method: str,
        path_or_url: str,
        what: str,
        *,
        params: rest.Params | None = None,
    ) -> rest.Reply:
        token = ctx.secret("api_token")
        url = path_or_url if "://" in path_or_url else f"{self.settings.base_url}{path_or_url}"
        reply = await _OKTA.request(
            ctx, method, url, headers={"Authorization": f"SSWS {token.reveal()}"}, params=params
        )
        _OKTA.check(reply, what, (token,))
        return reply

    async def _search(
        self, ctx: ActionContext, search: str, page_size: int, most: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Users matching an Okta search expression, following ``rel="next"`` (bounded)."""

        async def fetch(url: str, query: rest.Params | None) -> rest.Reply:
            return await self._api(ctx, "GET", url, "search users", params=query)

        return await rest.follow_links(
            fetch,
            "/api/v1/users",
            [("search", search), ("limit", str(page_size))],
            page=_page,
            origin=self.settings.base_url,
            most=most,
            elsewhere=f"{VENDOR}: search users: a next page on another host",
        )

    async def _user_of(self, ctx: ActionContext, params: UserIn) -> dict[str, Any]:
        """The user as Okta describes it (a GET: dry runs may call it)."""
        if params.user_id is not None:
            reply = await self._api(
                ctx, "GET", f"/api/v1/users/{params.user_id}", f"read user {params.user_id}"
            )
            if not isinstance(reply.body, dict) or not reply.body.get("id"):
                raise PermanentError(f"{VENDOR}: read user {params.user_id}: not a user")
            return reply.body
        found, _more = await self._search(ctx, f'profile.login eq "{params.login}"', 2, 2)
        if not found:
            raise TargetNotFound(
                f"{VENDOR}: no user with login {params.login!r}", details={"login": params.login}
            )
        if len(found) > 1:
            raise PermanentError(f"{VENDOR}: several users have login {params.login!r}")
        return found[0]

    async def _lifecycle(self, ctx: ActionContext, params: UserIn, verb: str) -> LifecycleOut:
        user = await self._user_of(ctx, params)
        user_id, status = str(user.get("id")), user.get("status")
        path = f"/api/v1/users/{user_id}/lifecycle/{verb}"
        out = LifecycleOut(user_id=user_id, login=_user(user).login, action=verb, status=status)
        if status == _TARGET[verb]:
            return out.model_copy(update={"already": True})
        if ctx.dry_run:
            return out.model_copy(
                update={"simulated": True, "would_send": {"method": "POST", "path": path}}
            )
        await self._api(ctx, "POST", path, f"{verb} user {user_id}")
        ctx.log.info("okta_user_lifecycle", action=verb, user_id=user_id)
        return out.model_copy(update={"status": _TARGET[verb]})

    @action(
        "suspend",
        risk=RiskLevel.HIGH,
        title="Suspend a user",
        idempotent=True,
        supports_dry_run=True,
        reverts="unsuspend",
        reconcile="is_suspended",
        openc2=("set", "er:account", "er"),
    )
    async def suspend(self, ctx: ActionContext, params: UserIn) -> LifecycleOut:
        """Suspend an active user: they cannot sign in until unsuspended."""
        return await self._lifecycle(ctx, params, "suspend")

    @action(
        "unsuspend",
        risk=RiskLevel.MEDIUM,
        title="Unsuspend a user",
        idempotent=True,
        supports_dry_run=True,
        reverts="suspend",
        reconcile="is_active",
    )
    async def unsuspend(self, ctx: ActionContext, params: UserIn) -> LifecycleOut:
        """Return a suspended user to ACTIVE."""
        return await self._lifecycle(ctx, params, "unsuspend")

    @action(
        "clear_sessions",
        risk=RiskLevel.MEDIUM,
        title="End a user's sessions",
        idempotent=True,
        supports_dry_run=True,
    )
    async def clear_sessions(self, ctx: ActionContext, params: ClearSessionsIn) -> LifecycleOut:
        """Sign the user out everywhere (and revoke their OAuth tokens if asked)."""
        user = await self._user_of(ctx, params)
        user_id = str(user.get("id"))
        query = [("oauthTokens", "true")] if params.oauth_tokens else None
        path = f"/api/v1/users/{user_id}/sessions"
        out = LifecycleOut(
            user_id=user_id,
            login=_user(user).login,
            action="clear_sessions",
            status=user.get("status"),
        )
        if ctx.dry_run:
            sent = {"method": "DELETE", "path": path, "oauthTokens": params.oauth_tokens}
            return out.model_copy(update={"simulated": True, "would_send": sent})
        await self._api(ctx, "DELETE", path, f"clear sessions of user {user_id}", params=query)
        ctx.log.info("okta_sessions_cleared", user_id=user_id)
        return out

    @action("find_users", risk=RiskLevel.READ, idempotent=True, title="Find users")
    async def find_users(self, ctx: ActionContext, params: FindUsersIn) -> FindUsersOut:
        """Users by login, or by an Okta search expression (paged, at most ``max_results``)."""
        search = params.search or f'profile.login eq "{params.login}"'
        items, more = await self._search(ctx, search, params.page_size, params.max_results)
        return FindUsersOut(users=[_user(item) for item in items], truncated=more)

    @action("get_user", risk=RiskLevel.READ, idempotent=True, title="Read a user")
    async def get_user(self, ctx: ActionContext, params: GetUserIn) -> User:
        """A user by id or login (``GET /api/v1/users/{id|login}``)."""
        user = quote(params.user, safe="@.")
        reply = await self._api(ctx, "GET", f"/api/v1/users/{user}", f"read user {params.user}")
        if not isinstance(reply.body, dict):
            raise PermanentError(f"{VENDOR}: read user {params.user}: not a user")
        return _user(reply.body)

    # -- health and reconcile hooks ----------------------------------------------------------

    async def health(self, ctx: ActionContext) -> str:
        """The API token is accepted: whose token it is."""
        reply = await self._api(ctx, "GET", "/api/v1/users/me", "read the token's user")
        owner = _user(reply.body if isinstance(reply.body, dict) else {"id": "?"})
        return f"{VENDOR} at {self.settings.base_url}: API token of {owner.login or owner.id}"

    async def _status_is(self, ctx: ActionContext, params: UserIn, verb: str) -> Reconciliation:
        user = await self._user_of(ctx, params)
        status = user.get("status")
        if status != _TARGET[verb]:
            return Reconciliation(Landed.NOT_LANDED, detail=f"status {status}")
        output = LifecycleOut(
            user_id=str(user.get("id")), login=_user(user).login, action=verb, status=status
        )
        return Reconciliation(Landed.LANDED, output.model_dump(mode="json"), f"status {status}")

    async def is_suspended(self, ctx: ActionContext, params: UserIn) -> Reconciliation:
        """Whether the user's status is SUSPENDED."""
        return await self._status_is(ctx, params, "suspend")

    async def is_active(self, ctx: ActionContext, params: UserIn) -> Reconciliation:
        """Whether the user's status is ACTIVE."""
        return await self._status_is(ctx, params, "unsuspend")


__all__ = [
    "ClearSessionsIn",
    "FindUsersIn",
    "GetUserIn",
    "LifecycleOut",
    "Okta",
    "OktaConfig",
    "User",
    "UserIn",
]
