"""CACAO 2.0 playbooks over real HTTP, on both backends: imported with bindings, published and
run like any other playbook against local peers (an HTTP server, Quell's own OpenC2 consumer,
manual steps completed through the API), with dry runs, approvals, TLP markings and sealed
credentials."""

from __future__ import annotations

import base64
import copy
import dataclasses
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from quell.api.app import create_app
from quell.governance.permissions import Role
from quell.playbooks.cacao.importer import QUELL_EXTENSION
from quell.playbooks.cacao.schema import validate_cacao
from quell.runtime import Runtime
from quell.store.schema import audit_events, playbook_credentials, playbook_versions
from tests.api.engine_client import ENDED, settle, step
from tests.fixtures.requirements import corpus_path
from tests.fixtures.servers import LiveServer, start_server
from tests.openc2.support import FakeNft

pytestmark = pytest.mark.requires("corpus")

HTTP_TARGET = "http-api--1c3900b4-f86b-430d-b415-12312b9e31f4"
ACTION = "action--eb9372d4-d524-49fc-bf24-be26ea084779"
TLP_RED = "marking-tlp--e828b379-4e03-4974-9ac4-e53a884c97c1"


class Peer:
    """A local HTTP server that notes every request (method, path, headers) and answers JSON."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.release = threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                peer.seen.append((self.command, self.path, dict(self.headers)))
                if self.path == "/slow":
                    peer.release.wait(5)  # longer than the step's timeout
                body = orjson.dumps({"ok": True, "path": self.path})
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up (a step's timeout): nothing to answer

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    found = Peer()
    yield found
    found.close()


@pytest.fixture
def server(runtime: Runtime, tmp_path: Path) -> Iterator[LiveServer]:
    """The API with an embedded engine; actions may reach loopback peers."""
    settings = runtime.settings.model_copy(
        update={"outbound_allow": ["127.0.0.1"], "cacao_max_iterations": 3}
    )
    live = start_server(create_app(dataclasses.replace(runtime, settings=settings),
                                   embedded_worker=True))  # fmt: skip
    yield live
    live.stop()


@pytest.fixture
def admin(server: LiveServer, role_tokens: dict[Role, str]) -> Iterator[httpx.Client]:
    with server.client(role_tokens[Role.ADMIN]) as client:
        yield client


def _corpus(name: str) -> bytes:
    return (corpus_path() / "cacao" / "playbooks" / name).read_bytes()


def _import(client: httpx.Client, text: bytes, *binds: str, expect: int = 201) -> dict[str, Any]:
    response = client.post(
        "/api/playbooks/import-cacao",
        content=text,
        params=[("bind", b) for b in binds],
        headers={"content-type": "application/json"},
    )
    assert response.status_code == expect, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _publish(client: httpx.Client, playbook_id: str, version: int = 1) -> None:
    """Publish a draft (review is optional in the tests' runtime)."""
    response = client.post(
        f"/api/playbooks/{playbook_id}/publish", json={"version": version, "comment": "go"}
    )
    assert response.status_code == 200, response.text


def _run(client: httpx.Client, playbook_id: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/api/playbooks/{playbook_id}/runs", json=body)
    assert response.status_code == 202, response.text
    return settle(client, response.json()["id"])


def test_the_corpus_http_playbook_runs_against_a_local_peer_it_is_bound_to(
    admin: httpx.Client, peer: Peer
) -> None:
    report = _import(admin, _corpus("soarca_http-playbook.json"), f"{HTTP_TARGET}={peer.url}")
    assert report["id"] == "playbook--300270f9-0e64-42c8-93cc-0927edbe3ae7"
    assert report["steps"] == 3
    assert report["unsupported"] == []
    assert report["bindings"] == {HTTP_TARGET: peer.url}
    assert report["state"] == "draft"
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    assert run["status"] == "succeeded", run
    assert [(method, path) for method, path, _ in peer.seen] == [("GET", "/get")]
    assert step(run, ACTION)["output"]["json"] == {"ok": True, "path": "/get"}
    # a dry run still reads (GET is a read)
    dry = _run(admin, report["id"], dry_run=True)
    assert dry["status"] == "succeeded"
    assert len(peer.seen) == 2
    # every action call is in the audit trail
    trail = admin.get("/api/audit", params={"action": "action.call"})
    assert trail.status_code == 200, trail.text
    assert any(event["detail"].get("run_id") == run["id"] for event in trail.json())


def test_a_manual_step_waits_for_a_person_and_out_args_take_what_they_entered(
    admin: httpx.Client,
) -> None:
    report = _import(admin, _corpus("soarca_manual-playbook.json"))
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    assert run["status"] == "waiting"
    (task,) = admin.get("/api/tasks", params={"run": run["id"]}).json()
    assert task["prompt"] == "prepare Falcon for hyperspeed jump"
    done = admin.post(
        f"/api/tasks/{task['id']}/complete",
        json={"comment": "ready", "output": {"__hyperspeed_ready__": "true"}},
    )
    assert done.status_code == 200, done.text
    finished = settle(admin, run["id"], until=ENDED)
    assert finished["status"] == "succeeded", finished
    assert finished["variables"]["__hyperspeed_ready__"] == "true"


def test_the_corpus_openc2_playbook_commands_quells_own_consumer(
    admin: httpx.Client, server: LiveServer, role_tokens: dict[Role, str], tmp_path: Path
) -> None:
    nft = FakeNft(tmp_path / "nft-state.json")
    created = admin.post(
        "/api/connectors",
        json={"name": "edge-fw", "connector": "nftables", "config": {"command": nft.command}},
    )
    assert created.status_code == 201, created.text
    created = admin.post(
        "/api/connectors",
        json={"name": "consumer", "connector": "openc2",
              "config": {"url": server.url + "/api/openc2"},
              "secrets": {"token": role_tokens[Role.ADMIN]}},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    report = _import(admin, _corpus("soarca_openc2-playbook.json"), f"{HTTP_TARGET}=consumer")
    assert report["needs"] == []
    _publish(admin, report["id"])
    dry = _run(admin, report["id"], dry_run=True)  # a write: simulated, nothing sent
    assert dry["status"] == "succeeded", dry
    assert step(dry, ACTION)["output"]["simulated"] is True
    assert nft.rules() == []
    run = _run(admin, report["id"])
    assert run["status"] == "succeeded", run
    output = step(run, ACTION)["output"]
    assert output["status"] == 102, output  # the command asks for an ack
    # The corpus command's window (start_time in 2018, 500 ms) ended long ago: the consumer
    # carries it out as nothing to do.
    assert nft.rules() == []
    # The same playbook with a window that is open: the deny lands on the firewall.
    doc = orjson.loads(_corpus("soarca_openc2-playbook.json"))
    command = doc["workflow"][ACTION]["commands"][0]
    message = orjson.loads(base64.b64decode(command["content_b64"]))
    args = message["body"]["openc2"]["request"]["args"]
    del args["start_time"]
    args["duration"] = 600_000
    command["content_b64"] = base64.b64encode(orjson.dumps(message)).decode()
    doc["name"] = "Example openc2, window open"
    report = _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}=consumer")
    assert report["version"] == 2
    _publish(admin, report["id"], version=2)
    run = _run(admin, report["id"])
    assert run["status"] == "succeeded", run
    assert step(run, ACTION)["output"]["status"] == 102
    (rule,) = nft.rules()
    assert "ip daddr 198.2.3.4" in rule["body"]
    assert "th sport 10996 th dport 80 drop" in rule["body"]
    assert "1.2.3.4" in str(nft.read()["sets"])  # the source address, kept in a set


def test_an_approval_rule_holds_an_imported_step_until_someone_approves(
    admin: httpx.Client, peer: Peer, server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    doc = orjson.loads(_corpus("soarca_http-playbook.json"))
    doc["workflow"][ACTION]["commands"][0]["command"] = "POST /contain HTTP/1.1"
    rule = admin.put(
        "/api/approval-rules/http-writes",
        json={"match": {"actions": ["http.request"]}, "approvals": 1, "roles": ["approver"],
              "expires_after": "1h"},
    )  # fmt: skip
    assert rule.status_code in (200, 201), rule.text
    report = _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}={peer.url}")
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    assert run["status"] == "waiting", run
    assert peer.seen == []
    (pending,) = admin.get("/api/approvals", params={"run": run["id"]}).json()
    with server.client(role_tokens[Role.APPROVER]) as approver:  # not the requester
        decided = approver.post(
            f"/api/approvals/{pending['id']}/approve", json={"comment": "contain it"}
        )
    assert decided.status_code == 200, decided.text
    finished = settle(admin, run["id"], until=ENDED)
    assert finished["status"] == "succeeded", finished
    assert [(method, path) for method, path, _ in peer.seen] == [("POST", "/contain")]


def _marked(doc: dict[str, Any], marking: str) -> dict[str, Any]:
    marked = copy.deepcopy(doc)
    marked["markings"] = [marking]
    return marked


def test_tlp_red_data_never_goes_to_an_agent_outside_the_organization(
    admin: httpx.Client, peer: Peer
) -> None:
    doc = orjson.loads(_corpus("soarca_http-playbook.json"))
    # Inside: the loopback peer.
    report = _import(admin, orjson.dumps(_marked(doc, TLP_RED)), f"{HTTP_TARGET}={peer.url}")
    assert report["tlp"] == "TLP:RED"
    _publish(admin, report["id"])
    assert _run(admin, report["id"])["status"] == "succeeded"
    assert len(peer.seen) == 1
    # Outside: a public address (never contacted: the call is refused before it is made).
    outside = _marked(doc, TLP_RED)
    outside["id"] = "playbook--7d1c2a1e-1111-4a4a-9b9b-000000000001"
    outside["target_definitions"][HTTP_TARGET]["address"] = {"ipv4": ["203.0.113.10"]}
    report = _import(admin, orjson.dumps(outside))
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    assert run["status"] == "succeeded"  # on_completion: CACAO goes on whatever the outcome
    assert step(run, ACTION)["status"] == "failed"
    error = step(run, ACTION)["error"]
    assert error["code"] == "tlp_withheld", error
    assert "203.0.113.10" in error["message"]
    assert "TLP:RED" in error["message"]
    # The same playbook marked GREEN may go there (it is the outbound policy that decides).
    green = copy.deepcopy(outside)
    green["id"] = "playbook--7d1c2a1e-1111-4a4a-9b9b-000000000002"
    green["markings"] = ["marking-tlp--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"]
    report = _import(admin, orjson.dumps(green))
    assert report["tlp"] == "TLP:GREEN"


def test_inline_credentials_are_sealed_and_sent_only_with_their_step(
    admin: httpx.Client, peer: Peer, runtime: Runtime
) -> None:
    doc = orjson.loads(_corpus("soarca_http-playbook.json"))
    auth = "http-basic--76c26f7f-9a15-40ff-a90a-7b19e23372ae"
    doc["authentication_info_definitions"] = {
        auth: {"type": "http-basic", "user_id": "admin", "password": "Cacao-Canary-7731"}
    }
    doc["target_definitions"][HTTP_TARGET]["authentication_info"] = auth
    report = _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}={peer.url}")
    assert report["credentials"] == [auth]
    shown = admin.get(f"/api/playbooks/{report['id']}")
    assert "Cacao-Canary-7731" not in shown.text
    stored = orjson.loads(shown.json()["source"])
    kept = stored["authentication_info_definitions"][auth]
    reference = kept.pop("kms_key_identifier")
    assert kept == {"type": "http-basic", "user_id": "admin", "kms": True}
    assert reference.startswith(f"quell:{report['id']}/{auth}/cred_")
    with runtime.db.read() as conn:
        sealed = conn.execute(select(playbook_credentials.c.secret)).scalars().all()
        texts = conn.execute(select(playbook_versions.c.source, playbook_versions.c.ir)).all()
        events = conn.execute(select(audit_events)).all()
    assert len(sealed) == 1
    assert b"Cacao-Canary-7731" not in bytes(sealed[0])
    assert all("Cacao-Canary-7731" not in str(row) for row in [*texts, *events])
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    assert run["status"] == "succeeded", run
    (_, _, headers) = peer.seen[0]
    expected = "Basic " + base64.b64encode(b"admin:Cacao-Canary-7731").decode()
    assert headers["Authorization"] == expected
    assert "Cacao-Canary-7731" not in orjson.dumps(run).decode()
    exported = admin.get(f"/api/playbooks/{report['id']}/cacao")
    assert "Cacao-Canary-7731" not in exported.text
    # The same file again: the same version. Other credentials: a new version (a draft, to
    # review), and the published one still calls with its own.
    assert _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}={peer.url}")["version"] == 1
    doc["authentication_info_definitions"][auth]["password"] = "Cacao-Canary-9000"
    changed = _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}={peer.url}")
    assert (changed["version"], changed["state"]) == (2, "draft")
    assert _run(admin, report["id"])["status"] == "succeeded"
    (_, _, headers) = peer.seen[1]
    assert headers["Authorization"] == expected


