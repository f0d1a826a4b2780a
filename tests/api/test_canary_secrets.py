"""No secret value appears in any log, audit event, journal row or API response: canary secrets
are planted (a chat webhook URL, an intake HMAC secret, a user's password, API and session
tokens, an approval link) and a whole scenario runs over real HTTP on both backends: a signed
alert in, a triggered run that asks an approval, a link sent to chat and used, a message posted
through the webhook. Then every log line, every row of every table, every audit event (and
the export) and the answer of every GET route are searched for each canary."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import orjson
import pytest
import structlog
from sqlalchemy import select

from quell.api.app import create_app
from quell.api.server import bind_socket, bound_url
from quell.ingest.signing import sign
from quell.logs import configure_logging
from quell.runtime import Runtime
from quell.sdk import SecretValue
from quell.settings import LogFormat, LogLevel
from quell.store.schema import metadata
from tests.api.engine_client import ENDED, settle
from tests.fixtures.servers import start_server

CANARY = uuid.uuid4().hex[:12]
WEBHOOK_PATH = f"/services/T0/B0/canary-webhook-{CANARY}"
HMAC_SECRET = f"canary-hmac-{CANARY}"
PASSWORD = f"canary password {CANARY}"
MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src"}}
PLAYBOOK = """\
id: tell-the-team
name: Tell the team about an alert
trigger: {on: alert.created}
steps:
  - id: tell
    action: notify.message
    approval: true
    with:
      title: "Alert {{ alert.title }}"
      text: "Source {{ alert.src.ip }}"
"""


class _Chat(BaseHTTPRequestHandler):
    """A Slack incoming webhook: answers ``ok``, remembers what it got."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.seen.append({"path": self.path, "body": body})
        self.send_response(200 if self.path == WEBHOOK_PATH else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def chat() -> Iterator[str]:
    _Chat.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the test, at DEBUG, as Quell writes them; logging is put back as it
    was afterwards (other tests read what they log)."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    saved_structlog = structlog.get_config()
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.DEBUG, stream=stream)
    yield stream
    root.handlers, root.level = saved_root
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.configure(**saved_structlog)


def test_canary_secrets_never_leave_where_they_are_kept(
    runtime: Runtime, chat: str, logs: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    sock = bind_socket("127.0.0.1", 0)
    settings = runtime.settings.model_copy(
        update={"outbound_allow": ["127.0.0.1"], "public_url": bound_url(sock)}
    )
    app_runtime = dataclasses.replace(runtime, settings=settings)
    app_runtime.sources.create(
        "siem", "http", "json", parser_options=MAPPING, secret=SecretValue(HMAC_SECRET)
    )
    app_runtime.connector_instances.create(
        "notify", "notify", {"format": "slack"},
        {"webhook_url": SecretValue(chat + WEBHOOK_PATH)},
    )  # fmt: skip
    for name, role in [("alice", "analyst"), ("bob", "approver")]:
        app_runtime.users.add(name, role, password=SecretValue(PASSWORD), by="setup")
    admin_token = app_runtime.tokens.create("canary-admin", "admin")[1].reveal()
    server = start_server(create_app(app_runtime, embedded_worker=True), sock)
    responses: list[str] = []

    def keep(response: Any) -> Any:
        responses.append(response.text)
        return response

    try:
        with server.client(admin_token) as admin, server.client() as anonymous:
            added = keep(admin.post(
                "/api/playbooks", content=PLAYBOOK, params={"activate": "true"},
                headers={"content-type": "application/yaml"},
            ))  # fmt: skip
            assert added.status_code == 201, added.text
            # The one answer that holds a credential: the session it issues, to its owner.
            login = anonymous.post("/api/login", json={"name": "alice", "password": PASSWORD})
            session = login.json()["token"]
            wrong = keep(anonymous.post("/api/login", json={"name": "bob", "password": "nope!!"}))
            assert wrong.status_code == 401

            body = orjson.dumps(
                {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
            )
            stamp = int(runtime.clock.now().timestamp())
            ingested = keep(anonymous.post(
                "/api/ingest/siem", content=body,
                headers={"X-Quell-Timestamp": str(stamp),
                         "X-Quell-Signature": sign(SecretValue(HMAC_SECRET), stamp, body),
                         "content-type": "application/json"},
            ))  # fmt: skip
            assert ingested.status_code in {200, 202}, ingested.text

            pending: list[dict[str, Any]] = []
            for _ in range(300):  # the triggered run reaches its approval (15 s at most)
                pending = keep(admin.get("/api/approvals")).json()
                if pending:
                    break
                time.sleep(0.05)
            (approval,) = pending
            with server.client(session) as alice:
                sent = keep(alice.post(
                    f"/api/approvals/{approval['id']}/links",
                    json={"user": "bob", "via": "notify"},
                ))  # fmt: skip
                assert sent.status_code == 201, sent.text
            link_message = json.dumps(_Chat.seen[-1]["body"])
            start = link_message.index("/api/approval-links/")
            link_path = link_message[start:].split('"')[0].split(">")[0].split("|")[0]
            link_token = link_path.rsplit("/", 1)[1]
            keep(anonymous.get(link_path))
            # The link went to a channel: it decides with bob's own sign-in.
            bob_session = anonymous.post(
                "/api/login", json={"name": "bob", "password": PASSWORD}
            ).json()["token"]
            anonymous.headers["Authorization"] = f"Bearer {bob_session}"
            decided = keep(anonymous.post(link_path, json={"decision": "approve",
                                                           "comment": "known C2"}))  # fmt: skip
            assert decided.status_code == 200, decided.text
            run = settle(admin, approval["run_id"], until=ENDED)
            assert run["status"] == "succeeded", run["error"]
            assert _Chat.seen[-1]["path"] == WEBHOOK_PATH  # the message went out

            # Every GET route without a parameter, and the ones about this run and approval.
            paths = [
                route.path for route in server.app.routes
                if "GET" in getattr(route, "methods", set()) and "{" not in route.path
            ]  # fmt: skip
            paths += [
                f"/api/runs/{run['id']}",
                f"/api/approvals/{approval['id']}",
                "/api/audit?limit=1000",
                "/api/audit/export",
                "/api/connectors/notify",
            ]
            for path in paths:
                keep(admin.get(path))
    finally:
        server.stop()

    canaries = {
        "webhook": CANARY,
        "hmac secret": HMAC_SECRET,
        "password": PASSWORD,
        "api token": admin_token,
        "session token": session,
        "bob's session": bob_session,
        "approval link": link_token,
    }
    tables = []
    with runtime.db.read() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(select(table)).all()
            tables.append(f"{table.name}: " + " ".join(repr(tuple(row)) for row in rows))
    dumped = "\n".join(tables)
    assert "run_steps:" in dumped
    assert "notify.message" in dumped  # the journal holds the call ...
    audit = [event.as_dict() for event in runtime.audit.list_all(limit=10_000)]
    assert any(e["action"] == "action.call" for e in audit)
    printed = capfd.readouterr()
    places = {
        "logs": logs.getvalue(),
        "stdout/stderr": printed.out + printed.err,
        "database": dumped,
        "audit trail": json.dumps(audit, default=str),
        "API responses": "\n".join(responses),
    }
    assert "approval.approve" in places["audit trail"]
    assert len(places["logs"]) > 1000  # the scenario did log
    leaks = [  # what, where, and the text around it
        f"{what} in {where}: ...{text[max(0, text.index(secret) - 200) : text.index(secret)]}"
        for what, secret in canaries.items()
        for where, text in places.items()
        if secret in text
    ]
    assert leaks == []
