"""Approvals and manual tasks over HTTP: what runs wait for from people.

An approval is decided by the calling user, who needs ``approvals:decide`` (and, when the
approval names roles, one of those roles), always with a comment. It may take several distinct
people (the approval policy, :mod:`quell.governance.approvals`); whoever started the run or
wrote the playbook cannot decide it. Each decision is recorded (and audited); the last one
needed becomes the waiting step's output. Signed approval links (``/approvals/{id}/links``) let
a named approver decide from chat or e-mail. A task is completed with ``tasks:complete``; a
*reconcile* task (a write nobody could tell had landed) needs ``landed``.

The approval policy itself is ``/approval-rules`` (``approvals:manage`` to change it).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.durations import parse_duration
from quell.engine.waits import Wait
from quell.errors import Conflict, InvalidInput, NotFound
from quell.governance import approval_links
from quell.governance.approvals import RuleIn
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api", tags=["approvals and tasks"])

CanReadRuns = Annotated[Principal, Depends(Authorize(Permission.RUNS_READ))]
CanDecide = Annotated[Principal, Depends(Authorize(Permission.APPROVALS_DECIDE))]
CanComplete = Annotated[Principal, Depends(Authorize(Permission.TASKS_COMPLETE))]
CanControl = Annotated[Principal, Depends(Authorize(Permission.RUNS_CONTROL))]
CanManage = Annotated[Principal, Depends(Authorize(Permission.APPROVALS_MANAGE))]
RuleName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="A rule.")]
LinkToken = Annotated[str, Path(max_length=256, description="The link's signed token.")]
WaitId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The wait's id.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Skip this many (paging).")]
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


class LinkIn(BaseModel):
    """A signed approval link for one approver."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=64, description="Whose link it is.")
    via: str | None = Field(
        default=None,
        max_length=64,
        description="A notify (chat) or mail connector instance to send it through. Without "
        "it, only the approver themselves may ask for their link.",
    )
    ttl: str | None = Field(default=None, max_length=16, description="How long it works (4h).")


def _role(principal: Principal) -> str:
    return principal.role if principal.role else ""


def _who(principal: Principal) -> str:
    """Who decides: the user behind a session or a user's token, else the token's name."""
    return principal.user or principal.name


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
    decided = await run_in_threadpool(decide, wait_id, _who(principal), _role(principal), comment)
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


@router.post(
    "/approvals/{wait_id}/links",
    status_code=status.HTTP_201_CREATED,
    summary="Make (and send) a signed approval link",
)
async def make_link(
    wait_id: WaitId, body: LinkIn, request: Request, runtime: RuntimeDep, principal: CanControl
) -> dict[str, Any]:
    """A single-use link with which ``user`` decides this approval as themselves. With
    ``via`` it is sent through that chat or mail instance and its token is not shown here;
    without, only ``user`` may ask (their own link, e.g. to open on a phone)."""
    ttl = parse_duration(body.ttl, field="ttl") if body.ttl else None
    if body.via is None and body.user != principal.user:
        raise Conflict(
            "a link is someone's credential: send it through an instance (via), or ask for "
            "your own",
            field="via",
        )
    waits = services.waits(request, runtime)
    links = runtime.approval_links(waits)
    if body.via is None:
        link = await run_in_threadpool(
            lambda: links.create(wait_id, body.user, by=principal.name, ttl=ttl)
        )
        return link.as_dict()
    via = body.via
    instance = await run_in_threadpool(runtime.connector_instances.get, via)
    email = (await run_in_threadpool(runtime.users.get, body.user)).email
    link = await run_in_threadpool(
        lambda: links.create(
            wait_id, body.user, by=principal.name, ttl=ttl, sent_via=f"{instance.connector}:{via}"
        )
    )
    wait = await run_in_threadpool(waits.get, wait_id)
    runner = runtime.action_runner(f"api:{principal.name}")
    try:
        await approval_links.send(
            runner,
            instance.connector,
            via,
            link,
            wait,
            email=email,
            actor=principal.name,
            links=links,
        )
    finally:
        await runner.aclose()
    shown = link.as_dict()
    del shown["token"], shown["url"]
    return {**shown, "sent_via": via}


class MyLinkIn(BaseModel):
    """The caller's own approval link."""

    model_config = ConfigDict(extra="forbid")

    ttl: str | None = Field(default=None, max_length=16, description="How long it works (4h).")


