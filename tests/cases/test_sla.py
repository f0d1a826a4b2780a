"""SLA clocks on both backends: due times by severity, met and breached (each breach announced
once, whatever the number of checkers), the policy and severity changes that move running
clocks, reopening, and a playbook triggered by a breach."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select, update

from quell.cases import sla as sla_module
from quell.cases.sla import SlaService, parse_severity, parse_target
from quell.clock import ManualClock
from quell.errors import InvalidInput
from quell.playbooks.compiler import PlaybookInvalid, parse_playbook
from quell.runtime import Runtime
from quell.store.database import Backend
from quell.store.schema import incident_events, incidents, outbox, runs
from tests.engine.harness import ENDED, Harness, eventually
from tests.fixtures.plans import explain, statements

MAPPING = {
    "fields": {"title": "title", "time": "ts", "severity": "sev", "src.ip": "src",
               "rule_name": "title"}
}  # fmt: skip


def _incident(runtime: Runtime, severity: str = "high", src: str = "203.0.113.9") -> str:
    if not runtime.sources.list_all():
        runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": f"beacon {src}", "ts": "2026-11-28T08:00:00Z", "sev": severity, "src": src}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    with runtime.db.read() as conn:
        found = conn.execute(select(incidents.c.id).where(incidents.c.title == f"beacon {src}"))
        (incident_id,) = found.scalars()
    return str(incident_id)


def _clocks(runtime: Runtime, incident_id: str) -> dict[str, Any]:
    return {c.metric: c for c in runtime.sla.clocks(incident_id)}


def _breaches(runtime: Runtime, incident_id: str) -> list[dict[str, Any]]:
    with runtime.db.read() as conn:
        return [
            dict(data)
            for data in conn.execute(
                select(incident_events.c.data)
                .where(
                    incident_events.c.incident_id == incident_id,
                    incident_events.c.kind == "sla_breached",
                )
                .order_by(incident_events.c.at, incident_events.c.id)
            ).scalars()
        ]


def _announced(runtime: Runtime, incident_id: str) -> list[dict[str, Any]]:
    with runtime.db.read() as conn:
        return [
            dict(payload)
            for payload in conn.execute(
                select(outbox.c.payload)
                .where(outbox.c.kind == "incident.sla_breached", outbox.c.subject_id == incident_id)
                .order_by(outbox.c.id)
            ).scalars()
        ]


def test_clocks_start_with_the_severity_targets_and_stop_in_time(
    runtime: Runtime, clock: ManualClock
) -> None:
    incident_id = _incident(runtime, "high")
    created = runtime.incidents.get(incident_id).created_at
    assert runtime.sla.clocks(incident_id) == []  # no check yet
    assert runtime.sla.check() == 0
    clocks = _clocks(runtime, incident_id)
    assert {m: c.due_at - created for m, c in clocks.items()} == {
        "acknowledge": timedelta(hours=1),
        "contain": timedelta(hours=8),
        "close": timedelta(days=7),
    }
    assert {c.state for c in clocks.values()} == {"running"}

    clock.advance(timedelta(minutes=30))
    runtime.cases.update(incident_id, by="alice", status="triage")
    assert runtime.sla.check() == 0
    acknowledge = _clocks(runtime, incident_id)["acknowledge"]
    assert (acknowledge.state, acknowledge.met_at, acknowledge.breached_at) == (
        "met",
        created + timedelta(minutes=30),
        None,
    )
    clock.advance(timedelta(hours=2))  # past the acknowledge target: it stopped in time
    assert runtime.sla.check() == 0
    assert _clocks(runtime, incident_id)["acknowledge"].state == "met"
    assert _breaches(runtime, incident_id) == []


def test_a_late_containment_breaches_once_whoever_checks(
    runtime: Runtime, clock: ManualClock
) -> None:
    incident_id = _incident(runtime, "high")
    created = runtime.incidents.get(incident_id).created_at
    runtime.sla.check()
    clock.advance(timedelta(minutes=10))
    runtime.cases.update(incident_id, by="alice", status="triage")
    clock.advance(timedelta(hours=9))  # contain was due at 8h

    other = SlaService(runtime.db, runtime.clock)
    start = threading.Barrier(2)
    counted: list[int] = []

    def check(service: SlaService) -> None:
        start.wait()
        counted.append(service.check())

    threads = [threading.Thread(target=check, args=(s,)) for s in (runtime.sla, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(3):
        counted.append(runtime.sla.check())
        counted.append(other.check())
    assert sum(counted) == 1

    due = created + timedelta(hours=8)
    detected = created + timedelta(hours=9, minutes=10)
    sla = {"metric": "contain", "due_at": due.isoformat(), "breached_at": detected.isoformat()}
    assert _breaches(runtime, incident_id) == [sla]
    assert _announced(runtime, incident_id) == [{"sla": sla}]
    contain = _clocks(runtime, incident_id)["contain"]
    assert (contain.state, contain.breached_at, contain.met_at) == ("breached", detected, None)

    clock.advance(timedelta(minutes=5))
    runtime.cases.update(incident_id, by="alice", status="contained")
    assert runtime.sla.check() == 0  # stopped late: still breached, not announced again
    contain = _clocks(runtime, incident_id)["contain"]
    assert (contain.state, contain.met_at) == ("breached", clock.now())
    assert len(_announced(runtime, incident_id)) == 1
    timeline = [e.kind for e in runtime.incidents.timeline(incident_id)]
    assert timeline.count("sla_breached") == 1


def test_without_the_lock_the_conditional_update_still_announces_once(
    runtime: Runtime, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SlaService, "_lock", lambda self, conn, wait: True)
    ids = [_incident(runtime, "critical", f"198.51.100.{n}") for n in range(1, 9)]
    runtime.sla.check()
    clock.advance(timedelta(minutes=20))  # every acknowledge clock (15m) ran out
    services = [SlaService(runtime.db, runtime.clock) for _ in range(4)]
    start = threading.Barrier(len(services))
    counted: list[int] = []

    def check(service: SlaService) -> None:
        start.wait()
        counted.append(service.check())

    threads = [threading.Thread(target=check, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counted) == len(ids)
    for incident_id in ids:
        assert [a["sla"]["metric"] for a in _announced(runtime, incident_id)] == ["acknowledge"]
        assert len(_breaches(runtime, incident_id)) == 1


def test_a_clock_stopped_late_before_any_check_breaches_at_its_due_time(
    runtime: Runtime, clock: ManualClock
) -> None:
    incident_id = _incident(runtime, "critical")  # acknowledge within 15m
    created = runtime.incidents.get(incident_id).created_at
    clock.advance(timedelta(minutes=40))
    runtime.cases.update(incident_id, by="alice", status="triage")  # no check ran meanwhile
    clock.advance(timedelta(minutes=1))
    assert runtime.sla.check() == 1
    acknowledge = _clocks(runtime, incident_id)["acknowledge"]
    due = created + timedelta(minutes=15)
    assert (acknowledge.state, acknowledge.met_at, acknowledge.breached_at) == (
        "breached",
        created + timedelta(minutes=40),
        due,
    )
    assert _announced(runtime, incident_id) == [
        {"sla": {"metric": "acknowledge", "due_at": due.isoformat(),
                 "breached_at": due.isoformat()}}
    ]  # fmt: skip
    assert runtime.sla.check() == 0


def test_a_check_finds_its_work_unlocked_then_acts_on_those_rows_as_they_are_now(
    runtime: Runtime, clock: ManualClock
) -> None:
    """The scans run in a read transaction; the write transaction re-reads only the rows
    found, by key: a row that changed in between is taken as it is now, one that appeared in
    between waits for the next check."""
    early, closed = _incident(runtime, "critical"), _incident(runtime, "high", "203.0.113.10")
    with runtime.db.read() as conn:
        work = runtime.sla.find(conn, clock.now())
    assert sorted(work.missing["acknowledge"]) == sorted([early, closed])
    assert not work.full
    runtime.cases.update(closed, by="bob", status="closed", resolution="benign")
    late = _incident(runtime, "critical", "203.0.113.11")
    with runtime.db.write() as conn:
        assert runtime.sla.apply(conn, work, clock.now()) == 0
    assert set(_clocks(runtime, early)) == {"acknowledge", "contain", "close"}
    assert _clocks(runtime, closed) == {}  # closed before its clocks were made: none
    assert _clocks(runtime, late) == {}  # not found by that check
    clock.advance(timedelta(minutes=20))  # past the 15m to acknowledge of both critical ones
    assert runtime.sla.check() == 2
    assert set(_clocks(runtime, late)) == {"acknowledge", "contain", "close"}
    assert _clocks(runtime, early)["acknowledge"].state == "breached"
    assert _clocks(runtime, late)["acknowledge"].state == "breached"  # made and due at once
    assert _clocks(runtime, closed) == {}
    with runtime.db.read() as conn:
        assert not runtime.sla.find(conn, clock.now())  # nothing left to do


def test_closing_stops_the_close_clock_and_reopening_resumes_it(
    runtime: Runtime, clock: ManualClock
) -> None:
    incident_id = _incident(runtime, "medium")  # 4h / 24h / 14d
    created = runtime.incidents.get(incident_id).created_at
    runtime.sla.check()
    clock.advance(timedelta(hours=1))
    runtime.cases.update(incident_id, by="bob", status="closed", resolution="benign")
    runtime.sla.check()
    clocks = _clocks(runtime, incident_id)
    assert {m: c.state for m, c in clocks.items()} == {
        "acknowledge": "met",
        "contain": "met",
        "close": "met",
    }
    assert clocks["close"].met_at == created + timedelta(hours=1)

    clock.advance(timedelta(days=20))  # closed meanwhile: nothing breaches
    assert runtime.sla.check() == 0
    runtime.cases.update(incident_id, by="bob", status="triage")  # reopened
    clock.advance(timedelta(seconds=5))
    assert runtime.sla.check() == 0
    close = _clocks(runtime, incident_id)["close"]
    # The 20 days closed do not count: 13 days left, as when it was closed.
    assert (close.state, close.met_at) == ("running", None)
    assert close.due_at == created + timedelta(days=14) + timedelta(days=20)
    assert _clocks(runtime, incident_id)["contain"].state == "met"  # stops once

    clock.advance(timedelta(days=14))
    assert runtime.sla.check() == 1
    assert [b["metric"] for b in _breaches(runtime, incident_id)] == ["close"]


def test_policy_and_severity_changes_move_running_clocks(
    runtime: Runtime, clock: ManualClock
) -> None:
    first = _incident(runtime, "high", "203.0.113.1")
    created = runtime.incidents.get(first).created_at
    runtime.sla.check()

    policy = runtime.sla.set_policy("high", acknowledge="2h", contain="none", by="admin")
    assert (policy.acknowledge, policy.contain, policy.close) == (
        timedelta(hours=2),
        None,
        timedelta(days=7),
    )
    assert policy.default is False
    clocks = _clocks(runtime, first)
    assert clocks["acknowledge"].due_at == created + timedelta(hours=2)
    assert "contain" not in clocks  # no SLA now: the running clock is gone
    (event,) = runtime.audit.list_all(action="sla.")
    assert (event.actor, event.action, event.subject) == ("admin", "sla.policy", "severity:high")
    assert event.detail["before"]["acknowledge"] == "1h"
    assert event.detail["after"] == {"acknowledge": "2h", "contain": None, "close": "1w"}

    clock.advance(timedelta(minutes=10))
    second = _incident(runtime, "high", "203.0.113.2")
    runtime.sla.check()
    assert set(_clocks(runtime, second)) == {"acknowledge", "close"}
    assert _clocks(runtime, second)["acknowledge"].due_at == clock.now() + timedelta(hours=2)

    # Severity raised to critical (15m): the due time moves by the difference of the targets.
    runtime.cases.update(first, by="alice", severity_id=5)
    runtime.sla.check()
    clocks = _clocks(runtime, first)
    assert clocks["acknowledge"].due_at == created + timedelta(minutes=15)
    assert clocks["contain"].due_at == created + timedelta(hours=4)  # critical has one
    assert clocks["acknowledge"].state == "running"  # 10 minutes in

    reset = runtime.sla.reset_policy("high", by="admin")
    assert (reset.acknowledge, reset.contain, reset.default) == (
        timedelta(hours=1),
        timedelta(hours=8),
        True,
    )
    assert _clocks(runtime, second)["acknowledge"].due_at == clock.now() + timedelta(hours=1)
    runtime.sla.check()
    assert _clocks(runtime, second)["contain"].due_at == clock.now() + timedelta(hours=8)
    assert [e.action for e in runtime.audit.list_all(action="sla.")] == [
        "sla.policy_reset",
        "sla.policy",
    ]

    clock.advance(timedelta(minutes=10))  # the critical one is past its 15m now
    assert runtime.sla.check() == 1
    assert [b["metric"] for b in _breaches(runtime, first)] == ["acknowledge"]


def _catch_up(service: SlaService) -> None:
    """Check until a check leaves nothing behind (a batch is at most 200 clocks)."""
    for _ in range(50):
        service.check()
        if not service.behind:
            return
    raise AssertionError("the SLA check never caught up")


def test_after_a_full_look_a_check_reads_the_changed_incidents_and_clocks_come_due_by_index(
    runtime: Runtime, clock: ManualClock
) -> None:
    """The check ran every 5 s over every open incident and running clock (80 ms at 10,500
    open incidents on SQLite). After its first full look it reads the incidents changed since
    its last check, and the clocks come due, by index."""
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alerts = [
        orjson.dumps({"title": f"scan {n}", "ts": "2026-11-28T08:00:00Z", "sev": "low",
                      "src": f"198.18.{n // 250}.{n % 250 + 1}"})
        for n in range(600)
    ]  # fmt: skip
    assert runtime.pipeline.ingest("edr", alerts).stored == 600
    service = runtime.sla
    _catch_up(service)  # the full look: 1,800 clocks
    clock.advance(timedelta(hours=1))
    service.check()  # nothing changed in the last hour: reads nearly nothing
    due_soon = _incident(runtime, "critical", "203.0.113.40")  # acknowledge within 15m
    triaged = _incident(runtime, "high", "203.0.113.41")
    service.check()
    clock.advance(timedelta(minutes=5))
    runtime.cases.update(triaged, by="alice", status="triage")
    clock.advance(timedelta(minutes=5))
    service.check()  # sees the triage; due_soon has not changed since its clocks were made
    assert _clocks(runtime, triaged)["acknowledge"].state == "met"
    assert _clocks(runtime, due_soon)["acknowledge"].state == "running"
    clock.advance(timedelta(minutes=10))  # past due_soon's 15 minutes, unchanged since

    def reads(sql: str) -> bool:
        return sql.lstrip().upper().startswith("SELECT") and (
            "FROM incident_slas" in sql or "FROM incidents" in sql
        )

    with statements(runtime.db, reads) as ran:
        assert service.check() == 1  # found by the due index alone
    assert [b["metric"] for b in _breaches(runtime, due_soon)] == ["acknowledge"]
    found = [statement for statement in ran if "sla_policies" not in statement[0]]
    assert len(found) >= 5  # three missing-clock reads, reopened, changed, due, then by key
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE incidents")
            conn.exec_driver_sql("ANALYZE incident_slas")
        for statement in found:
            plan = explain(conn, runtime.db.backend, statement)
            if runtime.db.backend is Backend.SQLITE:
                # Not every clock, nor every open incident by the status index.
                scans = [step for step in plan if step.startswith("SCAN") or "status" in step]
            else:
                scans = [step for step in plan if "Seq Scan" in step]
            assert scans == [], (statement[0], plan)


def test_a_change_committed_later_than_the_margin_is_found_by_the_next_full_look(
    runtime: Runtime, clock: ManualClock
) -> None:
    """A check reads changes from a minute before its last one; a writer that committed later
    than that is caught by the full look every FULL_EVERY checks."""
    service = runtime.sla
    first = _incident(runtime, "high", "203.0.113.50")
    service.check()
    clock.advance(timedelta(minutes=10))
    late = _incident(runtime, "high", "203.0.113.51")
    stamped = clock.now() - timedelta(minutes=30)  # as if its transaction began 30 min ago
    with runtime.db.write() as conn:
        conn.execute(update(incidents).where(incidents.c.id == late).values(updated_at=stamped))
    for _ in range(sla_module.FULL_EVERY):
        service.check()
        assert _clocks(runtime, late) == {}  # older than what a partial check reads
    service.check()  # the full look
    assert set(_clocks(runtime, late)) == {"acknowledge", "contain", "close"}
    assert set(_clocks(runtime, first)) == {"acknowledge", "contain", "close"}


def test_a_target_given_to_a_severity_without_one_clocks_its_open_incidents(
    runtime: Runtime, clock: ManualClock
) -> None:
    """A new target concerns incidents that have not changed: the check looks at all again."""
    runtime.sla.set_policy("low", contain="none", by="admin")
    low = _incident(runtime, "low", "203.0.113.60")
    runtime.sla.check()
    assert set(_clocks(runtime, low)) == {"acknowledge", "close"}
    clock.advance(timedelta(hours=1))
    runtime.sla.check()
    runtime.sla.set_policy("low", contain="2d", by="admin")
    runtime.sla.check()
    created = runtime.incidents.get(low).created_at
    assert _clocks(runtime, low)["contain"].due_at == created + timedelta(days=2)


def test_a_repeat_received_before_an_analysts_change_does_not_hide_it(
    runtime: Runtime, clock: ManualClock
) -> None:
    """A repeat's batch received before a triage but written after it stamped the incident
    with its receipt: updated_at moved back, and the check, reading changes by it, missed
    the triage until its next full look."""
    incident_id = _incident(runtime, "high", "203.0.113.70")
    service = runtime.sla
    service.check()
    clock.advance(timedelta(minutes=10))
    received = clock.now() - timedelta(minutes=2)
    runtime.cases.update(incident_id, by="alice", status="triage")
    repeat = {"title": "beacon 203.0.113.70", "ts": "2026-11-28T08:05:00Z", "sev": "high",
              "src": "203.0.113.70"}  # fmt: skip
    result = runtime.pipeline.ingest("edr", [orjson.dumps(repeat)], received_at=received)
    assert result.deduplicated == 1
    assert runtime.incidents.get(incident_id).updated_at == clock.now()
    service.check()
    assert _clocks(runtime, incident_id)["acknowledge"].state == "met"


def test_a_check_that_did_not_act_keeps_its_window(
    runtime: Runtime, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that yields to another worker, or fails, leaves the next one the same window:
    what it found is found again. And a check reads changes from a minute before the last."""
    service = runtime.sla
    _incident(runtime, "high", "203.0.113.80")
    service.check()
    clock.advance(timedelta(minutes=10))
    yielded = _incident(runtime, "high", "203.0.113.81")
    clock.advance(timedelta(minutes=2))
    with monkeypatch.context() as patched:
        patched.setattr(SlaService, "_lock", lambda self, conn, wait: False)
        assert service.check() == 0  # another worker is checking
    clock.advance(timedelta(minutes=2))
    failed = _incident(runtime, "high", "203.0.113.82")
    clock.advance(timedelta(minutes=2))

    def broken(self: SlaService, conn: Any, work: Any, now: Any) -> int:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(SlaService, "apply", broken)
        with pytest.raises(RuntimeError):
            service.check()
    clock.advance(timedelta(minutes=2))
    service.check()
    assert set(_clocks(runtime, yielded)) == {"acknowledge", "contain", "close"}
    assert set(_clocks(runtime, failed)) == {"acknowledge", "contain", "close"}

    clock.advance(timedelta(minutes=5))
    service.check()  # its window now starts a minute before this check
    late = _incident(runtime, "high", "203.0.113.83")
    stamped = clock.now() - timedelta(seconds=30)  # committed after the check, stamped before
    with runtime.db.write() as conn:
        conn.execute(update(incidents).where(incidents.c.id == late).values(updated_at=stamped))
    clock.advance(timedelta(seconds=5))
    service.check()
    assert set(_clocks(runtime, late)) == {"acknowledge", "contain", "close"}


