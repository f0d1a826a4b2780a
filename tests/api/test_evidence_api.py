"""Evidence over real HTTP, on both backends: who may attach and read, a byte-exact round trip
with its SHA-256 header, the downloader on the chain of custody, the size limit, tampering."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import orjson
import pytest

from quell.api.app import create_app
from quell.governance.permissions import Permission, Role, permissions_of
from quell.runtime import Runtime
from tests.fixtures.servers import LiveServer, start_server

MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}
Closing = Callable[[httpx.Client], httpx.Client]


@pytest.fixture
def incident_id(runtime: Runtime) -> str:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    (incident,) = runtime.incidents.list_all()
    return incident.id


@pytest.mark.parametrize("role", list(Role), ids=[role.value for role in Role])
def test_each_role_attaches_reads_and_verifies_by_its_permissions(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Closing,
    incident_id: str,
    role: Role,
) -> None:
    granted = permissions_of(role)
    client = closing(live_server.client(role_tokens[role]))
    existing = runtime.evidence.add(incident_id, b"seed", name="seed.txt", by="alice")
    upload = client.post(
        f"/api/incidents/{incident_id}/evidence", params={"name": "a.txt"}, content=b"hello"
    )
    reads = [
        client.get(f"/api/incidents/{incident_id}/evidence"),
        client.get(f"/api/evidence/{existing.id}"),
        client.get(f"/api/evidence/{existing.id}/content"),
        client.get(f"/api/evidence/{existing.id}/custody"),
    ]
    verify = client.post(f"/api/evidence/{existing.id}/verify")

    writes = Permission.INCIDENTS_WRITE in granted
    assert upload.status_code == (201 if writes else 403), upload.text
    assert verify.status_code == (200 if writes else 403), verify.text
    for response in reads:
        wanted = 200 if Permission.INCIDENTS_READ in granted else 403
        assert response.status_code == wanted, (response.request.url, response.text)
    if not writes:
        assert upload.json()["permission"] == "incidents:write"
        assert [e.name for e in runtime.evidence.list(incident_id)] == ["seed.txt"]


def test_an_upload_downloads_byte_exact_and_the_downloader_is_on_the_custody(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Closing,
    incident_id: str,
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    auditor = closing(live_server.client(role_tokens[Role.AUDITOR]))
    content = os.urandom(3 * 1024 * 1024 + 17)  # past the 1 MiB limit of other routes
    digest = hashlib.sha256(content).hexdigest()

    def chunks() -> Iterator[bytes]:  # streamed, without a Content-Length
        for start in range(0, len(content), 65_536):
            yield content[start : start + 65_536]

    added = analyst.post(
        f"/api/incidents/{incident_id}/evidence",
        params={"name": "../mémoire dump.bin", "media_type": "application/x-memdump",
                "description": "from the laptop"},
        content=chunks(),
    )  # fmt: skip
    assert added.status_code == 201, added.text
    evidence = added.json()
    assert (evidence["sha256"], evidence["size"]) == (digest, len(content))
    assert (evidence["name"], evidence["added_by"]) == (".._mémoire dump.bin", "test-analyst")
    assert evidence["media_type"] == "application/x-memdump"
    assert auditor.get(f"/api/evidence/{evidence['id']}").json() == evidence

    download = auditor.get(
        f"/api/evidence/{evidence['id']}/content", params={"purpose": "timeline review"}
    )
    assert download.status_code == 200, download.text
    assert download.content == content
    assert hashlib.sha256(download.content).hexdigest() == download.headers["x-content-sha256"]
    assert download.headers["x-content-sha256"] == digest
    assert download.headers["content-type"] == "application/x-memdump"
    assert download.headers["content-length"] == str(len(content))
    assert download.headers["x-content-type-options"] == "nosniff"
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename=".._m_moire dump.bin"')
    assert disposition.endswith("filename*=UTF-8''" + quote(".._mémoire dump.bin", safe=""))

    custody = auditor.get(f"/api/evidence/{evidence['id']}/custody").json()
    assert [(c["action"], c["actor"]) for c in custody] == [
        ("added", "test-analyst"),
        ("read", "test-auditor"),
    ]
    assert custody[0]["detail"]["sha256"] == digest
    assert custody[1]["detail"] == {"purpose": "timeline review"}
    listed = auditor.get(f"/api/incidents/{incident_id}/evidence").json()
    assert [e["id"] for e in listed] == [evidence["id"]]
    shown = auditor.get(f"/api/incidents/{incident_id}").json()
    assert [e["sha256"] for e in shown["evidence"]] == [digest]
    assert shown["timeline"][-1]["kind"] == "evidence_added"


def test_a_changed_blob_is_refused_and_fails_verification(
    live_server: LiveServer,
    runtime: Runtime,
    role_tokens: dict[Role, str],
    closing: Closing,
    incident_id: str,
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    added = analyst.post(
        f"/api/incidents/{incident_id}/evidence", params={"name": "a.txt"}, content=b"original"
    ).json()
    assert analyst.post(f"/api/evidence/{added['id']}/verify").json() == {
        "id": added["id"],
        "sha256": added["sha256"],
        "ok": True,
    }
    blob = runtime.evidence.blob_path(added["sha256"])
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(b"tampered")

    refused = analyst.get(f"/api/evidence/{added['id']}/content")
    assert refused.status_code == 409
    assert refused.json()["code"] == "conflict"
    assert "does not match its SHA-256" in refused.json()["detail"]
    assert analyst.post(f"/api/evidence/{added['id']}/verify").json()["ok"] is False
    actions = [c["action"] for c in analyst.get(f"/api/evidence/{added['id']}/custody").json()]
    assert actions == ["added", "verified", "read", "verify_failed", "verify_failed"]


def test_refusals_unknown_ids_and_bad_input(
    live_server: LiveServer, role_tokens: dict[Role, str], closing: Closing, incident_id: str
) -> None:
    analyst = closing(live_server.client(role_tokens[Role.ANALYST]))
    missing = "evd_00000000000000000000000000"
    for path in (f"/api/evidence/{missing}", f"/api/evidence/{missing}/content"):
        assert analyst.get(path).status_code == 404
    assert analyst.get("/api/evidence/../custody").status_code == 404
    assert analyst.get("/api/evidence/evd_BAD/custody").status_code == 422
    unknown = analyst.post(
        "/api/incidents/inc_00000000000000000000000000/evidence",
        params={"name": "a"},
        content=b"x",
    )
    assert unknown.status_code == 404
    no_name = analyst.post(f"/api/incidents/{incident_id}/evidence", content=b"x")
    assert no_name.status_code == 422
    bad_type = analyst.post(
        f"/api/incidents/{incident_id}/evidence",
        params={"name": "a", "media_type": "text/html\nx: y"},
        content=b"x",
    )
    assert bad_type.status_code == 422
    assert bad_type.json()["field"] == "media_type"


def test_the_upload_limit_is_the_setting(
    runtime: Runtime, role_tokens: dict[Role, str], closing: Closing, incident_id: str
) -> None:
    settings = runtime.settings.model_copy(update={"evidence_max_bytes": 64 * 1024})
    server = start_server(create_app(dataclasses.replace(runtime, settings=settings)))
    try:
        analyst = closing(server.client(role_tokens[Role.ANALYST]))
        path = f"/api/incidents/{incident_id}/evidence"

        def streamed() -> Iterator[bytes]:
            for _ in range(20):
                yield b"y" * 8192

        declared = analyst.post(path, params={"name": "a"}, content=b"x" * (64 * 1024 + 1))
        chunked = analyst.post(path, params={"name": "b"}, content=streamed())
        fits = analyst.post(path, params={"name": "c"}, content=b"z" * (64 * 1024))
    finally:
        server.stop()
    assert declared.status_code == 413
    assert chunked.status_code == 413, chunked.text
    assert chunked.json()["code"] == "too_large"
    assert fits.status_code == 201, fits.text
    root = runtime.settings.data_dir / "evidence"
    assert [p.name for p in root.rglob("*") if p.is_file()] == [fits.json()["sha256"]]
