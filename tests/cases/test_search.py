"""Full-text search over incidents on both backends (SQLite FTS5, PostgreSQL tsvector): what an
incident is found by, that changes are found after they are made, and that no query is an
error."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from quell.clock import ManualClock
from quell.errors import InvalidInput
from quell.runtime import Runtime

MAPPING = {
    "fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "rule", "user": "u"}
}


def _ingest(runtime: Runtime, title: str, src: str, rule: str, user: str) -> str:
    alert = {"title": title, "ts": "2026-11-28T08:00:00Z", "src": src, "rule": rule, "u": user}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    return next(i.id for i in runtime.incidents.list_all() if i.title == title)


def test_incidents_are_found_by_their_text(runtime: Runtime, clock: ManualClock) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    phish = _ingest(runtime, "Credential phishing page", "203.0.113.9", "Phish kit", "alice")
    beacon = _ingest(runtime, "Cobalt Strike beacon", "198.51.100.4", "C2 traffic", "bob")
    search = runtime.incident_search

    def ids(query: str) -> list[str]:
        return [incident.id for incident, _rank in search.search(query)]

    assert ids("phishing") == [phish]
    assert ids("cobalt beacon") == [beacon]  # every word
    assert ids("cobalt phishing") == []
    assert ids("198.51.100.4") == [beacon]  # an observable
    assert ids("C2 traffic") == [beacon]  # the alert's rule
    assert ids("alice") == [phish]  # the user in the alert
    assert ids('"quote" AND (NOT x) OR*') == []  # engine syntax is words, never an error
    with pytest.raises(InvalidInput, match="at least one word"):
        search.search("  ...  ")

    # What people add is found once it is there.
    clock.advance(timedelta(seconds=1))
    runtime.cases.add_note(beacon, "Lateral movement towards the payroll server", by="alice")
    runtime.cases.update(phish, by="alice", tags=["mfa-fatigue"], assignee="carol")
    runtime.cases.add_task(phish, "Reset the VPN token", by="alice")
    assert ids("payroll") == [beacon]
    assert ids("mfa-fatigue") == [phish]
    assert ids("carol") == [phish]
    assert ids("vpn token") == [phish]
    assert runtime.incident_search.refresh() == 0  # nothing left to index
