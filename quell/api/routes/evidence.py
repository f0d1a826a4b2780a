"""Evidence over HTTP: attach files to incidents, list them, download them, and their chain of
custody.

``POST /api/incidents/{id}/evidence?name=…`` takes the file as the raw body (any media type),
streamed to the evidence store while it is hashed, up to ``evidence_max_bytes`` (413 beyond).
A download is on the chain of custody, as the token's person, before its first byte is sent,
and is checked against its SHA-256 (409 if the stored bytes changed); the answer carries
``X-Content-SHA256``. Reading needs ``incidents:read``; attaching and verifying need
``incidents:write``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import IO, Annotated, Any
from urllib.parse import quote

import anyio.from_thread
from fastapi import APIRouter, Depends, Path, Query, Request, status
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from quell.api.auth import Authorize, RuntimeDep
from quell.cases.evidence import CHUNK
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api", tags=["evidence"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.INCIDENTS_READ))]
CanWrite = Annotated[Principal, Depends(Authorize(Permission.INCIDENTS_WRITE))]
IncidentId = Annotated[str, Path(pattern=r"^inc_[0-9a-z]{26}$")]
EvidenceId = Annotated[str, Path(pattern=r"^evd_[0-9a-z]{26}$")]


class _BodyReader:
    """The request body as a blocking binary file, for a worker thread: each read takes the
    next chunk from the event loop, so an upload is hashed and stored as it arrives."""

    def __init__(self, request: Request) -> None:
        self._chunks: AsyncIterator[bytes] = request.stream().__aiter__()
        self._buffer = b""
        self._done = False

    async def _next(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left for -1); ``b""`` only at the end."""
        parts: list[bytes] = []
        while not self._done and (size < 0 or not self._buffer):
            chunk = anyio.from_thread.run(self._next)
            if chunk is None:
                self._done = True
            elif size < 0:
                parts.append(chunk)
            else:
                self._buffer = chunk
        if size < 0:
            out, self._buffer = self._buffer + b"".join(parts), b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


@router.post(
    "/incidents/{incident_id}/evidence",
    status_code=status.HTTP_201_CREATED,
    summary="Attach evidence",
)
async def add_evidence(
    incident_id: IncidentId,
    request: Request,
    runtime: RuntimeDep,
    who: CanWrite,
    name: Annotated[str, Query(min_length=1, max_length=1024)],
    media_type: Annotated[str, Query(max_length=128)] = "application/octet-stream",
    description: Annotated[str | None, Query(max_length=20_000)] = None,
) -> dict[str, Any]:
    """The raw body is the file; ``name`` its file name (path separators become ``_``)."""
    reader = _BodyReader(request)
    evidence = await run_in_threadpool(
        lambda: runtime.evidence.add(
            incident_id, reader, name=name, media_type=media_type, by=who.name,
            description=description,
        )
    )  # fmt: skip
    return evidence.as_dict()


@router.get("/incidents/{incident_id}/evidence", summary="An incident's evidence")
async def list_evidence(incident_id: IncidentId, runtime: RuntimeDep, _: CanRead) -> list[Any]:
    """Evidence, oldest first (metadata; the bytes are at ``/api/evidence/{id}/content``)."""
    return [e.as_dict() for e in await run_in_threadpool(runtime.evidence.list, incident_id)]


@router.get("/evidence/{evidence_id}", summary="Show evidence")
async def get_evidence(evidence_id: EvidenceId, runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """One evidence's metadata: name, media type, size, SHA-256, who added it and when."""
    return (await run_in_threadpool(runtime.evidence.get, evidence_id)).as_dict()


@router.get("/evidence/{evidence_id}/content", summary="Download evidence")
async def evidence_content(
    evidence_id: EvidenceId,
    runtime: RuntimeDep,
    who: CanRead,
    purpose: Annotated[str | None, Query(max_length=1000)] = None,
) -> StreamingResponse:
    """The bytes, as attached. The download is recorded on the chain of custody (with the
    ``purpose`` given) before it starts; bytes that no longer match their SHA-256 are refused
    with 409."""
    evidence, content = await run_in_threadpool(
        lambda: runtime.evidence.open(evidence_id, by=who.name, purpose=purpose)
    )
    headers = {
        "content-type": evidence.media_type,
        "content-length": str(evidence.size),
        "content-disposition": _attachment(evidence.name),
        "x-content-sha256": evidence.sha256,
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "no-store",
    }
    return StreamingResponse(
        _chunks(content), headers=headers, background=BackgroundTask(content.close)
    )


@router.get("/evidence/{evidence_id}/custody", summary="Evidence's chain of custody")
async def evidence_custody(evidence_id: EvidenceId, runtime: RuntimeDep, _: CanRead) -> list[Any]:
    """Everything done to the evidence, oldest first: added, read, verified, verify_failed."""
    return [c.as_dict() for c in await run_in_threadpool(runtime.evidence.custody, evidence_id)]


@router.post("/evidence/{evidence_id}/verify", summary="Verify evidence")
async def verify_evidence(
    evidence_id: EvidenceId, runtime: RuntimeDep, who: CanWrite
) -> dict[str, Any]:
    """Check the stored bytes against their SHA-256 (recorded on the chain of custody)."""
    ok = await run_in_threadpool(lambda: runtime.evidence.verify(evidence_id, by=who.name))
    evidence = await run_in_threadpool(runtime.evidence.get, evidence_id)
    return {"id": evidence.id, "sha256": evidence.sha256, "ok": ok}


def _chunks(content: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := content.read(CHUNK):
            yield chunk
    finally:
        content.close()


def _attachment(name: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact one (RFC 6266, RFC 5987)."""
    fallback = "".join(
        char if 0x20 <= ord(char) < 0x7F and char not in '"\\;' else "_" for char in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
