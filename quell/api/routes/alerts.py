"""Alerts and incidents over HTTP."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from quell.api.auth import Authorize, RuntimeDep
from quell.governance.permissions import Permission
from quell.governance.tokens import Principal
from quell.ingest.alerts import render_alert
from quell.ingest.ocsf import to_ocsf

router = APIRouter(prefix="/api", tags=["alerts and incidents"])

CanReadAlerts = Annotated[Principal, Depends(Authorize(Permission.ALERTS_READ))]
CanReadIncidents = Annotated[Principal, Depends(Authorize(Permission.INCIDENTS_READ))]


class AlertFormat(StrEnum):
    """How an alert is rendered."""

    QUELL = "quell"
    OCSF = "ocsf"


@router.get("/alerts", summary="List alerts")
async def list_alerts(
    runtime: RuntimeDep,
    _: CanReadAlerts,
    source: str | None = None,
    incident: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Alerts, newest received first."""
    found = await run_in_threadpool(
        runtime.alerts.list_all, source=source, incident_id=incident, limit=limit, offset=offset
    )
    return [render_alert(alert) for alert in found]


@router.get("/alerts/{alert_id}", summary="Show an alert")
async def get_alert(
    alert_id: str, runtime: RuntimeDep, _: CanReadAlerts, format: AlertFormat = AlertFormat.QUELL
) -> dict[str, Any]:
    """One alert; ``format=ocsf`` renders it as an OCSF Detection Finding (class 2004)."""
    alert = await run_in_threadpool(runtime.alerts.get, alert_id)
    if format is AlertFormat.OCSF:
        return to_ocsf(alert)
    verdict = await run_in_threadpool(runtime.enricher.alert_verdict, alert_id)
    return {**render_alert(alert, with_raw=True), "verdict": verdict}


@router.get("/incidents", summary="List or search incidents")
async def list_incidents(
    runtime: RuntimeDep,
    _: CanReadIncidents,
    status: str | None = None,
    q: Annotated[str | None, Query(max_length=500, description="Words to search for.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Incidents, most recently active first; ``status=open`` for the open ones. With ``q``,
    the incidents whose text (title, notes, tasks, tags, alerts, observables …) has every
    word, best match first, each with its ``rank`` (and of the ``status`` asked, if any)."""
    if q is not None:
        found = await run_in_threadpool(
            lambda: runtime.incident_search.search(
                q, limit=min(limit, 500), offset=offset, status=status
            )
        )
        return [{**incident.as_dict(), "rank": rank} for incident, rank in found]
    listed = await run_in_threadpool(
        runtime.incidents.list_all, status=status, limit=limit, offset=offset
    )
    return [incident.as_dict() for incident in listed]


@router.get("/incidents/{incident_id}", summary="Show an incident")
async def get_incident(
    incident_id: str, runtime: RuntimeDep, _: CanReadIncidents
) -> dict[str, Any]:
    """An incident with its alerts, the keys it correlates on, notes and tasks, its verdict
    (its worst alert's, with every alert's reasons), and its timeline: its own events, its
    alerts, the runs they started, each action called and each approval."""

    def load() -> dict[str, Any]:
        incident = runtime.incidents.get(incident_id)
        return {
            **incident.as_dict(),
            "keys": [{"type": t, "value": v} for t, v in runtime.incidents.keys(incident_id)],
            "verdict": runtime.enricher.incident_verdict(incident_id),
            "observables": runtime.enricher.incident_observables(incident_id),
            "notes": [n.as_dict() for n in runtime.cases.notes(incident_id)],
            "tasks": [t.as_dict() for t in runtime.cases.tasks(incident_id)],
            "slas": [c.as_dict() for c in runtime.sla.clocks(incident_id)],
            "evidence": [e.as_dict() for e in runtime.evidence.list(incident_id)],
            "alerts": [
                render_alert(a)
                for a in runtime.alerts.list_all(incident_id=incident_id, limit=1000)
            ],
            "timeline": runtime.incidents.full_timeline(incident_id),
        }

    return await run_in_threadpool(load)
