"""Turning events into runs: the outbox dispatcher and the cron schedules.

The ingest transaction that stores an alert (or creates an incident) writes an ``outbox`` row
in the same commit, when some active playbook listens for that event. The dispatcher reads
unprocessed events in order, evaluates each active playbook's trigger condition on the event,
and creates the runs with ``dedupe_key = <version>:<event>``, marking the events processed, all
in one transaction: a crash either did all of it or none, and doing it again creates nothing
twice (the key is unique). An alert is therefore never stored without its runs eventually
existing. Cron triggers work the same way from the ``schedules`` table: each due fire creates
one run keyed by its time and moves ``next_at`` on.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import structlog
from cronsim import CronSim
from sqlalchemy import select, update

from quell.engine.journal import RUN_COLUMNS
from quell.engine.notify import notify_ready
from quell.engine.states import RunStatus
from quell.errors import QuellError
from quell.ids import new_id
from quell.playbooks.expressions import ExpressionError, compile_expression
from quell.store.schema import outbox, runs, schedules

if TYPE_CHECKING:
    from quell.engine.engine import Engine

log = structlog.get_logger(__name__)
BATCH = 500
# The outbox events playbooks trigger on; ``incident.sla_breached`` (quell.cases.sla) also gives
# the run ``sla``: ``{"metric", "due_at", "breached_at"}``.
EVENT_KINDS = ("alert.created", "incident.created", "incident.updated", "incident.sla_breached")


def next_fire(cron: str, after: datetime, timezone: str = "UTC") -> datetime:
    """The first time after ``after`` that ``cron`` fires (evaluated in ``timezone``)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = after.astimezone(zone).replace(second=0, microsecond=0)
    fire: datetime = next(CronSim(cron, local))
    return fire.astimezone(after.tzinfo)


