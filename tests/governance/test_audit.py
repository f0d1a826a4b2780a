"""The audit trail on both backends: events chained by hash, tampering found, and what the
guardrails, connector instances and hand-made calls record (never a secret)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import delete, update

from quell.governance.audit import GENESIS, AuditLog
from quell.runtime import Runtime
from quell.sdk import SecretValue
from quell.store.schema import audit_events


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