def test_policy_input_is_checked() -> None:
    assert parse_severity("Critical") == 5
    assert parse_severity(2) == 2
    assert parse_target("1h30m", "acknowledge") == 5400
    assert parse_target("none", "contain") is None
    with pytest.raises(InvalidInput, match="unknown severity 'urgent'"):
        parse_severity("urgent")
    with pytest.raises(InvalidInput, match="is not a duration"):
        parse_target("soon", "close")
    with pytest.raises(InvalidInput, match="at least 1s"):
        parse_target("0s", "close")


def test_a_policy_change_needs_a_target(runtime: Runtime) -> None:
    with pytest.raises(InvalidInput, match="give a target"):
        runtime.sla.set_policy("low", by="admin")
    shown = {p.severity: p.as_dict() for p in runtime.sla.policy()}
    assert shown["critical"]["acknowledge"] == "15m"
    assert shown["critical"]["acknowledge_s"] == 900
    assert shown["informational"]["close_s"] == 30 * 86400
    assert [p["default"] for p in shown.values()] == [True] * 6


ON_BREACH = """
id: on-late-acknowledge
name: Page the lead when an incident waits too long
trigger: {on: incident.sla_breached, if: "sla.metric == 'acknowledge'"}
steps:
  - id: page
    action: core.log
    with: {message: "{{ incident.title }}: {{ sla.metric }} was due {{ sla.due_at }}"}
"""


