"""Runs, approvals, tasks and callbacks over real HTTP, with the embedded engine, on both
backends."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from quell.api.app import create_app
from quell.clock import ManualClock
from quell.engine.embedded import EmbeddedEngine
from quell.engine.execution import callback_token
from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.api.engine_client import ENDED, add, settle, start, step
from tests.engine.harness import Harness
from tests.engine.peer import Peer
from tests.fixtures.servers import LiveServer, start_server

APPROVAL = """\
id: approve-block
name: Block after approval
inputs: {ip: {type: string, required: true}}
steps:
  - id: ask
    wait: approval
    prompt: "Block {{ ip }}?"
  - {id: block, action: test.contain, with: {target: "{{ ip }}"}}
"""


def _waiting(client: httpx.Client, playbook: str, **inputs: str) -> str:
    run_id = start(client, playbook, inputs=inputs)
    assert settle(client, run_id)["status"] == "waiting"
    return run_id


def test_an_approval_is_decided_by_a_user_who_holds_the_permission(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, APPROVAL)
        run_id = _waiting(admin, "approve-block", ip="203.0.113.7")
    with engine_server.client(role_tokens[Role.ANALYST]) as analyst:
        (pending,) = analyst.get("/api/approvals").json()
        assert (pending["run_id"], pending["prompt"]) == (run_id, "Block 203.0.113.7?")
        refused = analyst.post(f"/api/approvals/{pending['id']}/approve", json={"comment": "me"})
        assert refused.status_code == 403
        assert refused.json()["permission"] == "approvals:decide"
    assert Peer.applied == {}
    with engine_server.client(role_tokens[Role.APPROVER]) as approver:
        decided = approver.post(
            f"/api/approvals/{pending['id']}/approve", json={"comment": "confirmed C2"}
        )
        assert decided.status_code == 200, decided.text
        assert decided.json()["status"] == "approved"
        assert (decided.json()["decided_by"], decided.json()["comment"]) == (
            "test-approver", "confirmed C2"
        )  # fmt: skip
        run = settle(approver, run_id, until=ENDED)
        assert run["status"] == "succeeded", run["error"]
        assert step(run, "ask")["output"]["by"] == "test-approver"
        assert list(Peer.applied.values()) == ["203.0.113.7"]
        again = approver.post(f"/api/approvals/{pending['id']}/reject", json={"comment": "late"})
        assert again.status_code == 409
        assert approver.get("/api/approvals").json() == []
        (decided_one,) = approver.get("/api/approvals", params={"status": "all"}).json()
        assert decided_one["status"] == "approved"
        assert approver.get(f"/api/approvals/{pending['id']}").json()["comment"] == "confirmed C2"
        long = approver.post(
            f"/api/approvals/{pending['id']}/approve", json={"comment": "x" * 5000}
        )
        assert long.status_code == 422
        assert long.json()["field"] == "body.comment"


def test_a_rejected_approval_fails_its_step_and_nothing_is_contained(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, APPROVAL)
        run_id = _waiting(admin, "approve-block", ip="198.51.100.1")
        (pending,) = admin.get("/api/approvals", params={"run": run_id}).json()
        rejected = admin.post(
            f"/api/approvals/{pending['id']}/reject", json={"comment": "false positive"}
        )
        assert rejected.json()["status"] == "rejected"
        run = settle(admin, run_id, until=ENDED)
    assert run["status"] == "failed"
    ask = step(run, "ask")
    assert ask["status"] == "failed"
    assert ask["error"]["message"] == "rejected by test-admin: false positive"
    assert Peer.applied == {}


def test_an_approval_restricted_to_a_role_refuses_other_deciders(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    only_approvers = APPROVAL.replace('prompt: "Block {{ ip }}?"', "approvers: [approver]")
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, only_approvers.replace("approve-block", "approvers-only"))
        run_id = _waiting(admin, "approvers-only", ip="192.0.2.1")
        (pending,) = admin.get("/api/approvals").json()
    assert pending["approvers"] == ["approver"]
    with engine_server.client(role_tokens[Role.APPROVER]) as approver:
        decided = approver.post(f"/api/approvals/{pending['id']}/approve", json={"comment": "ok"})
        assert decided.status_code == 200
        assert settle(approver, run_id, until=ENDED)["status"] == "succeeded"


TASK_AND_EVENT = """\
id: manual
name: People and callbacks
vars: {answer: null}
steps:
  - id: reimage
    wait: task
    prompt: Reimage the laptop
  - id: hook_for_the_edr_vendor_to_call_back_once_its_scan_has_finished_
    wait: event
    expires_in: 1h
    out: {answer: "{{ output.payload.verdict }}"}