def test_an_unsupported_playbook_imports_as_a_draft_that_cannot_be_published(
    admin: httpx.Client,
) -> None:
    report = _import(admin, _corpus("soarca_fin-playbook.json"))
    (item,) = report["unsupported"]
    assert item["construct"] == "command type pong"
    refused = admin.post(
        f"/api/playbooks/{report['id']}/publish", json={"version": 1, "comment": "go"}
    )
    assert refused.status_code == 409, refused.text
    assert "command type pong" in refused.json()["detail"]


def test_export_over_http_is_strictly_valid_cacao_and_bad_input_is_refused_with_paths(
    admin: httpx.Client,
) -> None:
    report = _import(admin, _corpus("spec-3.1-example.json"))
    exported = admin.get(f"/api/playbooks/{report['id']}/cacao")
    assert exported.status_code == 200, exported.text
    assert [p for p in validate_cacao(exported.json(), "strict") if p.severity == "error"] == []
    invalid = corpus_path() / "cacao" / "invalid" / "soarca_test_invalid_playbook.json"
    refused = _import(admin, invalid.read_bytes(), expect=422)
    paths = [problem["path"] for problem in refused["problems"]]
    assert "$.agent_definitions['http-api--7e9174ec-a293-43df-a72d-471c79e276bf'].type" in paths
    unbound = _import(
        admin, _corpus("soarca_ssh-playbook.json"),
        "ssh--1c3900b4-f86b-430d-b415-12312b9e31f4=nowhere", expect=422,
    )  # fmt: skip
    assert "no connector instance 'nowhere'" in unbound["detail"]


