"""``quell sla show|set|reset`` and the clocks in ``quell incident show``, on both backends."""

from __future__ import annotations

import json

import orjson
import pytest

from quell.runtime import Runtime
from tests.cli.conftest import Invoke

MAPPING = {"fields": {"title": "title", "time": "ts", "severity": "sev", "src.ip": "src"}}


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"QUELL_DATABASE_URL": database_url}


def test_the_sla_policy_from_the_command_line(
    invoke: Invoke, env: dict[str, str], runtime: Runtime
) -> None:
    shown = invoke("sla", "show", env=env)
    assert shown.exit_code == 0, shown.stderr
    assert "critical" in shown.stdout
    assert "(default)" in shown.stdout

    changed = invoke(
        "sla", "set", "CRITICAL", "--acknowledge", "10m", "--contain", "2h", "--close", "none",
        env=env,
    )  # fmt: skip
    assert changed.exit_code == 0, changed.stderr
    assert changed.stdout.strip() == "critical: acknowledge 10m, contain 2h, close none"
    policy = {p["severity"]: p for p in json.loads(invoke("sla", "show", "--json", env=env).stdout)}
    assert (policy["critical"]["acknowledge_s"], policy["critical"]["close"]) == (600, None)
    assert policy["critical"]["updated_by"].startswith("cli:")

    refused = invoke("sla", "set", "high", "--contain", "soon", env=env)
    assert refused.exit_code == 1
    assert "is not a duration" in refused.stderr
    assert invoke("sla", "set", "high", env=env).exit_code == 1
    assert invoke("sla", "set", "urgent", "--close", "1d", env=env).exit_code == 2

    reset = json.loads(invoke("sla", "reset", "critical", "--json", env=env).stdout)
    assert (reset["acknowledge"], reset["close"], reset["default"]) == ("15m", "3d", True)

    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alert = {"title": "beacon", "ts": "2026-11-28T08:00:00Z", "sev": "high", "src": "1.2.3.4"}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    (incident,) = runtime.incidents.list_all()
    runtime.sla.check()
    shown_incident = json.loads(invoke("incident", "show", incident.id, "--json", env=env).stdout)
    assert [c["metric"] for c in shown_incident["slas"]] == ["acknowledge", "contain", "close"]
    text = invoke("incident", "show", incident.id, env=env).stdout
    assert "sla acknowledge: " in text  # breached: this process runs on the real clock


def test_the_severities_offered_are_the_ones_the_policy_knows() -> None:
    from quell.cases.sla import SEVERITIES
    from quell.cli.sla import SEVERITY_NAMES

    assert list(SEVERITIES) == SEVERITY_NAMES
