"""About the service and the caller: OpenAPI, version, identity, roles."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell import __version__
from quell.api.auth import Authenticated, Authorize
from quell.errors import PermissionDenied
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api", tags=["system"])
CanManageUsers = Annotated[Principal, Depends(Authorize(Permission.USERS_MANAGE))]

CanReadSystem = Annotated[Principal, Depends(Authorize(Permission.SYSTEM_READ))]


class VersionOut(BaseModel):
    """What is running."""

    version: str
    database: str


class WhoAmIOut(BaseModel):
    """The caller, as the server sees it."""

    name: str
    role: str | None
    permissions: list[str]


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, _: CanReadSystem) -> dict[str, Any]:
    """The OpenAPI document of this API."""
    document: dict[str, Any] = request.app.openapi()
    return document


@router.get("/version", response_model=VersionOut, summary="Version of the running server")
async def version(request: Request, _: CanReadSystem) -> VersionOut:
    """The Quell version and the database backend."""
    return VersionOut(version=__version__, database=request.app.state.runtime.db.backend.value)


@router.get("/whoami", response_model=WhoAmIOut, summary="The calling token's identity")
async def whoami(principal: Authenticated) -> WhoAmIOut:
    """Name, role and permissions of the token used for this request."""
    return WhoAmIOut(
        name=principal.name,
        role=principal.role if principal.role else None,
        permissions=sorted(permission.value for permission in principal.permissions),
    )


@router.get("/roles", summary="Roles (built-in and custom) and their permissions")
async def roles(request: Request, _: CanReadSystem) -> list[dict[str, Any]]:
    """Every role and the permissions it grants."""
    book = request.app.state.runtime.roles
    return [role.as_dict() for role in await run_in_threadpool(book.list_all)]


class RoleIn(BaseModel):
    """A custom role: a set of permissions."""

    model_config = ConfigDict(extra="forbid")

    permissions: list[str] = Field(min_length=1, description="Permission names (alerts:read).")
    description: str | None = Field(default=None, max_length=500)


@router.put("/roles/{name}", summary="Create or change a custom role")
async def put_role(
    name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{1,31}$")],
    body: RoleIn,
    request: Request,
    principal: CanManageUsers,
) -> dict[str, Any]:
    """The role as stored; a built-in role cannot be changed, and it grants nothing beyond the
    caller's own permissions. Audited with before and after."""
    from quell.governance.roles import parse_permissions

    book = request.app.state.runtime.roles
    # Nor does it change a role that grants more than the caller holds (its holders do).
    held = await run_in_threadpool(book.permissions, name) or frozenset()
    for granted, verb in ((held, "grants"), (parse_permissions(body.permissions), "would grant")):
        beyond = sorted(p.value for p in granted - principal.permissions)
        if beyond:
            raise PermissionDenied(
                f"role {name!r} {verb} what you do not hold ({', '.join(beyond)})",
                permission=beyond[0],
            )
    role = await run_in_threadpool(
        lambda: book.define(name, body.permissions, description=body.description, by=principal.name)
    )
    return dict(role.as_dict())


@router.delete(
    "/roles/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a custom role"
)
async def delete_role(
    name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{1,31}$")],
    request: Request,
    principal: CanManageUsers,
) -> None:
    """Refused while a user or a token holds it."""
    book = request.app.state.runtime.roles
    await run_in_threadpool(lambda: book.remove(name, by=principal.name))