@router.post(
    "/approvals/{wait_id}/my-link",
    status_code=status.HTTP_201_CREATED,
    summary="Make my own signed approval link",
)
async def make_my_link(
    wait_id: WaitId, body: MyLinkIn, request: Request, runtime: RuntimeDep, principal: CanDecide
) -> dict[str, Any]:
    """A single-use link with which the caller decides this approval as themselves (to open
    on a phone, say): for a user who may decide approvals, with no permission to send links
    to others."""
    if principal.user is None:
        raise InvalidInput(
            "a service token belongs to no user: a link is for a person", field="user"
        )
    user = principal.user
    ttl = parse_duration(body.ttl, field="ttl") if body.ttl else None
    links = runtime.approval_links(services.waits(request, runtime))
    link = await run_in_threadpool(lambda: links.create(wait_id, user, by=principal.name, ttl=ttl))
    return link.as_dict()


_NO_LINK = "no such approval link (or it expired)"


@router.get(
    "/approval-links/{token}",
    summary="Open an approval link",
    openapi_extra={"security": []},
)
async def open_link(token: LinkToken, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """What the link decides; opening it decides nothing (mail scanners open links). The
    signed token is the credential; anything not good is the same 404."""
    links = runtime.approval_links(services.waits(request, runtime))
    try:
        return await run_in_threadpool(links.show, token)
    except NotFound:
        raise NotFound(_NO_LINK, field="token") from None


@router.post(
    "/approval-links/{token}",
    summary="Decide through an approval link",
    openapi_extra={
        "security": [],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["decision", "comment"],
                        "properties": {
                            "decision": {"enum": ["approve", "reject"]},
                            "comment": {"type": "string", "maxLength": 4000},
                        },
                    }
                }
            },
        },
    },
)
async def use_link(token: LinkToken, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Approve or reject as the link's user, with a comment; the link is spent."""
    links = runtime.approval_links(services.waits(request, runtime))
    await run_in_threadpool(links.show, token)  # a token that is not good: 404 before the body
    try:
        body = orjson.loads(await request.body() or b"null")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not JSON: {exc}", field="body") from None
    if not isinstance(body, dict) or body.get("decision") not in {"approve", "reject"}:
        raise InvalidInput("say decision: approve or reject", field="decision")
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise InvalidInput("the comment is text", field="comment")
    approved = body["decision"] == "approve"
    signed_in = await _signed_in(request, runtime)
    decided = await run_in_threadpool(
        lambda: links.use(token, approved=approved, comment=comment, signed_in=signed_in)
    )
    return decided.as_dict()


async def _signed_in(request: Request, runtime: RuntimeDep) -> str | None:
    """The user whose own session or token came with a link's request (None: none did)."""
    from quell.governance.users import SESSION_PREFIX

    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    check = (
        runtime.users.authenticate
        if presented.startswith(SESSION_PREFIX)
        else runtime.tokens.authenticate
    )
    principal = await run_in_threadpool(check, presented.strip())
    return principal.user


# -- the approval policy ---------------------------------------------------------------------


@router.get("/approval-rules", summary="List the approval rules")
async def list_rules(runtime: RuntimeDep, _: CanReadRuns) -> list[dict[str, Any]]:
    """Every rule, in the order they are tried (the first enabled match decides)."""
    rules = await run_in_threadpool(runtime.approval_rules.list_all)
    return [rule.as_dict() for rule in rules]


@router.get("/approval-rules/{name}", summary="Show an approval rule")
async def get_rule(name: RuleName, runtime: RuntimeDep, _: CanReadRuns) -> dict[str, Any]:
    """One rule."""
    return (await run_in_threadpool(runtime.approval_rules.get, name)).as_dict()


@router.put("/approval-rules/{name}", summary="Create or replace an approval rule")
async def put_rule(
    name: RuleName, body: RuleIn, request: Request, runtime: RuntimeDep, principal: CanManage
) -> dict[str, Any]:
    """The rule as stored (its name is the path's). Audited with before and after."""
    if body.name is not None and body.name != name:
        raise InvalidInput(f"the body names rule {body.name!r}, the path {name!r}", field="name")
    rule = body.model_copy(update={"name": name})
    known = services.registry(request, runtime)
    stored = await run_in_threadpool(
        lambda: runtime.approval_rules.put(rule, by=principal.name, known=known)
    )
    return stored.as_dict()


@router.delete(
    "/approval-rules/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove an approval rule",
)
async def delete_rule(name: RuleName, runtime: RuntimeDep, principal: CanManage) -> None:
    """Pending approvals it asked for stay as they are."""
    await run_in_threadpool(lambda: runtime.approval_rules.remove(name, by=principal.name))
