"""Alerts, incidents and schedules start runs, durably and exactly once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from quell.clock import ManualClock
from quell.engine.triggers import Dispatcher
from quell.playbooks.compiler import PlaybookInvalid, parse_playbook
from quell.runtime import Runtime
from quell.store.schema import outbox, runs
from tests.engine.harness import ENDED, Harness, eventually
from tests.engine.peer import Peer

MAPPING = {"fields": {"title": "title", "time": "ts", "severity": "sev", "src.ip": "src"}}
ON_ALERT = """
id: on-alert
name: React to serious alerts
trigger: {on: alert.created, if: "alert.severity_id >= severity('high')"}
steps:
  - {id: note, action: core.log, with: {message: "{{ alert.title }} from {{ alert.src.ip }}"}}
"""
ON_INCIDENT = """
id: on-incident
name: React to new incidents
trigger: {on: incident.created}
steps:
  - {id: note, action: core.log, with: {message: "{{ incident.title }}"}}
"""


def _alert(title: str, severity: str, src: str) -> bytes:
    record: dict[str, Any] = {
        "title": title,
        "ts": "2026-01-01T00:00:00Z",
        "sev": severity,
        "src": src,
    }
    return orjson.dumps(record)


def _count(runtime: Runtime, table: Any, *where: Any) -> int:
    with runtime.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_alerts_and_incidents_start_the_playbooks_that_listen(runtime: Runtime) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            harness.add(ON_ALERT, activate=True)
            harness.add(ON_INCIDENT, activate=True)
            runtime.pipeline.ingest(
                "edr",
                [
                    _alert("C2 beacon", "high", "203.0.113.5"),
                    _alert("port scan", "low", "198.51.100.2"),
                ],
            )
            await eventually(
                lambda: _count(runtime, runs, runs.c.status.in_(ENDED)) >= 3, "the runs"
            )
        listed = harness.runs.list_all()
        by_playbook: dict[str, list[Any]] = {}
        for view in listed:
            by_playbook.setdefault(view.playbook_id, []).append(view)
        (alert_run,) = by_playbook["on-alert"]  # the low-severity alert started nothing
        assert alert_run.trigger == "alert.created"
        assert alert_run.status == "succeeded"
        shown = harness.runs.get(alert_run.id)
        assert shown.steps[0].output == {"message": "C2 beacon from 203.0.113.5"}
        assert len(by_playbook["on-incident"]) == 2  # two unrelated sources: two incidents

    asyncio.run(scenario())


def test_events_written_with_the_alert_survive_a_crash_before_dispatch(runtime: Runtime) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            harness.add(ON_ALERT, activate=True)
        # No engine runs now: as if the process died right after storing the alert.
        runtime.pipeline.ingest("edr", [_alert("ransomware", "critical", "203.0.113.9")])
        assert _count(runtime, outbox, outbox.c.processed_at.is_(None)) == 1
        assert _count(runtime, runs) == 0
        async with Harness(runtime) as harness:
            dispatcher = Dispatcher(harness.engine)
            dispatcher.dispatch()
            dispatcher.dispatch()  # again: nothing twice
            await eventually(
                lambda: _count(runtime, runs, runs.c.status.in_(ENDED)) >= 1, "the runs"
            )
        assert _count(runtime, runs) == 1
        assert _count(runtime, outbox, outbox.c.processed_at.is_(None)) == 0

    asyncio.run(scenario())


def test_nothing_is_written_to_the_outbox_when_nobody_listens(runtime: Runtime) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    runtime.pipeline.ingest("edr", [_alert("quiet", "high", "203.0.113.1")])
    assert _count(runtime, outbox) == 0


def test_a_schedule_fires_once_per_due_time(runtime: Runtime, clock: ManualClock) -> None:
    text = """
id: hourly
name: Hourly sweep
trigger: {on: schedule, cron: "0 * * * *"}
steps:
  - {id: sweep, action: core.log, with: {message: "fired {{ schedule.fired_at }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            harness.add(text, activate=True)
            await asyncio.sleep(0.3)
            assert _count(runtime, runs) == 0  # 00:00 was not after activation
            clock.advance(timedelta(hours=1, seconds=1))
            await eventually(
                lambda: _count(runtime, runs, runs.c.status.in_(ENDED)) >= 1, "the runs"
            )
            await asyncio.sleep(0.3)
            assert _count(runtime, runs) == 1
            clock.advance(timedelta(hours=1))
            await eventually(
                lambda: _count(runtime, runs, runs.c.status.in_(ENDED)) >= 2, "the runs"
            )
        (latest, first) = harness.runs.list_all()
        assert first.trigger == "schedule"
        assert first.trigger_ref == "2026-01-01T01:00:00+00:00"
        assert latest.trigger_ref == "2026-01-01T02:00:00+00:00"

    asyncio.run(scenario())


def test_a_trigger_that_cannot_give_a_required_input_is_refused_naming_it() -> None:
    """The trigger gives ``alert``: every run it started reached its steps with null where the
    playbook promised an address (an approval asked to block ``null``)."""
    needs = """
id: needs-input
name: Needs an address
trigger: {on: alert.created}
inputs: {ipv4_net: {type: string, required: true}}
steps:
  - {id: block, action: test.contain, with: {target: "{{ ipv4_net }}"}}
"""
    with pytest.raises(PlaybookInvalid) as caught:
        parse_playbook(needs, "needs.yaml")
    assert "needs.yaml:5:10: input 'ipv4_net' is required, but the alert.created trigger" in str(
        caught.value
    )


def test_a_run_started_without_a_required_input_fails_saying_which(runtime: Runtime) -> None:
    """A parent whose expression for the input came out null started the child anyway."""
    child = """
id: enrich
name: Enrich
inputs: {ip: {type: string, required: true}}
steps:
  - {id: block, action: test.contain, with: {target: "{{ ip }}"}}
"""
    parent = """
id: parent
name: Parent
vars: {found: null}
steps:
  - {id: call, playbook: enrich, with: {ip: "{{ found }}"}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            harness.add(child)
            run_id = await harness.start(parent)
            done = await harness.settle(run_id, until=("succeeded", "failed"))
            call = next(s for s in done.steps if s.key == "call")
            shown = harness.runs.get(call.output["run_id"])
        assert done.status == "failed"
        assert shown.status == "failed"
        assert shown.error is not None
        assert shown.error["code"] == "missing_input"
        assert "the playbook needs the input 'ip'" in shown.error["message"]
        assert not shown.steps
        assert Peer.calls == {}

    asyncio.run(scenario())
