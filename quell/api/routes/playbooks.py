"""Playbooks over HTTP: list, show, add, validate, (de)activate, and start a run by hand.

A playbook is sent as its text: YAML (``application/yaml``, ``text/yaml``, ``text/plain``) or
JSON, either the playbook document itself or ``{"source": "<yaml>", "file": "name.yaml"}``.
An invalid one is refused with 422 and every problem as ``file:line:col: message``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.errors import Conflict, InvalidInput, PermissionDenied
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.playbooks.dsl import PLAYBOOK_ID

router = APIRouter(prefix="/api/playbooks", tags=["playbooks"])

CanReadPlaybooks = Annotated[Principal, Depends(Authorize(Permission.PLAYBOOKS_READ))]
CanWritePlaybooks = Annotated[Principal, Depends(Authorize(Permission.PLAYBOOKS_WRITE))]
CanPublishPlaybooks = Annotated[Principal, Depends(Authorize(Permission.PLAYBOOKS_PUBLISH))]
CanExecuteRuns = Annotated[Principal, Depends(Authorize(Permission.RUNS_EXECUTE))]
PlaybookId = Annotated[str, Path(pattern=PLAYBOOK_ID, description="The playbook's `id`.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Skip this many (paging).")]
FileName = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=r"^[^\x00-\x1f]+$",
        description="The file name problems are reported against (file:line:col).",
    ),
]

_TEXT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The playbook: YAML text, its JSON document, or "
        '`{"source": "<yaml text>", "file": "name.yaml"}`.',
        "content": {
            "application/yaml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


class PlaybookText(BaseModel):
    """A playbook's text wrapped in JSON."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="The playbook's YAML (or JSON) text.")
    file: str | None = Field(default=None, max_length=200, description="Its file name.")


class RunIn(BaseModel):
    """A run to start by hand."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict, description="The playbook's inputs.")
    dry_run: bool = Field(default=False, description="Run reads; record the writes it would make.")
    version: int | None = Field(
        default=None, ge=1, description="This version instead of the active (else newest) one."
    )


class VersionIn(BaseModel):
    """Which version to make active."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, description="The newest stored when absent.")


class ReviewIn(BaseModel):
    """A step of a version's publication, with why."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None, ge=1, description="The version (default: the newest in the right state)."
    )
    comment: str | None = Field(default=None, max_length=4000, description="Why.")


async def _text(request: Request, file: str | None) -> tuple[bytes | str, str | None]:
    """The playbook text of the body, and the file name to report problems against."""
    raw = await request.body()
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw, file  # the YAML reader reports where it breaks
        if isinstance(data, dict) and "source" in data:
            try:
                wrapped = PlaybookText.model_validate(data)
            except ValidationError as exc:
                raise RequestValidationError(
                    [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
                ) from None
            return wrapped.source, file or wrapped.file
    return raw, file


def _problems(exc: InvalidInput) -> list[dict[str, Any]]:
    from quell.playbooks.compiler import PlaybookInvalid

    if isinstance(exc, PlaybookInvalid):
        return [{**problem.as_dict(), "text": str(problem)} for problem in exc.problems]
    cacao = exc.details.get("problems")
    if isinstance(cacao, list) and cacao and "path" in cacao[0]:  # CacaoInvalid: JSON paths
        return [
            {**problem, "text": f"{problem['path']}: {problem['message']}"} for problem in cacao
        ]
    return [{"message": exc.message, "text": exc.message}]


def _refused(exc: InvalidInput) -> InvalidInput:
    """The 422 of an invalid playbook, each problem as ``file:line:col: message``."""
    return InvalidInput(
        exc.message, field=exc.details.get("field", "playbook"), problems=_problems(exc)
    )


@router.get("", summary="List stored playbook versions")
async def list_playbooks(
    runtime: RuntimeDep,
    _: CanReadPlaybooks,
    active: Annotated[bool, Query(description="Only the active versions.")] = False,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Versions, by playbook id and newest first."""
    found = await run_in_threadpool(runtime.playbooks.list_all, active_only=active)
    return [version.as_dict() for version in found[offset : offset + limit]]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Add a playbook version",
    openapi_extra=_TEXT_BODY,
)
async def add_playbook(
    request: Request,
    runtime: RuntimeDep,
    principal: CanWritePlaybooks,
    file: FileName = None,
    activate: Annotated[
        bool, Query(description="Make it the active version (needs playbooks:publish).")
    ] = False,
) -> dict[str, Any]:
    """Validate and store a version (once per content); 422 lists every problem."""
    if activate and not principal.can(Permission.PLAYBOOKS_PUBLISH):
        raise PermissionDenied(
            "activating a playbook needs the permission 'playbooks:publish'",
            permission=Permission.PLAYBOOKS_PUBLISH.value,
            role=principal.role if principal.role else None,
        )
    text, name = await _text(request, file)
    library = services.library(request, runtime)
    try:
        version = await run_in_threadpool(
            lambda: library.add(text, name, created_by=principal.name, activate=activate)
        )
    except InvalidInput as exc:
        raise _refused(exc) from None
    return version.as_dict()