def test_a_playbook_runs_once_when_the_acknowledge_clock_breaches(
    runtime: Runtime, clock: ManualClock
) -> None:
    incident_id = _incident(runtime, "high")
    created = runtime.incidents.get(incident_id).created_at

    async def scenario() -> list[Any]:
        async with Harness(runtime) as harness:
            harness.add(ON_BREACH, activate=True)
            await eventually(lambda: len(runtime.sla.clocks(incident_id)) == 3, "the clocks")
            clock.advance(timedelta(hours=2))  # acknowledge (1h) breaches, contain (8h) not
            await eventually(lambda: _ended(runtime) >= 1, "the run")
            clock.advance(timedelta(hours=7))  # contain breaches: the condition says no
            await eventually(lambda: len(_announced(runtime, incident_id)) == 2, "the breach")
            await eventually(lambda: _processed(runtime), "the dispatch")
            await asyncio.sleep(0.3)
            listed = harness.runs.list_all()
            return [listed, harness.runs.get(listed[0].id)]

    listed, shown = asyncio.run(scenario())
    assert len(listed) == 1
    assert (listed[0].trigger, listed[0].trigger_ref) == ("incident.sla_breached", incident_id)
    due = (created + timedelta(hours=1)).isoformat()
    assert shown.steps[0].output == {"message": f"beacon 203.0.113.9: acknowledge was due {due}"}
    assert shown.inputs["sla"]["metric"] == "acknowledge"


def test_the_breach_trigger_gives_sla_to_its_playbooks_only() -> None:
    parse_playbook(ON_BREACH, "pb.yaml")
    elsewhere = ON_BREACH.replace("on: incident.sla_breached", "on: incident.created")
    with pytest.raises(PlaybookInvalid, match="'sla' is not defined here"):
        parse_playbook(elsewhere, "pb.yaml")


def _ended(runtime: Runtime) -> int:
    with runtime.db.read() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(runs).where(runs.c.status.in_(ENDED))
            ).scalar_one()
        )


def _processed(runtime: Runtime) -> bool:
    with runtime.db.read() as conn:
        waiting = conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.processed_at.is_(None))
        ).scalar_one()
    return int(waiting) == 0
