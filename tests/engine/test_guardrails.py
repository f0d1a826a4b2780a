"""Guardrails before every write: the kill switch, hourly limits, protected assets and the
circuit breaker, with a real engine on both backends and an injected clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from quell.clock import ManualClock
from quell.engine.guardrails import Breaker, GuardrailService
from quell.errors import InvalidInput, NotFound
from quell.runtime import Runtime
from tests.engine.harness import ENDED, Harness, statuses
from tests.engine.peer import Peer

CONTAIN = """
id: contain
name: Contain a host
inputs: {host: {type: string, required: true}}
steps:
  - {id: look, action: test.read, with: {value: "{{ host }}"}}
  - {id: isolate, action: test.contain, with: {target: "{{ host }}"}}
"""

READ_ONLY = """
id: look-only
name: Only reads
steps:
  - {id: look, action: test.read, with: {value: 1}}
"""

FLAKY = """
id: flaky
name: Fails, then writes
inputs: {fail: {type: boolean, required: true}}
steps:
  - id: check
    if: fail
    then:
      - {id: boom, action: test.read, with: {value: 1, fail_times: 9, permanent: true}}
  - {id: isolate, action: test.contain, with: {target: ws-1}}
"""


@pytest.fixture
def guards(runtime: Runtime) -> GuardrailService:
    Peer.reset()
    return GuardrailService(runtime.db, runtime.clock)


def test_the_kill_switch_holds_writes_until_it_is_turned_off(
    runtime: Runtime, guards: GuardrailService
) -> None:
    async def scenario() -> None:
        guards.kill_switch(True, by="alice", reason="bad rule pushed")
        async with Harness(runtime) as harness:
            run_id = await harness.start(CONTAIN, {"host": "ws-7"})
            held = await harness.settle(run_id)
            assert held.status == "waiting"
            assert statuses(held)["look"] == "succeeded"  # reads go on
            assert statuses(held)["isolate#guard"] == "waiting_timer"
            (hold,) = [s for s in held.steps if s.key == "isolate#guard"]
            assert hold.error is not None
            assert hold.error["code"] == "kill_switch"
            assert "bad rule pushed" in hold.error["message"]
            assert Peer.applied == {}
            (audited,) = runtime.audit.list_all(action="guardrail.hold")
            assert audited.subject == f"{run_id}/isolate"
            assert audited.actor == f"run:{run_id}"
            assert audited.detail["rule"] == "kill_switch"
            # Reads and dry runs are not held.
            assert (await harness.run(READ_ONLY)).status == "succeeded"
            dry = await harness.run(CONTAIN, {"host": "ws-8"}, dry_run=True)
            assert dry.status == "succeeded"
            assert Peer.applied == {}

            assert guards.kill_switch(False, by="alice") == 1  # the held run is woken
            done = await harness.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert statuses(done)["isolate#guard"] == "succeeded"
        assert list(Peer.applied.values()) == ["ws-7"]

    asyncio.run(scenario())


def test_an_hourly_limit_refuses_the_write_beyond_it_for_every_worker(
    runtime: Runtime, clock: ManualClock, guards: GuardrailService
) -> None:
    async def scenario() -> None:
        guards.add_limit(2, by="admin", action="test.contain")
        async with (
            Harness(runtime, owner="worker-a") as first,
            Harness(runtime, owner="worker-b") as second,
        ):
            ended = [
                await (first if n % 2 else second).run(CONTAIN, {"host": f"ws-{n}"})
                for n in range(3)
            ]
            assert [view.status for view in ended] == ["succeeded", "succeeded", "failed"]
            refused = ended[2]
            assert refused.error is not None
            assert refused.error["code"] == "guardrail_limit"
            assert "action:test.contain reached its limit of 2" in refused.error["message"]
            assert statuses(refused)["isolate"] == "failed"
            (audited,) = runtime.audit.list_all(action="guardrail.refuse")
            assert audited.detail["rule"] == "guardrail_limit"
            assert len(Peer.applied) == 2
            clock.advance(timedelta(minutes=61))  # an hour later, there is room again
            assert (await first.run(CONTAIN, {"host": "ws-9"})).status == "succeeded"
        assert len(Peer.applied) == 3

    asyncio.run(scenario())


def test_a_limit_by_risk_counts_every_action_of_that_risk(
    runtime: Runtime, guards: GuardrailService
) -> None:
    async def scenario() -> None:
        guards.add_limit(1, by="admin", risk="high")
        async with Harness(runtime) as harness:
            first = await harness.run(CONTAIN, {"host": "ws-1"})
            second = await harness.run(CONTAIN, {"host": "ws-2"})
            reads = await harness.run(READ_ONLY)  # a read is never counted nor refused
        assert first.status == "succeeded"
        assert second.status == "failed"
        assert second.error is not None
        assert "risk:high reached its limit of 1" in second.error["message"]
        assert reads.status == "succeeded"

    asyncio.run(scenario())


def test_a_write_naming_a_protected_asset_waits_for_a_person(
    runtime: Runtime, guards: GuardrailService
) -> None:
    async def scenario() -> None:
        guards.protect(["10.0.0.0/24", "dc01.corp.example"], by="admin")
        async with Harness(runtime) as harness:
            free = await harness.run(CONTAIN, {"host": "ws-1"})
            assert free.status == "succeeded"
            run_id = await harness.start(CONTAIN, {"host": "10.0.0.5"})
            waiting = await harness.settle(run_id)
            assert waiting.status == "waiting"
            assert statuses(waiting)["isolate#approval"] == "waiting_approval"
            (wait,) = harness.waits.list_all(kind="approval")
            assert "10.0.0.0/24 is protected" in (wait.prompt or "")
            assert "10.0.0.5" not in Peer.applied.values()
            harness.waits.approve(wait.id, "bob", "approver", "checked with the owner")
            done = await harness.settle(run_id, until=ENDED)
            by_name = await harness.start(CONTAIN, {"host": "DC01.corp.example"})
            assert (await harness.settle(by_name)).status == "waiting"
            # the same host written as an IPv4-mapped IPv6 address is still that host
            mapped = await harness.start(CONTAIN, {"host": "::ffff:10.0.0.9"})
            assert (await harness.settle(mapped)).status == "waiting"
            guards.tag_asset("db-07", ["crown-jewel", "pci"], by="admin")
            assert (await harness.run(CONTAIN, {"host": "db-07"})).status == "succeeded"
            guards.protect_tags(["crown-jewel"], by="admin")
            by_tag = await harness.start(CONTAIN, {"host": "db-07"})
            assert (await harness.settle(by_tag)).status == "waiting"
            prompts = [w.prompt or "" for w in harness.waits.list_all(kind="approval")]
            assert any("db-07 is protected (tagged crown-jewel)" in p for p in prompts)
        assert done.status == "succeeded", done.error
        assert sorted(Peer.applied.values()) == ["10.0.0.5", "db-07", "ws-1"]

    asyncio.run(scenario())


def test_a_playbook_that_fails_too_often_is_held_until_its_circuit_is_reset(
    runtime: Runtime, guards: GuardrailService
) -> None:
    async def scenario() -> None:
        guards.set_breaker(Breaker(failure_rate=0.5, min_runs=3, window_minutes=15), by="admin")
        async with Harness(runtime) as harness:
            for _ in range(3):
                assert (await harness.run(FLAKY, {"fail": True})).status == "failed"
            run_id = await harness.start(FLAKY, {"fail": False})
            held = await harness.settle(run_id)
            assert held.status == "waiting"
            (hold,) = [s for s in held.steps if s.key == "isolate#guard"]
            assert hold.error is not None
            assert hold.error["code"] == "circuit_open"
            other = await harness.run(CONTAIN, {"host": "ws-2"})  # another playbook goes on
            assert other.status == "succeeded"
            assert "flaky" in guards.policy().open_circuits
            assert guards.reset_breaker("flaky", by="alice") == 1  # earlier failures forgotten
            done = await harness.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert sorted(Peer.applied.values()) == ["ws-1", "ws-2"]

    asyncio.run(scenario())


def test_the_policy_is_checked_when_it_is_set(guards: GuardrailService) -> None:
    with pytest.raises(InvalidInput, match="one action"):
        guards.add_limit(5, by="a")
    with pytest.raises(InvalidInput, match="unknown risk 'huge'"):
        guards.add_limit(5, by="a", risk="huge")
    with pytest.raises(InvalidInput, match="not an address"):
        guards.protect(["two words"], by="a")
    with pytest.raises(InvalidInput, match="failure_rate"):
        guards.set_breaker(Breaker(failure_rate=1.5), by="a")
    with pytest.raises(NotFound):
        guards.remove_limit(by="a", action="x.y")
    with pytest.raises(NotFound):
        guards.reset_breaker("nothing", by="a")
    guards.add_limit(5, by="a", action="x.y")
    guards.add_limit(7, by="a", action="x.y")  # replaces
    shown = guards.policy().as_dict()
    assert shown["limits"] == [{"action": "x.y", "risk": None, "per_hour": 7}]
    assert shown["kill_switch"] == {"on": False}
    guards.remove_limit(by="a", action="x.y")
    assert guards.policy().empty


def test_a_protected_network_matches_an_address_as_written_and_as_the_host_it_maps() -> None:
    from quell.engine.guardrails import _protected_hit

    assert _protected_hit(["10.0.0.0/24"], {"host": "::ffff:10.0.0.5"}) == "10.0.0.0/24"
    assert _protected_hit(["::ffff:10.0.0.0/120"], {"host": "10.0.0.5"}) == "::ffff:10.0.0.0/120"
    # an IPv6 network that covers the mapped range protects a mapped address written as such
    assert _protected_hit(["::/0"], {"host": "::ffff:192.0.2.1"}) == "::/0"
    assert _protected_hit(["::ffff:0:0/96"], {"target": ["::ffff:192.0.2.1"]}) == "::ffff:0:0/96"
    assert _protected_hit(["10.0.0.0/24", "::/0"], {"host": "192.0.2.1"}) is None