@router.post("/validate", summary="Validate a playbook (stores nothing)", openapi_extra=_TEXT_BODY)
async def validate_playbook(
    request: Request, runtime: RuntimeDep, _: CanReadPlaybooks, file: FileName = None
) -> dict[str, Any]:
    """``{"valid": true, ...}``, or ``{"valid": false, "problems": [...]}`` with each place."""
    text, name = await _text(request, file)
    library = services.library(request, runtime)
    try:
        playbook = await run_in_threadpool(library.compile, text, name)
    except InvalidInput as exc:
        return {"valid": False, "problems": _problems(exc)}
    return {
        "valid": True,
        "id": playbook.id,
        "name": playbook.name,
        "version": playbook.version,
        "steps": len(playbook.steps),
        "problems": [],
    }


@router.post(
    "/import-cacao",
    status_code=status.HTTP_201_CREATED,
    summary="Import a CACAO 2.0 playbook as a draft version",
)
async def import_cacao_playbook(
    request: Request,
    runtime: RuntimeDep,
    principal: CanWritePlaybooks,
    mode: Annotated[
        Literal["lenient", "strict"], Query(description="How strictly it is validated.")
    ] = "lenient",
    bind: Annotated[
        list[str],
        Query(
            max_length=200,
            description="ID=INSTANCE: run this CACAO agent or target on this connector "
            "instance (an http-api one on this base URL).",
        ),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    on: Annotated[
        str | None,
        Query(max_length=64, description="Start it by itself on this event once published."),
    ] = None,
    if_: Annotated[
        str | None, Query(alias="if", max_length=8192, description="With on: a condition.")
    ] = None,
    cron: Annotated[
        str | None, Query(max_length=200, description="With on=schedule: a cron expression.")
    ] = None,
) -> dict[str, Any]:
    """The body is the CACAO JSON. Inline credentials are sealed and removed from the stored
    text; the answer is the import report (``id``, ``steps``, ``unsupported``, ``needs``,
    ``warnings``, ``signatures``) and the version. 422 names each error's JSON path."""
    from quell.engine.cacao import check_bindings, parse_trigger

    raw = await request.body()
    library = services.library(request, runtime)
    try:
        bindings = check_bindings(bind)
        triggers = parse_trigger(on, if_, cron)
        version, report = await run_in_threadpool(
            lambda: library.cacao.import_text(
                raw, None, by=principal.name, mode=mode, bindings=bindings, triggers=triggers
            )
        )
    except InvalidInput as exc:
        raise _refused(exc) from None
    return {**report.as_dict(), "version": version.version, "state": version.state,
            "version_id": version.id}  # fmt: skip


@router.get("/{playbook_id}/cacao", summary="Export a playbook as CACAO 2.0 JSON")
async def export_cacao_playbook(
    request: Request,
    runtime: RuntimeDep,
    _: CanReadPlaybooks,
    playbook_id: PlaybookId,
    version: Annotated[
        int | None, Query(ge=1, description="The version (default: newest).")
    ] = None,
) -> Response:
    """The CACAO document; notes on what only Quell runs are in ``X-Quell-Export-Notes``."""
    library = services.library(request, runtime)
    doc, notes = await run_in_threadpool(library.cacao.export, playbook_id, version)
    headers = {"X-Quell-Export-Notes": str(len(notes))}
    return Response(orjson.dumps(doc), media_type="application/json", headers=headers)


@router.get("/{playbook_id}", summary="Show a playbook with its source and IR")
async def get_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    _: CanReadPlaybooks,
    version: Annotated[
        int | None, Query(ge=1, description="This version (default: the active one).")
    ] = None,
) -> dict[str, Any]:
    """The active version (else the newest), or the one asked for, and every version."""
    library = services.library(request, runtime)
    shown = await run_in_threadpool(library.show, playbook_id, version)
    return shown.as_dict()


@router.post("/{playbook_id}/activate", summary="Make a version active (its triggers live)")
async def activate_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanPublishPlaybooks,
    body: VersionIn | None = None,
) -> dict[str, Any]:
    """The given published version (else the newest published) becomes the one triggers
    start; a draft must go through review first."""
    library = services.library(request, runtime)
    wanted = body.version if body is not None else None
    version = await run_in_threadpool(
        lambda: library.activate(playbook_id, wanted, by=principal.name)
    )
    return version.as_dict()


