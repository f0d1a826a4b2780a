"""Any other path: authenticated first, then 404, so nothing answers a caller without a token."""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import APIRouter, Depends

from quell.api.auth import Authorize
from quell.errors import NotFound
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter()

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@router.api_route("/{path:path}", methods=_METHODS, include_in_schema=False, response_model=None)
async def no_such_route(
    path: str, _: Annotated[Principal, Depends(Authorize(Permission.SYSTEM_READ))]
) -> NoReturn:
    """404 for an authenticated caller; 401 for anyone else."""
    raise NotFound(f"no such route: /{path}", path=f"/{path}")
