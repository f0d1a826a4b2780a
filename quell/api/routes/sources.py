"""Sources and suppression rules over HTTP."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.correlate.suppression import SuppressionAction, SuppressionRule
from quell.durations import parse_duration
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.ingest.runner import RUN_KINDS, SourceRunner
from quell.ingest.sources import Source, SourceKind
from quell.sdk.secret import SecretValue

router = APIRouter(prefix="/api", tags=["sources"])

CanReadAlerts = Annotated[Principal, Depends(Authorize(Permission.ALERTS_READ))]
CanManageSources = Annotated[Principal, Depends(Authorize(Permission.SOURCES_MANAGE))]
CanManageSuppressions = Annotated[Principal, Depends(Authorize(Permission.SUPPRESSIONS_MANAGE))]
Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,127}$")]


class SourceIn(BaseModel):
    """A source to create."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    kind: SourceKind
    format: str
    parser_options: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    secret: SecretValue | None = Field(
        default=None, description="HMAC key, mailbox password or API key; stored encrypted."
    )


class SourceChange(BaseModel):
    """What to change on a source; absent fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    parser_options: dict[str, Any] | None = None
    settings: dict[str, Any] | None = Field(default=None, description="Merged into the current.")
    enabled: bool | None = None


class SecretIn(BaseModel):
    """A new secret for a source (null clears it)."""

    model_config = ConfigDict(extra="forbid")

    secret: SecretValue | None


def _changed(request: Request) -> None:
    """Tell this server's source runner to look at the sources now (when it runs them)."""
    event: asyncio.Event | None = getattr(request.app.state, "sources_changed", None)
    if event is not None:
        event.set()


def _shown(source: Source, request: Request) -> dict[str, Any]:
    data = source.as_dict()
    runner: SourceRunner | None = getattr(request.app.state, "sources", None)
    if source.kind in RUN_KINDS and runner is not None:
        data["runner"] = runner.status(source.name)
    return data


@router.get("/sources", summary="List sources")
async def list_sources(
    request: Request, runtime: RuntimeDep, _: CanReadAlerts
) -> list[dict[str, Any]]:
    """Every source with its counters (never its secret), and whether this server runs it."""
    found = await run_in_threadpool(runtime.sources.list_all)
    return [_shown(source, request) for source in found]


@router.get("/sources/{name}", summary="Show a source")
async def get_source(
    name: Name, request: Request, runtime: RuntimeDep, _: CanReadAlerts
) -> dict[str, Any]:
    """One source."""
    return _shown(await run_in_threadpool(runtime.sources.get, name), request)


@router.post("/sources", status_code=status.HTTP_201_CREATED, summary="Create a source")
async def create_source(
    body: SourceIn, request: Request, runtime: RuntimeDep, principal: CanManageSources
) -> dict[str, Any]:
    """Add a source; its format and options are checked by building its parser."""
    source = await run_in_threadpool(
        lambda: runtime.sources.create(
            body.name,
            body.kind.value,
            body.format,
            parser_options=body.parser_options,
            settings=body.settings,
            secret=body.secret,
        )
    )
    await services.audited(
        runtime, principal, "source.create", f"source:{source.name}",
        {"after": {**source.as_dict(), "secret_set": body.secret is not None}},
    )  # fmt: skip
    _changed(request)
    return source.as_dict()


@router.patch("/sources/{name}", summary="Change a source")
async def update_source(
    name: Name,
    body: SourceChange,
    request: Request,
    runtime: RuntimeDep,
    principal: CanManageSources,
) -> dict[str, Any]:
    """Change parser options (e.g. a field mapping), settings or the enabled flag."""
    before = await run_in_threadpool(runtime.sources.get, name)
    source = await run_in_threadpool(
        lambda: runtime.sources.update(
            name, parser_options=body.parser_options, settings=body.settings, enabled=body.enabled
        )
    )
    await services.audited(
        runtime, principal, "source.update", f"source:{name}",
        {"before": before.as_dict(), "after": source.as_dict()},
    )  # fmt: skip
    _changed(request)
    return source.as_dict()


@router.put("/sources/{name}/secret", summary="Set or clear a source's secret")
async def set_source_secret(
    name: Name, body: SecretIn, request: Request, runtime: RuntimeDep, principal: CanManageSources
) -> dict[str, Any]:
    """Replace the source's secret; it is sealed at rest and never returned."""
    await run_in_threadpool(runtime.sources.set_secret, name, body.secret)
    await services.audited(
        runtime, principal, "source.secret", f"source:{name}", {"set": body.secret is not None}
    )
    _changed(request)
    return (await run_in_threadpool(runtime.sources.get, name)).as_dict()


@router.delete("/sources/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a source")
async def remove_source(
    name: Name, request: Request, runtime: RuntimeDep, principal: CanManageSources
) -> None:
    """Delete the source's configuration; its alerts stay."""
    before = await run_in_threadpool(runtime.sources.get, name)
    await run_in_threadpool(runtime.sources.remove, name)
    await services.audited(
        runtime, principal, "source.remove", f"source:{name}", {"before": before.as_dict()}
    )
    _changed(request)


class SuppressionIn(BaseModel):
    """A suppression rule to create."""

    model_config = ConfigDict(extra="forbid")

    name: str
    match: dict[str, Any]
    action: SuppressionAction = SuppressionAction.DROP
    expires_in: str | None = Field(default=None, description="e.g. 7d; never when absent")


def _rule(rule: SuppressionRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "match": rule.match,
        "action": rule.action.value,
        "builtin": rule.builtin,
        "enabled": rule.enabled,
        "hits": rule.hits,
        "last_hit_at": rule.last_hit_at,
        "created_at": rule.created_at,
        "expires_at": rule.expires_at,
    }


@router.get("/suppressions", summary="List suppression rules and their hits")
async def list_suppressions(runtime: RuntimeDep, _: CanReadAlerts) -> list[dict[str, Any]]:
    """Every rule with how many alerts it suppressed; built-in ones included."""
    return [_rule(rule) for rule in await run_in_threadpool(runtime.suppressions.list_all)]


@router.post("/suppressions", status_code=status.HTTP_201_CREATED, summary="Add a rule")
async def add_suppression(
    body: SuppressionIn, runtime: RuntimeDep, principal: CanManageSuppressions
) -> dict[str, Any]:
    """Create a rule; ``match`` is validated first."""
    expires_in = parse_duration(body.expires_in, field="expires_in") if body.expires_in else None
    rule = await run_in_threadpool(
        lambda: runtime.suppressions.add(body.name, body.match, body.action, expires_in=expires_in)
    )
    await services.audited(
        runtime, principal, "suppression.add", f"suppression:{body.name}", {"after": _rule(rule)}
    )
    return _rule(rule)


@router.delete(
    "/suppressions/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a rule"
)
async def remove_suppression(
    name: Name, runtime: RuntimeDep, principal: CanManageSuppressions
) -> None:
    """Delete a user rule."""
    await run_in_threadpool(runtime.suppressions.remove, name)
    await services.audited(runtime, principal, "suppression.remove", f"suppression:{name}")
