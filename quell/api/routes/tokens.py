"""API tokens over HTTP: list, create (shown once), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.durations import parse_duration
from quell.errors import InvalidInput, PermissionDenied
from quell.governance.permissions import Permission
from quell.governance.tokens import ApiToken, Principal

router = APIRouter(prefix="/api/tokens", tags=["tokens"])

CanReadTokens = Annotated[Principal, Depends(Authorize(Permission.TOKENS_READ))]
CanManageTokens = Annotated[Principal, Depends(Authorize(Permission.TOKENS_MANAGE))]
TokenName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class TokenOut(BaseModel):
    """A token's record. The token itself is never returned after creation."""

    id: str
    name: str
    role: str
    status: str
    hint: str = Field(description="The token's last four characters, to tell tokens apart.")
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    user: str | None = Field(
        default=None, description="The user the token belongs to; it acts with their role."
    )

    @classmethod
    def of(cls, token: ApiToken, now: datetime) -> TokenOut:
        """Render a record."""
        return cls(
            id=token.id,
            name=token.name,
            role=token.role,
            status=token.status(now),
            hint=token.hint,
            created_at=token.created_at,
            created_by=token.created_by,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
            user=token.user,
        )


class TokenCreate(BaseModel):
    """A token to make."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    role: str | None = Field(
        max_length=32,
        default=None,
        description="Required unless ``user`` is given (the token then has theirs).",
    )
    expires_in: str | None = Field(
        default=None, description="Lifetime such as 90d or 12h; no expiry when absent."
    )
    user: str | None = Field(
        default=None,
        description="The user the token belongs to: it acts with the user's current role and "
        "is refused while the user is disabled.",
    )


class TokenCreated(TokenOut):
    """A new token's record and, this once, the token."""

    token: str = Field(description="The bearer token. It is not stored and cannot be shown again.")


@router.get("", response_model=list[TokenOut], summary="List API tokens")
async def list_tokens(
    runtime: RuntimeDep, _: CanReadTokens, include_revoked: bool = False
) -> list[TokenOut]:
    """Active tokens (and revoked ones with ``include_revoked=true``)."""
    tokens = await run_in_threadpool(runtime.tokens.list_all, include_revoked=include_revoked)
    now = runtime.clock.now()
    return [TokenOut.of(token, now) for token in tokens]


@router.post(
    "",
    response_model=TokenCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API token",
)
async def create_token(
    body: TokenCreate, runtime: RuntimeDep, principal: CanManageTokens
) -> TokenCreated:
    """Create a token; the response carries it once."""
    expires_in = parse_duration(body.expires_in, field="expires_in") if body.expires_in else None
    if body.role is None and body.user is None:
        raise InvalidInput("a token needs a role, or a user whose role it takes", field="role")
    if body.user is not None and body.user != principal.user:
        # A user's token acts as the user (four eyes included): only they make one.
        raise PermissionDenied(
            f"a token of user {body.user!r} acts as them; only they can make one",
            field="user",
        )
    if body.role is not None:
        await run_in_threadpool(services.may_grant, runtime, principal, body.role)
    record, token = await run_in_threadpool(
        lambda: runtime.tokens.create(
            body.name,
            body.role if body.role is not None else "",
            created_by=principal.name,
            expires_in=expires_in,
            user=body.user,
        )
    )
    await services.audited(
        runtime, principal, "token.create", f"token:{record.name}",
        {"role": record.role, "user": record.user, "expires_at": record.expires_at},
    )  # fmt: skip
    out = TokenOut.of(record, runtime.clock.now())
    return TokenCreated(**out.model_dump(), token=token.reveal())


@router.get("/{name}", response_model=TokenOut, summary="Show an API token")
async def get_token(name: TokenName, runtime: RuntimeDep, _: CanReadTokens) -> TokenOut:
    """The active token called ``name``."""
    token = await run_in_threadpool(runtime.tokens.get, name)
    return TokenOut.of(token, runtime.clock.now())


@router.delete("/{name}", response_model=TokenOut, summary="Revoke an API token")
async def revoke_token(
    name: TokenName, runtime: RuntimeDep, principal: CanManageTokens
) -> TokenOut:
    """Revoke the active token called ``name``; it is refused from the next request on."""
    token = await run_in_threadpool(runtime.tokens.revoke, name)
    await services.audited(runtime, principal, "token.revoke", f"token:{name}", {})
    return TokenOut.of(token, runtime.clock.now())
