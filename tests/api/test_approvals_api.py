"""Four-eyes approvals over real HTTP, on both backends: the approval policy set through the
API, two distinct approvers with sessions, a requester who cannot approve their own run, one
person who cannot approve twice, and a signed link sent to a chat webhook (a local server that
answers as Slack's incoming webhooks do) and used once from it."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from quell.api.app import create_app
from quell.api.server import bind_socket, bound_url
from quell.governance.permissions import Role
from quell.runtime import Runtime
from quell.sdk import SecretValue
from tests.api.engine_client import ENDED, add, settle, start
from tests.engine.peer import Peer
from tests.fixtures.servers import LiveServer, start_server

PASSWORD = "correct horse battery staple"
CONTAIN = """\
id: contain-host
name: Contain a host
inputs: {host: {type: string, required: true}}
steps:
  - {id: isolate, action: test.contain, with: {target: "{{ host }}"}}
"""


class _Slack(BaseHTTPRequestHandler):
    """Slack's incoming webhook: JSON with ``text``; answers ``ok`` (or 400 ``no_text``)."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Slack.seen.append({"path": self.path, "body": body})
        ok = isinstance(body.get("text"), str) and body["text"]
        self.send_response(200 if ok else 400)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"no_text")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slack() -> Iterator[str]:
    _Slack.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slack)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/hook"
    server.shutdown()
    server.server_close()