class Dispatcher:
    """Creates the runs that events and schedules call for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def dispatch(self) -> int:
        """Process one batch of outbox events and due schedules; how many runs were created."""
        return self._events() + self._schedules()

    def _insert_runs(self, conn: Any, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        keys = [row[RUN_COLUMNS.index("dedupe_key")] for row in rows]
        existing = set(
            conn.execute(select(runs.c.dedupe_key).where(runs.c.dedupe_key.in_(keys))).scalars()
        )
        fresh = [row for row in rows if row[RUN_COLUMNS.index("dedupe_key")] not in existing]
        self.engine.journal.insert_run.run(conn, fresh)
        if fresh:
            notify_ready(conn)
        return len(fresh)

    def _events(self) -> int:
        engine = self.engine
        active = engine.playbooks.active()
        listening = [
            (version, playbook, trigger)
            for version, playbook in active
            for trigger in playbook.triggers
            if trigger.on in EVENT_KINDS
        ]
        with engine.db.write() as conn:
            events = list(
                conn.execute(
                    select(outbox)
                    .where(outbox.c.processed_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(BATCH)
                )
            )
            if not events:
                return 0
            subjects = self._subjects(events)
            rows = []
            for event in events:
                subject = event.kind.split(".", 1)[0]
                payload = (
                    subjects.get(event.subject_id) or event.payload or {"id": event.subject_id}
                )
                for version, playbook, trigger in listening:
                    if trigger.on != event.kind:
                        continue
                    changes = (event.payload or {}).get("changes") or payload.get("changes")
                    sla = (event.payload or {}).get("sla")
                    scope = {subject: payload, "changes": changes}
                    if sla is not None:
                        scope["sla"] = sla
                    if trigger.condition:
                        try:
                            if not compile_expression(trigger.condition, "trigger.if").truthy(
                                scope
                            ):
                                continue
                        except ExpressionError as exc:
                            log.warning(
                                "trigger_condition_failed", playbook=playbook.id, error=exc.message
                            )
                            continue
                    run_id = new_id("run")
                    inputs = (
                        {subject: payload, "changes": changes}
                        if changes is not None
                        else {subject: payload}
                    )
                    if sla is not None:
                        inputs["sla"] = sla
                    rows.append(
                        engine.run_row(
                            run_id,
                            version.id,
                            playbook.id,
                            inputs,
                            trigger=event.kind,
                            trigger_ref=event.subject_id,
                            dedupe_key=f"{version.id}:{event.id}",
                            status=RunStatus.READY,
                        )
                    )
            created = self._insert_runs(conn, rows)
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_([event.id for event in events]))
                .values(processed_at=engine.clock.now())
            )
        if created:
            engine.wake()
        return created

    def _subjects(self, events: list[Any]) -> dict[str, dict[str, Any]]:
        """The alerts and incidents the events are about, as the API shows them."""
        from quell.cases.incidents import IncidentService
        from quell.ingest.alerts import AlertService, render_alert
        from quell.intel.enrich import verdicts_of_alerts

        alert_ids = [e.subject_id for e in events if e.kind.startswith("alert.")]
        incident_ids = {e.subject_id for e in events if e.kind.startswith("incident.")}
        found: dict[str, dict[str, Any]] = {}
        if alert_ids:
            verdicts = verdicts_of_alerts(self.engine.db, alert_ids)
            for alert_id, alert in AlertService(self.engine.db).get_many(alert_ids).items():
                payload = _plain(render_alert(alert))
                # OCSF's pair: the id to compare (>= severity('high')), the label to show.
                payload["severity_id"] = int(alert.severity)
                payload["severity"] = alert.severity.label
                # Enrichment's word, there since the alert was stored: `alert.verdict`.
                verdict = verdicts.get(alert_id)
                payload["verdict"] = verdict["verdict"] if verdict else "info"
                payload["verdict_score"] = verdict["score"] if verdict else 0
                payload["verdict_reasons"] = (
                    _plain({"r": verdict["reasons"]})["r"] if verdict else []
                )
                found[alert_id] = payload
        if incident_ids:
            incidents = IncidentService(self.engine.db)
            for incident_id in incident_ids:
                try:
                    found[incident_id] = _plain(incidents.get(incident_id).as_dict())
                except QuellError:
                    continue
        return found

    def _schedules(self) -> int:
        engine = self.engine
        now = engine.clock.now()
        with engine.db.write() as conn:
            due = list(conn.execute(select(schedules).where(schedules.c.next_at <= now)))
            rows = []
            for schedule in due:
                try:
                    version = engine.playbooks.resolve(schedule.playbook_id)
                except Exception:  # noqa: BLE001 - a schedule of a removed playbook stops
                    conn.execute(
                        schedules.delete().where(
                            schedules.c.playbook_id == schedule.playbook_id,
                            schedules.c.trigger == schedule.trigger,
                        )
                    )
                    continue
                fire = schedule.next_at
                rows.append(
                    engine.run_row(
                        new_id("run"),
                        version.id,
                        version.playbook_id,
                        {"schedule": {"fired_at": fire.isoformat(), "cron": schedule.cron}},
                        trigger="schedule",
                        trigger_ref=fire.isoformat(),
                        dedupe_key=f"cron:{schedule.playbook_id}:{schedule.trigger}:{fire.isoformat()}",
                        status=RunStatus.READY,
                    )
                )
                following = next_fire(schedule.cron, max(now, fire) + timedelta(seconds=1))
                conn.execute(
                    update(schedules)
                    .where(
                        schedules.c.playbook_id == schedule.playbook_id,
                        schedules.c.trigger == schedule.trigger,
                    )
                    .values(next_at=following, last_at=fire)
                )
            created = self._insert_runs(conn, rows)
        if created:
            engine.wake()
        return created


def _plain(value: Any) -> dict[str, Any]:
    """JSON data (times as ISO text, enums as values), as a run's inputs are stored."""
    plain: dict[str, Any] = orjson.loads(orjson.dumps(value, default=str))
    return plain


__all__ = ["Dispatcher", "next_fire"]