def _child(modified: str, path: str) -> dict[str, Any]:
    """A small CACAO playbook: GET ``path``/<__target__> on the peer, its body into
    ``__result__``."""
    return {
        "type": "playbook", "spec_version": "cacao-2.0",
        "id": "playbook--0c0c0c0c-1111-4222-8333-444444444444", "name": "child",
        "created_by": "identity--0c0c0c0c-1111-4222-8333-555555555555",
        "created": "2024-01-01T00:00:00.000Z", "modified": modified,
        "playbook_variables": {
            "__target__": {"type": "string", "external": True},
            "__result__": {"type": "dictionary"},
        },
        "workflow_start": "start--0c0c0c0c-1111-4222-8333-000000000001",
        "workflow": {
            "start--0c0c0c0c-1111-4222-8333-000000000001": {
                "type": "start", "on_completion": "action--0c0c0c0c-1111-4222-8333-000000000002",
            },
            "action--0c0c0c0c-1111-4222-8333-000000000002": {
                "type": "action",
                "commands": [{"type": "http-api", "command": f"GET {path}/__target__:value"}],
                "agent": HTTP_TARGET, "out_args": ["__result__"],
                "on_completion": "end--0c0c0c0c-1111-4222-8333-000000000003",
            },
            "end--0c0c0c0c-1111-4222-8333-000000000003": {"type": "end"},
        },
        "agent_definitions": {
            HTTP_TARGET: {"type": "http-api", "name": "peer", "address": {"dname": ["peer"]}},
        },
    }  # fmt: skip


