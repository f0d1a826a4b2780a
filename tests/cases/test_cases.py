"""Working a case on both backends: the NIST phases and their SLA stops, resolution on close,
reopening, assignment, tags and techniques, notes and tasks, each on the timeline, audited,
and announced to playbooks."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, insert, select

from quell.cases.incidents import IncidentStatus, Resolution
from quell.clock import ManualClock
from quell.errors import Conflict, InvalidInput
from quell.runtime import Runtime
from quell.store.database import Backend
from quell.store.schema import incidents, outbox, runs
from tests.engine.harness import ENDED, Harness, eventually
from tests.fixtures.plans import explain, statements

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


def _two_incidents(runtime: Runtime) -> tuple[str, str]:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    runtime.pipeline.ingest(
        "edr",
        [
            orjson.dumps({"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}),
            orjson.dumps({"title": "beacon", "ts": "2026-11-28T08:01:00Z", "src": "203.0.113.9"}),
            orjson.dumps({"title": "scan", "ts": "2026-11-28T08:02:00Z", "src": "198.51.100.4"}),
        ],
    )
    by_title = {i.title: i.id for i in runtime.incidents.list_all()}
    return by_title["beacon"], by_title["scan"]


def test_merge_moves_alerts_keys_notes_and_open_tasks(runtime: Runtime) -> None:
    beacon, scan = _two_incidents(runtime)
    cases = runtime.cases
    cases.add_note(scan, "same actor", by="alice")
    cases.add_task(scan, "check the scanner", by="alice")
    capture = runtime.evidence.add(scan, b"pcap bytes", name="scan.pcap", by="alice")
    cases.merge(scan, into=beacon, by="alice", comment="same campaign")
    assert [e.id for e in runtime.evidence.list(beacon)] == [capture.id]
    assert [c.action for c in runtime.evidence.custody(capture.id)] == ["added", "moved"]
    merged = runtime.incidents.get(scan)
    assert (merged.status.value, merged.resolution, merged.merged_into) == (
        "closed",
        Resolution.DUPLICATE,
        beacon,
    )
    survivor = runtime.incidents.get(beacon)
    assert survivor.alert_count == 2  # the two beacons are one alert seen twice
    assert ("src_ip", "198.51.100.4") in runtime.incidents.keys(beacon)
    assert runtime.incidents.keys(scan) == []
    assert [n.body for n in cases.notes(beacon)] == ["same actor"]
    assert [t.title for t in cases.tasks(beacon)] == ["check the scanner"]
    with pytest.raises(Conflict, match="already merged"):
        cases.merge(scan, into=beacon, by="alice")
    with pytest.raises(Conflict, match="merged into"):
        cases.update(scan, by="alice", status="triage")
    # A later alert from the merged incident's address joins the survivor.
    later = {"title": "scan again", "ts": "2026-11-28T08:05:00Z", "src": "198.51.100.4"}
    runtime.pipeline.ingest("edr", [orjson.dumps(later)])
    assert runtime.incidents.get(beacon).alert_count == 3
    kinds = [e.kind for e in runtime.incidents.timeline(scan)]
    assert kinds[-1] == "merged_into"


def test_split_moves_alerts_and_the_keys_only_they_carry(runtime: Runtime) -> None:
    beacon, scan = _two_incidents(runtime)
    runtime.cases.merge(scan, into=beacon, by="alice")
    scan_alerts = [a.id for a in runtime.alerts.list_all(incident_id=beacon) if a.title == "scan"]
    with pytest.raises(InvalidInput, match="at least one alert behind"):
        runtime.cases.split(
            beacon, [a.id for a in runtime.alerts.list_all(incident_id=beacon)], by="alice"
        )
    with pytest.raises(InvalidInput, match="not alerts of"):
        runtime.cases.split(beacon, ["alr_nope"], by="alice")
    new = runtime.cases.split(beacon, scan_alerts, by="alice", title="the scanner")
    split_off = runtime.incidents.get(new)
    assert (split_off.title, split_off.alert_count, split_off.status.value) == (
        "the scanner",
        1,
        "new",
    )
    assert runtime.incidents.get(beacon).alert_count == 1
    assert runtime.incidents.keys(new) == [("src_ip", "198.51.100.4")]
    assert runtime.incidents.keys(beacon) == [("src_ip", "203.0.113.9")]
    assert [e.kind for e in runtime.incidents.timeline(new)] == ["split_from"]


def test_split_moves_a_key_whose_value_is_longer_than_the_key_column(runtime: Runtime) -> None:
    """Keys hold the first 512 characters of a value; the moved alert's whole value still
    matches its key."""
    mapping = {"fields": {**MAPPING["fields"], "user": "u"}}
    runtime.sources.create("edr", "http", "json", parser_options=mapping)
    long_user = "svc-" + "x" * 596
    runtime.pipeline.ingest(
        "edr",
        [
            orjson.dumps({"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9",
                          "u": long_user}),
            orjson.dumps({"title": "beacon", "ts": "2026-11-28T08:01:00Z", "src": "203.0.113.9",
                          "u": "bob"}),
        ],
    )  # fmt: skip
    (incident,) = runtime.incidents.list_all()
    assert ("user", long_user[:512]) in runtime.incidents.keys(incident.id)
    moved = [a.id for a in runtime.alerts.list_all(incident_id=incident.id) if a.user != "bob"]
    new = runtime.cases.split(incident.id, moved, by="alice")
    assert runtime.incidents.keys(new) == [("user", long_user[:512])]
    assert sorted(runtime.incidents.keys(incident.id)) == [
        ("src_ip", "203.0.113.9"),
        ("user", "bob"),
    ]


ON_INCIDENT_MANUAL = """
id: manual-triage
name: Ask a person to call the user, then note it
trigger: {on: incident.created}
steps:
  - {id: call, wait: task, prompt: Call the user and ask about the login}
  - {id: done, action: core.log, with: {message: "called: {{ steps.call.output.comment }}"}}
