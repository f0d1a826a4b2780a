"""Working a case on both backends: the NIST phases and their SLA stops, resolution on close,
reopening, assignment, tags and techniques, notes and tasks, each on the timeline, audited,
and announced to playbooks."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from quell.clock import ManualClock
from quell.errors import Conflict, InvalidInput
from quell.runtime import Runtime
from quell.store.schema import outbox, runs
from tests.engine.harness import ENDED, Harness, eventually

MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}


@pytest.fixture
def incident_id(runtime: Runtime) -> str:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    (incident,) = runtime.incidents.list_all()
    return incident.id


def test_the_phases_stop_their_clocks_and_closing_needs_a_resolution(
    runtime: Runtime, incident_id: str, clock: ManualClock
) -> None:
    cases = runtime.cases
    start = clock.now()
    clock.advance(timedelta(minutes=5))
    assert cases.update(incident_id, by="alice", status="triage") == {"status": ["new", "triage"]}
    clock.advance(timedelta(minutes=30))
    cases.update(incident_id, by="alice", status="eradicated")  # a phase may be skipped
    shown = runtime.incidents.get(incident_id)
    assert shown.acknowledged_at == start + timedelta(minutes=5)
    assert shown.contained_at == start + timedelta(minutes=35)

    with pytest.raises(InvalidInput, match="closing needs a resolution: true_positive"):
        cases.update(incident_id, by="alice", status="closed")
    with pytest.raises(InvalidInput, match="unknown resolution 'oops'"):
        cases.update(incident_id, by="alice", status="closed", resolution="oops")
    clock.advance(timedelta(hours=1))
    changes = cases.update(
        incident_id, by="bob", status="closed", resolution="false positive", comment="lab box"
    )
    assert changes == {"status": ["eradicated", "closed"], "resolution": [None, "false_positive"]}
    closed = runtime.incidents.get(incident_id)
    assert (closed.closed_by, closed.closed_at) == ("bob", clock.now())

    with pytest.raises(Conflict, match="reopened into triage, not contained"):
        cases.update(incident_id, by="bob", status="contained")
    cases.update(incident_id, by="bob", status="triage")
    reopened = runtime.incidents.get(incident_id)
    assert (reopened.status.value, reopened.resolution, reopened.closed_at) == (
        "triage",
        None,
        None,
    )
    assert reopened.contained_at == start + timedelta(minutes=35)  # a clock stops once

    kinds = [e.kind for e in runtime.incidents.timeline(incident_id)]
    assert kinds.count("updated") == 4
    audit = [e.action for e in runtime.audit.list_all(action="incident.")]
    assert audit == ["incident.update"] * 4
    with runtime.db.read() as conn:
        sent = conn.execute(
            select(outbox.c.payload).where(
                outbox.c.kind == "incident.updated", outbox.c.subject_id == incident_id
            )
        ).scalars()
        payloads = [p for p in sent if p]
    assert {"changes": {"status": ["new", "triage"]}} in payloads


def test_assignment_tags_techniques_and_priority(runtime: Runtime, incident_id: str) -> None:
    cases = runtime.cases
    changes = cases.update(
        incident_id,
        by="lead",
        owner="alice",
        assignee="bob",
        priority=1,
        tags=["phishing", "vip", "phishing"],
        techniques=["t1566.001", "T1059"],
    )
    assert changes["tags"] == [[], ["phishing", "vip"]]
    assert changes["techniques"] == [[], ["T1566.001", "T1059"]]
    shown = runtime.incidents.get(incident_id).as_dict()
    assert (shown["owner"], shown["assignee"], shown["priority"]) == ("alice", "bob", 1)
    assert cases.update(incident_id, by="lead", owner="alice") == {}  # nothing changed
    cases.update(incident_id, by="lead", assignee="")
    assert runtime.incidents.get(incident_id).as_dict()["assignee"] is None
    with pytest.raises(InvalidInput, match="not an ATT&CK technique id"):
        cases.update(incident_id, by="lead", techniques=["TA0001"])
    with pytest.raises(InvalidInput, match="tag 'no spaces'"):
        cases.update(incident_id, by="lead", tags=["no spaces"])
    with pytest.raises(InvalidInput, match="priority is 1"):
        cases.update(incident_id, by="lead", priority=9)


def test_notes_and_tasks_land_on_the_timeline(runtime: Runtime, incident_id: str) -> None:
    cases = runtime.cases
    note = cases.add_note(incident_id, "  Called the user; laptop in for imaging.  ", by="alice")
    assert note.body == "Called the user; laptop in for imaging."
    with pytest.raises(InvalidInput, match="needs some text"):
        cases.add_note(incident_id, "   ", by="alice")
    task = cases.add_task(incident_id, "Image the laptop", by="alice", assignee="bob")
    assert [t.id for t in cases.tasks(incident_id, status="open")] == [task.id]
    done = cases.complete_task(task.id, by="bob", result="image sha256 ab12…")
    assert (done.status, done.completed_by) == ("done", "bob")
    with pytest.raises(Conflict, match="already done"):
        cases.complete_task(task.id, by="bob")
    kinds = [e.kind for e in runtime.incidents.timeline(incident_id)]
    assert kinds[-3:] == ["note_added", "task_added", "task_done"]
    assert [n.id for n in cases.notes(incident_id)] == [note.id]


ON_CONTAINED = """
id: on-contained
name: Tell the team when an incident is contained
trigger: {on: incident.updated, if: "changes.status and changes.status[1] == 'contained'"}
steps:
  - id: note
    action: core.log
    with: {message: "{{ incident.title }} contained by the team ({{ changes.status[0] }} before)"}
"""


def test_a_playbook_triggers_on_the_change_people_make(runtime: Runtime, incident_id: str) -> None:
    async def scenario() -> list[Any]:
        async with Harness(runtime) as harness:
            harness.add(ON_CONTAINED, activate=True)
            runtime.cases.update(incident_id, by="alice", assignee="bob")  # not a status change
            runtime.cases.update(incident_id, by="alice", status="contained")
            await eventually(lambda: bool(_ended(runtime)), "the run")
            (run,) = harness.runs.list_all()
            return [run, harness.runs.get(run.id)]

    run, shown = asyncio.run(scenario())
    assert run.trigger == "incident.updated"
    assert shown.steps[0].output == {"message": "beacon contained by the team (new before)"}


def _ended(runtime: Runtime) -> int:
    with runtime.db.read() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(runs).where(runs.c.status.in_(ENDED))
            ).scalar_one()
        )
