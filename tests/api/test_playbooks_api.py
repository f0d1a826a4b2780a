"""Playbooks over real HTTP, run by the engine embedded in the server, on both backends."""

from __future__ import annotations

import time
from datetime import timedelta

import orjson

from quell.api.app import create_app
from quell.clock import ManualClock
from quell.engine.service import RunService
from quell.engine.states import RunStatus
from quell.governance.permissions import Role
from quell.runtime import Runtime
from tests.api.engine_client import ENDED, add, settle, start, step
from tests.engine.peer import Peer
from tests.fixtures.servers import LiveServer, start_server

CONTAIN = """\
id: contain-host
name: Contain a host
inputs: {host: {type: string, required: true}}
steps:
  - {id: look, action: test.read, with: {value: "{{ host }}"}}
  - {id: isolate, action: test.contain, with: {target: "{{ steps.look.output.value }}"}}
  - {id: tell, action: core.log, with: {message: "isolated {{ host }}"}}
"""

INVALID = """\
id: broken
name: Broken
steps:
  - {id: look, action: test.read, with: {value: 1}}
  - id: block
    action: firewall.deny_everything
    with: {ip: "{{ steps.nowhere.output.ip }}"}
"""


def test_a_playbook_started_over_the_api_runs_to_its_end_in_the_embedded_engine(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.AUTHOR]) as author:
        version = add(author, CONTAIN, file="contain.yaml")
    assert (version["playbook_id"], version["version"], version["active"]) == (
        "contain-host", 1, False
    )  # fmt: skip
    with engine_server.client(role_tokens[Role.ANALYST]) as analyst:
        run_id = start(analyst, "contain-host", inputs={"host": "ws-7"})
        run = settle(analyst, run_id, until=ENDED)
        assert run["status"] == "succeeded", run["error"]
        assert [s["key"] for s in run["steps"]] == ["look", "isolate", "tell"]
        assert all(s["status"] == "succeeded" for s in run["steps"])
        assert step(run, "isolate")["inputs"] == {"target": "ws-7"}
        assert (run["trigger"], run["created_by"]) == ("manual", "test-analyst")
        assert run["waits"] == []
        assert list(Peer.applied.values()) == ["ws-7"]

        second = start(analyst, "contain-host", inputs={"host": "ws-8"})
        settle(analyst, second, until=ENDED)
        listed = analyst.get("/api/runs", params={"playbook": "contain-host"}).json()
        assert [r["id"] for r in listed] == [second, run_id]  # newest first
        assert "steps" not in listed[0]
        page = analyst.get("/api/runs", params={"status": "succeeded", "limit": 1, "offset": 1})
        assert [r["id"] for r in page.json()] == [run_id]
        bad = analyst.get("/api/runs", params={"status": "sleeping"})
        assert bad.status_code == 422
        assert bad.json()["field"] == "query.status"


def test_a_dry_run_calls_reads_and_records_the_writes_it_would_make(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, CONTAIN)
        run_id = start(admin, "contain-host", inputs={"host": "ws-9"}, dry_run=True)
        run = settle(admin, run_id, until=ENDED)
    assert run["status"] == "succeeded", run["error"]
    assert run["dry_run"] is True
    assert step(run, "look")["simulated"] is False
    assert step(run, "isolate")["simulated"] is True
    assert Peer.applied == {}  # the containment never reached the peer


def test_a_manual_start_is_checked_before_a_run_exists(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.ANALYST]) as analyst:
        refused = analyst.post("/api/playbooks", content=CONTAIN.encode())
        assert refused.status_code == 403
        assert refused.json()["permission"] == "playbooks:write"
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, CONTAIN)
        missing = admin.post("/api/playbooks/contain-host/runs", json={"inputs": {}})
        assert missing.status_code == 422
        assert missing.json()["field"] == "inputs.host"
        unknown = admin.post("/api/playbooks/contain-host/runs", json={"input": {"host": "x"}})
        assert unknown.status_code == 422
        assert unknown.json()["field"] == "body.input"
        nowhere = admin.post("/api/playbooks/no-such/runs", json={})
        assert nowhere.status_code == 404
        assert admin.get("/api/runs").json() == []
    with engine_server.client(role_tokens[Role.APPROVER]) as approver:
        refused = approver.post("/api/playbooks/contain-host/runs", json={"inputs": {"host": "x"}})
    assert refused.status_code == 403
    assert refused.json()["permission"] == "runs:execute"


