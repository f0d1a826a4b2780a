"""The SLA policy over HTTP: how long each incident severity may take to be acknowledged,
contained and closed (:mod:`quell.cases.sla`). An incident's clocks are part of
``GET /api/incidents/{id}`` (``slas``).

Reading the policy needs ``incidents:read``: whoever sees incidents may see what is expected of
them. Changing it needs ``users:manage``: the policy is what the organisation expects of the
people who work the queue, so it is set by whoever administers those people (built in, only
admins), never by the people it measures (``incidents:write``, analysts, would relax their own
targets), and it is neither an integration (``connectors:manage``, ``sources:manage``) nor
intel. Every change is in the audit trail (``sla.policy``, ``sla.policy_reset``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal

router = APIRouter(prefix="/api/sla", tags=["cases"])

CanRead = Annotated[Principal, Depends(Authorize(Permission.INCIDENTS_READ))]
CanManage = Annotated[Principal, Depends(Authorize(Permission.USERS_MANAGE))]
Severity = Annotated[
    str,
    Path(
        max_length=16,
        description="informational, low, medium, high, critical, fatal (or 1 to 6)",
    ),
]
_TARGET = "A duration (15m, 4h, 3d); `none` for no SLA; left out: unchanged."


class SlaTargets(BaseModel):
    """The targets to change; what is left out stays."""

    model_config = ConfigDict(extra="forbid")

    acknowledge: str | None = Field(None, max_length=32, description=_TARGET)
    contain: str | None = Field(None, max_length=32, description=_TARGET)
    close: str | None = Field(None, max_length=32, description=_TARGET)


@router.get("", summary="Show the SLA policy")
async def show_policy(runtime: RuntimeDep, _: CanRead) -> dict[str, Any]:
    """Each severity's targets (informational to fatal), and whether they are the defaults."""
    policy = await run_in_threadpool(runtime.sla.policy)
    return {"policy": [p.as_dict() for p in policy]}


@router.put("/{severity}", summary="Set a severity's SLA targets")
async def set_policy(
    severity: Severity, body: SlaTargets, runtime: RuntimeDep, who: CanManage
) -> dict[str, Any]:
    """Change the given targets of one severity; its running clocks move with them."""
    policy = await run_in_threadpool(
        lambda: runtime.sla.set_policy(severity, by=who.name, **body.model_dump())
    )
    return policy.as_dict()


@router.delete("/{severity}", summary="Reset a severity's SLA targets")
async def reset_policy(severity: Severity, runtime: RuntimeDep, who: CanManage) -> dict[str, Any]:
    """Back to the default targets; the severity's running clocks move with them."""
    policy = await run_in_threadpool(lambda: runtime.sla.reset_policy(severity, by=who.name))
    return policy.as_dict()