def test_a_playbook_action_runs_the_sub_playbook_version_it_names(
    admin: httpx.Client, peer: Peer
) -> None:
    first, second = "2024-01-01T00:00:00.000Z", "2024-06-01T00:00:00.000Z"
    for number, (modified, path) in enumerate([(first, "/v1"), (second, "/v2")], start=1):
        report = _import(admin, orjson.dumps(_child(modified, path)), f"{HTTP_TARGET}={peer.url}")
        assert report["version"] == number
        _publish(admin, report["id"], version=number)  # the newest is the active one
    parent = _child(first, "/unused")
    parent.update(id="playbook--0c0c0c0c-1111-4222-8333-666666666666", name="parent")
    parent["playbook_variables"]["__target__"] = {"type": "string", "value": "hello"}
    call = "playbook-action--0c0c0c0c-1111-4222-8333-000000000004"
    del parent["workflow"]["action--0c0c0c0c-1111-4222-8333-000000000002"]
    parent["workflow"]["start--0c0c0c0c-1111-4222-8333-000000000001"]["on_completion"] = call
    parent["workflow"][call] = {
        "type": "playbook-action",
        "playbook_id": "playbook--0c0c0c0c-1111-4222-8333-444444444444",
        "playbook_version": first,
        "in_args": ["__target__"],
        "out_args": ["__result__"],
        "on_completion": "end--0c0c0c0c-1111-4222-8333-000000000003",
    }
    del parent["agent_definitions"]
    report = _import(admin, orjson.dumps(parent))
    _publish(admin, report["id"])
    run = _run(admin, report["id"])  # the child runs as its own run, the parent waits
    finished = settle(admin, run["id"], until=ENDED)
    assert finished["status"] == "succeeded", finished
    assert [(method, path) for method, path, _ in peer.seen] == [("GET", "/v1/hello")]
    assert finished["variables"]["__result__"] == {"ok": True, "path": "/v1/hello"}