def test_an_invalid_playbook_is_refused_with_each_problem_at_its_line_and_column(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.AUTHOR]) as author:
        response = author.post(
            "/api/playbooks",
            content=INVALID.encode(),
            params={"file": "broken.yaml"},
            headers={"content-type": "application/yaml"},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        texts = [p["text"] for p in problem["problems"]]
        assert texts == [
            "broken.yaml:6:5: unknown action 'firewall.deny_everything'",
            "broken.yaml:7:12: with.ip: steps.nowhere reads a step that does not exist",
        ]
        assert problem["code"] == "invalid_input"
        assert problem["detail"] == f"{texts[0]} (and 1 more)"
        first = problem["problems"][0]
        assert (first["file"], first["line"], first["column"]) == ("broken.yaml", 6, 5)
        assert author.get("/api/playbooks").json() == []  # nothing stored

        checked = author.post(
            "/api/playbooks/validate", content=INVALID.encode(), params={"file": "broken.yaml"}
        )
        assert checked.status_code == 200
        assert checked.json()["valid"] is False
        assert [p["text"] for p in checked.json()["problems"]] == texts

        syntax = author.post("/api/playbooks", content=b"id: x\nsteps: [\n  - {id: a\n")
        assert syntax.status_code == 422
        assert syntax.json()["problems"] == [
            {
                "message": "<playbook>:3:3: expected the node content, but found '-'",
                "text": "<playbook>:3:3: expected the node content, but found '-'",
            }
        ]

        # Nested aliases expanded to billions of values; deep parentheses overflowed the stack.
        laughs = "id: x\na0: &a0 [x, x]\na1: &a1 [*a0, *a0]\n"
        deep = "(" * 900 + "1" + ")" * 900
        nested = "id: x\nname: y\nvars: {v: 0}\nsteps:\n  - {id: a, set: {v: '{{ DEEP }}'}}\n"
        nested = nested.replace("DEEP", deep)
        for text, words in ((laughs, "YAML aliases"), (nested, "nested too deeply")):
            checked = author.post("/api/playbooks/validate", content=text.encode())
            assert checked.status_code == 200, checked.text
            assert checked.json()["valid"] is False
            assert words in checked.json()["problems"][0]["text"]
            refused = author.post("/api/playbooks", content=text.encode())
            assert refused.status_code == 422, refused.text
            assert words in refused.json()["detail"]

        wrapped = author.post("/api/playbooks", json={"source": 42})
        assert wrapped.status_code == 422
        assert wrapped.json()["field"] == "body.source"

        good = author.post(
            "/api/playbooks/validate", json={"source": CONTAIN, "file": "contain.yaml"}
        )
        assert good.json() == {
            "valid": True,
            "id": "contain-host",
            "name": "Contain a host",
            "version": 1,
            "steps": 3,
            "problems": [],
        }


def test_playbooks_are_listed_shown_with_source_and_ir_and_activated_by_a_publisher(
    engine_server: LiveServer, role_tokens: dict[Role, str], clock: ManualClock
) -> None:
    as_json = orjson.dumps({"source": CONTAIN, "file": "contain.yaml"})
    with engine_server.client(role_tokens[Role.AUTHOR]) as author:
        refused = author.post("/api/playbooks", params={"activate": "true"}, json={"source": "x"})
        assert refused.status_code == 403
        assert refused.json()["permission"] == "playbooks:publish"
        first = author.post(
            "/api/playbooks", content=as_json, headers={"content-type": "application/json"}
        ).json()
        clock.advance(timedelta(seconds=1))
        changed = CONTAIN.replace("isolated {{ host }}", "contained {{ host }}")
        reused = author.post(
            "/api/playbooks", content=changed, headers={"content-type": "application/yaml"}
        )
        assert reused.status_code == 409  # version 1 names one content: a change is version 2
        second = add(
            author, changed.replace("name: Contain a host", "name: Contain a host\nversion: 2")
        )
        assert add(author, CONTAIN, file="contain.yaml")["id"] == first["id"]  # stored once
        shown = author.get("/api/playbooks/contain-host").json()
        assert shown["id"] == second["id"]  # none active: the newest
        assert shown["source"].startswith("id: contain-host")
        assert shown["ir"]["id"] == "contain-host"
        assert [v["id"] for v in shown["versions"]] == [second["id"], first["id"]]
        assert author.post("/api/playbooks/contain-host/activate").status_code == 403

    with engine_server.client(role_tokens[Role.APPROVER]) as approver:
        activated = approver.post("/api/playbooks/contain-host/activate")
        assert activated.status_code == 200, activated.text
        assert (activated.json()["id"], activated.json()["active"]) == (second["id"], True)
        listed = approver.get("/api/playbooks", params={"active": "true"}).json()
        assert [v["id"] for v in listed] == [second["id"]]
        assert approver.get("/api/playbooks/contain-host").json()["id"] == second["id"]
        assert approver.get("/api/playbooks/contain-host", params={"version": 1}).status_code == 200
        assert approver.post("/api/playbooks/contain-host/deactivate").status_code == 204
        again = approver.post("/api/playbooks/contain-host/deactivate")
        assert again.status_code == 404
        assert approver.get("/api/playbooks", params={"active": "true"}).json() == []
        assert approver.get("/api/playbooks/nothing").status_code == 404


ON_ALERT = """\
id: tag-alert
name: Look at every new alert
trigger: {on: alert.created, if: "alert.title == 'beacon'"}
steps:
  - {id: seen, action: core.log, with: {message: "{{ alert.title }}"}}
"""


def test_the_embedded_dispatcher_turns_a_stored_alert_into_a_run(
    engine_server: LiveServer, role_tokens: dict[Role, str], runtime: Runtime
) -> None:
    mapping = {"fields": {"title": "title", "time": "ts"}}
    runtime.sources.create("hook", "http", "json", parser_options=mapping)
    with engine_server.client(role_tokens[Role.ADMIN]) as admin:
        add(admin, ON_ALERT, activate="true")
        at = "2026-03-01T12:00:00Z"
        alerts = [{"title": "beacon", "ts": at}, {"title": "noise", "ts": at}]
        stored = admin.post("/api/ingest/hook", json=alerts)
        assert stored.json()["stored"] == 2
        deadline = time.monotonic() + 15
        while not (runs := admin.get("/api/runs", params={"playbook": "tag-alert"}).json()):
            assert time.monotonic() < deadline, "no run was created for the alert"
            time.sleep(0.05)
        run = settle(admin, runs[0]["id"], until=ENDED)
    assert len(runs) == 1  # the condition left the other alert alone
    assert run["trigger"] == "alert.created"
    assert run["status"] == "succeeded", run["error"]
    assert run["inputs"]["alert"]["title"] == "beacon"


def test_without_an_embedded_worker_a_manual_run_waits_for_a_worker(
    engine_runtime: Runtime, role_tokens: dict[Role, str]
) -> None:
    server = start_server(create_app(engine_runtime, embedded_worker=False))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            add(admin, CONTAIN)
            run_id = start(admin, "contain-host", inputs={"host": "ws-1"})
            time.sleep(0.3)
            assert admin.get(f"/api/runs/{run_id}").json()["status"] == "ready"
    finally:
        server.stop()
    embedded = start_server(create_app(engine_runtime, embedded_worker=True))
    try:  # a worker that starts later (here: an embedded one) claims it
        with embedded.client(role_tokens[Role.ADMIN]) as admin:
            run = settle(admin, run_id, until=ENDED)
    finally:
        embedded.stop()
    assert run["status"] == "succeeded", run["error"]


SLOW = """\
id: slow
name: Slow
steps:
  - {id: wait_long, action: test.read, with: {value: 1, seconds: 120}}
  - {id: after, action: core.log, with: {message: done}}
"""


def test_stopping_the_server_hands_the_runs_in_flight_back(
    engine_runtime: Runtime, role_tokens: dict[Role, str]
) -> None:
    server = start_server(create_app(engine_runtime, embedded_worker=True))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            add(admin, SLOW)
            run_id = start(admin, "slow")
            deadline = time.monotonic() + 10
            while Peer.calls.get(f"{run_id}:wait_long", 0) == 0:
                assert time.monotonic() < deadline, "the slow step never started"
                time.sleep(0.02)
            assert admin.get(f"/api/runs/{run_id}").json()["status"] == "running"
    finally:
        server.stop()
    assert not server.thread.is_alive()
    view = RunService(engine_runtime.db, engine_runtime.clock).get(run_id)
    assert view.status == RunStatus.READY.value  # handed back: any worker takes it at once
    assert view.owner is None
    assert [s.key for s in view.steps] == []  # the read was never recorded as done


def test_the_openapi_document_describes_the_engine_routes(
    engine_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with engine_server.client(role_tokens[Role.AUDITOR]) as auditor:
        spec = auditor.get("/api/openapi.json").json()
    for path in (
        "/api/playbooks",
        "/api/playbooks/{playbook_id}/runs",
        "/api/runs/{run_id}/cancel",
        "/api/approvals/{wait_id}/approve",
        "/api/tasks/{wait_id}/complete",
        "/api/callbacks/{token}",
    ):
        assert path in spec["paths"], path
    assert "application/yaml" in spec["paths"]["/api/playbooks"]["post"]["requestBody"]["content"]
    assert spec["paths"]["/api/callbacks/{token}"]["post"]["security"] == []
