"""Approval policy and four-eyes, on both backends: rules decide which writes need how many
distinct approvers from which roles; nobody approves twice, nor their own request, nor their
own playbook; a critical write needs two people; approvals expire and escalate by the rule."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from quell.clock import ManualClock
from quell.engine.guardrails import GuardrailService
from quell.errors import Conflict, InvalidInput, PermissionDenied
from quell.governance.approvals import (
    ApprovalRuleService,
    Criticality,
    Initiator,
    parse_rule,
    requirement_for,
)
from quell.playbooks.compiler import parse_playbook
from quell.runtime import Runtime
from quell.sdk.actions import RiskLevel
from quell.store.database import Backend
from quell.store.schema import waits
from tests.engine.harness import ENDED, Harness
from tests.engine.peer import Peer
from tests.fixtures.plans import Statement, explain, statements

CONTAIN = """
id: contain
name: Contain a host
inputs: {host: {type: string, required: true}}
steps:
  - {id: isolate, action: test.contain, with: {target: "{{ host }}"}}
"""

WIPE = """
id: wipe
name: Wipe a host
inputs: {host: {type: string, required: true}}
steps:
  - {id: wipe, action: test.wipe, with: {target: "{{ host }}"}, approval: true}
"""


@pytest.fixture
def rules(runtime: Runtime) -> ApprovalRuleService:
    Peer.reset()
    return runtime.approval_rules


def _rule(service: ApprovalRuleService, **data: Any) -> None:
    service.put(parse_rule(data), by="policy-admin")


async def _start(harness: Harness, text: str, inputs: dict[str, Any], *, author: str | None = None,
                 by: str | None = None, trigger: str = "manual") -> str:  # fmt: skip
    playbook = parse_playbook(text, "test.yaml", actions=harness.registry)
    version = harness.runtime.playbooks.register(playbook, created_by=author, published=True).id
    return await harness.engine.start(version, inputs, created_by=by, trigger=trigger)


async def _waiting_approval(harness: Harness, run_id: str) -> Any:
    assert (await harness.settle(run_id)).status == "waiting"
    (wait,) = [w for w in harness.waits.list_all(kind="approval") if w.run_id == run_id]
    return wait


def test_four_eyes_two_distinct_approvers_and_nobody_twice(
    runtime: Runtime, rules: ApprovalRuleService
) -> None:
    _rule(rules, name="high-risk", match={"risks": ["high"]}, approvals=2, roles=["approver"])

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _start(harness, CONTAIN, {"host": "ws-9"}, author="dana", by="carol")
            wait = await _waiting_approval(harness, run_id)
            assert (wait.required, wait.rule, wait.approvers) == (2, "high-risk", ["approver"])
            assert "2 approvals from approver; rule high-risk" in (wait.prompt or "")
            assert sorted(wait.excluded) == ["carol", "dana"]

            first = harness.waits.approve(wait.id, "alice", "approver", "C2 beacon confirmed")
            assert first.status == "pending"
            assert first.as_dict()["approvals"] == ["alice"]
            # The same person again (as the same user, or at the CLI as her account).
            for name in ("alice", "cli:alice", "ALICE"):
                with pytest.raises(Conflict, match="already approved"):
                    harness.waits.approve(wait.id, name, "approver", "really sure")
            with pytest.raises(PermissionDenied, match="roles approver"):
                harness.waits.approve(wait.id, "ana", "analyst", "looks bad")
            with pytest.raises(InvalidInput, match="comment"):
                harness.waits.approve(wait.id, "bob", "approver", "   ")
            assert (await harness.settle(run_id)).status == "waiting"
            assert Peer.applied == {}

            second = harness.waits.approve(wait.id, "bob", "approver", "agreed, isolate")
            assert second.status == "approved"
            done = await harness.settle(run_id, until=ENDED)
        assert done.status == "succeeded", done.error
        assert list(Peer.applied.values()) == ["ws-9"]
        gate = next(s for s in done.steps if s.key == "isolate#approval")
        assert gate.output["approvals"] == ["alice", "bob"]
        votes = [(v["voter"], v["approved"], v["comment"]) for v in second.votes]
        assert votes == [("alice", True, "C2 beacon confirmed"), ("bob", True, "agreed, isolate")]
        audited = [
            (e.actor, e.action, e.detail["comment"])
            for e in reversed(runtime.audit.list_all(action="approval."))
        ]
        assert audited == [
            ("alice", "approval.vote", "C2 beacon confirmed"),
            ("bob", "approval.approve", "agreed, isolate"),
        ]

    asyncio.run(scenario())


def test_the_requester_and_the_author_cannot_approve_but_may_withdraw(
    runtime: Runtime, rules: ApprovalRuleService
) -> None:
    _rule(rules, name="contain", match={"actions": ["test.contain"]}, approvals=1)

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _start(harness, CONTAIN, {"host": "ws-1"}, author="dana", by="carol")
            wait = await _waiting_approval(harness, run_id)
            with pytest.raises(PermissionDenied, match="separation of duties"):
                harness.waits.approve(wait.id, "carol", "approver", "my own request is fine")
            with pytest.raises(PermissionDenied, match="separation of duties"):
                harness.waits.approve(wait.id, "cli:carol", "admin", "as admin at the CLI")
            with pytest.raises(PermissionDenied, match="separation of duties"):
                harness.waits.approve(wait.id, "dana", "admin", "I wrote it, I trust it")
            assert harness.waits.get(wait.id).votes == []  # refusals leave no vote
            withdrawn = harness.waits.reject(wait.id, "carol", "approver", "wrong host")
            assert withdrawn.status == "rejected"
            done = await harness.settle(run_id, until=ENDED)
        assert done.status == "failed"
        assert Peer.applied == {}

    asyncio.run(scenario())


def test_a_critical_write_needs_two_people_whatever_the_rule_says(
    runtime: Runtime, rules: ApprovalRuleService
) -> None:
    async def scenario() -> None:
        async with Harness(runtime) as harness:
            # No rule at all: the step's own ``approval: true`` still needs two people.
            run_id = await _start(harness, WIPE, {"host": "ws-2"}, by="carol")
            wait = await _waiting_approval(harness, run_id)
            assert (wait.required, wait.rule) == (2, None)
            assert harness.waits.approve(wait.id, "alice", "approver", "ok").status == "pending"
            assert harness.waits.approve(wait.id, "bob", "admin", "ok too").status == "approved"
            assert (await harness.settle(run_id, until=ENDED)).status == "succeeded"
            # A rule asking one approval for everything cannot lower it.
            _rule(rules, name="everything", approvals=1)
            other = await _start(harness, WIPE, {"host": "ws-3"}, by="carol")
            wait = await _waiting_approval(harness, other)
            assert (wait.required, wait.rule) == (2, "everything")
        assert list(Peer.applied.values()) == ["ws-2"]

    asyncio.run(scenario())


def test_rules_match_by_initiator_and_the_first_enabled_match_wins(
    runtime: Runtime, rules: ApprovalRuleService
) -> None:
    _rule(rules, name="people", match={"initiator": "person"}, approvals=2, position=10)
    _rule(rules, name="automation", match={"initiator": "automation"}, approvals=1, position=20)

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            by_hand = await _start(harness, CONTAIN, {"host": "ws-4"}, by="carol")
            assert (await _waiting_approval(harness, by_hand)).rule == "people"
            triggered = await _start(harness, CONTAIN, {"host": "ws-5"}, trigger="alert.created")
            wait = await _waiting_approval(harness, triggered)
            assert (wait.rule, wait.required, wait.excluded) == ("automation", 1, [])
            rules.set_enabled("people", False, by="policy-admin")
            rules.set_enabled("automation", False, by="policy-admin")
            free = await _start(harness, CONTAIN, {"host": "ws-6"}, by="carol")
            assert (await harness.settle(free, until=ENDED)).status == "succeeded"
        assert list(Peer.applied.values()) == ["ws-6"]

    asyncio.run(scenario())


def test_asset_tags_and_criticality_select_the_rule(runtime: Runtime) -> None:
    guards = GuardrailService(runtime.db, runtime.clock)
    guards.tag_asset("db-07", ["pci", "criticality:critical"], by="admin")
    guards.tag_asset("10.2.0.0/16", ["criticality:medium"], by="admin")
    service = runtime.approval_rules
    _rule(service, name="pci", match={"asset_tags": ["pci"]}, approvals=2, roles=["approver"])
    _rule(service, name="important", match={"criticality": "high"}, approvals=1)
    _rule(service, name="ldap-only", match={"connectors": ["ldap"], "risks": ["medium"]})
    policy = guards.policy()

    def rule_for(action: str, risk: RiskLevel, inputs: Any) -> str | None:
        found = policy.requirement(action=action, risk=risk, inputs=inputs, initiator=None)
        return found.rule if found else None

    assert rule_for("test.contain", RiskLevel.HIGH, {"target": "db-07"}) == "pci"
    assert rule_for("test.contain", RiskLevel.HIGH, {"target": "10.2.3.4"}) is None  # medium
    assert rule_for("ldap.disable_user", RiskLevel.MEDIUM, {"user": "x"}) == "ldap-only"
    assert rule_for("ldap.disable_user", RiskLevel.LOW, {"user": "x"}) is None
    assert rule_for("test.read", RiskLevel.READ, {"target": "db-07"}) is None  # reads never


def test_requirement_for_matches_globs_risks_and_initiators() -> None:
    from quell.governance.approvals import ApprovalRule, RuleMatch
    from quell.playbooks.ir import ExpiryOutcome

    def rule(name: str, **match: Any) -> ApprovalRule:
        return ApprovalRule(
            id=name, name=name, position=0, enabled=True, description=None,
            match=RuleMatch.model_validate(match), approvals=1, roles=(), expires_after=None,
            on_expiry=ExpiryOutcome.FAIL, escalate_after=None, escalate_to=(),
        )  # fmt: skip

    rules = [
        rule("firewall", actions=["nftables.*", "*.block_ip"]),
        rule("people-high", risks=["high", "critical"], initiator="person"),
        rule("crown", criticality="critical"),
    ]

    def first(action: str, risk: RiskLevel, assets: list[list[str]], who: Initiator) -> Any:
        found = requirement_for(rules, action=action, risk=risk, assets=assets, initiator=who)
        return (found.rule, found.approvals) if found else None

    auto, person = Initiator.AUTOMATION, Initiator.PERSON
    assert first("nftables.deny", RiskLevel.LOW, [], auto) == ("firewall", 1)
    assert first("crowdstrike.block_ip", RiskLevel.LOW, [], auto) == ("firewall", 1)
    assert first("okta.suspend_user", RiskLevel.HIGH, [], person) == ("people-high", 1)
    assert first("okta.suspend_user", RiskLevel.HIGH, [], auto) is None
    assert first("okta.suspend_user", RiskLevel.CRITICAL, [], person) == ("people-high", 2)
    assert first("x.y", RiskLevel.LOW, [["criticality:critical"]], auto) == ("crown", 1)
    assert first("x.y", RiskLevel.LOW, [["criticality:high"]], auto) is None
    assert Criticality.CRITICAL.rank > Criticality.HIGH.rank


def test_a_bad_rule_is_refused_naming_the_field(rules: ApprovalRuleService) -> None:
    with pytest.raises(InvalidInput, match=r"match\.risks"):
        parse_rule({"name": "r", "match": {"risks": ["read"]}})
    with pytest.raises(InvalidInput, match="approvals"):
        parse_rule({"name": "r", "approvals": 9})
    with pytest.raises(InvalidInput, match="escalate_to"):
        parse_rule({"name": "r", "escalate_after": "1h"})
    with pytest.raises(InvalidInput, match="before expires_after"):
        parse_rule({"name": "r", "escalate_after": "4h", "expires_after": "1h",
                    "escalate_to": ["admin"]})  # fmt: skip
    with pytest.raises(InvalidInput, match=r"match\.colour"):
        parse_rule({"name": "r", "match": {"colour": "red"}})
    with pytest.raises(InvalidInput, match="unknown role 'overlord'"):
        rules.put(parse_rule({"name": "r", "roles": ["overlord"]}), by="x")
    assert rules.list_all() == []


def test_an_approval_escalates_then_expires_as_its_rule_says(
    runtime: Runtime, rules: ApprovalRuleService, clock: ManualClock
) -> None:
    _rule(
        rules, name="slow", match={"actions": ["test.contain"]}, roles=["approver"],
        escalate_after="1h", escalate_to=["admin"], expires_after="4h", on_expiry="escalate",
    )  # fmt: skip

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _start(harness, CONTAIN, {"host": "ws-7"}, by="carol")
            wait = await _waiting_approval(harness, run_id)
            assert wait.escalate_at == wait.created_at + timedelta(hours=1)
            assert wait.deciders == ["approver"]
            clock.advance(timedelta(hours=1, seconds=1))
            assert harness.waits.expire_due() == 1
            widened = harness.waits.get(wait.id)
            assert widened.status == "pending"
            assert widened.deciders == ["approver", "admin"]
            assert widened.expires_at == wait.expires_at  # a reminder does not extend it
            clock.advance(timedelta(hours=3))  # the expiry: handed on for one more period
            assert harness.waits.expire_due() == 1
            extended = harness.waits.get(wait.id)
            assert extended.status == "pending"
            assert extended.expires_at == clock.now() + timedelta(hours=4)
            clock.advance(timedelta(hours=4, seconds=1))  # nobody again: it fails
            assert harness.waits.expire_due() == 1
            done = await harness.settle(run_id, until=ENDED)
        assert done.status == "failed"
        assert harness.waits.get(wait.id).status == "expired"
        assert Peer.applied == {}
        escalations = runtime.audit.list_all(action="approval.escalated")
        assert [e.detail["because"] for e in reversed(escalations)] == ["reminder", "expiry"]

    asyncio.run(scenario())


def test_each_tick_reaches_due_escalations_and_expiries_by_time_not_every_pending_wait(
    runtime: Runtime, rules: ApprovalRuleService, clock: ManualClock
) -> None:
    """Approvals can wait for days, thousands at once, and every tick looks for the few due to
    escalate or expire, under the write lock. Both searches must be bounded by their time in
    an index: the escalations' search used to narrow only to pending waits, and read them all
    (4 ms a tick at 10,000 waiting)."""
    _rule(
        rules, name="slow", match={"actions": ["test.contain"]}, roles=["approver"],
        escalate_after="1h", escalate_to=["admin"], expires_after="4h", on_expiry="escalate",
    )  # fmt: skip
    started: list[str] = []

    def searches(sql: str) -> bool:
        return sql.lstrip().upper().startswith("SELECT") and "FROM waits" in sql

    async def scenario() -> list[Statement]:
        async with Harness(runtime) as harness:
            for host in ("ws-1", "ws-2"):
                started.append(await _start(harness, CONTAIN, {"host": host}))
                await _waiting_approval(harness, started[-1])
            clock.advance(timedelta(hours=1, seconds=1))
            # This thread's searches only: the engine's own tick may look meanwhile (a CI run
            # caught it doing so once).
            with statements(runtime.db, searches, this_thread=True) as ran:
                assert harness.waits.expire_due() == 2  # both escalate; none expires yet
            assert harness.waits.expire_due() == 0  # escalated once: not again
            return ran

    ran = asyncio.run(scenario())
    assert len(ran) == 2
    # Thousands waiting, due later; PostgreSQL with its statistics on them (else it would
    # choose between two indexes by a tie on two rows), SQLite without, as it runs.
    now = clock.now()
    later = {"created_at": now, "escalate_at": now + timedelta(days=1),
             "expires_at": now + timedelta(days=2)}  # fmt: skip
    waiting = [
        {"id": f"wai_later{n:05d}", "run_id": started[0], "step_key": f"later{n}",
         "kind": "approval", "status": "pending", **later}
        for n in range(3000)
    ]  # fmt: skip
    wanted = [
        ("ix_waits_status_escalation", "escalate_at"),
        ("ix_waits_status_expires_at", "expires_at"),
    ]
    with runtime.db.write() as conn:
        conn.execute(waits.insert(), waiting)
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE waits")
        for statement, (index, column) in zip(ran, wanted, strict=True):
            plan = explain(conn, runtime.db.backend, statement)
            if runtime.db.backend is Backend.SQLITE:
                # The time is a constraint of the search ("escalate_at<?"), not a test of
                # each row the status found.
                assert any(index in step and f"{column}<" in step for step in plan), plan
            else:
                assert any(index in step for step in plan), plan
                assert any("Index Cond" in step and column in step for step in plan), plan


def test_a_cancel_closes_the_runs_own_pending_waits_found_by_run_not_every_pending_one(
    runtime: Runtime, rules: ApprovalRuleService, clock: ManualClock
) -> None:
    """A cancel closes its run's pending waits under the write lock. SQLite, asked for a run's
    pending waits, took a status index as good as the run's own and read every pending wait
    of every run (PostgreSQL's planner chose the run's index already)."""
    _rule(rules, name="all", match={"actions": ["test.contain"]}, roles=["approver"])

    def updates(sql: str) -> bool:
        return sql.lstrip().upper().startswith("UPDATE WAITS")

    async def scenario() -> list[Statement]:
        async with Harness(runtime) as harness:
            doomed = await _start(harness, CONTAIN, {"host": "ws-1"})
            other = await _start(harness, CONTAIN, {"host": "ws-2"})
            doomed_wait = await _waiting_approval(harness, doomed)
            await _waiting_approval(harness, other)
            now = clock.now()
            waiting = [
                {"id": f"wai_other{n:05d}", "run_id": other, "step_key": f"later{n}",
                 "kind": "approval", "status": "pending", "created_at": now}
                for n in range(3000)
            ]  # fmt: skip
            with runtime.db.write() as conn:
                conn.execute(waits.insert(), waiting)
            with statements(runtime.db, updates, this_thread=True) as ran:  # not the tick's
                harness.runs.cancel(doomed)
            assert harness.waits.get(doomed_wait.id).status == "canceled"
            pending = harness.waits.list_all(run_id=other, limit=10_000)
            assert len(pending) == 3001  # the other run's, untouched
            return ran

    (statement,) = asyncio.run(scenario())
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE waits")
        plan = explain(conn, runtime.db.backend, statement)
        if runtime.db.backend is Backend.SQLITE:
            # The run bounds the search (not the status alone: every pending wait).
            assert len(plan) == 1, plan
            assert "(run_id=? AND status=?)" in plan[0], plan
        else:
            assert any("Index Cond" in step and "run_id" in step for step in plan), plan
            assert not any("Seq Scan on waits" in step for step in plan), plan


def test_an_escalated_approval_takes_the_wider_role(
    runtime: Runtime, rules: ApprovalRuleService, clock: ManualClock
) -> None:
    _rule(rules, name="esc", roles=["approver"], escalate_after="30m", escalate_to=["admin"])

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _start(harness, CONTAIN, {"host": "ws-8"}, by="carol")
            wait = await _waiting_approval(harness, run_id)
            with pytest.raises(PermissionDenied):
                harness.waits.approve(wait.id, "olga", "analyst", "I can see it is bad")
            clock.advance(timedelta(minutes=31))
            harness.waits.expire_due()
            # An analyst is still not in the wider group; an admin always could decide.
            with pytest.raises(PermissionDenied):
                harness.waits.approve(wait.id, "olga", "analyst", "now?")
            assert harness.waits.approve(wait.id, "root", "admin", "ok").status == "approved"
            assert (await harness.settle(run_id, until=ENDED)).status == "succeeded"

    asyncio.run(scenario())


def test_two_approvers_deciding_at_once_both_count(
    runtime: Runtime, rules: ApprovalRuleService
) -> None:
    _rule(rules, name="pair", approvals=2)

    async def scenario() -> None:
        async with Harness(runtime) as harness:
            run_id = await _start(harness, CONTAIN, {"host": "ws-10"}, by="carol")
            wait = await _waiting_approval(harness, run_id)
            results = await asyncio.gather(
                asyncio.to_thread(harness.waits.approve, wait.id, "alice", "approver", "yes"),
                asyncio.to_thread(harness.waits.approve, wait.id, "bob", "approver", "yes"),
            )
            assert "approved" in {r.status for r in results}
            decided = harness.waits.get(wait.id)
            assert (decided.status, sorted(decided.as_dict()["approvals"])) == (
                "approved", ["alice", "bob"]
            )  # fmt: skip
            assert (await harness.settle(run_id, until=ENDED)).status == "succeeded"
        assert list(Peer.applied.values()) == ["ws-10"]

    asyncio.run(scenario())


def test_the_pending_approvals_page_reads_the_oldest_by_index_not_every_pending_wait(
    runtime: Runtime, rules: ApprovalRuleService, clock: ManualClock
) -> None:
    """The approvals page (pending, oldest first, 200 a page) sorted every pending wait: 38 ms
    at 9,750 waiting. It reads the first page in order from an index now."""
    _rule(rules, name="all", match={"actions": ["test.contain"]}, roles=["approver"])

    async def scenario() -> tuple[str, str]:
        async with Harness(runtime) as harness:
            started = []
            for host in ("ws-1", "ws-2"):
                started.append(await _start(harness, CONTAIN, {"host": host}))
                await _waiting_approval(harness, started[-1])
            return started[0], started[1]

    busy, quiet = asyncio.run(scenario())
    now = clock.now()
    waiting = [
        {"id": f"wai_later{n:05d}", "run_id": busy, "step_key": f"later{n}",
         "kind": "approval" if n % 3 else "task", "status": "pending",
         "created_at": now + timedelta(seconds=n)}
        for n in range(3000)
    ]  # fmt: skip
    with runtime.db.write() as conn:
        conn.execute(waits.insert(), waiting)
    service = runtime.waits()

    def lists(sql: str) -> bool:
        return sql.lstrip().upper().startswith("SELECT") and "FROM waits" in sql

    with statements(runtime.db, lists) as ran:
        page = service.list_all(kinds=("approval",), limit=200)
    assert len(page) == 200
    assert [w.created_at for w in page] == sorted(w.created_at for w in page)
    assert page[0].step_key not in {row["step_key"] for row in waiting}  # the oldest: a run's
    assert {w.kind for w in page} == {"approval"}
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE waits")
        plan = explain(conn, runtime.db.backend, ran[0])
    if runtime.db.backend is Backend.SQLITE:
        assert any("ix_waits_status_created" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan  # no sort of them all
    else:
        assert any("ix_waits_status_created" in step for step in plan), plan
        assert not any(step.lstrip("-> ").startswith("Sort") for step in plan), plan
    # One run's pending waits (the pages' ?run=): the run's own, not every pending wait.
    other = [
        {"id": f"wai_other{n:05d}", "run_id": quiet, "step_key": f"other{n}",
         "kind": "approval", "status": "approved", "created_at": now}
        for n in range(50)
    ]  # fmt: skip
    with runtime.db.write() as conn:
        conn.execute(waits.insert(), other)
    with statements(runtime.db, lists) as by_run:
        mine = service.list_all(kinds=("approval",), run_id=quiet)
    assert [(w.run_id, w.status) for w in mine] == [(quiet, "pending")]
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:
            conn.exec_driver_sql("ANALYZE waits")
        plan = explain(conn, runtime.db.backend, by_run[0])
    if runtime.db.backend is Backend.SQLITE:
        assert plan == [
            "SEARCH waits USING INDEX ix_waits_run_id_status_created (run_id=? AND status=?)"
        ], plan
    else:
        assert any("Index Cond" in step and "run_id" in step for step in plan), plan