"""


HOOK = "hook_for_the_edr_vendor_to_call_back_once_its_scan_has_finished_"


def _token(server: LiveServer, run_id: str, step_key: str) -> str:
    embedded: EmbeddedEngine = server.app.state.embedded
    return callback_token(embedded.engine.callback_secret, run_id, step_key)


def test_a_task_is_completed_by_a_user_and_a_callback_token_works_once(
    engine_server: LiveServer, role_tokens: dict[Role, str], capfd: pytest.CaptureFixture[str]
) -> None:
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, TASK_AND_EVENT)
        run_id = _waiting(admin, "manual")
    with engine_server.client(role_tokens[Role.APPROVER]) as approver:
        (task,) = approver.get("/api/tasks").json()
        assert (task["kind"], task["prompt"]) == ("task", "Reimage the laptop")
        refused = approver.post(f"/api/tasks/{task['id']}/complete", json={})
        assert refused.status_code == 403
        assert refused.json()["permission"] == "tasks:complete"
    with engine_server.client(role_tokens[Role.ANALYST]) as analyst:
        wrong = analyst.post(f"/api/tasks/{task['id']}/complete", json={"landed": True})
        assert wrong.status_code == 422
        assert wrong.json()["field"] == "body.landed"
        done = analyst.post(
            f"/api/tasks/{task['id']}/complete",
            json={"comment": "reimaged", "output": {"ticket": "IT-42"}},
        )
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["decided_by"]) == ("done", "test-analyst")
        assert analyst.post(f"/api/tasks/{task['id']}/complete", json={}).status_code == 409
        waiting = settle(analyst, run_id)
        assert waiting["status"] == "waiting"
        assert step(waiting, HOOK)["status"] == "waiting_event"
        assert step(waiting, "reimage")["output"]["data"] == {"ticket": "IT-42"}

    token = _token(engine_server, run_id, HOOK)
    assert len(token) > 128  # a step id of 64 characters: the route takes long tokens
    with engine_server.client() as outsider:  # no bearer token: the callback token is enough
        forged = outsider.post("/api/callbacks/forged-token", json={"verdict": "x"})
        assert forged.status_code == 404
        not_json = outsider.post(f"/api/callbacks/{token}", content=b"{nope")
        assert not_json.status_code == 422
        accepted = outsider.post(f"/api/callbacks/{token}", json={"verdict": "malicious"})
        assert accepted.status_code == 202, accepted.text
        used = outsider.post(f"/api/callbacks/{token}", json={"verdict": "benign"})
        assert used.status_code == 404
    for refused in (forged, used):  # a used token and a made-up one look the same
        problem = refused.json()
        assert (problem["code"], problem["detail"]) == (
            "not_found", "no pending callback for this token"
        )  # fmt: skip
        assert token not in refused.text
    with engine_server.client(role_tokens[Role.AUDITOR]) as auditor:
        done_run = settle(auditor, run_id, until=ENDED)
    assert done_run["status"] == "succeeded", done_run["error"]
    assert done_run["variables"]["answer"] == "malicious"
    assert [w["status"] for w in done_run["waits"]] == ["done", "done"]
    logged = capfd.readouterr()
    assert "path=/api/callbacks/***" in logged.out + logged.err
    assert token not in logged.out + logged.err  # a credential never reaches the log


def test_an_expired_callback_token_is_refused_like_any_other(
    engine_server: LiveServer, role_tokens: dict[Role, str], clock: ManualClock
) -> None:
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, TASK_AND_EVENT)
        run_id = _waiting(admin, "manual")
        (task,) = admin.get("/api/tasks").json()
        admin.post(f"/api/tasks/{task['id']}/complete", json={})
        assert step(settle_waiting_on(admin, run_id, HOOK), HOOK)["status"] == "waiting_event"
    clock.advance(timedelta(hours=2))
    with engine_server.client() as outsider:
        late = outsider.post(f"/api/callbacks/{_token(engine_server, run_id, HOOK)}", json={})
    assert late.status_code == 404
    assert late.json()["detail"] == "no pending callback for this token"


def settle_waiting_on(client: httpx.Client, run_id: str, key: str) -> dict[str, Any]:
    """The run once it waits at step ``key`` (15 s at most)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        run = settle(client, run_id)
        if any(s["key"] == key and s["status"].startswith("waiting_") for s in run["steps"]):
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never waited at {key}")


