"""``quell incident evidence add|list|get|custody|verify`` on both backends: a round trip."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import orjson
import pytest

from quell.runtime import Runtime
from tests.cli.conftest import Invoke

MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def test_evidence_round_trip_from_the_command_line(
    invoke: Invoke, env: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    (incident,) = runtime.incidents.list_all()
    source = tmp_path / "phish.eml"
    content = os.urandom(200_000)
    source.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()

    added = invoke(
        "incident", "evidence", "add", incident.id, str(source), "--description", "edge capture",
        "--json", env=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    evidence = json.loads(added.stdout)
    assert (evidence["sha256"], evidence["size"], evidence["name"]) == (
        digest,
        len(content),
        "phish.eml",
    )
    assert evidence["media_type"] == "message/rfc822"  # guessed from the name
    renamed = invoke(
        "incident", "evidence", "add", incident.id, str(source), "--name", "../x/notes",
        "--media-type", "text/plain", env=env,
    )  # fmt: skip
    assert renamed.exit_code == 0, renamed.stderr
    assert renamed.stdout.startswith("evidence evd_")

    listed = json.loads(
        invoke("incident", "evidence", "list", incident.id, "--json", env=env).stdout
    )
    assert [(e["name"], e["media_type"]) for e in listed] == [
        ("phish.eml", "message/rfc822"),
        (".._x_notes", "text/plain"),
    ]
    table = invoke("incident", "evidence", "list", incident.id, env=env).stdout
    assert "phish.eml" in table
    assert digest[:16] in table

    out = tmp_path / "out" / "copy.eml"
    out.parent.mkdir()
    got = invoke(
        "incident", "evidence", "get", evidence["id"], "--out", str(out), "--purpose", "review",
        env=env,
    )  # fmt: skip
    assert got.exit_code == 0, got.stderr
    assert out.read_bytes() == content
    assert "(verified)" in got.stdout
    again = invoke("incident", "evidence", "get", evidence["id"], "--out", str(out), env=env)
    assert again.exit_code == 1
    assert "exists; --force overwrites it" in again.stderr
    out.write_bytes(b"old")
    forced = invoke(
        "incident", "evidence", "get", evidence["id"], "--out", str(out), "--force", env=env
    )
    assert forced.exit_code == 0, forced.stderr
    assert out.read_bytes() == content
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.eml"]  # no temporary left

    verified = invoke("incident", "evidence", "verify", evidence["id"], env=env)
    assert verified.exit_code == 0, verified.stderr
    assert "intact" in verified.stdout
    custody = json.loads(
        invoke("incident", "evidence", "custody", evidence["id"], "--json", env=env).stdout
    )
    assert [c["action"] for c in custody] == ["added", "read", "read", "verified"]
    assert custody[1]["detail"] == {"purpose": "review"}
    assert all(c["actor"].startswith("cli:") for c in custody)
    assert "verified" in invoke("incident", "evidence", "custody", evidence["id"], env=env).stdout

    blob = runtime.evidence.blob_path(digest)
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(b"tampered")
    failed = invoke("incident", "evidence", "verify", evidence["id"], env=env)
    assert failed.exit_code == 1
    assert "verification FAILED (mismatch)" in failed.stderr
    refused = invoke(
        "incident", "evidence", "get", evidence["id"], "--out", str(tmp_path / "t.eml"), env=env
    )
    assert refused.exit_code == 1
    assert "does not match its SHA-256" in refused.stderr
    assert not (tmp_path / "t.eml").exists()

    shown = json.loads(invoke("incident", "show", incident.id, "--json", env=env).stdout)
    assert [e["id"] for e in shown["evidence"]] == [e["id"] for e in listed]
