"""The audit trail on both backends: events chained by hash, tampering found, and what the
guardrails, connector instances and hand-made calls record (never a secret)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import delete, func, insert, select, update

from quell.engine.journal import Op, OpKind
from quell.governance.audit import GENESIS, AuditLog
from quell.ids import new_id
from quell.runtime import Runtime
from quell.sdk import SecretValue
from quell.store.database import Backend
from quell.store.schema import audit_events, audit_outbox
from tests.fixtures.plans import explain, statements


def test_events_chain_by_hash_and_any_change_breaks_the_chain(runtime: Runtime) -> None:
    log = AuditLog(runtime.db, runtime.clock)
    first = log.record("alice", "guardrail.kill_switch_on", None, {"reason": "drill"})
    second = log.record("bob", "connector.create", "edge-fw", {"connector": "nftables"})
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash
    with ThreadPoolExecutor(4) as pool:  # concurrent appends keep one chain
        list(pool.map(lambda n: log.record("worker", "test.event", str(n), {"n": n}), range(20)))
    assert log.verify() == (22, None)
    assert [e.seq for e in log.list_all(limit=3)] == sorted(
        [e.seq for e in log.list_all(limit=3)], reverse=True
    )

    with runtime.db.write() as conn:  # someone edits an old event's detail
        conn.execute(
            update(audit_events)
            .where(audit_events.c.seq == second.seq)
            .values(detail={"connector": "something-else"})
        )
    assert log.verify() == (1, second.seq)
    with runtime.db.write() as conn:  # or removes it
        conn.execute(delete(audit_events).where(audit_events.c.seq == second.seq))
    checked, broken = log.verify()
    assert checked == 1
    assert broken is not None
    assert broken > second.seq


def test_guardrails_instances_and_calls_by_hand_are_recorded_without_secrets(
    runtime: Runtime,
) -> None:
    guards = runtime.guardrails
    guards.kill_switch(True, by="alice", reason="bad rule")
    guards.kill_switch(False, by="alice")
    guards.add_limit(5, by="carol", risk="high")
    guards.protect(["10.0.0.0/8"], by="carol")
    instances = runtime.connector_instances
    instances.create("soc-chat", "notify", {"format": "slack"}, created_by="dave")
    instances.set_secret(
        "soc-chat", "webhook_url", SecretValue("https://hooks/SECRET123"), by="dave"
    )
    instances.remove("soc-chat", by="dave")

    runner = runtime.action_runner("cli:erin")

    async def by_hand() -> None:
        try:
            await runner.run_once("core.echo", {"value": 1}, actor="cli:erin")
        finally:
            await runner.aclose()

    asyncio.run(by_hand())
    events = list(reversed(runtime.audit.list_all()))
    assert [(e.actor, e.action, e.subject) for e in events] == [
        ("alice", "guardrail.kill_switch_on", None),
        ("alice", "guardrail.kill_switch_off", None),
        ("carol", "guardrail.limit_set", "risk:high"),
        ("carol", "guardrail.protected", None),
        ("dave", "connector.create", "soc-chat"),
        ("dave", "connector.secret", "soc-chat"),
        ("dave", "connector.remove", "soc-chat"),
        ("cli:erin", "action.run_by_hand", "core.echo"),
    ]
    assert events[0].detail == {"reason": "bad rule"}
    assert events[5].detail == {"secret": "webhook_url", "set": True}
    assert all("SECRET123" not in str(e.as_dict()) for e in events)
    assert runtime.audit.verify() == (8, None)


def test_credentials_in_details_are_redacted_and_old_events_still_verify(runtime: Runtime) -> None:
    log = runtime.audit
    event = log.record(
        "alice",
        "user.change",
        "user:bob",
        {
            "before": {"password": "hunter2-old", "role": "analyst"},
            "after": {"password": "hunter2-new", "role": "admin", "mfa": True},
            "config": {"client_secret": "s3cr3t", "url": "https://idp.example"},
            "value": SecretValue("canary-9f1c"),
            "secret": "webhook_url",  # a secret's *name* is not a secret
        },
        request_id="req_test",
    )
    assert event.detail == {
        "before": {"password": "[redacted]", "role": "analyst"},
        "after": {"password": "[redacted]", "role": "admin", "mfa": True},
        "config": {"client_secret": "[redacted]", "url": "https://idp.example"},
        "value": "[redacted]",
        "secret": "webhook_url",
    }
    assert event.request_id == "req_test"
    assert "hunter2" not in str(event.as_dict())
    assert log.verify() == (1, None)
    with runtime.db.write() as conn:  # the request id is covered by the hash too
        conn.execute(
            update(audit_events).where(audit_events.c.seq == event.seq).values(request_id="req_x")
        )
    assert log.verify() == (0, event.seq)


def test_a_runs_action_calls_reach_the_chain_through_the_outbox(runtime: Runtime) -> None:
    from tests.engine.harness import Harness
    from tests.engine.peer import Peer

    Peer.reset()
    text = """