def test_a_run_is_paused_resumed_and_canceled_by_whoever_may_control_runs(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, APPROVAL)
        run_id = _waiting(admin, "approve-block", ip="203.0.113.9")
    with engine_server.client(role_tokens[Role.APPROVER]) as approver:
        refused = approver.post(f"/api/runs/{run_id}/cancel")
        assert refused.status_code == 403
        assert refused.json()["permission"] == "runs:control"
    with engine_server.client(role_tokens[Role.ANALYST]) as analyst:
        assert analyst.post(f"/api/runs/{run_id}/pause").json()["status"] == "paused"
        assert analyst.post(f"/api/runs/{run_id}/pause").status_code == 409
        resumed = analyst.post(f"/api/runs/{run_id}/resume").json()["status"]
        assert resumed in ("ready", "running", "waiting")  # the engine may have it already
        assert settle(analyst, run_id)["status"] == "waiting"  # the engine took it back at once
        canceled = analyst.post(f"/api/runs/{run_id}/cancel")
        assert canceled.json()["status"] == "canceled"
        again = analyst.post(f"/api/runs/{run_id}/cancel")
        assert again.status_code == 409
        assert again.json()["code"] == "conflict"
        run = analyst.get(f"/api/runs/{run_id}").json()
        assert [w["status"] for w in run["waits"]] == ["canceled"]
        assert analyst.get("/api/approvals").json() == []
        assert analyst.post("/api/runs/run_nope/cancel").status_code == 404


FLAKY = """\
id: flaky
name: Fails once
steps:
  - {id: fetch, action: test.read, with: {value: 7, fail_times: 1, permanent: true}}
  - {id: after, action: core.log, with: {message: "got {{ steps.fetch.output.value }}"}}
"""


def test_a_failed_run_is_retried_from_its_failed_step(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.ANALYST]) as analyst:
        with engine_server.client(role_tokens[Role.ADMIN]) as admin:
            add(admin, FLAKY)
        run_id = start(analyst, "flaky")
        failed = settle(analyst, run_id, until=ENDED)
        assert failed["status"] == "failed"
        assert analyst.post(f"/api/runs/{run_id}/resume").status_code == 409
        retried = analyst.post(f"/api/runs/{run_id}/retry")
        assert retried.status_code == 200, retried.text
        run = settle(analyst, run_id, until=ENDED)
    assert run["status"] == "succeeded", run["error"]
    fetch = [(s["attempt"], s["status"]) for s in run["steps"] if s["key"] == "fetch"]
    assert fetch[0][1] == "superseded"
    assert fetch[-1][1] == "succeeded"
    assert step(run, "fetch")["output"]["value"] == 7


BLIND = """\
id: blind
name: A write nobody can check
inputs: {host: {type: string, required: true}}
steps:
  - id: isolate
    action: test.blind
    with: {target: "{{ host }}", hold_after: true}
  - {id: after, action: core.log, with: {message: "isolated {{ host }}"}}
"""


def test_a_reconcile_task_is_completed_with_whether_the_write_landed(
    engine_runtime: Runtime, role_tokens: dict[Role, str], clock: ManualClock
) -> None:
    async def crash_inside_the_write() -> str:
        Peer.entered, Peer.release = asyncio.Event(), asyncio.Event()
        worker = Harness(engine_runtime, lease=5, owner="worker-a")
        await worker.__aenter__()
        run_id = await worker.start(BLIND, {"host": "ws-7"})
        await asyncio.wait_for(Peer.entered.wait(), 10)
        await worker.crash()  # it applied the write, then died before recording it
        Peer.entered = Peer.release = None
        return run_id

    run_id = asyncio.run(crash_inside_the_write())
    clock.advance(timedelta(seconds=6))  # the dead worker's lease runs out
    server = start_server(create_app(engine_runtime, embedded_worker=True))
    try:
        with server.client(role_tokens[Role.ANALYST]) as analyst:
            waiting = settle(analyst, run_id)
            assert step(waiting, "isolate")["status"] == "waiting_reconcile"
            (task,) = analyst.get("/api/tasks").json()
            assert task["kind"] == "reconcile"
            unsaid = analyst.post(f"/api/tasks/{task['id']}/complete", json={})
            assert unsaid.status_code == 422
            assert unsaid.json()["field"] == "body.landed"
            done = analyst.post(
                f"/api/tasks/{task['id']}/complete",
                json={"landed": True, "comment": "the EDR console shows it isolated"},
            )
            assert done.status_code == 200, done.text
            run = settle(analyst, run_id, until=ENDED)
    finally:
        server.stop()
    assert run["status"] == "succeeded", run["error"]
    assert step(run, "isolate")["output"]["landed"] is True
    assert list(Peer.applied.values()) == ["ws-7"]  # never blindly repeated


def test_a_run_with_a_wrong_input_is_refused_naming_it(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    """Declared input types were not enforced: an integer input took "abc", and an input the
    playbook does not declare was taken silently."""
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, APPROVAL)
        for inputs, field, words in (
            ({"ip": 7}, "inputs.ip", "input 'ip' must be a string (declared string)"),
            ({"ip": "203.0.113.7", "ipp": "x"}, "inputs.ipp", "the playbook has no input 'ipp'"),
        ):
            refused = admin.post("/api/playbooks/approve-block/runs", json={"inputs": inputs})
            assert refused.status_code in (400, 422), refused.text
            assert words in refused.json()["detail"], refused.json()
            assert refused.json()["field"] == field
        assert admin.get("/api/runs").json() == []  # nothing started
