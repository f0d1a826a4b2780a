"""External events: ``POST /api/callbacks/{token}`` resumes a run waiting on ``wait: event``.

The one-time token in the path *is* the credential: it is derived from the server's key, the
run and the step, stored only as a hash, and good for one pending wait. No bearer token is
needed or looked at (the edge guard lets this path through and still limits the body). A token
that is unknown, already used, expired or of a canceled run gets the same 404, so a caller
learns nothing about which tokens exist. The token never reaches a log line.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request, status
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import RuntimeDep
from quell.errors import Conflict, InvalidInput, NotFound

router = APIRouter(prefix="/api/callbacks", tags=["callbacks"])

CALLBACK_PATH = "/api/callbacks/{token}"
Token = Annotated[str, Path(max_length=2048, description="The wait's one-time token.")]
_GONE = "no pending callback for this token"


@router.post(
    "/{token}",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Deliver an external event to a waiting run",
    openapi_extra={
        "security": [],
        "requestBody": {
            "required": False,
            "description": "Any JSON value; the waiting step's output carries it as `payload`.",
            "content": {"application/json": {"schema": {}}},
        },
    },
)
async def callback(token: Token, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Resume the run; 404 (always the same) for a token that is not good for a pending wait."""
    raw = await request.body()
    payload: Any = None
    if raw.strip():
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not JSON: {exc}", field="body") from None
    service = services.waits(request, runtime)
    try:
        await run_in_threadpool(service.callback, token, payload)
    except (NotFound, Conflict):
        raise NotFound(_GONE, field="token") from None
    return {"status": "accepted"}
