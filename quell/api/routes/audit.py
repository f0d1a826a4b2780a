"""The audit trail over HTTP: read it, and check its hash chain."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
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


@router.get(
    "/export",
    summary="Export the audit trail as JSON Lines",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def export(
    runtime: RuntimeDep,
    _: CanRead,
    since: Annotated[int, Query(ge=0, description="Only events after this seq.")] = 0,
    after: Annotated[
        datetime | None, Query(description="Only events recorded after this time (ISO 8601).")
    ] = None,
) -> StreamingResponse:
    """Every event oldest first, one JSON object a line, with ``prev_hash`` and ``hash`` so the
    receiver can check the chain again (``quell audit verify --file``). Streamed: read from
    the database a page at a time."""
    from quell.governance.audit import iter_events
    from quell.governance.audit_export import json_line

    if after is not None and after.tzinfo is None:
        after = after.replace(tzinfo=UTC)

    def lines() -> Iterator[bytes]:  # a sync iterator: Starlette runs it in the thread pool
        runtime.audit.drain()  # a run's action calls waiting in the outbox, first
        for event in iter_events(runtime.db, after_seq=since, after_time=after):
            yield json_line(event)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
