"""Threat intel over HTTP: verdicts, indicators, imports, the allow-list, feeds and export.

Reading (``GET /lookup``, which asks only the store, indicators, the allow-list, feeds) needs
``intel:read``. ``POST /lookup`` also asks outside services: it sends values out and spends
their quota, as calling an action does, so it needs ``runs:execute``. Imports, allow-list
changes and feed pulls need ``intel:manage``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.api.routes.ingest import read_body
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.intel.model import IndicatorType, Tlp
from quell.intel.service import IMPORT_FORMATS, allow, disallow, guess_type, import_bytes

router = APIRouter(prefix="/api/intel", tags=["intel"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.INTEL_READ))]
CanManage = Annotated[Principal, Depends(Authorize(Permission.INTEL_MANAGE))]
CanAskOutside = Annotated[Principal, Depends(Authorize(Permission.RUNS_EXECUTE))]
TypeName = Literal["ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256", "email"]
TlpName = Literal["clear", "white", "green", "amber", "amber+strict", "red"]
SourceName = Annotated[str, Query(min_length=1, max_length=128)]


@router.get("/lookup", summary="The verdict on a value, from the store")
async def lookup(
    runtime: RuntimeDep,
    _: CanRead,
    value: Annotated[str, Query(min_length=1, max_length=2048)],
    type: TypeName | None = None,
) -> dict[str, Any]:
    """The verdict (info, safe, suspicious, malicious), its score and every reason from the
    allow-list and the store's indicators. Nothing leaves Quell: ``POST`` asks the outside
    services too."""
    result = await run_in_threadpool(
        lambda: runtime.enricher.local(type or guess_type(value), value)
    )
    return result.as_dict()


class LookupIn(BaseModel):
    """A value to look up everywhere."""

    model_config = ConfigDict(extra="forbid")

    value: str = Field(min_length=1, max_length=2048)
    type: TypeName | None = None
    tlp: TlpName = "clear"
    sources: list[str] | None = Field(None, max_length=20)


@router.post("/lookup", summary="The verdict on a value, asking outside services too")
async def lookup_everywhere(
    body: LookupIn, runtime: RuntimeDep, principal: CanAskOutside
) -> dict[str, Any]:
    """Like ``GET``, then each configured enrichment service the value may go to (``tlp`` is
    the value's own; a service whose ceiling it reaches is not asked). Sending values out and
    spending quota is calling actions, so it needs ``runs:execute``; each call is audited."""
    result = await runtime.enricher.lookup(
        body.type or guess_type(body.value),
        body.value,
        tlp=Tlp.parse(body.tlp),
        external=True,
        only=body.sources,
        actor=f"api:{principal.name}",
    )
    return result.as_dict()


@router.get("/indicators", summary="Search indicators")
async def list_indicators(
    runtime: RuntimeDep,
    _: CanRead,
    source: Annotated[str | None, Query(max_length=128)] = None,
    type: TypeName | None = None,
    contains: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=32, description="Page after this id.")] = None,
) -> list[dict[str, Any]]:
    """Indicators by source, type or part of the value, in id order."""
    return await run_in_threadpool(
        lambda: runtime.intel.search(
            source=source, type_=type, contains=contains, limit=limit, after=after
        )
    )


@router.get("/indicators/{indicator_id}", summary="One indicator")
async def get_indicator(
    runtime: RuntimeDep,
    _: CanRead,
    indicator_id: Annotated[str, Path(pattern=r"^ind_[0-9a-z]{26}$")],
) -> dict[str, Any]:
    """The indicator with its latest sightings."""
    return await run_in_threadpool(runtime.intel.get, indicator_id)


@router.get("/stats", summary="Indicators by source and type")
async def stats(runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """How many indicators each source gave, by type, and how many are live."""
    return await run_in_threadpool(runtime.intel.counts)


@router.post("/import", summary="Import indicators")
async def import_indicators(
    request: Request,
    runtime: RuntimeDep,
    principal: CanManage,
    source: SourceName,
    format: Literal["stix", "misp", "csv", "list"] | None = None,
    map: Annotated[str | None, Query(max_length=2000)] = None,
    type: Annotated[str | None, Query(max_length=16)] = None,
    tlp: TlpName | None = None,
    confidence: Annotated[int | None, Query(ge=0, le=100)] = None,
) -> dict[str, Any]:
    """The body (a STIX bundle, a MISP event, CSV or a plain list) into the store under
    ``source``, in one transaction: the counts, and the items that are not indicators."""
    data = await read_body(request, runtime.settings.intel_max_bytes)
    options = {"mapping": map, "type": type, "tlp": tlp, "confidence": confidence}
    report = await run_in_threadpool(
        lambda: import_bytes(
            runtime,
            data,
            format_=format,
            source=source,
            options={k: v for k, v in options.items() if v is not None},
            actor=f"api:{principal.name}",
            name=f"upload to {source}",
        )
    )
    return report.as_dict()


@router.get("/export", summary="Export as a STIX 2.1 bundle")
async def export(
    runtime: RuntimeDep,
    _: CanRead,
    source: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    """The store's indicators (one source's, or all) and their sightings, as STIX 2.1."""
    from quell.intel.stix_export import export_bundle

    return await run_in_threadpool(lambda: export_bundle(runtime.intel, source=source))


class AllowIn(BaseModel):
    """A known-good value."""

    model_config = ConfigDict(extra="forbid")

    type: IndicatorType
    value: str = Field(min_length=1, max_length=2048)
    reason: str = Field(min_length=1, max_length=512)
    match: Literal["exact", "subdomain"] | None = None


@router.get("/allowlist", summary="The allow-list")
async def allowlist(runtime: RuntimeDep, _: CanRead) -> list[dict[str, Any]]:
    """Known-good values, and why."""
    return [entry.as_dict() for entry in await run_in_threadpool(runtime.intel.allowlist)]


@router.post("/allowlist", status_code=status.HTTP_201_CREATED, summary="Allow a value")
async def add_allowed(body: AllowIn, runtime: RuntimeDep, principal: CanManage) -> dict[str, Any]:
    """A value that is safe whatever else says (a domain with its subdomains by default)."""
    entry = await run_in_threadpool(
        lambda: allow(
            runtime, body.type, body.value, body.reason, actor=f"api:{principal.name}",
            match=body.match,
        )
    )  # fmt: skip
    return entry.as_dict()


@router.delete(
    "/allowlist/{entry_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an entry"
)
async def remove_allowed(
    runtime: RuntimeDep,
    principal: CanManage,
    entry_id: Annotated[str, Path(pattern=r"^alw_[0-9a-z]{26}$")],
) -> None:
    """Remove an allow-list entry by its id."""
    await run_in_threadpool(lambda: disallow(runtime, entry_id, actor=f"api:{principal.name}"))


@router.get("/feeds", summary="Feeds and how their last pulls went")
async def feeds(runtime: RuntimeDep, _: CanRead) -> list[dict[str, Any]]:
    """Every feed, with its last success, last error and last import's counts."""
    from quell.intel.feeds import FeedService

    service = FeedService.for_runtime(runtime)
    return [feed.as_dict() for feed in await run_in_threadpool(service.list)]


@router.post("/feeds/{name}/pull", summary="Pull a feed now")
async def pull_feed(
    runtime: RuntimeDep,
    principal: CanManage,
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
) -> dict[str, Any]:
    """Pull the feed at once (not waiting for its schedule); what it imported or its error."""
    from quell.intel.feeds import FeedService

    service = FeedService.for_runtime(runtime)
    return (await service.pull(name, by=f"api:{principal.name}")).as_dict()


__all__ = ["IMPORT_FORMATS", "router"]
