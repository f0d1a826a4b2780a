"""The HTTP intake over real HTTP, on both backends."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from sqlalchemy import create_engine, text

from quell.api.app import create_app
from quell.clock import ManualClock
from quell.governance.permissions import Role
from quell.ingest.pipeline import INGEST_LOCK
from quell.ingest.signing import sign
from quell.runtime import Runtime
from quell.sdk.secret import SecretValue
from quell.store.database import Backend
from tests.fixtures.servers import LiveServer, start_server

MAPPING = {"fields": {"title": "title", "time": "ts", "host.hostname": "host", "src.ip": "src"}}
SECRET = SecretValue("whsec-test-0123456789abcdef")
SCHEMA = Path(__file__).parents[1] / "ingest" / "ocsf_detection_finding.schema.json"


def _event(n: int, host: str = "web-01") -> dict[str, Any]:
    return {"title": f"event {n}", "ts": f"2026-03-01T12:{n % 60:02d}:00Z", "host": host}


@pytest.fixture
def hook(runtime: Runtime) -> str:
    runtime.sources.create("hook", "http", "json", parser_options=MAPPING, secret=SECRET)
    return "hook"


def _signed(
    client: httpx.Client, clock: ManualClock, body: bytes, *, at: int | None = None
) -> httpx.Response:
    timestamp = at if at is not None else int(clock.now().timestamp())
    return client.post(
        "/api/ingest/hook",
        content=body,
        headers={
            "X-Quell-Timestamp": str(timestamp),
            "X-Quell-Signature": sign(SECRET, timestamp, body),
            "content-type": "application/json",
        },
    )


def test_one_document_an_array_and_ndjson_are_all_accepted(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    with live_server.client(role_tokens[Role.ANALYST]) as client:
        one = client.post("/api/ingest/hook", json=_event(1))
        array = client.post("/api/ingest/hook", json=[_event(2), _event(3, "db-01")])
        ndjson = client.post(
            "/api/ingest/hook",
            content=b"\n".join(orjson.dumps(_event(n, f"h{n}")) for n in range(4, 9)),
            headers={"content-type": "application/x-ndjson"},
        )
    assert one.status_code == 200, one.text
    assert one.json() == {
        "source": "hook",
        "received": 1,
        "stored": 1,
        "deduplicated": 0,
        "suppressed": 0,
        "dead_lettered": 0,
    }
    assert array.json()["stored"] == 2
    assert ndjson.json()["received"] == 5


def test_bad_records_are_dead_lettered_and_visible(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    body = b'{"title": "ok", "ts": "2026-03-01T12:00:00Z"}\n{"title": "truncated", "ts": \n'
    with live_server.client(role_tokens[Role.ANALYST]) as client:
        result = client.post("/api/ingest/hook", content=body).json()
        assert (result["stored"], result["dead_lettered"]) == (1, 1)
        errors = client.get("/api/ingest/errors", params={"source": "hook"}).json()
    assert len(errors) == 1
    assert errors[0]["reason"].startswith("invalid JSON")
    assert errors[0]["raw"] == '{"title": "truncated", "ts": '


def test_a_signed_request_is_accepted_once(
    live_server: LiveServer, clock: ManualClock, hook: str
) -> None:
    body = orjson.dumps(_event(1))
    with live_server.client() as client:
        first = _signed(client, clock, body)
        assert first.status_code == 200, first.text
        assert first.json()["stored"] == 1
        replayed = _signed(client, clock, body)
    assert replayed.status_code == 401
    assert "already used" in replayed.json()["detail"]


def test_a_bad_or_stale_signature_is_refused(
    live_server: LiveServer, clock: ManualClock, hook: str
) -> None:
    body = orjson.dumps(_event(1))
    now = int(clock.now().timestamp())
    with live_server.client() as client:
        forged = client.post(
            "/api/ingest/hook",
            content=body,
            headers={"X-Quell-Timestamp": str(now), "X-Quell-Signature": "sha256=" + "0" * 64},
        )
        stale = _signed(client, clock, body, at=now - 600)
        tampered = client.post(
            "/api/ingest/hook",
            content=body + b" ",
            headers={"X-Quell-Timestamp": str(now), "X-Quell-Signature": sign(SECRET, now, body)},
        )
    assert forged.status_code == 401
    assert "does not match" in forged.json()["detail"]
    assert stale.status_code == 401
    assert "away from the server's clock" in stale.json()["detail"]
    assert tampered.status_code == 401


def test_a_signature_only_opens_its_own_source(
    live_server: LiveServer, runtime: Runtime, clock: ManualClock, hook: str
) -> None:
    runtime.sources.create("other", "http", "json", parser_options=MAPPING)
    body = orjson.dumps(_event(1))
    now = int(clock.now().timestamp())
    with live_server.client() as client:
        response = client.post(
            "/api/ingest/other",
            content=body,
            headers={"X-Quell-Timestamp": str(now), "X-Quell-Signature": sign(SECRET, now, body)},
        )
    assert response.status_code == 401


def test_a_20_mb_body_is_refused_with_413(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    body = b"[" + b",".join([orjson.dumps(_event(1))] * 1) + b"]" + b" " * (20 * 1024 * 1024)
    with live_server.client(role_tokens[Role.ANALYST]) as client:
        declared = client.post("/api/ingest/hook", content=body)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
            for _ in range(21):
                yield b" " * (1024 * 1024)

        streamed = client.post("/api/ingest/hook", content=chunks())
    assert declared.status_code == 413
    assert declared.json()["code"] == "too_large"
    assert streamed.status_code == 413


def test_a_token_without_ingest_permission_gets_403(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    with live_server.client(role_tokens[Role.AUDITOR]) as client:
        assert client.post("/api/ingest/hook", json=_event(1)).status_code == 403


def test_unknown_source_is_404_and_a_non_http_source_is_refused(
    live_server: LiveServer, runtime: Runtime, role_tokens: dict[Role, str]
) -> None:
    runtime.sources.create("files", "file", "suricata")
    with live_server.client(role_tokens[Role.ADMIN]) as client:
        assert client.post("/api/ingest/nope", json={}).status_code == 404
        wrong = client.post("/api/ingest/files", json={})
    assert wrong.status_code == 422
    assert "file source" in wrong.json()["detail"]


def test_an_overloaded_intake_answers_503_with_retry_after(
    live_server: LiveServer, runtime: Runtime, role_tokens: dict[Role, str], hook: str
) -> None:
    """While a batch waits for the write lock, a second batch beyond the backlog is refused."""
    service = live_server.app.state.ingest
    service.max_pending = 3
    with live_server.client(role_tokens[Role.ANALYST]) as warmup:  # records the token's last use
        assert warmup.get("/api/whoami").status_code == 200
    release = _hold_the_ingest_lock(runtime)
    results: dict[str, httpx.Response] = {}

    def first() -> None:
        with live_server.client(role_tokens[Role.ANALYST]) as client:
            results["first"] = client.post("/api/ingest/hook", json=[_event(1), _event(2)])

    worker = threading.Thread(target=first)
    worker.start()
    try:
        for _ in range(500):  # bounded: until the first batch is in the service
            if service.pending:
                break
            threading.Event().wait(0.01)
        assert service.pending == 2
        with live_server.client(role_tokens[Role.ANALYST]) as client:
            refused = client.post("/api/ingest/hook", json=[_event(3), _event(4)])
    finally:
        release()
        worker.join(30)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded"
    assert results["first"].status_code == 200
    assert results["first"].json()["stored"] == 2


def _hold_the_ingest_lock(runtime: Runtime) -> Any:
    """Take what an ingest transaction needs, from another connection; return the release."""
    if runtime.db.backend is Backend.SQLITE:
        holder = sqlite3.connect(runtime.db.url.database or "", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

        def release_sqlite() -> None:
            holder.execute("ROLLBACK")
            holder.close()

        return release_sqlite
    engine = create_engine(runtime.db.url)
    conn = engine.connect()
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": INGEST_LOCK})

    def release_pg() -> None:
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": INGEST_LOCK})
        conn.close()
        engine.dispose()

    return release_pg


def test_alerts_render_as_valid_ocsf(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    schema = json.loads(SCHEMA.read_text())
    with live_server.client(role_tokens[Role.ANALYST]) as client:
        client.post("/api/ingest/hook", json={**_event(1), "src": "203.0.113.9"})
        (alert,) = client.get("/api/alerts").json()
        ocsf = client.get(f"/api/alerts/{alert['id']}", params={"format": "ocsf"}).json()
        plain = client.get(f"/api/alerts/{alert['id']}").json()
    jsonschema.validate(ocsf, schema)
    assert ocsf["class_uid"] == 2004
    assert ocsf["type_uid"] == 200401
    assert ocsf["metadata"]["uid"] == alert["id"]
    assert {"type_id": 2, "value": "203.0.113.9"}.items() <= next(
        o for o in ocsf["observables"] if o["value"] == "203.0.113.9"
    ).items()
    assert plain["raw"].startswith('{"title":"event 1"')


def test_incidents_list_and_show_with_alerts_and_timeline(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    with live_server.client(role_tokens[Role.ANALYST]) as client:
        client.post("/api/ingest/hook", json=[_event(1), {**_event(2), "title": "other"}])
        (incident,) = client.get("/api/incidents", params={"status": "open"}).json()
        shown = client.get(f"/api/incidents/{incident['id']}").json()
    assert incident["alert_count"] == 2
    assert {a["title"] for a in shown["alerts"]} == {"event 1", "other"}
    assert {"type": "host", "value": "web-01"} in shown["keys"]
    assert shown["timeline"][0]["kind"] == "created"


def test_dead_letters_replay_over_the_api(
    live_server: LiveServer, runtime: Runtime, role_tokens: dict[Role, str]
) -> None:
    runtime.sources.create(
        "fixme", "http", "json", parser_options={"fields": {"title": "name", "time": "ts"}}
    )
    with live_server.client(role_tokens[Role.ADMIN]) as client:
        assert client.post("/api/ingest/fixme", json=_event(1)).json()["dead_lettered"] == 1
        patched = client.patch("/api/sources/fixme", json={"parser_options": MAPPING})
        assert patched.status_code == 200, patched.text
        replay = client.post("/api/ingest/errors/replay", json={"source": "fixme"})
        assert replay.json() == {
            "replayed": 1,
            "still_failing": 0,
            "stored": 1,
            "deduplicated": 0,
            "suppressed": 0,
        }
        assert client.get("/api/ingest/errors", params={"source": "fixme"}).json() == []


def test_source_secrets_are_never_returned(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as client:
        listed = client.get("/api/sources").text
        created = client.post(
            "/api/sources",
            json={
                "name": "new-hook",
                "kind": "http",
                "format": "json",
                "parser_options": MAPPING,
                "secret": "another-canary-secret",
            },
        )
    assert SECRET.reveal() not in listed
    assert "runner" not in json.loads(listed)[0]  # an HTTP source has nothing running
    assert created.status_code == 201
    assert "another-canary-secret" not in created.text
    assert created.json()["has_secret"] is True


def test_an_unknown_format_is_refused_naming_the_formats(
    live_server: LiveServer, role_tokens: dict[Role, str]
) -> None:
    with live_server.client(role_tokens[Role.ADMIN]) as client:
        response = client.post(
            "/api/sources", json={"name": "odd", "kind": "http", "format": "nessus-xml"}
        )
    assert response.status_code == 422
    problem = response.json()
    assert problem["field"] == "format"
    assert "unknown format 'nessus-xml'" in problem["detail"]
    assert "suricata" in problem["detail"]


def test_a_signed_request_that_was_not_ingested_may_be_sent_again(
    live_server: LiveServer, clock: ManualClock, hook: str
) -> None:
    """A refused body releases its signature: the retry is judged again, not called a replay."""
    body = b"[" + b",".join([b"{}"] * 50_001) + b"]"  # one record over the per-request cap
    with live_server.client() as client:
        first = _signed(client, clock, body)
        again = _signed(client, clock, body)
    assert first.status_code == 413, first.text
    assert "50000" in first.json()["detail"]
    assert again.status_code == 413, again.text


def test_a_signature_does_not_say_whether_a_source_exists(
    live_server: LiveServer, runtime: Runtime, clock: ManualClock, hook: str
) -> None:
    runtime.sources.create("unsigned", "http", "json", parser_options=MAPPING)
    body = orjson.dumps(_event(1))
    now = int(clock.now().timestamp())
    headers = {"X-Quell-Timestamp": str(now), "X-Quell-Signature": sign(SECRET, now, body)}
    with live_server.client() as client:
        unknown = client.post("/api/ingest/nope", content=body, headers=headers)
        no_secret = client.post("/api/ingest/unsigned", content=body, headers=headers)
    assert unknown.status_code == no_secret.status_code == 401
    assert "does not match" in unknown.json()["detail"]
    assert "does not match" in no_secret.json()["detail"]


def test_a_signature_header_opens_only_the_intake(
    live_server: LiveServer, role_tokens: dict[Role, str], clock: ManualClock, hook: str
) -> None:
    """Other routes under /api/ingest need a token and keep the small body limit."""
    now = int(clock.now().timestamp())
    headers = {"X-Quell-Timestamp": str(now), "X-Quell-Signature": "sha256=" + "0" * 64}
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    with live_server.client() as client:
        replay = client.post("/api/ingest/errors/replay", json={}, headers=headers)
        listing = client.get("/api/ingest/hook", headers=headers)
    with live_server.client(role_tokens[Role.ADMIN]) as client:
        large = client.post("/api/ingest/errors/replay", content=big)
    assert replay.status_code == 401
    assert "Bearer" in replay.json()["detail"]
    assert listing.status_code == 401
    assert large.status_code == 413  # the 16 MiB allowance is the intake's alone


def test_a_credential_in_connection_settings_is_refused(
    live_server: LiveServer, role_tokens: dict[Role, str], hook: str
) -> None:
    """Settings are shown in clear, so a password put there is refused, not stored."""
    connection = {
        "host": "127.0.0.1",
        "username": "soc",
        "password": "canary-imap-password",
    }
    with live_server.client(role_tokens[Role.ADMIN]) as client:
        created = client.post(
            "/api/sources",
            json={
                "name": "mailbox",
                "kind": "imap",
                "format": "email",
                "settings": {"connection": connection},
            },
        )
        updated = client.patch(
            "/api/sources/hook", json={"settings": {"connection": {"api_key": "canary-key"}}}
        )
        listed = client.get("/api/sources").text
    assert created.status_code == 422
    assert created.json()["field"] == "settings.connection.password"
    assert "canary-imap-password" not in created.text
    assert updated.status_code == 422
    assert updated.json()["field"] == "settings.connection.api_key"
    assert "canary" not in listed
    assert "mailbox" not in listed


def test_a_background_source_says_whether_this_server_runs_it(
    live_server: LiveServer, runtime: Runtime, role_tokens: dict[Role, str]
) -> None:
    runtime.sources.create("fw", "syslog", "syslog", settings={"connection": {"udp_port": 0}})
    with live_server.client(role_tokens[Role.ANALYST]) as client:
        shown = client.get("/api/sources/fw").json()
    assert shown["runner"] == {"state": "stopped"}  # this test server does not run sources


def test_a_source_added_through_a_serving_api_starts_and_a_removed_one_stops(
    runtime: Runtime, role_tokens: dict[Role, str]
) -> None:
    """A server that runs its sources (as ``quell serve``) looks at them again at once after a
    change through its API, and every few seconds for changes made elsewhere (the CLI)."""
    server = start_server(create_app(runtime, run_sources=True))
    try:
        with server.client(role_tokens[Role.ADMIN]) as admin:
            created = admin.post(
                "/api/sources",
                json={"name": "fw", "kind": "syslog", "format": "syslog",
                      "settings": {"connection": {"udp_port": 0, "tcp_port": 0}}},
            )  # fmt: skip
            assert created.status_code == 201, created.text
            _until_runner(admin, "fw", "running")
            assert admin.delete("/api/sources/fw").status_code == 204
            runtime.sources.create(  # elsewhere, as the CLI does: found by the periodic look
                "fw2", "syslog", "syslog", settings={"connection": {"udp_port": 0}}
            )
            _until_runner(admin, "fw2", "running", seconds=15)
    finally:
        server.stop()


def _until_runner(client: httpx.Client, name: str, state: str, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while True:
        shown = client.get(f"/api/sources/{name}").json()
        if shown["runner"]["state"] == state:
            return
        assert time.monotonic() < deadline, shown["runner"]
        time.sleep(0.05)