"""


def test_a_playbook_manual_step_is_an_incident_task_and_completing_it_resumes_the_run(
    runtime: Runtime,
) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)

    async def scenario() -> list[Any]:
        async with Harness(runtime) as harness:
            harness.add(ON_INCIDENT_MANUAL, activate=True)
            alert = {"title": "odd login", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
            runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
            (incident,) = runtime.incidents.list_all()
            await eventually(lambda: bool(runtime.cases.tasks(incident.id)), "the task")
            (task,) = runtime.cases.tasks(incident.id)
            await eventually(
                lambda: harness.runs.get(task.run_id or "").status == "waiting", "the run to wait"
            )
            with pytest.raises(Conflict, match="cancel the run"):
                runtime.cases.complete_task(task.id, by="alice", cancel=True)
            runtime.cases.complete_task(task.id, by="alice", result="user was travelling")
            harness.engine.wake()
            await eventually(lambda: bool(_ended(runtime)), "the run")
            (run,) = harness.runs.list_all()
            timeline = runtime.incidents.full_timeline(incident.id)
            return [task, runtime.cases.task(task.id), harness.runs.get(run.id), timeline]

    opened, closed, run, timeline = asyncio.run(scenario())
    kinds = [entry["kind"] for entry in timeline]
    for kind in ("created", "alert", "run_started", "task_added", "task_done", "action"):
        assert kind in kinds, kind
    assert kinds[-1] == "run_ended"
    (action,) = [e["data"] for e in timeline if e["kind"] == "action"]
    assert (action["action"], action["status"]) == ("core.log", "succeeded")
    assert opened.title == "Call the user and ask about the login"
    assert opened.created_by == "playbook:manual-triage"
    assert (closed.status, closed.completed_by) == ("done", "alice")
    assert run.status == "succeeded"
    assert run.steps[-1].output == {"message": "called: user was travelling"}


def test_completing_the_step_as_a_run_task_closes_the_incident_task(runtime: Runtime) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)

    async def scenario() -> Any:
        async with Harness(runtime) as harness:
            harness.add(ON_INCIDENT_MANUAL, activate=True)
            alert = {"title": "odd login", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
            runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
            (incident,) = runtime.incidents.list_all()
            await eventually(lambda: bool(harness.waits.list_all()), "the wait")
            (wait,) = harness.waits.list_all()
            await eventually(
                lambda: harness.runs.get(wait.run_id).status == "waiting", "the run to wait"
            )
            harness.waits.complete(wait.id, "bob", "done by phone")  # `quell task complete`
            return runtime.cases.tasks(incident.id)

    (task,) = asyncio.run(scenario())
    assert (task.status, task.completed_by, task.result) == ("done", "bob", "done by phone")


def test_cancelling_the_run_cancels_its_incident_task(runtime: Runtime) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)

    async def scenario() -> Any:
        async with Harness(runtime) as harness:
            harness.add(ON_INCIDENT_MANUAL, activate=True)
            alert = {"title": "odd login", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
            runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
            (incident,) = runtime.incidents.list_all()
            await eventually(lambda: bool(runtime.cases.tasks(incident.id)), "the task")
            (run,) = harness.runs.list_all()
            # Cancelled once it waits (the task commits a moment before the run records that).
            await eventually(
                lambda: harness.runs.get(run.id).status == "waiting", "the run to wait"
            )
            harness.runs.cancel(run.id)
            await eventually(lambda: bool(_ended(runtime)), "the cancel")
            return incident.id

    incident_id = asyncio.run(scenario())
    (task,) = runtime.cases.tasks(incident_id)
    assert (task.status, task.result) == ("cancelled", "the run was cancelled")
    assert [e.kind for e in runtime.incidents.timeline(incident_id)][-1] == "task_cancelled"


def test_the_incident_list_is_most_recently_active_first_and_read_by_status_in_order(
    runtime: Runtime, clock: ManualClock
) -> None:
    """The queue (open incidents) and the whole list, paged: the same order as one sort of
    every incident, ties on last_seen by id. Each status's incidents come from the
    (status, last_seen) index in order and are merged; asked for several statuses at once,
    the databases used to read every one of them and sort (41 ms a page at 10,000 open)."""
    now = clock.now()
    statuses = list(IncidentStatus)
    rows = [
        {"id": f"inc_{n:05d}", "title": f"t{n}", "status": statuses[n * 7 % len(statuses)].value,
         "severity_id": 3, "alert_count": 1, "first_seen": now, "created_at": now,
         "updated_at": now, "last_seen": now - timedelta(minutes=n % 400)}
        for n in range(2400)
    ]  # fmt: skip
    with runtime.db.write() as conn:
        conn.execute(insert(incidents), rows)
    ordered = sorted(rows, key=lambda r: (-r["last_seen"].timestamp(), r["id"]))

    def expected(allowed: set[str], limit: int, offset: int) -> list[str]:
        return [r["id"] for r in ordered if r["status"] in allowed][offset : offset + limit]

    def listed(status: str | None, limit: int, offset: int) -> list[str]:
        return [i.id for i in runtime.incidents.list_all(status=status, limit=limit, offset=offset)]

    everything = {s.value for s in statuses}
    opened = everything - {"closed"}
    for limit, offset in [(100, 0), (7, 13), (50, 2000), (1000, 1900)]:
        assert listed(None, limit, offset) == expected(everything, limit, offset)
        assert listed("open", limit, offset) == expected(opened, limit, offset)
        assert listed("triage", limit, offset) == expected({"triage"}, limit, offset)
    with pytest.raises(InvalidInput, match="status must be open or one of"):
        runtime.incidents.list_all(status="asleep")

    with statements(runtime.db, lambda sql: "FROM incidents" in sql) as ran:
        runtime.incidents.list_all(status="open")
        runtime.incidents.list_all()
    assert len(ran) == 2
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE incidents")
        for statement in ran:
            plan = explain(conn, runtime.db.backend, statement)
            if runtime.db.backend is Backend.SQLITE:
                reads = [step for step in plan if step.split(" ")[:2][-1] == "incidents"]
                assert len(reads) in (len(opened), len(everything)), plan
                index = "SEARCH incidents USING INDEX ix_incidents_status_last_seen (status=?)"
                assert all(step == index for step in reads), plan
            else:
                assert any("ix_incidents_status_last_seen" in step for step in plan), plan
                assert not any("Seq Scan on incidents" in step for step in plan), plan


def test_a_comment_with_nothing_to_change_is_kept_as_a_note(
    runtime: Runtime, incident_id: str
) -> None:
    """A comment went with the change it explained: sent with nothing to change (the incident
    already so, or only the comment), it was answered 200 and dropped."""
    runtime.cases.update(incident_id, by="alice", priority=2)
    assert runtime.cases.update(incident_id, by="bob", priority=2, comment="P2: VIP host") == {}
    assert runtime.cases.update(incident_id, by="carol", comment="  ") == {}  # no text: nothing
    assert runtime.cases.update(incident_id, by="carol", comment="watching it") == {}
    assert [(n.author, n.body) for n in runtime.cases.notes(incident_id)] == [
        ("bob", "P2: VIP host"),
        ("carol", "watching it"),
    ]
