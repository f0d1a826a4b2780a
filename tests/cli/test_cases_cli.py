"""``quell incident update|note|notes|task`` and ``show --json`` on both backends."""

from __future__ import annotations

import json

import orjson
import pytest

from quell.runtime import Runtime
from tests.cli.conftest import Invoke

MAPPING = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "title"}}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def test_a_case_worked_from_the_command_line(
    invoke: Invoke, env: dict[str, str], runtime: Runtime
) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "src": "203.0.113.9"}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    (incident,) = runtime.incidents.list_all()

    changed = invoke(
        "incident", "update", incident.id, "--status", "contained", "--priority", "2",
        "--tag", "c2", "--technique", "T1071.001", "--owner", "alice", env=env,
    )  # fmt: skip
    assert changed.exit_code == 0, changed.stderr
    assert "status: new -> contained" in changed.stdout
    refused = invoke("incident", "update", incident.id, "--status", "closed", env=env)
    assert refused.exit_code == 1
    assert "closing needs a resolution" in refused.stderr
    assert invoke("incident", "note", incident.id, "blocked at the edge", env=env).exit_code == 0
    added = invoke("incident", "task", "add", incident.id, "Reimage the host", env=env)
    task_id = added.stdout.split()[1]
    assert invoke("incident", "task", "done", task_id, "--result", "done", env=env).exit_code == 0
    closed = invoke(
        "incident", "update", incident.id, "--status", "closed", "--resolution", "true_positive",
        env=env,
    )  # fmt: skip
    assert closed.exit_code == 0, closed.stderr

    shown = json.loads(invoke("incident", "show", incident.id, "--json", env=env).stdout)
    assert (shown["status"], shown["resolution"], shown["priority"]) == (
        "closed",
        "true_positive",
        2,
    )
    assert (shown["tags"], shown["techniques"], shown["owner"]) == (["c2"], ["T1071.001"], "alice")
    assert [n["body"] for n in shown["notes"]] == ["blocked at the edge"]
    assert [t["status"] for t in shown["tasks"]] == ["done"]
    assert shown["closed_by"].startswith("cli:")
    listed = json.loads(invoke("incident", "list", "--json", env=env).stdout)
    assert [i["id"] for i in listed] == [incident.id]
    found = json.loads(invoke("incident", "search", "blocked", "edge", "--json", env=env).stdout)
    assert [i["id"] for i in found] == [incident.id]
