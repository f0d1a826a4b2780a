"""``quell ingest``, ``alert``, ``incident``, ``source`` and ``suppression`` on both backends."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.cli.conftest import Invoke
from tests.cli.processes import quell_command, run_quell
from tests.fixtures.requirements import corpus_path

COUNT_KEYS = {"received", "stored", "deduplicated", "suppressed", "dead_lettered"}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def _last_json(output: str) -> dict[str, int]:
    counts: dict[str, int] = json.loads(output.strip().splitlines()[-1])
    return counts


@pytest.mark.requires("corpus")
def test_ingest_a_file_by_format_ends_with_the_counts(invoke: Invoke, env: dict[str, str]) -> None:
    eve = str(corpus_path() / "alerts" / "suricata" / "test-eve-small.log")
    first = invoke("ingest", "--format", "suricata", eve, env=env)
    assert first.exit_code == 0, first.stderr
    counts = _last_json(first.stdout)
    assert set(counts) == COUNT_KEYS
    assert counts == {
        "received": 12,
        "stored": 1,
        "deduplicated": 0,
        "suppressed": 11,
        "dead_lettered": 0,
    }
    again = _last_json(invoke("ingest", "--format", "suricata", eve, env=env).stdout)
    assert (again["stored"], again["deduplicated"]) == (0, 1)

    sources = json.loads(invoke("source", "list", "--json", env=env).stdout)
    assert [(s["name"], s["kind"], s["format"]) for s in sources] == [
        ("file-suricata", "file", "suricata")
    ]
    alerts = json.loads(invoke("alert", "list", "--json", env=env).stdout)
    assert alerts[0]["count"] == 2
    incidents = json.loads(invoke("incident", "list", "--json", env=env).stdout)
    assert incidents[0]["alert_count"] == 1
    shown = json.loads(invoke("incident", "show", incidents[0]["id"], "--json", env=env).stdout)
    assert shown["alerts"][0]["id"] == alerts[0]["id"]
    # The text shows the observables too (only the JSON did).
    text = invoke("incident", "show", incidents[0]["id"], env=env).stdout
    assert shown["observables"]
    for observable in shown["observables"]:
        assert f"{observable['type']} " in text
        assert f" {observable['value']} " in text
    ocsf = json.loads(invoke("alert", "show", alerts[0]["id"], "--format", "ocsf", env=env).stdout)
    assert ocsf["class_uid"] == 2004


@pytest.mark.requires("corpus")
def test_ingest_reads_stdin_in_a_real_process(env: dict[str, str]) -> None:
    body = (corpus_path() / "alerts" / "zeek" / "test-notice.log").read_bytes()
    result = subprocess.run(
        [*quell_command(), "--log-level", "warning", "ingest", "--format", "zeek", "-"],
        input=body,
        capture_output=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _last_json(result.stdout.decode())["stored"] == 4


def test_bad_input_is_dead_lettered_then_replayed_after_a_mapping_fix(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "events.ndjson"
    data.write_bytes(
        b"\n".join(
            orjson.dumps({"msg": f"event {n}", "when": "2026-03-01T12:00:00Z", "h": f"h{n}"})
            for n in range(3)
        )
        + b"\n{broken\n"
    )
    added = invoke(
        "source", "add", "edr", "--kind", "file", "--format", "json",
        "--options", '{"fields": {"title": "title", "time": "when"}}',
        env=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    counts = _last_json(invoke("ingest", "--source", "edr", str(data), env=env).stdout)
    assert counts["dead_lettered"] == 4
    errors = json.loads(invoke("ingest", "errors", "--json", env=env).stdout)
    assert len(errors) == 4
    assert any(e["reason"].startswith("invalid JSON") for e in errors)
    table = invoke("ingest", "errors", env=env).stdout
    assert "mapped from 'title'" in table

    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("fields:\n  title: msg\n  time: when\n  host.hostname: h\n")
    assert invoke("source", "update", "edr", "--options", f"@{mapping}", env=env).exit_code == 0
    replay = _last_json(invoke("ingest", "replay", "--source", "edr", env=env).stdout)
    assert replay == {
        "replayed": 3,
        "still_failing": 1,
        "stored": 3,
        "deduplicated": 0,
        "suppressed": 0,
    }
    assert len(json.loads(invoke("ingest", "errors", "--json", env=env).stdout)) == 1


def test_suppression_rules_are_managed_and_counted(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    invoke(
        "source", "add", "edr", "--kind", "file", "--format", "json",
        "--options", '{"fields": {"title": "t", "time": "ts", "src.ip": "ip"}}',
        env=env,
    )  # fmt: skip
    added = invoke("suppression", "add", "scanner", "--match", '{"src.ip": "10.0.0.0/8"}', env=env)
    assert added.exit_code == 0, added.stderr
    data = tmp_path / "e.json"
    data.write_text(
        json.dumps(
            [
                {"t": "scan", "ts": "2026-03-01T12:00:00Z", "ip": "10.1.2.3"},
                {"t": "real", "ts": "2026-03-01T12:00:00Z", "ip": "203.0.113.1"},
            ]
        )
    )
    counts = _last_json(invoke("ingest", "--source", "edr", str(data), env=env).stdout)
    assert (counts["stored"], counts["suppressed"]) == (1, 1)
    rules = json.loads(invoke("suppression", "list", "--json", env=env).stdout)
    assert {r["name"]: r["hits"] for r in rules} == {"scanner": 1}
    assert invoke("suppression", "remove", "scanner", env=env).exit_code == 0
    bad = invoke("suppression", "add", "x", "--match", '{"nope": 1}', env=env)
    assert bad.exit_code == 1
    assert "unknown alert field 'nope'" in bad.stderr


def test_sources_are_configured_by_name_and_keep_secrets_out_of_output(
    invoke: Invoke, env: dict[str, str]
) -> None:
    added = invoke(
        "source", "add", "hook", "--kind", "http", "--format", "json",
        "--options", '{"fields": {"title": "t", "time": "ts"}}',
        "--secret-env", "HOOK_SECRET",
        env={**env, "HOOK_SECRET": "hmac-canary-7788"},
    )  # fmt: skip
    assert added.exit_code == 0, added.stderr
    shown = invoke("source", "show", "hook", env=env).stdout
    assert json.loads(shown)["has_secret"] is True
    assert "hmac-canary-7788" not in shown
    unknown = invoke(
        "source", "add", "x", "--kind", "http", "--format", "json",
        "--options", '{"fields": {}}', env=env,
    )  # fmt: skip
    assert unknown.exit_code == 1
    assert "option 'fields'" in unknown.stderr
    assert invoke("source", "remove", "hook", env=env).exit_code == 0
    assert json.loads(invoke("source", "list", "--json", env=env).stdout) == []


def test_a_large_file_shows_a_progress_bar_on_request(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "many.ndjson"
    data.write_bytes(
        b"\n".join(
            orjson.dumps({"t": f"e{n}", "ts": "2026-03-01T12:00:00Z", "h": f"h{n % 9}"})
            for n in range(20_000)
        )
    )
    invoke(
        "source", "add", "bulk", "--kind", "file", "--format", "json",
        "--options", '{"fields": {"title": "t", "time": "ts", "host.hostname": "h"}}',
        env=env,
    )  # fmt: skip
    result = invoke("ingest", "--source", "bulk", "--progress", str(data), env=env)
    assert result.exit_code == 0, result.stderr
    assert "ingesting many.ndjson" in result.stderr
    assert _last_json(result.stdout)["stored"] == 20_000


def test_ingest_needs_a_source_or_a_format(invoke: Invoke, env: dict[str, str]) -> None:
    result = invoke("ingest", "/dev/null", env=env)
    assert result.exit_code == 1
    assert "give --source NAME, or --format FORMAT" in result.stderr
    missing = run_quell("ingest", "--format", "zeek", "/nonexistent/file.log", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error: cannot read /nonexistent/file.log: No such file or directory"
    )


def test_an_unknown_format_is_a_usage_error_listing_the_formats(
    invoke: Invoke, env: dict[str, str]
) -> None:
    result = invoke("ingest", "--format", "nessus-xml", "/dev/null", env=env)
    assert result.exit_code == 2
    assert "nessus-xml" in result.stderr
    assert "suricata" in result.stderr


def test_plain_json_ingests_without_a_mapping(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    """``--format json`` alone reads the common names; what it cannot read is kept, named."""
    data = tmp_path / "alerts.ndjson"
    data.write_bytes(
        b"\n".join(
            [
                orjson.dumps(
                    {"title": "Port scan", "@timestamp": "2026-03-01T12:00:00Z",
                     "src_ip": "203.0.113.9", "host": "web-01", "severity": "high"}
                ),
                orjson.dumps({"message": "sudo failure", "timestamp": "2026-03-01T12:01:00Z",
                              "user": {"name": "bob"}, "host": {"name": "db-01"}}),
                orjson.dumps({"note": "neither title nor time"}),
            ]
        )
    )  # fmt: skip
    result = invoke("ingest", "--format", "json", str(data), env=env)
    assert result.exit_code == 0, result.stderr
    counts = _last_json(result.stdout)
    assert (counts["stored"], counts["dead_lettered"]) == (2, 1)
    alerts = json.loads(invoke("alert", "list", "--json", env=env).stdout)
    by_title = {alert["title"]: alert for alert in alerts}
    assert set(by_title) == {"Port scan", "sudo failure"}
    assert by_title["Port scan"]["severity"] == 4  # OCSF severity_id: High
    assert by_title["Port scan"]["host"]["hostname"] == "web-01"
    assert by_title["sudo failure"]["host"]["hostname"] == "db-01"
    assert by_title["sudo failure"]["user"] == "bob"
    errors = invoke("ingest", "errors", "--json", env=env).stdout
    assert "title" in errors
