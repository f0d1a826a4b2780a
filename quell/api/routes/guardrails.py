"""Guardrails over HTTP: read the policy, pull the kill switch, set limits, protected assets
and the circuit breaker. Anyone who may control runs may pull the kill switch or reset a
circuit (the person on shift); setting the policy itself needs ``connectors:manage``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api import services
from quell.api.auth import Authorize, RuntimeDep
from quell.engine.guardrails import Breaker
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.sdk.actions import RiskLevel

router = APIRouter(prefix="/api/guardrails", tags=["guardrails"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.RUNS_READ))]
CanControl = Annotated[Principal, Depends(Authorize(Permission.RUNS_CONTROL))]
CanManage = Annotated[Principal, Depends(Authorize(Permission.CONNECTORS_MANAGE))]
PlaybookId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class KillSwitch(BaseModel):
    """Turn the kill switch on or off."""

    model_config = ConfigDict(extra="forbid")

    on: bool
    reason: str = Field("", max_length=500)


class LimitIn(BaseModel):
    """An hourly limit for one action or one risk."""

    model_config = ConfigDict(extra="forbid")

    action: str | None = Field(None, max_length=160)
    risk: RiskLevel | None = None
    per_hour: int = Field(ge=0, le=1_000_000)


class ProtectedChange(BaseModel):
    """Assets (and asset tags) to protect, and to stop protecting."""

    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default_factory=list, max_length=1000)
    remove: list[str] = Field(default_factory=list, max_length=1000)
    add_tags: list[str] = Field(default_factory=list, max_length=100)
    remove_tags: list[str] = Field(default_factory=list, max_length=100)


class AssetTags(BaseModel):
    """An asset's tags (none removes it)."""

    model_config = ConfigDict(extra="forbid")

    entry: str = Field(min_length=1, max_length=253)
    tags: list[str] = Field(default_factory=list, max_length=50)


class BreakerIn(BaseModel):
    """When a playbook's circuit opens."""

    model_config = ConfigDict(extra="forbid")

    failure_rate: float = Field(0.5, gt=0, le=1)
    min_runs: int = Field(10, ge=1, le=100_000)
    window_minutes: int = Field(15, ge=1, le=10_080)


@router.get("", summary="Show the guardrails")
async def show(runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """The kill switch, limits, protected assets, breaker and open circuits."""
    policy = await run_in_threadpool(runtime.guardrails.policy)
    return policy.as_dict()


@router.put("/kill-switch", summary="Pull or release the kill switch")
async def kill_switch(body: KillSwitch, runtime: RuntimeDep, who: CanControl) -> dict[str, Any]:
    """On: every playbook write is held. Off: held runs go on at once."""
    woken = await run_in_threadpool(
        lambda: runtime.guardrails.kill_switch(body.on, by=who.name, reason=body.reason)
    )
    return {"on": body.on, "released_runs": woken}


@router.put("/limits", summary="Set an hourly limit")
async def set_limit(
    body: LimitIn, request: Request, runtime: RuntimeDep, who: CanManage
) -> dict[str, Any]:
    """Set (or replace) the limit of an action (one there is) or of a risk."""
    known = services.registry(request, runtime)
    limit = await run_in_threadpool(
        lambda: runtime.guardrails.add_limit(
            body.per_hour, by=who.name, action=body.action, risk=body.risk, known=known
        )
    )
    return limit.as_dict()


@router.delete("/limits", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a limit")
async def remove_limit(
    runtime: RuntimeDep,
    who: CanManage,
    action: Annotated[str | None, Query(max_length=160)] = None,
    risk: RiskLevel | None = None,
) -> None:
    """Remove the limit of an action or of a risk."""
    await run_in_threadpool(
        lambda: runtime.guardrails.remove_limit(by=who.name, action=action, risk=risk)
    )


@router.patch("/protected", summary="Change protected assets")
async def change_protected(
    body: ProtectedChange, runtime: RuntimeDep, who: CanManage
) -> dict[str, Any]:
    """Add and remove protected addresses, networks and host names; the whole list."""
    guardrails = runtime.guardrails

    def change() -> dict[str, Any]:
        if body.add:
            guardrails.protect(body.add, by=who.name)
        if body.remove:
            guardrails.unprotect(body.remove, by=who.name)
        if body.add_tags:
            guardrails.protect_tags(body.add_tags, by=who.name)
        if body.remove_tags:
            guardrails.protect_tags(body.remove_tags, by=who.name, remove=True)
        policy = guardrails.policy()
        return {"protected": list(policy.protected), "protected_tags": list(policy.protected_tags)}

    return await run_in_threadpool(change)


@router.put("/assets", summary="Tag an asset")
async def tag_asset(body: AssetTags, runtime: RuntimeDep, who: CanManage) -> dict[str, Any]:
    """Give an address, network or host name its tags (protected tags make it protected)."""
    assets = await run_in_threadpool(
        lambda: runtime.guardrails.tag_asset(body.entry, body.tags, by=who.name)
    )
    return {"asset_tags": assets}


@router.put("/breaker", summary="Set or turn off the circuit breaker")
async def set_breaker(
    body: BreakerIn | None, runtime: RuntimeDep, who: CanManage
) -> dict[str, Any]:
    """With thresholds, the breaker is on; with ``null``, off."""
    breaker = Breaker(**body.model_dump()) if body is not None else None
    await run_in_threadpool(lambda: runtime.guardrails.set_breaker(breaker, by=who.name))
    return {"breaker": breaker.as_dict() if breaker else None}


@router.post("/breaker/{playbook}/reset", summary="Close a playbook's open circuit")
async def reset_breaker(
    playbook: PlaybookId, runtime: RuntimeDep, who: CanControl
) -> dict[str, Any]:
    """The playbook's held runs go on; only failures from now on count."""
    woken = await run_in_threadpool(lambda: runtime.guardrails.reset_breaker(playbook, by=who.name))
    return {"playbook": playbook, "released_runs": woken}
