"""Containments: recorded with the step that made them, reverted by a person or at expiry by
the engine, failed reverts retried and shown; on both backends, with an injected clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from quell.clock import ManualClock
from quell.engine.containment import ContainmentService, ContainmentStatus
from quell.errors import Conflict
from quell.runtime import Runtime
from quell.store.schema import containments
from tests.engine.harness import ENDED, Harness, eventually
from tests.engine.peer import Peer

CONTAIN = """
id: contain
name: Contain a host
inputs: {host: {type: string, required: true}, minutes: {type: integer}}
steps:
  - id: isolate
    action: test.contain
    with: {target: "{{ host }}", expires_in: "{{ minutes * 60 if minutes else none }}"}
"""


@pytest.fixture
def service(runtime: Runtime) -> ContainmentService:
    Peer.reset()
    return ContainmentService(runtime.db, runtime.clock)


def test_a_containment_is_recorded_with_its_run_and_reverted_by_a_person(
    runtime: Runtime, service: ContainmentService
) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            done = await harness.run(CONTAIN, {"host": "ws-7"})
            assert done.status == "succeeded", done.error
            (item,) = service.list_all()
            assert item.action == "test.contain"
            assert item.status is ContainmentStatus.ACTIVE
            assert item.target["target"] == "ws-7"
            assert item.run_id == done.id
            assert item.step_key == "isolate"
            assert item.created_by == f"run:{done.id}"
            assert item.expires_at is None
            assert (item.revert_action, item.revert_input) == ("test.release", {"target": "ws-7"})

            after = await service.revert(harness.engine.actions, item.id, by="cli:alice")
            assert after.status is ContainmentStatus.REVERTED
            assert after.reverted_by == "cli:alice"
            assert Peer.released == ["ws-7"]
            (audited,) = runtime.audit.list_all(action="containment.revert")
            assert (audited.actor, audited.subject) == ("cli:alice", item.id)
            assert audited.detail["status"] == "reverted"
            with pytest.raises(Conflict, match="already reverted by cli:alice"):
                await service.revert(harness.engine.actions, item.id, by="cli:bob")
            assert service.list_all() == []  # reverted ones only on request
            assert [c.id for c in service.list_all(include_reverted=True)] == [item.id]
            dry = await harness.run(CONTAIN, {"host": "ws-8"}, dry_run=True)
            assert dry.status == "succeeded"
        assert len(service.list_all(include_reverted=True)) == 1  # a dry run contains nothing

    asyncio.run(scenario())


def test_the_engine_reverts_at_expiry_and_retries_a_failed_revert(
    runtime: Runtime, clock: ManualClock, service: ContainmentService
) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            done = await harness.run(CONTAIN, {"host": "ws-9", "minutes": 10})
            assert done.status == "succeeded", done.error
            (item,) = service.list_all()
            assert item.expires_at == clock.now() + timedelta(minutes=10)
            Peer.release_failures = 2
            clock.advance(timedelta(minutes=11))

            def failed_times(count: int) -> bool:
                current = service.get(item.id)
                return current.status is ContainmentStatus.FAILED and current.attempts == count

            await eventually(lambda: failed_times(1), "the first revert to fail")
            failed = service.get(item.id)
            assert failed.last_error is not None
            assert failed.last_error["message"] == "the peer is busy"
            assert failed.next_attempt_at == clock.now() + timedelta(seconds=30)
            assert [c.id for c in service.list_all()] == [item.id]  # shown until it is undone
            assert Peer.released == []
            clock.advance(timedelta(seconds=31))
            await eventually(lambda: failed_times(2), "the second revert to fail")
            clock.advance(timedelta(seconds=61))
            await eventually(
                lambda: service.get(item.id).status is ContainmentStatus.REVERTED,
                "the third revert to succeed",
            )
        reverted = service.get(item.id)
        assert reverted.reverted_by == "expiry"
        assert reverted.attempts == 3
        assert Peer.released == ["ws-9"]

    asyncio.run(scenario())


def test_a_containment_is_recorded_once_however_its_step_is_recorded(
    runtime: Runtime, clock: ManualClock, service: ContainmentService
) -> None:
    """A worker dies after the peer applied the containment: the next one reconciles the step
    (landed) and records it; whatever the first had queued, there is one containment."""
    from tests.engine.test_recovery import CONTAIN as RECOVERY
    from tests.engine.test_recovery import _crash_mid_call

    async def scenario() -> str:
        run_id = await _crash_mid_call(runtime, clock, "contain", hold=False, hold_after=True)
        async with Harness(runtime, owner="worker-b") as second:
            done = await second.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        return run_id

    assert "test.{action}" in RECOVERY
    run_id = asyncio.run(scenario())
    (item,) = service.list_all()
    assert item.run_id == run_id
    assert item.revert_input == {"target": "ws-7"}


def test_undoing_is_not_a_containment(runtime: Runtime, service: ContainmentService) -> None:
    """``release`` and ``contain`` name each other as their revert: only the riskier side is
    recorded, whether the undoing comes from a playbook or from a revert."""
    lift = """