id: two-calls
name: Two calls
steps:
  - {id: look, action: test.read, with: {value: 7}}
  - {id: hit, action: test.contain, with: {target: ws-5}}
"""

    async def scenario() -> str:
        async with Harness(runtime) as harness:
            view = await harness.run(text)
            assert view.status == "succeeded", view.error
            return view.id

    run_id = asyncio.run(scenario())
    calls = list(reversed(runtime.audit.list_all(action="action.call")))
    assert [(e.actor, e.subject, e.detail["step"], e.detail["status"]) for e in calls] == [
        (f"run:{run_id}", "test.read", "look", "succeeded"),
        (f"run:{run_id}", "test.contain", "hit", "succeeded"),
    ]
    assert calls[1].detail["idempotency_key"] == f"{run_id}:hit:1"
    assert len(calls[1].detail["inputs_sha256"]) == 64
    with runtime.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(audit_outbox)).scalar() == 0
    checked, broken = runtime.audit.verify()
    assert broken is None
    assert checked == len(runtime.audit.list_all(limit=1000))


def test_what_was_done_to_one_subject_is_read_by_its_index_newest_first(
    runtime: Runtime,
) -> None:
    """An auditor asks what was done to one run, host or incident. The trail grows by every
    action of every run; answering used to read all of it, newest first."""
    log = AuditLog(runtime.db, runtime.clock)
    log.record("alice", "incident.update", "inc_1", {"n": 0})
    now = runtime.clock.now()
    calls = [
        {"id": f"aob_{n:05d}", "at": now, "actor": "run:x", "action": "action.call",
         "subject": f"run_{n}", "detail": {"n": n}}
        for n in range(3000)
    ]  # fmt: skip
    with runtime.db.write() as conn:
        conn.execute(insert(audit_outbox), calls)
    log.drain()  # appended to the chain, in order
    log.record("bob", "incident.close", "inc_1", {"n": 1})
    with statements(runtime.db, lambda sql: "FROM audit_events" in sql) as ran:
        found = log.list_all(subject="inc_1")
    assert [(e.actor, e.action) for e in found] == [
        ("bob", "incident.close"), ("alice", "incident.update"),
    ]  # fmt: skip
    assert log.verify() == (3002, None)
    (statement,) = ran
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE audit_events")
        plan = explain(conn, runtime.db.backend, statement)
        if runtime.db.backend is Backend.SQLITE:
            assert plan == [
                "SEARCH audit_events USING INDEX ix_audit_events_subject_seq (subject=?)"
            ], plan
        else:
            assert any("ix_audit_events_subject_seq" in step for step in plan), plan
            # (It may sort what the index found: the subject's events, two here.)
            assert not any("Seq Scan" in step for step in plan), plan


def test_the_action_calls_of_one_journal_batch_are_one_outbox_row_and_each_an_event(
    runtime: Runtime,
) -> None:
    """The journal writes the action calls of one batch as one outbox row (its batches stay
    short); the drain appends each call as its own event, in order, redacted, chained."""
    from tests.engine.harness import bare_engine

    engine = bare_engine(runtime)
    at = runtime.clock.now()
    rows = [
        (new_id("aob"), at + timedelta(microseconds=n), f"run:run_{n}", "action.call",
         "test.read", {"step": "look", "n": n, "api_key": "s3cret"})
        for n in range(3)
    ]  # fmt: skip
    later = (new_id("aob"), at, "run:run_9", "action.call", "test.read", {"n": 9})
    engine.journal._commit([Op(OpKind.AUDIT, f"run_{n}", None, row) for n, row in enumerate(rows)])
    engine.journal._commit([Op(OpKind.AUDIT, "run_9", None, later)])  # alone: a row of its own
    with runtime.db.read() as conn:
        stored = conn.execute(select(audit_outbox).order_by(audit_outbox.c.id)).all()
    assert [(row.action, len(row.detail.get("events", []))) for row in stored] == [
        ("action.calls", 3), ("action.call", 0),
    ]  # fmt: skip
    assert runtime.audit.drain(limit=2) == 3  # a packed row is taken whole, then no more
    assert runtime.audit.drain(limit=2) == 1
    calls = list(reversed(runtime.audit.list_all(action="action.call")))
    assert [(e.actor, e.detail["n"], e.at) for e in calls] == [
        *((f"run:run_{n}", n, at + timedelta(microseconds=n)) for n in range(3)),
        ("run:run_9", 9, at),
    ]
    assert "s3cret" not in str([e.detail for e in calls])
    assert runtime.audit.verify() == (4, None)
    if runtime.db.backend is Backend.SQLITE:  # committed from this thread: its own connection
        assert runtime.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
