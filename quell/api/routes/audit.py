"""The audit trail over HTTP: read it, and check its hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api/audit", tags=["audit"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.AUDIT_READ))]


@router.get("", summary="Read the audit trail")
async def list_events(
    runtime: RuntimeDep,
    _: CanRead,
    action: Annotated[str | None, Query(max_length=64, description="Action prefix.")] = None,
    subject: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    before: Annotated[int | None, Query(ge=1, description="Older than this seq.")] = None,
) -> list[dict[str, Any]]:
    """Events, newest first: who did what to which, when, and the chain's hashes."""
    found = await run_in_threadpool(
        lambda: runtime.audit.list_all(action=action, subject=subject, limit=limit, before=before)
    )
    return [event.as_dict() for event in found]


@router.get("/verify", summary="Check the audit trail's hash chain")
async def verify(runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """``intact`` false names the first event that does not fit (changed, removed, moved)."""
    checked, broken = await run_in_threadpool(runtime.audit.verify)
    return {"checked": checked, "intact": broken is None, "first_broken_seq": broken}