def test_an_imported_playbook_starts_by_itself_on_the_trigger_it_was_given(
    admin: httpx.Client, runtime: Runtime
) -> None:
    runtime.sources.create(
        "hook", "http", "json", parser_options={"fields": {"title": "title", "time": "ts"}}
    )
    refused = admin.post(
        "/api/playbooks/import-cacao",
        content=_corpus("soarca_manual-playbook.json"),
        params={"on": "alert.created", "if": "alert.title =="},
    )
    assert refused.status_code == 422, refused.text
    report = _import_with(
        admin, _corpus("soarca_manual-playbook.json"),
        on="alert.created", **{"if": "alert.title == 'beacon'"},
    )  # fmt: skip
    _publish(admin, report["id"])
    at = "2026-03-01T12:00:00Z"
    stored = admin.post("/api/ingest/hook", json=[{"title": "beacon", "ts": at},
                                                  {"title": "noise", "ts": at}])  # fmt: skip
    assert stored.json()["stored"] == 2
    deadline = time.monotonic() + 15
    while not (runs := admin.get("/api/runs", params={"playbook": report["id"]}).json()):
        assert time.monotonic() < deadline, "no run was created for the alert"
        time.sleep(0.05)
    run = settle(admin, runs[0]["id"])
    assert len(runs) == 1  # the condition left the other alert alone
    assert run["trigger"] == "alert.created"
    assert run["status"] == "waiting"  # at its manual step
    exported = admin.get(f"/api/playbooks/{report['id']}/cacao").json()
    ext = exported["playbook_extensions"][QUELL_EXTENSION]
    assert ext["triggers"][0]["condition"] == "alert.title == 'beacon'"


def _import_with(client: httpx.Client, text: bytes, **params: str) -> dict[str, Any]:
    response = client.post("/api/playbooks/import-cacao", content=text, params=params)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _script_playbook(agent_id: str, script: str) -> dict[str, Any]:
    doc = _child("2024-01-01T00:00:00.000Z", "/unused")
    doc.update(id="playbook--0c0c0c0c-1111-4222-8333-777777777777", name="script")
    doc["playbook_variables"]["__target__"] = {"type": "string", "value": "it's $(not run)"}
    step_ = doc["workflow"]["action--0c0c0c0c-1111-4222-8333-000000000002"]
    step_["commands"] = [{"type": "bash", "command": script}]
    step_["agent"] = agent_id
    doc["agent_definitions"] = {agent_id: {"type": "linux", "name": "responder box",
                                           "address": {"dname": ["localhost"]}}}  # fmt: skip
    return doc


def test_bash_commands_run_only_on_a_runner_an_admin_enabled(admin: httpx.Client) -> None:
    agent = "linux--0c0c0c0c-1111-4222-8333-888888888888"
    script = 'printf "%s|" "__target__:value" "$#"'
    off = admin.post("/api/connectors", json={"name": "box-off", "connector": "runner"})
    assert off.status_code == 201, off.text
    report = _import(admin, orjson.dumps(_script_playbook(agent, script)), f"{agent}=box-off")
    assert any(need["kind"] == "runner" for need in report["needs"])
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    error = step(run, "action--0c0c0c0c-1111-4222-8333-000000000002")["error"]
    assert error["code"] == "runner_disabled", error
    on = admin.post(
        "/api/connectors",
        json={"name": "box-on", "connector": "runner", "config": {"enabled": True}},
    )
    assert on.status_code == 201, on.text
    doc = _script_playbook(agent, script)
    doc["name"] = "script, enabled"
    report = _import(admin, orjson.dumps(doc), f"{agent}=box-on")
    _publish(admin, report["id"], version=report["version"])
    run = _run(admin, report["id"])
    assert run["status"] == "succeeded", run
    output = step(run, "action--0c0c0c0c-1111-4222-8333-000000000002")["output"]
    # the variable's value went in as text: its quote and $(...) were never shell syntax
    assert output["stdout"] == "it's $(not run)|0|"
    assert run["variables"]["__result__"] == "it's $(not run)|0|"


