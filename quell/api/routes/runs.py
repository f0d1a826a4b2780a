"""Runs over HTTP: list, show with the step timeline, cancel, pause, resume, retry.

Controlling a run a worker holds is a request that worker honours at its next step boundary
(the answer still says ``running`` then); a run nobody holds changes at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.engine.states import RunStatus
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api/runs", tags=["runs"])

CanReadRuns = Annotated[Principal, Depends(Authorize(Permission.RUNS_READ))]
CanControlRuns = Annotated[Principal, Depends(Authorize(Permission.RUNS_CONTROL))]
RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The run's id.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Skip this many (paging).")]


@router.get("", summary="List runs")
async def list_runs(
    request: Request,
    runtime: RuntimeDep,
    _: CanReadRuns,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    playbook: Annotated[str | None, Query(max_length=128, description="Only its runs.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Runs, newest first, without their steps."""
    service = services.runs(request, runtime)
    found = await run_in_threadpool(
        lambda: service.list_all(
            status=status.value if status else None, playbook=playbook, limit=limit, offset=offset
        )
    )
    return [view.as_dict(with_steps=False) for view in found]


@router.get("/{run_id}", summary="Show a run and its step timeline")
async def get_run(
    run_id: RunId, request: Request, runtime: RuntimeDep, _: CanReadRuns
) -> dict[str, Any]:
    """The run, each step attempt oldest first, and what it waits (or waited) for."""

    def load() -> dict[str, Any]:
        view = services.runs(request, runtime).get(run_id)
        found = services.waits(request, runtime).list_all(run_id=run_id, status=None)
        return {**view.as_dict(), "waits": [wait.as_dict() for wait in found]}

    return await run_in_threadpool(load)


async def _control(
    request: Request, runtime: RuntimeDep, run_id: str, verb: str, principal: Principal
) -> dict[str, Any]:
    service = services.runs(request, runtime)
    view = await run_in_threadpool(getattr(service, verb), run_id)
    await services.audited(
        runtime, principal, f"run.{verb}", run_id,
        {"playbook": view.playbook_id, "status": view.status},
    )  # fmt: skip
    return dict(view.as_dict(with_steps=False))


@router.post("/{run_id}/cancel", summary="Cancel a run")
async def cancel_run(
    run_id: RunId, request: Request, runtime: RuntimeDep, principal: CanControlRuns
) -> dict[str, Any]:
    """Cancel the run, its pending waits and its child runs; 409 when it already ended."""
    return await _control(request, runtime, run_id, "cancel", principal)


@router.post("/{run_id}/pause", summary="Pause a run")
async def pause_run(
    run_id: RunId, request: Request, runtime: RuntimeDep, principal: CanControlRuns
) -> dict[str, Any]:
    """Stop the run at its next step until it is resumed; 409 unless it is live."""
    return await _control(request, runtime, run_id, "pause", principal)


@router.post("/{run_id}/resume", summary="Resume a paused run")
async def resume_run(
    run_id: RunId, request: Request, runtime: RuntimeDep, principal: CanControlRuns
) -> dict[str, Any]:
    """Make a paused run ready again; 409 unless it is paused."""
    return await _control(request, runtime, run_id, "resume", principal)


@router.post("/{run_id}/retry", summary="Retry a failed or canceled run")
async def retry_run(
    run_id: RunId, request: Request, runtime: RuntimeDep, principal: CanControlRuns
) -> dict[str, Any]:
    """Run it again from its failed steps (the ones that succeeded stay done)."""
    return await _control(request, runtime, run_id, "retry", principal)
