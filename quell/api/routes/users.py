"""Users over HTTP: log in and out (sessions), and manage local users (admin).

``POST /api/login`` is public (its credential is the name and password in the body); everything
else needs a bearer token. Managing users, including setting someone's password, needs
``users:manage``; a user changes their own password with ``POST /api/me/password`` (with a
session or a token of theirs, and the current password).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authenticated, Authorize, RuntimeDep
from quell.errors import InvalidInput
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.governance.users import User
from quell.sdk.secret import SecretValue

router = APIRouter(prefix="/api", tags=["users"])

# Every role holds system:read, so every caller may end its own session (and change its own
# password).
CanManageUsers = Annotated[Principal, Depends(Authorize(Permission.USERS_MANAGE))]
UserName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]


class LoginIn(BaseModel):
    """A name and a password."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: SecretValue


class LoginOut(BaseModel):
    """A new session."""

    token: str = Field(description="The session's bearer token (``qs_…``); shown this once.")
    expires_at: datetime = Field(description="When it ends unless used; each use extends it.")
    user: str
    role: str


class UserOut(BaseModel):
    """A user; never the password or its hash."""

    id: str
    name: str
    display_name: str | None
    role: str
    status: str
    has_password: bool
    disabled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None
    email: str | None = None

    @classmethod
    def of(cls, user: User) -> UserOut:
        """Render a record."""
        return cls(**user.as_dict())


class UserCreate(BaseModel):
    """A user to add."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: str = Field(min_length=1, max_length=32, description="A built-in or custom role.")
    display_name: str | None = Field(default=None, max_length=128)
    password: SecretValue | None = Field(
        default=None, description="At least 12 characters; without one the user cannot log in."
    )


class UserPatch(BaseModel):
    """What to change; absent fields stay."""

    model_config = ConfigDict(extra="forbid")

    role: str | None = Field(default=None, max_length=32, description="A new role.")
    disabled: bool | None = None
    display_name: str | None = Field(default=None, max_length=128)
    email: str | None = Field(
        default=None, max_length=254, description="Where approval links are mailed ('' clears)."
    )


class PasswordIn(BaseModel):
    """A new password."""

    model_config = ConfigDict(extra="forbid")

    password: SecretValue


class PasswordChangeIn(BaseModel):
    """The current password and the new one."""

    model_config = ConfigDict(extra="forbid")

    current_password: SecretValue
    new_password: SecretValue = Field(description="At least 12 characters.")


@router.post("/login", response_model=LoginOut, summary="Log in with a name and password")
async def login(body: LoginIn, request: Request, runtime: RuntimeDep) -> LoginOut:
    """A session token for the user; failures are counted and, past a limit, refused (429)."""
    client = request.client.host if request.client else None
    token, session = await run_in_threadpool(runtime.users.login, body.name, body.password, client)
    user = await run_in_threadpool(runtime.users.get, session.user)
    return LoginOut(
        token=token.reveal(), expires_at=session.expires_at, user=user.name, role=user.role
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="End the calling session")
async def logout(runtime: RuntimeDep, principal: Authenticated) -> None:
    """Revoke the session whose token made this request."""
    if not principal.token_id.startswith("ses_"):
        raise InvalidInput(
            "logout ends a login session; an API token is revoked with DELETE /api/tokens/{name}"
        )
    await run_in_threadpool(runtime.users.logout, principal.token_id, by=principal.name)


@router.post("/me/password", response_model=UserOut, summary="Change your own password")
async def change_own_password(
    body: PasswordChangeIn, request: Request, runtime: RuntimeDep, principal: Authenticated
) -> UserOut:
    """Replace the caller's password, given the current one; their other sessions end (the
    one making the change stays). Wrong current passwords count as failed logins."""
    name = principal.user
    if name is None:
        raise InvalidInput(
            "this token belongs to no user (a service token); change a password with a "
            "user's session or token, or an admin sets it with PUT /api/users/{name}/password"
        )
    client = request.client.host if request.client else None
    keep = principal.token_id if principal.token_id.startswith("ses_") else None
    user = await run_in_threadpool(
        lambda: runtime.users.change_password(
            name, body.current_password, body.new_password, keep_session=keep, client=client
        )
    )
    return UserOut.of(user)


@router.get("/users", response_model=list[UserOut], summary="List users")
async def list_users(runtime: RuntimeDep, _: CanManageUsers) -> list[UserOut]:
    """Every user, by name."""
    return [UserOut.of(user) for user in await run_in_threadpool(runtime.users.list_all)]


@router.post(
    "/users", response_model=UserOut, status_code=status.HTTP_201_CREATED, summary="Add a user"
)
async def add_user(body: UserCreate, runtime: RuntimeDep, principal: CanManageUsers) -> UserOut:
    """Add a local user (with a role granting nothing beyond the caller's own)."""
    await run_in_threadpool(services.may_grant, runtime, principal, body.role)
    user = await run_in_threadpool(
        lambda: runtime.users.add(
            body.name,
            body.role,
            password=body.password,
            display_name=body.display_name,
            by=principal.name,
        )
    )
    return UserOut.of(user)


@router.get("/users/{name}", response_model=UserOut, summary="Show a user")
async def get_user(name: UserName, runtime: RuntimeDep, _: CanManageUsers) -> UserOut:
    """The user called ``name``."""
    return UserOut.of(await run_in_threadpool(runtime.users.get, name))


@router.patch("/users/{name}", response_model=UserOut, summary="Change a user")
async def patch_user(
    name: UserName, body: UserPatch, runtime: RuntimeDep, principal: CanManageUsers
) -> UserOut:
    """Change role, display name, or disable/enable (disabling revokes their sessions)."""
    users = runtime.users

    def apply() -> User:
        services.may_manage(runtime, principal, name)
        user = users.get(name)
        new_role = body.role if body.role is not None and body.role != user.role else None
        if new_role is not None:  # refused before anything else changes
            services.may_grant(runtime, principal, new_role)
        if body.email is not None and (body.email or None) != user.email:  # may be refused
            user = users.set_email(name, body.email, by=principal.name)
        if body.display_name is not None and body.display_name != user.display_name:
            user = users.set_display_name(name, body.display_name, by=principal.name)
        if new_role is not None:
            user = users.set_role(name, new_role, by=principal.name)
        if body.disabled is True and user.disabled_at is None:
            user = users.disable(name, by=principal.name)
        elif body.disabled is False and user.disabled_at is not None:
            user = users.enable(name, by=principal.name)
        return user

    return UserOut.of(await run_in_threadpool(apply))


@router.put("/users/{name}/password", response_model=UserOut, summary="Set a user's password")
async def set_password(
    name: UserName, body: PasswordIn, runtime: RuntimeDep, principal: CanManageUsers
) -> UserOut:
    """Set a new password (admin only for now); the user's sessions are revoked. Refused for
    a user whose role grants what the caller's does not."""

    def apply() -> User:
        services.may_manage(runtime, principal, name)
        return runtime.users.set_password(name, body.password, by=principal.name)

    user = await run_in_threadpool(apply)
    return UserOut.of(user)