def _flow() -> dict[str, Any]:
    """A CACAO playbook using the control flow: if-condition, parallel, switch, while, each
    branch ending at its own end step; HTTP GETs on the peer show the path taken."""
    ids = iter(range(100, 200))

    def sid(kind: str) -> str:
        return f"{kind}--0c0c0c0c-1111-4222-8333-{next(ids):012d}"

    workflow: dict[str, Any] = {}

    def get(path: str, then: str | None = None, **more: Any) -> str:
        step_id = sid("action")
        if then is None:
            then = sid("end")
            workflow[then] = {"type": "end"}
        workflow[step_id] = {
            "type": "action", "agent": HTTP_TARGET, "on_completion": then,
            "commands": [{"type": "http-api", "command": f"GET {path}"}], **more,
        }  # fmt: skip
        return step_id

    end = sid("end")
    workflow[end] = {"type": "end"}
    loop = sid("while-condition")
    workflow[loop] = {"type": "while-condition", "condition": "__flag__:value = 'yes'",
                      "on_true": get("/loop"), "on_completion": end}  # fmt: skip
    switch = sid("switch-condition")
    workflow[switch] = {
        "type": "switch-condition", "switch": "__mode__",
        "cases": {"block": get("/s-block"), "default": get("/s-default")},
        "on_completion": loop,
    }  # fmt: skip
    parallel = sid("parallel")
    workflow[parallel] = {"type": "parallel", "next_steps": [get("/p1"), get("/p2")],
                          "on_completion": switch}  # fmt: skip
    # A timeout leads to on_failure; a delay comes before the step.
    recovered = get("/recovered", then=parallel)
    slow = get("/slow", then=parallel, timeout=300, delay=50)
    workflow[slow]["on_success"] = workflow[slow].pop("on_completion")
    workflow[slow]["on_failure"] = recovered
    branch = sid("if-condition")
    workflow[branch] = {
        "type": "if-condition", "condition": "__mode__:value = 'block' AND NOT __count__:value > 5",
        "on_true": get("/block"), "on_false": get("/allow"), "on_completion": slow,
    }  # fmt: skip
    start = sid("start")
    workflow[start] = {"type": "start", "on_completion": branch}
    doc = _child("2024-01-01T00:00:00.000Z", "/unused")
    doc.update(id="playbook--0c0c0c0c-1111-4222-8333-999999999999", name="flow",
               workflow_start=start, workflow=workflow)  # fmt: skip
    doc["playbook_variables"] = {
        "__mode__": {"type": "string", "external": True},
        "__count__": {"type": "integer", "value": "3"},
        "__flag__": {"type": "string", "external": True},
    }
    return doc


def test_cacao_control_flow_runs_with_its_branch_ends_delays_timeouts_and_loop_bound(
    admin: httpx.Client, peer: Peer
) -> None:
    report = _import(admin, orjson.dumps(_flow()), f"{HTTP_TARGET}={peer.url}")
    assert report["unsupported"] == []
    _publish(admin, report["id"])
    run = _run(admin, report["id"], inputs={"__mode__": "block", "__flag__": "no"})
    run = settle(admin, run["id"], until=ENDED)
    assert run["status"] == "succeeded", run
    paths = [path for _, path, _ in peer.seen]
    assert paths[:3] == ["/block", "/slow", "/recovered"]
    assert sorted(paths[3:5]) == ["/p1", "/p2"]
    assert paths[5:] == ["/s-block"]
    slow = next(
        s["key"] for s in run["steps"] if str((s.get("inputs") or {}).get("url")).endswith("/slow")
    )
    assert step(run, slow)["status"] == "timed_out"  # and so on_failure ran: /recovered
    assert step(run, slow)["error"]["code"] == "timeout", step(run, slow)["error"]
    assert step(run, f"{slow}~delay")["status"] == "succeeded"  # the delay came first
    # The other branches, and a loop whose condition holds: bounded by cacao_max_iterations.
    peer.seen.clear()
    run = _run(admin, report["id"], inputs={"__mode__": "other", "__flag__": "yes"})
    run = settle(admin, run["id"], until=ENDED)
    paths = [path for _, path, _ in peer.seen]
    assert paths[0] == "/allow"
    assert "/s-default" in paths
    assert paths.count("/loop") == 3
    bound = next(s for s in run["steps"] if s["key"].endswith("#bound"))
    assert bound["key"].startswith("while-condition--")
    assert bound["status"] == "failed"
    assert "reached max_iterations (3)" in bound["error"]["message"]
    assert run["status"] == "succeeded"  # its on_completion goes on whatever the outcome


