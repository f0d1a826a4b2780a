"""Containments over HTTP: what is in place, and undoing it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api/containments", tags=["containments"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.RUNS_READ))]
CanControl = Annotated[Principal, Depends(Authorize(Permission.RUNS_CONTROL))]
ContainmentId = Annotated[str, Path(pattern=r"^cnt_[0-9a-z]{26}$")]


@router.get("", summary="List containments")
async def list_containments(
    runtime: RuntimeDep,
    _: CanRead,
    include_reverted: Annotated[bool, Query(description="Include reverted ones.")] = False,
) -> list[dict[str, Any]]:
    """Containments in place (and reverts that failed): what, where, by whom, since and until
    when, and how each is reverted."""
    found = await run_in_threadpool(
        lambda: runtime.containments.list_all(include_reverted=include_reverted)
    )
    return [item.as_dict() for item in found]


@router.get("/{containment_id}", summary="Show a containment")
async def get_containment(
    containment_id: ContainmentId, runtime: RuntimeDep, _: CanRead
) -> dict[str, Any]:
    """One containment."""
    return (await run_in_threadpool(runtime.containments.get, containment_id)).as_dict()


@router.post("/{containment_id}/revert", summary="Revert a containment")
async def revert(
    containment_id: ContainmentId, runtime: RuntimeDep, who: CanControl
) -> dict[str, Any]:
    """Call its revert action now; the containment afterwards (``reverted``, or ``failed`` with
    the error and a retry time)."""
    runner = runtime.action_runner(f"api:{who.name}")
    try:
        after = await runtime.containments.revert(runner, containment_id, by=f"api:{who.name}")
    finally:
        await runner.aclose()
    return after.as_dict()
