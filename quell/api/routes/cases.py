"""Working incidents over HTTP: status, assignment, priority, tags and techniques, notes, tasks.

Reading needs ``incidents:read``; changing an incident, writing notes and adding tasks needs
``incidents:write``; completing a task needs ``tasks:complete``. The person is the token's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api", tags=["cases"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.INCIDENTS_READ))]
CanWrite = Annotated[Principal, Depends(Authorize(Permission.INCIDENTS_WRITE))]
CanComplete = Annotated[Principal, Depends(Authorize(Permission.TASKS_COMPLETE))]
IncidentId = Annotated[str, Path(pattern=r"^inc_[0-9a-z]{26}$")]
TaskId = Annotated[str, Path(pattern=r"^tsk_[0-9a-z]{26}$")]


class IncidentChange(BaseModel):
    """What to change; what is left out stays. An empty owner or assignee clears it."""

    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(None, max_length=16)
    resolution: str | None = Field(None, max_length=32)
    severity_id: int | None = Field(None, ge=1, le=6)
    priority: int | None = Field(None, ge=1, le=4)
    title: str | None = Field(None, max_length=512)
    description: str | None = Field(None, max_length=20_000)
    owner: str | None = Field(None, max_length=128)
    assignee: str | None = Field(None, max_length=128)
    tags: list[str] | None = Field(None, max_length=50)
    techniques: list[str] | None = Field(None, max_length=100)
    comment: str | None = Field(None, max_length=2000)


class NoteIn(BaseModel):
    """A note."""

    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=1, max_length=20_000)


class TaskIn(BaseModel):
    """A task."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=512)
    description: str | None = Field(None, max_length=20_000)
    assignee: str | None = Field(None, max_length=128)
    due_at: datetime | None = None


class MergeIn(BaseModel):
    """The incident this one merges into."""

    model_config = ConfigDict(extra="forbid")

    into: str = Field(pattern=r"^inc_[0-9a-z]{26}$")
    comment: str | None = Field(None, max_length=2000)


class SplitIn(BaseModel):
    """The alerts that become a new incident."""

    model_config = ConfigDict(extra="forbid")

    alert_ids: list[str] = Field(min_length=1, max_length=1000)
    title: str | None = Field(None, max_length=512)


class TaskDone(BaseModel):
    """How a task ended."""

    model_config = ConfigDict(extra="forbid")

    result: str | None = Field(None, max_length=20_000)
    cancel: bool = False


@router.patch("/incidents/{incident_id}", summary="Change an incident")
async def change_incident(
    incident_id: IncidentId, body: IncidentChange, runtime: RuntimeDep, who: CanWrite
) -> dict[str, Any]:
    """Status (closing needs a resolution; a closed incident reopens into triage), severity,
    priority, title, description, owner, assignee, tags, ATT&CK techniques. Answers the
    changes (``{field: [before, after]}``) and the incident."""
    changes = await run_in_threadpool(
        lambda: runtime.cases.update(incident_id, by=who.name, **body.model_dump(exclude_none=True))
    )
    incident = await run_in_threadpool(runtime.incidents.get, incident_id)
    return {"changes": changes, "incident": incident.as_dict()}


@router.get("/incidents/{incident_id}/notes", summary="An incident's notes")
async def list_notes(incident_id: IncidentId, runtime: RuntimeDep, _: CanRead) -> list[Any]:
    """Notes, oldest first."""
    await run_in_threadpool(runtime.incidents.get, incident_id)  # 404 for an unknown one
    return [n.as_dict() for n in await run_in_threadpool(runtime.cases.notes, incident_id)]


@router.post(
    "/incidents/{incident_id}/notes",
    status_code=status.HTTP_201_CREATED,
    summary="Add a note",
)
async def add_note(
    incident_id: IncidentId, body: NoteIn, runtime: RuntimeDep, who: CanWrite
) -> dict[str, Any]:
    """A note on the incident's timeline, by the caller."""
    note = await run_in_threadpool(
        lambda: runtime.cases.add_note(incident_id, body.body, by=who.name)
    )
    return note.as_dict()


@router.get("/incidents/{incident_id}/tasks", summary="An incident's tasks")
async def list_tasks(incident_id: IncidentId, runtime: RuntimeDep, _: CanRead) -> list[Any]:
    """Tasks, oldest first, open and ended."""
    await run_in_threadpool(runtime.incidents.get, incident_id)  # 404 for an unknown one
    return [t.as_dict() for t in await run_in_threadpool(runtime.cases.tasks, incident_id)]


@router.post(
    "/incidents/{incident_id}/tasks",
    status_code=status.HTTP_201_CREATED,
    summary="Add a task",
)
async def add_task(
    incident_id: IncidentId, body: TaskIn, runtime: RuntimeDep, who: CanWrite
) -> dict[str, Any]:
    """An ad hoc task on the incident."""
    task = await run_in_threadpool(
        lambda: runtime.cases.add_task(
            incident_id, body.title, by=who.name, description=body.description,
            assignee=body.assignee, due_at=body.due_at,
        )
    )  # fmt: skip
    return task.as_dict()


@router.post("/incident-tasks/{task_id}/complete", summary="Complete a task")
async def complete_task(
    task_id: TaskId, body: TaskDone, runtime: RuntimeDep, who: CanComplete
) -> dict[str, Any]:
    """Mark an open task done (or cancelled), with its result."""
    task = await run_in_threadpool(
        lambda: runtime.cases.complete_task(
            task_id, by=who.name, result=body.result, cancel=body.cancel
        )
    )
    return task.as_dict()


@router.post("/incidents/{incident_id}/merge", summary="Merge into another incident")
async def merge(
    incident_id: IncidentId, body: MergeIn, runtime: RuntimeDep, who: CanWrite
) -> dict[str, Any]:
    """Alerts, correlation keys, notes and open tasks move to ``into``; this incident is closed
    as a duplicate of it."""
    await run_in_threadpool(
        lambda: runtime.cases.merge(incident_id, body.into, by=who.name, comment=body.comment)
    )
    return (await run_in_threadpool(runtime.incidents.get, body.into)).as_dict()


@router.post(
    "/incidents/{incident_id}/split",
    status_code=status.HTTP_201_CREATED,
    summary="Split alerts off into a new incident",
)
async def split(
    incident_id: IncidentId, body: SplitIn, runtime: RuntimeDep, who: CanWrite
) -> dict[str, Any]:
    """The alerts named become a new incident (with the correlation keys only they carry)."""
    new = await run_in_threadpool(
        lambda: runtime.cases.split(incident_id, body.alert_ids, by=who.name, title=body.title)
    )
    return (await run_in_threadpool(runtime.incidents.get, new)).as_dict()