def test_a_credential_goes_only_to_the_host_its_target_names(
    admin: httpx.Client, peer: Peer
) -> None:
    doc = orjson.loads(_corpus("soarca_http-playbook.json"))
    auth = "http-basic--76c26f7f-9a15-40ff-a90a-7b19e23372ae"
    doc["authentication_info_definitions"] = {
        auth: {"type": "http-basic", "user_id": "admin", "password": "Cacao-Canary-4242"}
    }
    doc["target_definitions"][HTTP_TARGET]["authentication_info"] = auth
    # The same peer, named by another host name in an absolute URL: not where the
    # credential was given for.
    port = peer.url.rsplit(":", 1)[1].strip("/")
    doc["workflow"][ACTION]["commands"][0]["command"] = f"GET http://localhost:{port}/elsewhere"
    report = _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}={peer.url}")
    _publish(admin, report["id"])
    run = _run(admin, report["id"])
    error = step(run, ACTION)["error"]
    assert error["code"] == "credential_refused", error
    assert "is for 127.0.0.1, not localhost" in error["message"]
    assert peer.seen == []  # nothing was sent, with or without the credential


def test_a_sub_playbook_keeps_its_callers_tlp_red(admin: httpx.Client) -> None:
    child = _child("2024-01-01T00:00:00.000Z", "/leak")
    child["agent_definitions"][HTTP_TARGET]["address"] = {"ipv4": ["203.0.113.10"]}
    report = _import(admin, orjson.dumps(child))
    assert report["tlp"] is None  # unmarked itself
    _publish(admin, report["id"])
    parent = _child("2024-01-01T00:00:00.000Z", "/unused")
    parent.update(id="playbook--0c0c0c0c-1111-4222-8333-aaaaaaaaaaaa", name="red parent")
    parent["markings"] = [TLP_RED]
    parent["playbook_variables"]["__target__"] = {"type": "string", "value": "secret-case-7"}
    call = "playbook-action--0c0c0c0c-1111-4222-8333-000000000004"
    del parent["workflow"]["action--0c0c0c0c-1111-4222-8333-000000000002"]
    del parent["agent_definitions"]
    parent["workflow"]["start--0c0c0c0c-1111-4222-8333-000000000001"]["on_completion"] = call
    parent["workflow"][call] = {
        "type": "playbook-action",
        "playbook_id": child["id"],
        "in_args": ["__target__"],
        "on_completion": "end--0c0c0c0c-1111-4222-8333-000000000003",
    }
    report = _import(admin, orjson.dumps(parent))
    assert report["tlp"] == "TLP:RED"
    _publish(admin, report["id"])
    run = settle(admin, _run(admin, report["id"])["id"], until=ENDED)
    (child_run,) = admin.get("/api/runs", params={"playbook": child["id"]}).json()
    child_run = settle(admin, child_run["id"], until=ENDED)
    error = step(child_run, "action--0c0c0c0c-1111-4222-8333-000000000002")["error"]
    assert error["code"] == "tlp_withheld", error
    assert "TLP:RED" in error["message"]
    assert run["status"] == "succeeded"  # the parent's on_completion goes on