id: lift
name: Lift
steps:
  - {id: free, action: test.release, with: {target: ws-5}}
"""

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            assert (await harness.run(lift)).status == "succeeded"
            assert service.list_all(include_reverted=True) == []
            done = await harness.run(CONTAIN, {"host": "ws-6"})
            (item,) = service.list_all()
            await service.revert(harness.engine.actions, item.id, by="cli:alice")
            assert done.status == "succeeded"
        assert [c.action for c in service.list_all(include_reverted=True)] == ["test.contain"]
        assert Peer.released == ["ws-5", "ws-6"]

    asyncio.run(scenario())


def test_an_unconfigured_nftables_containment_is_not_reverted_on_another_firewall(
    runtime: Runtime, service: ContainmentService
) -> None:
    """Before nftables needed an instance, a deny could run unconfigured, on the host's own
    firewall. Its revert (a delete by rule number) must not go to an instance added since,
    another firewall where that number is another rule: it fails, saying to revert by hand."""
    with runtime.db.write() as conn:
        conn.execute(
            containments.insert().values(
                id="cnt_legacy", action="nftables.deny", instance="",
                target={"ipv4_net": "203.0.113.9"}, output={"rule_number": 2},
                revert_action="nftables.delete", revert_input={"rule_number": 2},
                created_by="cli:root", created_at=runtime.clock.now(), status="active",
                attempts=0,
            )
        )  # fmt: skip
    runtime.connector_instances.create(
        "edge-fw", "nftables", {"command": ["/nonexistent/nft"]}, created_by="test"
    )

    async def revert() -> None:
        runner = runtime.action_runner("cli:root")
        try:
            await service.revert(runner, "cnt_legacy", by="cli:root")
        finally:
            await runner.aclose()

    asyncio.run(revert())
    item = service.get("cnt_legacy")
    assert item.status is ContainmentStatus.FAILED
    assert item.last_error is not None
    assert item.last_error["code"] == "no_instance"  # not an attempt on edge-fw's nft
    assert "by hand" in item.last_error["message"]


def test_a_containment_only_a_person_can_undo_is_audited_and_not_retried(
    runtime: Runtime, service: ContainmentService, clock: ManualClock
) -> None:
    """With no revert input to call, the revert fails saying to undo it by hand: that outcome
    is in the audit trail like every other, and the expiry loop does not try it again and
    again (it used to, every hour, failing the same way)."""
    with runtime.db.write() as conn:
        conn.execute(
            containments.insert().values(
                id="cnt_manual", action="test.contain", instance=None,
                target={"target": "ws-9"}, output={}, revert_action="test.release",
                revert_input=None, created_by="cli:root", created_at=clock.now(),
                expires_at=clock.now() + timedelta(minutes=1), status="active", attempts=0,
            )
        )  # fmt: skip
    clock.advance(timedelta(minutes=2))

    async def expire() -> int:
        runner = runtime.action_runner("engine")
        try:
            return await service.revert_due(runner)
        finally:
            await runner.aclose()

    assert asyncio.run(expire()) == 1
    item = service.get("cnt_manual")
    assert item.status is ContainmentStatus.FAILED
    assert item.last_error is not None
    assert item.last_error["code"] == "no_revert_input"
    (audited,) = runtime.audit.list_all(action="containment.revert")
    assert (audited.actor, audited.subject) == ("expiry", "cnt_manual")
    assert audited.detail["status"] == "failed"
    clock.advance(timedelta(days=1))
    assert service.due() == []
    assert asyncio.run(expire()) == 0
