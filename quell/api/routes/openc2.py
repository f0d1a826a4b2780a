"""OpenC2 over HTTP: ``POST /api/openc2``, Quell as an OpenC2 consumer (SLPF profile).

The transfer follows the OpenC2 HTTPS specification: the body is one OpenC2 command sent as
``Content-Type: application/openc2+json;version=1.0`` (also accepted: HTTPS 1.0's
``application/openc2-cmd+json`` and plain ``application/json``; a ``version`` other than 1.0 is
not), and the answer is the OpenC2 response, with the same content type. Another content type
gets 415, a body over 64 KiB 413; both as problem+json, like every other route, since no
OpenC2 message was read.

HTTP status: 400 for a command that is not valid, with the body ``{"status": 400,
"status_text": "<JSON path>: <problem>"}``; 403 (same shape) when the caller may not have it
carried out; HTTP 200 for every other answer to a valid command, whose OpenC2 status is in the
body (200, 102, 404, 500, 501...). With ``response_requested: none`` the answer is HTTP 200
with an empty body. What each command does is in :mod:`quell.openc2.consumer`.

Permissions: the route needs ``runs:execute`` (enough for ``query features`` and for dry
runs); a command that changes something (deny, allow, delete) and is not a dry run also needs
``connectors:manage``, as calling a write action by hand does, since it skips a playbook's
approvals. ``?dry_run=true`` carries the command out as a dry run.
"""

from __future__ import annotations

from typing import Annotated

import orjson
import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from starlette.responses import Response

from quell.api.auth import Authorize, RuntimeDep
from quell.api.routes.ingest import read_body
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.openc2.consumer import Consumer, Plan, Reply
from quell.openc2.language import InvalidMessage, load_json, parse_command

router = APIRouter(prefix="/api", tags=["openc2"])
log = structlog.get_logger(__name__)

CanExecute = Annotated[Principal, Depends(Authorize(Permission.RUNS_EXECUTE))]
MEDIA_TYPE = "application/openc2+json;version=1.0"
ACCEPTED_TYPES = frozenset(
    {"application/openc2+json", "application/openc2-cmd+json", "application/json"}
)
MAX_COMMAND_BYTES = 64 * 1024


def _check_content_type(header: str | None) -> None:
    """415 unless the body is declared as OpenC2 (version 1.0) or JSON."""
    media, *parameters = (header or "").split(";")
    media = media.strip().lower()
    if media not in ACCEPTED_TYPES:
        shown = media or "none"
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"content type {shown!r} is not accepted; send {MEDIA_TYPE}",
        )
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "version" and value != "1.0":
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"OpenC2 version {value!r} is not supported; this consumer speaks 1.0",
            )
        if name == "charset" and value.lower() not in ("utf-8", "utf8"):
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"charset {value!r} is not accepted; OpenC2 JSON is UTF-8",
            )


def _answer(reply: Reply | None) -> Response:
    if reply is None:
        return Response(status_code=status.HTTP_200_OK)
    http_status = reply.status if reply.status in (400, 403) else status.HTTP_200_OK
    return Response(orjson.dumps(reply.body()), status_code=http_status, media_type=MEDIA_TYPE)


@router.post(
    "/openc2",
    summary="Carry out an OpenC2 command",
    response_class=Response,
    responses={
        200: {"description": "An OpenC2 response (its status in the body), or none"},
        400: {"description": "Not a valid OpenC2 command: the status_text names the problem"},
        403: {"description": "The caller may not have this command carried out"},
        413: {"description": "The body is over 64 KiB"},
        415: {"description": "Not an OpenC2 or JSON body"},
    },
)
async def openc2_command(
    request: Request,
    runtime: RuntimeDep,
    principal: CanExecute,
    dry_run: Annotated[
        bool, Query(description="Carry the command out as a dry run: nothing changes.")
    ] = False,
) -> Response:
    """Check one OpenC2 command (language 1.0 with the SLPF profile), carry it out with the
    configured connectors, and answer with its OpenC2 response."""
    _check_content_type(request.headers.get("content-type"))
    body = await read_body(request, MAX_COMMAND_BYTES)
    try:
        command = parse_command(load_json(body, "command"))
    except InvalidMessage as exc:
        log.info("openc2_command_refused", problem=exc.message)
        return _answer(Reply(400, exc.message))
    consumer = Consumer(runtime)
    outcome = await consumer.plan(command)
    actor = f"openc2:{principal.name}"
    if isinstance(outcome, Plan):
        if outcome.writes and not dry_run and not principal.can(Permission.CONNECTORS_MANAGE):
            role = principal.role if principal.role else principal.name
            reply = Reply(
                403,
                f"{command.action} {command.target.kind} changes the actuator and needs "
                f"connectors:manage, which {role!r} lacks (a dry run needs only runs:execute)",
            )
        else:
            reply = await consumer.execute(outcome, actor=actor, dry_run=dry_run)
    else:
        reply = outcome
    log.info(
        "openc2_command",
        action=command.action,
        target=command.target.kind,
        command_id=command.command_id,
        status=reply.status,
        dry_run=dry_run,
        actor=actor,
    )
    return _answer(consumer.shape(reply, command.response_requested))
