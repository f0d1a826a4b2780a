"""Approvals and manual tasks over HTTP: what runs wait for from people.

An approval is decided by the calling user, who needs ``approvals:decide`` (and, when the
playbook names approver roles, one of those roles); the decision, its comment and who made it
are recorded on the wait and become the waiting step's output. A task is completed with
``tasks:complete``; a *reconcile* task (a write nobody could tell had landed) needs ``landed``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.engine.waits import Wait
from quell.errors import InvalidInput, NotFound
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api", tags=["approvals and tasks"])

CanReadRuns = Annotated[Principal, Depends(Authorize(Permission.RUNS_READ))]
CanDecide = Annotated[Principal, Depends(Authorize(Permission.APPROVALS_DECIDE))]
CanComplete = Annotated[Principal, Depends(Authorize(Permission.TASKS_COMPLETE))]
WaitId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The wait's id.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many.")]
Offset = Annotated[int, Query(ge=0, description="Skip this many (paging).")]
TASK_KINDS = ("task", "reconcile")


class WaitFilter(StrEnum):
    """Which waits to list."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    DONE = "done"
    EXPIRED = "expired"
    CANCELED = "canceled"
    ALL = "all"


StatusFilter = Annotated[WaitFilter, Query(description="Their status; `all` for every one.")]
RunFilter = Annotated[
    str | None, Query(max_length=64, alias="run", description="Only this run's waits.")
]


class DecisionIn(BaseModel):
    """An approval decision."""

    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=4000, description="Why.")


class TaskDoneIn(BaseModel):
    """A completed task."""

    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=4000, description="What was done.")
    landed: bool | None = Field(
        default=None,
        description="For a reconcile task (only): whether the write reached the peer. True "
        "closes the step as done; false lets the run attempt it again.",
    )
    output: dict[str, Any] = Field(
        default_factory=dict, description="What to report; the step's output carries it as data."
    )


def _role(principal: Principal) -> str:
    return principal.role.value if principal.role else ""


async def _list(
    request: Request,
    runtime: RuntimeDep,
    kinds: tuple[str, ...],
    status: WaitFilter,
    run: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    service = services.waits(request, runtime)
    found = await run_in_threadpool(
        lambda: service.list_all(
            kinds=kinds,
            status=None if status is WaitFilter.ALL else status.value,
            run_id=run,
            limit=limit,
            offset=offset,
        )
    )
    return [wait.as_dict() for wait in found]


async def _get(request: Request, runtime: RuntimeDep, wait_id: str, kinds: tuple[str, ...]) -> Wait:
    wait = await run_in_threadpool(services.waits(request, runtime).get, wait_id)
    if wait.kind not in kinds:
        what = "approval" if kinds == ("approval",) else "task"
        raise NotFound(f"no {what} {wait_id!r}", field="id", value=wait_id)
    return wait


@router.get("/approvals", summary="List approvals")
async def list_approvals(
    request: Request,
    runtime: RuntimeDep,
    _: CanReadRuns,
    status: StatusFilter = WaitFilter.PENDING,
    run: RunFilter = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Approvals, oldest first; the pending ones unless ``status`` says otherwise."""
    return await _list(request, runtime, ("approval",), status, run, limit, offset)


@router.get("/approvals/{wait_id}", summary="Show an approval")
async def get_approval(
    wait_id: WaitId, request: Request, runtime: RuntimeDep, _: CanReadRuns
) -> dict[str, Any]:
    """One approval, with its decision once made."""
    return (await _get(request, runtime, wait_id, ("approval",))).as_dict()


async def _decide(
    request: Request,
    runtime: RuntimeDep,
    wait_id: str,
    principal: Principal,
    body: DecisionIn | None,
    *,
    approved: bool,
) -> dict[str, Any]:
    await _get(request, runtime, wait_id, ("approval",))
    service = services.waits(request, runtime)
    decide = service.approve if approved else service.reject
    comment = body.comment if body is not None else None
    decided = await run_in_threadpool(decide, wait_id, principal.name, _role(principal), comment)
    return decided.as_dict()


@router.post("/approvals/{wait_id}/approve", summary="Approve")
async def approve(
    wait_id: WaitId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanDecide,
    body: DecisionIn | None = None,
) -> dict[str, Any]:
    """The waiting step succeeds and the run goes on; 409 when it was already decided."""
    return await _decide(request, runtime, wait_id, principal, body, approved=True)


@router.post("/approvals/{wait_id}/reject", summary="Reject")
async def reject(
    wait_id: WaitId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanDecide,
    body: DecisionIn | None = None,
) -> dict[str, Any]:
    """The waiting step fails (its on_failure, if any, runs); 409 when already decided."""
    return await _decide(request, runtime, wait_id, principal, body, approved=False)


@router.get("/tasks", summary="List manual tasks")
async def list_tasks(
    request: Request,
    runtime: RuntimeDep,
    _: CanReadRuns,
    status: StatusFilter = WaitFilter.PENDING,
    run: RunFilter = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Tasks (``kind`` task, or reconcile for a write nobody could check), oldest first."""
    return await _list(request, runtime, TASK_KINDS, status, run, limit, offset)


@router.get("/tasks/{wait_id}", summary="Show a manual task")
async def get_task(
    wait_id: WaitId, request: Request, runtime: RuntimeDep, _: CanReadRuns
) -> dict[str, Any]:
    """One task, with who completed it and how."""
    return (await _get(request, runtime, wait_id, TASK_KINDS)).as_dict()


@router.post("/tasks/{wait_id}/complete", summary="Complete a manual task")
async def complete_task(
    wait_id: WaitId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanComplete,
    body: TaskDoneIn | None = None,
) -> dict[str, Any]:
    """Close the task as done by the caller; the run goes on. 409 when already completed."""
    body = body or TaskDoneIn()
    wait = await _get(request, runtime, wait_id, TASK_KINDS)
    if wait.kind == "reconcile" and body.landed is None:
        raise InvalidInput(
            "a reconcile task needs 'landed': did the write reach the peer?", field="body.landed"
        )
    if wait.kind != "reconcile" and body.landed is not None:
        raise InvalidInput("'landed' is only for reconcile tasks", field="body.landed")
    service = services.waits(request, runtime)
    done = await run_in_threadpool(
        lambda: service.complete(
            wait_id, principal.name, body.comment, body.output, landed=body.landed
        )
    )
    return done.as_dict()