class _Mailbox:
    """An SMTP server's handler (aiosmtpd): keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[_Mailbox, int]]:
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:  # a free loopback port for the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = _Mailbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def server(runtime: Runtime, slack: str, mailbox: tuple[_Mailbox, int]) -> Iterator[LiveServer]:
    Peer.reset()
    sock = bind_socket("127.0.0.1", 0)
    settings = runtime.settings.model_copy(
        update={
            "plugins": ["tests.engine.peer"],
            "outbound_allow": ["127.0.0.1"],
            "public_url": bound_url(sock),
        }
    )
    app_runtime = dataclasses.replace(runtime, settings=settings)
    for name, role in [("root", "admin"), ("carol", "analyst"), ("alice", "approver"),
                       ("bob", "approver"), ("ed", "approver")]:  # fmt: skip
        app_runtime.users.add(name, role, password=SecretValue(PASSWORD), by="setup")
    app_runtime.connector_instances.create(
        "team-chat", "notify", {"format": "slack"}, {"webhook_url": SecretValue(slack)}
    )
    app_runtime.connector_instances.create(  # nothing listens on port 9
        "dead-chat", "notify", {"format": "slack"},
        {"webhook_url": SecretValue("http://127.0.0.1:9/hook")},
    )  # fmt: skip
    app_runtime.connector_instances.create(
        "team-mail", "mail",
        {"host": "127.0.0.1", "port": mailbox[1], "security": "none",
         "from_address": "soc@corp.example", "allowed_recipient_domains": ["corp.example"]},
    )  # fmt: skip
    live = start_server(create_app(app_runtime, embedded_worker=True), sock)
    yield live
    live.stop()


def _session(server: LiveServer, name: str) -> Any:
    with server.client() as anonymous:
        token = anonymous.post("/api/login", json={"name": name, "password": PASSWORD})
        assert token.status_code == 200, token.text
    return server.client(token.json()["token"])


def test_four_eyes_over_http_with_a_link_sent_to_chat(
    server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    root, carol, alice = (_session(server, n) for n in ("root", "carol", "alice"))
    with root, carol, alice, server.client(role_tokens[Role.ANALYST]) as token_analyst:
        rule = {"match": {"risks": ["high"]}, "approvals": 2, "roles": ["approver"],
                "expires_after": "8h", "on_expiry": "fail"}  # fmt: skip
        assert carol.put("/api/approval-rules/high-risk", json=rule).status_code == 403
        stored = root.put("/api/approval-rules/high-risk", json=rule)
        assert stored.status_code == 200, stored.text
        assert stored.json()["expires_after"] == 8 * 3600
        bad = root.put("/api/approval-rules/bad", json={"approvals": 0})
        assert (bad.status_code, bad.json()["field"]) == (422, "body.approvals")
        assert [r["name"] for r in alice.get("/api/approval-rules").json()] == ["high-risk"]

        add(root, CONTAIN)
        run_id = start(root, "contain-host", inputs={"host": "ws-42"})
        assert settle(root, run_id)["status"] == "waiting"
        (pending,) = alice.get("/api/approvals").json()
        assert (pending["required"], pending["rule"], pending["excluded"]) == (
            2, "high-risk", ["root"]
        )  # fmt: skip
        url = f"/api/approvals/{pending['id']}"

        own = root.post(f"{url}/approve", json={"comment": "mine, but urgent"})
        assert own.status_code == 403
        assert "separation of duties" in own.json()["detail"]
        assert alice.post(f"{url}/approve", json={}).status_code == 422  # no comment
        first = alice.post(f"{url}/approve", json={"comment": "beaconing to known C2"})
        assert first.status_code == 200, first.text
        assert (first.json()["status"], first.json()["approvals"]) == ("pending", ["alice"])
        twice = alice.post(f"{url}/approve", json={"comment": "approving again"})
        assert twice.status_code == 409
        assert "another approval must come from someone else" in twice.json()["detail"]

        # A link is someone's credential: nobody gets another person's token in hand.
        handed = carol.post(f"{url}/links", json={"user": "bob"})
        assert handed.status_code == 409
        # An approver asks for their own (approvals:decide; sending is runs:control's).
        with _session(server, "ed") as ed:
            own = ed.post(f"{url}/my-link", json={})
            assert own.status_code == 201, own.text
            assert (own.json()["user"], "/api/approval-links/qa_" in own.json()["url"]) == (
                "ed", True,
            )  # fmt: skip
            assert ed.post(f"{url}/links", json={"user": "ed"}).status_code == 403
        assert carol.post(f"{url}/my-link", json={}).status_code == 403  # an analyst decides none
        to_requester = carol.post(f"{url}/links", json={"user": "root", "via": "team-chat"})
        assert to_requester.status_code == 403
        sent = token_analyst.post(f"{url}/links", json={"user": "bob", "via": "team-chat"})
        assert sent.status_code == 201, sent.text
        assert "token" not in sent.json()
        assert "url" not in sent.json()
        assert sent.json()["sent_via"] == "team-chat"
        unsent = token_analyst.post(f"{url}/links", json={"user": "bob", "via": "dead-chat"})
        assert unsent.status_code == 502, unsent.text  # was a 500 with a traceback in the log
        assert "the link for bob was not sent through 'dead-chat': " in unsent.json()["detail"]
        assert settle(root, run_id)["status"] == "waiting"
        assert Peer.applied == {}

    (message,) = _Slack.seen
    assert message["path"] == "/services/T0/B0/hook"
    text = json.dumps(message["body"])
    link = next(
        word
        for block in message["body"]["blocks"]
        for word in json.dumps(block).replace('"', " ").replace("<", " ").replace(">", " ").split()
        if "/api/approval-links/qa_" in word
    )
    assert "bob" in text
    path = link[link.index("/api/approval-links/") :].split("|")[0]
    with server.client() as anonymous:  # the link itself is the credential
        forged = anonymous.get(path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"))
        assert forged.status_code == 404
        shown = anonymous.get(path)
        assert shown.status_code == 200, shown.text
        assert shown.json()["user"] == "bob"
        assert shown.json()["approval"]["approvals"] == ["alice"]
        assert shown.json()["needs_sign_in"] is True  # it went to a channel others read
        alone = anonymous.post(path, json={"decision": "approve", "comment": "agreed"})
        assert alone.status_code == 403
        assert "shared channel" in alone.json()["detail"]
        alice_too = _session(server, "alice")
        with alice_too:  # someone else's sign-in does not make it theirs either
            headers = dict(alice_too.headers)
        assert (
            anonymous.post(
                path, json={"decision": "approve", "comment": "x"}, headers=headers
            ).status_code
            == 403
        )
        bob = _session(server, "bob")
        with bob:
            headers = dict(bob.headers)
        assert (
            anonymous.post(path, json={"decision": "approve"}, headers=headers).status_code == 422
        )
        decided = anonymous.post(
            path, json={"decision": "approve", "comment": "agreed"}, headers=headers
        )
        assert decided.status_code == 200, decided.text
        assert decided.json()["status"] == "approved"
        votes = [(v["voter"], v["via"]) for v in decided.json()["votes"]]
        assert votes == [("alice", "api"), ("bob", "link")]
        again = anonymous.post(path, json={"decision": "reject", "comment": "changed my mind"})
        assert again.status_code == 409
    with server.client(role_tokens[Role.ADMIN]) as admin:
        run = settle(admin, run_id, until=ENDED)
        assert run["status"] == "succeeded", run["error"]
        trail = admin.get("/api/audit", params={"action": "approval."}).json()
    assert list(Peer.applied.values()) == ["ws-42"]
    actions = [(e["actor"], e["action"]) for e in reversed(trail)]
    assert actions == [
        ("alice", "approval.vote"),
        ("ed", "approval.link_created"),  # his own
        ("test-analyst", "approval.link_created"),
        ("test-analyst", "approval.link_created"),  # through dead-chat: not sent, so withdrawn
        ("test-analyst", "approval.link_withdrawn"),
        ("bob", "approval.approve"),
    ]
    withdrawn = next(e for e in trail if e["action"] == "approval.link_withdrawn")
    assert "was not sent through 'dead-chat'" in withdrawn["detail"]["reason"]
    assert path.rsplit("/", 1)[1] not in json.dumps(trail)  # the token is never audited


def test_a_link_mailed_to_the_approver_decides_alone_once(
    server: LiveServer, mailbox: tuple[_Mailbox, int]
) -> None:
    root, carol = _session(server, "root"), _session(server, "carol")
    with root, carol:
        rule = {"match": {"actions": ["test.contain"]}, "approvals": 1, "roles": ["approver"]}
        assert root.put("/api/approval-rules/contain", json=rule).status_code == 200
        assert root.patch("/api/users/ed", json={"email": "ed@corp.example"}).status_code == 200
        add(root, CONTAIN)
        run_id = start(root, "contain-host", inputs={"host": "ws-77"})
        assert settle(root, run_id)["status"] == "waiting"
        (pending,) = carol.get("/api/approvals").json()
        sent = carol.post(
            f"/api/approvals/{pending['id']}/links", json={"user": "ed", "via": "team-mail"}
        )
        assert sent.status_code == 201, sent.text
        nobody = carol.post(
            f"/api/approvals/{pending['id']}/links", json={"user": "bob", "via": "team-mail"}
        )
        assert nobody.status_code == 409  # bob has no address to mail it to
        assert "no e-mail address" in nobody.json()["detail"]
    (message,) = mailbox[0].messages
    assert message["To"] == "ed@corp.example"
    body = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    url = next(word for word in body.split() if "/api/approval-links/qa_" in word)
    path = url[url.index("/api/approval-links/") :]
    with server.client() as anonymous:
        assert anonymous.get(path).json()["needs_sign_in"] is False
        decided = anonymous.post(path, json={"decision": "approve", "comment": "ok by mail"})
        assert decided.status_code == 200, decided.text
        assert decided.json()["votes"][0]["via"] == "link"
        assert (
            anonymous.post(path, json={"decision": "approve", "comment": "again"}).status_code
            == 409
        )
    with _session(server, "root") as root:
        assert settle(root, run_id, until=ENDED)["status"] == "succeeded"