@router.post(
    "/{playbook_id}/deactivate",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Stop a playbook's triggers",
)
async def deactivate_playbook(
    playbook_id: PlaybookId, request: Request, runtime: RuntimeDep, principal: CanPublishPlaybooks
) -> None:
    """No trigger starts it any more; runs in progress go on, and it can still be run by hand."""
    library = services.library(request, runtime)
    await run_in_threadpool(library.deactivate, playbook_id)
    await services.audited(runtime, principal, "playbook.deactivated", playbook_id)


@router.post(
    "/{playbook_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start a run by hand",
)
async def start_run(
    playbook_id: PlaybookId,
    body: RunIn,
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    principal: CanExecuteRuns,
) -> dict[str, Any]:
    """Start the active version (else the newest, or ``version``); answers once it is durable.
    A version not published yet runs only as a dry run (where review is required)."""
    version = await run_in_threadpool(runtime.playbooks.resolve, playbook_id, body.version)
    if (
        not version.published
        and not body.dry_run
        and runtime.settings.playbook_review == "required"
    ):
        raise Conflict(
            f"{playbook_id} version {version.version} is {version.state}: until it is "
            "published it runs only as a dry run",
            field="dry_run",
        )
    launcher = services.launcher(request, runtime)
    run_id = await launcher.start(
        version, body.inputs, dry_run=body.dry_run, created_by=principal.name
    )
    view = await run_in_threadpool(
        lambda: services.runs(request, runtime).get(run_id, with_steps=False)
    )
    await services.audited(
        runtime, principal, "run.start", run_id,
        {"playbook": playbook_id, "version": version.version, "dry_run": body.dry_run},
    )  # fmt: skip
    response.headers["Location"] = f"/api/runs/{run_id}"
    return view.as_dict(with_steps=False)


# -- publishing ------------------------------------------------------------------------------


async def _review(
    request: Request, runtime: RuntimeDep, step: str, playbook_id: str, body: ReviewIn | None,
    by: str,
) -> dict[str, Any]:  # fmt: skip
    library = services.library(request, runtime)
    body = body or ReviewIn()
    act = getattr(library, step)
    version = await run_in_threadpool(
        lambda: act(playbook_id, body.version, by=by, comment=body.comment)
    )
    return dict(version.as_dict())


@router.post("/{playbook_id}/submit", summary="Submit a draft version for review")
async def submit_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanWritePlaybooks,
    body: ReviewIn | None = None,
) -> dict[str, Any]:
    """The draft (the newest draft, or ``version``) goes to review."""
    return await _review(request, runtime, "submit", playbook_id, body, principal.name)


@router.post("/{playbook_id}/publish", summary="Approve and publish a version under review")
async def publish_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanPublishPlaybooks,
    body: ReviewIn | None = None,
) -> dict[str, Any]:
    """It is published and becomes active. Its author cannot; a comment is needed."""
    return await _review(request, runtime, "publish", playbook_id, body, principal.name)


@router.post("/{playbook_id}/reject", summary="Send a version under review back to draft")
async def reject_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanPublishPlaybooks,
    body: ReviewIn | None = None,
) -> dict[str, Any]:
    """Back to draft, with a comment saying why."""
    return await _review(request, runtime, "reject", playbook_id, body, principal.name)


@router.post("/{playbook_id}/rollback", summary="Make an earlier published version active")
async def rollback_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    principal: CanPublishPlaybooks,
    body: ReviewIn | None = None,
) -> dict[str, Any]:
    """Re-publishes ``version`` (it was reviewed when first published): it becomes active."""
    return await _review(request, runtime, "rollback", playbook_id, body, principal.name)


@router.get("/{playbook_id}/reviews", summary="The publishing record of a playbook")
async def playbook_reviews(
    playbook_id: PlaybookId, request: Request, runtime: RuntimeDep, _: CanReadPlaybooks
) -> list[dict[str, Any]]:
    """Who added, submitted, published, rejected or rolled back which version, and why."""
    library = services.library(request, runtime)
    return await run_in_threadpool(library.reviews, playbook_id)


@router.get("/{playbook_id}/diff", summary="Diff two versions")
async def diff_playbook(
    playbook_id: PlaybookId,
    request: Request,
    runtime: RuntimeDep,
    _: CanReadPlaybooks,
    old: Annotated[int, Query(alias="from", ge=1, description="The older version.")],
    new: Annotated[int, Query(alias="to", ge=1, description="The newer version.")],
) -> dict[str, Any]:
    """A unified diff of the two versions' sources."""
    library = services.library(request, runtime)
    lines = await run_in_threadpool(library.diff, playbook_id, old, new)
    return {"from": old, "to": new, "diff": "".join(lines)}
