"""The HTTP intake and the dead-letter queue.

``POST /api/ingest/{source}`` takes one JSON document, a JSON array or NDJSON (or lines of
text for text formats), authenticated by a bearer token with ``alerts:ingest`` or by the
source's HMAC signature. It answers only once every record is durably stored, deduplicated,
suppressed or dead-lettered, with the counts; a body over the limit is refused with 413 before
it is read, and an overloaded intake answers 503 with Retry-After.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep, authenticate
from quell.api.guard import MAX_INGEST_BODY
from quell.errors import AuthenticationRequired, InvalidInput, NotFound, TooLarge
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.ingest.deadletters import DeadLetterStatus
from quell.ingest.parsers import parser_class
from quell.ingest.records import split_body
from quell.ingest.service import IngestService
from quell.ingest.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureVerifier
from quell.ingest.sources import SourceKind

router = APIRouter(prefix="/api/ingest", tags=["ingest"])

MAX_BODY_BYTES = MAX_INGEST_BODY
SourceName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    cached: bytes | None = getattr(request.state, "body", None)
    if cached is not None:
        return cached
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    request.state.body = body
    return body


class IngestAuthorize:
    """A bearer token with ``alerts:ingest``, or a valid HMAC signature of the source.

    Like :class:`~quell.api.auth.Authorize`, it names its ``permission`` so that the
    route-by-role test finds it.
    """

    permission = Permission.ALERTS_INGEST

    async def __call__(self, request: Request, runtime: RuntimeDep) -> Principal:
        if request.headers.get("authorization"):
            principal = await authenticate(request, runtime, _bearer(request))
            return await Authorize(self.permission)(principal)
        if request.headers.get(SIGNATURE_HEADER) is None:
            raise AuthenticationRequired(
                "this endpoint needs an 'Authorization: Bearer <token>' header "
                "or an X-Quell-Signature"
            )
        name = request.path_params.get("source", "")
        try:
            source = await run_in_threadpool(runtime.sources.get, name)
            secret = await run_in_threadpool(runtime.sources.secret, name)
        except NotFound:
            secret = None
        if secret is None:
            # The same answer whether the source is unknown or has no secret: an anonymous
            # caller learns nothing about which sources exist.
            raise AuthenticationRequired(f"the signature does not match source {name!r}")
        body = await read_body(request)
        verifier = SignatureVerifier(runtime.db, runtime.clock)
        request.state.signature = await run_in_threadpool(
            verifier.verify,
            source,
            secret,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            body,
        )
        principal = Principal(
            token_id=f"hmac:{source.id}",
            name=f"source:{source.name}",
            role=None,
            permissions=frozenset({Permission.ALERTS_INGEST}),
        )
        request.state.principal = principal
        return principal


def _bearer(request: Request) -> HTTPAuthorizationCredentials | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials.strip())


CanIngest = Annotated[Principal, Depends(IngestAuthorize())]
CanReadAlerts = Annotated[Principal, Depends(Authorize(Permission.ALERTS_READ))]
CanReplay = Annotated[Principal, Depends(Authorize(Permission.ALERTS_INGEST))]


class IngestOut(BaseModel):
    """What became of the records: ``received = stored + deduplicated + suppressed +
    dead_lettered``."""

    source: str
    received: int
    stored: int
    deduplicated: int
    suppressed: int
    dead_lettered: int


@router.post("/{source}", response_model=IngestOut, summary="Submit alerts to a source")
async def ingest(
    source: SourceName, request: Request, runtime: RuntimeDep, principal: CanIngest
) -> IngestOut:
    """Ingest a JSON document, a JSON array, NDJSON, or text lines for ``source``."""
    found = await run_in_threadpool(runtime.sources.get, source)
    if found.kind is not SourceKind.HTTP:
        raise InvalidInput(
            f"source {source!r} is a {found.kind.value} source; HTTP intake needs an http source",
            field="source",
        )
    body = await read_body(request)
    service: IngestService = request.app.state.ingest
    try:
        records = split_body(body, parser_class(found.format).record_kind)
        result = await service.submit(found.name, records)
    except Exception:
        signature: str | None = getattr(request.state, "signature", None)
        if signature is not None:  # not ingested: the sender may retry the same request
            await run_in_threadpool(SignatureVerifier(runtime.db, runtime.clock).forget, signature)
        raise
    return IngestOut(source=found.name, **result.as_dict())


class ReplayIn(BaseModel):
    """Which dead letters to replay: by id, or every pending one of a source."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=10_000)
    source: str | None = None


class ReplayOut(BaseModel):
    """What the replay did."""

    replayed: int
    still_failing: int
    stored: int
    deduplicated: int
    suppressed: int


@router.get("/errors", summary="List dead letters")
async def list_errors(
    runtime: RuntimeDep,
    _: CanReadAlerts,
    source: str | None = None,
    status: DeadLetterStatus | None = DeadLetterStatus.PENDING,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Records that could not become alerts, with the reason (and the raw bytes)."""
    letters = await run_in_threadpool(
        runtime.dead_letters.list_all, source=source, status=status, limit=limit
    )
    return [letter.as_dict() for letter in letters]


@router.post("/errors/replay", response_model=ReplayOut, summary="Replay dead letters")
async def replay_errors(body: ReplayIn, runtime: RuntimeDep, principal: CanReplay) -> ReplayOut:
    """Run dead letters through their source again (after a mapping or parser fix)."""
    if not body.ids and body.source is None:
        raise InvalidInput("give the ids to replay, or a source to replay all its pending ones")

    def run() -> ReplayOut:
        if body.ids:
            letters = [runtime.dead_letters.get(letter_id) for letter_id in body.ids]
            pending = [letter for letter in letters if letter.status is DeadLetterStatus.PENDING]
            if not pending:
                raise NotFound("none of these dead letters is pending")
            result = runtime.pipeline.replay(pending)
        else:
            runtime.sources.get(body.source or "")  # 404 for an unknown source
            result = runtime.pipeline.replay_source(body.source or "")
        return ReplayOut(
            replayed=result.replayed,
            still_failing=result.still_failing,
            stored=result.outcome.stored,
            deduplicated=result.outcome.deduplicated,
            suppressed=result.outcome.suppressed,
        )

    replayed = await run_in_threadpool(run)
    await services.audited(
        runtime, principal, "ingest.replay", body.source,
        {"ids": body.ids[:100], "replayed": replayed.replayed,
         "still_failing": replayed.still_failing},
    )  # fmt: skip
    return replayed
