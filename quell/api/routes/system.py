"""About the service and the caller: OpenAPI, version, identity, roles."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from quell import __version__
from quell.api.auth import Authorize
from quell.governance.permissions import ROLE_PERMISSIONS, Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api", tags=["system"])

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


class RoleOut(BaseModel):
    """A role and its permissions."""

    name: str
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
async def whoami(principal: CanReadSystem) -> WhoAmIOut:
    """Name, role and permissions of the token used for this request."""
    return WhoAmIOut(
        name=principal.name,
        role=principal.role.value if principal.role else None,
        permissions=sorted(permission.value for permission in principal.permissions),
    )


@router.get("/roles", response_model=list[RoleOut], summary="Built-in roles and permissions")
async def roles(_: CanReadSystem) -> list[RoleOut]:
    """Every role and the permissions it grants."""
    return [
        RoleOut(name=role.value, permissions=sorted(p.value for p in permissions))
        for role, permissions in ROLE_PERMISSIONS.items()
    ]