# What each corpus playbook needs beyond Quell itself, as its import report says. The ones that
# need nothing run to the end here, a person completing each manual step through the API; the
# http, ssh and openc2 ones run above and in tests/connectors/test_cacao_ssh.py with bindings.
CORPUS_NEEDS = {
    "basic-example-1.json": [
        ("instance", "security-category--3c1daf98-7e22-4e0c-bb8c-6bd78159ca5d"),
    ],
    "oasis-tcs-cacao_layout_playbook--aa1898b6-5251-49b4-aeb7-fd5e912583ff.json": [],
    "soarca_fin-playbook.json": [],  # but an unsupported command: see its own test
    "soarca_http-playbook.json": [("host", "httpbin.org")],
    "soarca_manual-playbook.json": [],
    "soarca_openc2-playbook.json": [("instance", HTTP_TARGET)],
    "soarca_ssh-playbook.json": [("instance", "ssh--1c3900b4-f86b-430d-b415-12312b9e31f4")],
    # SOARCA's fixtures write __name__ without :value, which CACAO reads as literal text
    "soarca_test_parallels_playbook.json": [("host", "__bia_address__")],
    "soarca_test_playbook.json": [
        ("host", "__imc_address__"), ("host", "__bia_address__"),
        ("host", "__coagenerator_address__"),
    ],
    "spec-3.1-example.json": [],
}  # fmt: skip


def test_every_corpus_playbook_runs_here_or_its_report_names_what_it_needs(
    admin: httpx.Client,
) -> None:
    names = sorted(p.name for p in (corpus_path() / "cacao" / "playbooks").glob("*.json"))
    assert names == sorted(CORPUS_NEEDS)
    ran = []
    for name in names:
        report = _import(admin, _corpus(name))
        assert [(n["kind"], n["ref"]) for n in report["needs"]] == CORPUS_NEEDS[name], name
        if CORPUS_NEEDS[name] or report["unsupported"]:
            continue
        _publish(admin, report["id"], version=report["version"])
        run = _run(admin, report["id"], version=report["version"])
        for _ in range(10):  # a person completes each manual step as it comes
            if run["status"] != "waiting":
                break
            for task in admin.get("/api/tasks", params={"run": run["id"]}).json():
                if task["status"] == "pending":
                    done = admin.post(f"/api/tasks/{task['id']}/complete", json={"comment": "ok"})
                    assert done.status_code == 200, done.text
            run = settle(admin, run["id"], until=(*ENDED, "waiting"))
        assert run["status"] == "succeeded", (name, run)
        ran.append(name)
    assert ran == [
        "oasis-tcs-cacao_layout_playbook--aa1898b6-5251-49b4-aeb7-fd5e912583ff.json",
        "soarca_manual-playbook.json",
        "spec-3.1-example.json",
    ]


def test_a_failure_nothing_handles_runs_the_workflow_exception(
    admin: httpx.Client, peer: Peer
) -> None:
    doc = _child("2024-01-01T00:00:00.000Z", "/unused")
    doc.update(id="playbook--0c0c0c0c-1111-4222-8333-bbbbbbbbbbbb", name="exception")
    workflow = doc["workflow"]
    failing = workflow["action--0c0c0c0c-1111-4222-8333-000000000002"]
    # a private address outbound_allow does not name: refused, so the step fails
    failing["commands"] = [{"type": "http-api", "command": "GET http://10.255.255.1/x"}]
    failing["on_success"] = failing.pop("on_completion")
    handler = "action--0c0c0c0c-1111-4222-8333-000000000009"
    workflow[handler] = {
        "type": "action", "agent": HTTP_TARGET,
        "commands": [{"type": "http-api", "command": "GET /exception/__target__:value"}],
        "on_completion": "end--0c0c0c0c-1111-4222-8333-000000000010",
    }  # fmt: skip
    workflow["end--0c0c0c0c-1111-4222-8333-000000000010"] = {"type": "end"}
    doc["workflow_exception"] = handler
    doc["playbook_variables"]["__target__"] = {"type": "string", "value": "case-9"}
    report = _import(admin, orjson.dumps(doc), f"{HTTP_TARGET}={peer.url}")
    _publish(admin, report["id"])
    run = settle(admin, _run(admin, report["id"])["id"], until=ENDED)
    assert step(run, "action--0c0c0c0c-1111-4222-8333-000000000002")["status"] == "failed"
    assert [path for _, path, _ in peer.seen] == ["/exception/case-9"]
    assert step(run, f"!exception/{handler}")["status"] == "succeeded"
    assert run["status"] == "failed"  # handled by the exception step, still a failed run
