"""Listing runs as people do, on both backends: newest first, by status, by what started them
(an incident's timeline); and each of those reads through an index, not every run there ever
was (runs pile up by the hundred thousand, most of them succeeded)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from quell.clock import ManualClock
from quell.engine.service import RunService
from quell.engine.states import RunStatus
from quell.errors import InvalidInput
from quell.runtime import Runtime
from quell.store.database import Backend
from tests.engine.harness import bare_engine, register
from tests.fixtures.plans import explain, statements

# Made a second apart, oldest first.
MADE = [
    ("ok1", RunStatus.SUCCEEDED), ("bad1", RunStatus.FAILED), ("wait1", RunStatus.WAITING),
    ("ok2", RunStatus.SUCCEEDED), ("held", RunStatus.RUNNING), ("stop", RunStatus.CANCELED),
    ("ok3", RunStatus.SUCCEEDED), ("bad2", RunStatus.FAILED), ("new", RunStatus.READY),
    ("rest", RunStatus.PAUSED),
]  # fmt: skip


def _make(runtime: Runtime, clock: ManualClock, *, succeeded_before: int = 0) -> None:
    """``succeeded_before`` older succeeded runs, then MADE; each MADE run started by an alert
    of its own name (``alr_<name>``)."""
    engine = bare_engine(runtime)
    version = register(runtime, engine, "id: s\nname: S\nsteps: [{id: a, action: core.noop}]\n")
    rows = [
        engine.run_row(f"run_old{n:05d}", version, "s", {}, trigger="alert",
                       trigger_ref=f"alr_old{n}", status=RunStatus.SUCCEEDED)
        for n in range(succeeded_before)
    ]  # fmt: skip
    clock.advance(timedelta(seconds=1))
    for name, status in MADE:
        rows.append(engine.run_row(f"run_{name}", version, "s", {}, trigger="alert",
                                   trigger_ref=f"alr_{name}", status=status))  # fmt: skip
        clock.advance(timedelta(seconds=1))
    with runtime.db.write() as conn:
        engine.journal.insert_run.run(conn, rows)


def test_runs_are_listed_newest_first_by_status_and_by_page(
    runtime: Runtime, clock: ManualClock
) -> None:
    _make(runtime, clock)
    service = RunService(runtime.db, clock)
    newest_first = [f"run_{name}" for name, _ in reversed(MADE)]
    assert [r.id for r in service.list_all()] == newest_first
    assert [r.id for r in service.list_all(limit=3, offset=2)] == newest_first[2:5]
    for status in RunStatus:
        wanted = [f"run_{name}" for name, made in reversed(MADE) if made is status]
        assert [r.id for r in service.list_all(status=status.value)] == wanted, status
    assert [r.id for r in service.list_all(status="failed", limit=1, offset=1)] == ["run_bad1"]
    with pytest.raises(InvalidInput, match="status must be one of") as refused:
        service.list_all(status="sleeping")
    assert refused.value.details["field"] == "status"


def test_listing_and_timelines_read_runs_through_indexes(
    runtime: Runtime, clock: ManualClock
) -> None:
    """The runs list (several statuses) and an incident's runs. Before their indexes, each
    read the whole table and sorted it: 270 ms a page at 42,000 runs; an incident's page
    spent 74 ms finding the runs of its alerts."""
    _make(runtime, clock, succeeded_before=3000)
    service = RunService(runtime.db, clock)
    with statements(runtime.db, lambda sql: "FROM runs" in sql) as ran:
        assert len(service.list_all(limit=5)) == 5
        assert [r.id for r in service.list_all(status="failed")] == ["run_bad2", "run_bad1"]
        assert [r.id for r in service.list_all(status="running")] == ["run_held"]
        assert len(service.list_all(status="succeeded", limit=5)) == 5
        assert [r.id for r in service.list_all(status="failed", playbook="s")] == [
            "run_bad2", "run_bad1",
        ]  # fmt: skip
        runtime.incidents.full_timeline("inc_none")  # its runs: those of its alerts and its own
    wanted = ["ix_runs_created_at"] + ["ix_runs_not_succeeded"] * 2 + ["ix_runs_created_at"]
    wanted += ["ix_runs_playbook_id_created_at", "ix_runs_trigger_ref"]
    # PostgreSQL, knowing that the playbook is every run's, may take the status instead.
    also = {"ix_runs_playbook_id_created_at": "ix_runs_not_succeeded"}
    assert len(ran) == len(wanted)
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE runs")
        for statement, index in zip(ran, wanted, strict=True):
            plan = explain(conn, runtime.db.backend, statement)
            if runtime.db.backend is Backend.SQLITE:
                # In the index's order: no sorting of what was read ("USE TEMP B-TREE FOR
                # ORDER BY"; runs made at the same instant may be put in id order).
                assert [step for step in plan if "runs" in step] == [
                    step for step in plan if f"USING INDEX {index}" in step
                ], plan
                assert plan
                assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
            else:
                assert any(index in step or also.get(index, index) in step for step in plan), plan
                assert not any("Seq Scan on runs" in step for step in plan), plan
