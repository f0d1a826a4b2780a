"""Full-text search over incidents on both backends (SQLite FTS5, PostgreSQL tsvector): what an
incident is found by, that changes are found after they are made, and that no query is an
error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import event, select, update

from quell.cases import search as search_module
from quell.clock import ManualClock
from quell.errors import InvalidInput
from quell.runtime import Runtime
from quell.store.database import Backend
from quell.store.schema import incident_documents, incident_keys, incidents
from tests.fixtures.plans import explain, statements

MAPPING = {
    "fields": {"title": "title", "time": "ts", "src.ip": "src", "rule_name": "rule", "user": "u"}
}


def _ingest(runtime: Runtime, title: str, src: str, rule: str, user: str) -> str:
    alert = {"title": title, "ts": "2026-11-28T08:00:00Z", "src": src, "rule": rule, "u": user}
    runtime.pipeline.ingest("edr", [orjson.dumps(alert)])
    with runtime.db.read() as conn:
        (incident_id,) = conn.execute(select(incidents.c.id).where(incidents.c.title == title))
    return str(incident_id[0])


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


def test_a_search_keeps_to_the_status_asked(runtime: Runtime, clock: ManualClock) -> None:
    """``status`` went unheeded beside ``q``: closed incidents came back among the open ones."""
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    live = _ingest(runtime, "Beacon to a new domain", "203.0.113.9", "C2", "alice")
    done = _ingest(runtime, "Beacon to an old domain", "198.51.100.4", "C2", "bob")
    clock.advance(timedelta(seconds=1))
    runtime.cases.update(done, by="alice", status="closed", resolution="false_positive")

    def ids(status: str | None, offset: int = 0) -> list[str]:
        found = runtime.incident_search.search("beacon", status=status, offset=offset)
        return sorted(incident.id for incident, _rank in found)

    assert ids(None) == sorted([live, done])
    assert ids("open") == [live]
    assert ids("closed") == [done]
    assert ids("contained") == []
    assert ids("open", offset=1) == []
    with pytest.raises(InvalidInput, match="status must be open or one of"):
        runtime.incident_search.search("beacon", status="shelved")


def test_documents_are_read_outside_the_write_transaction(runtime: Runtime) -> None:
    """Indexing reads what goes into the documents (incidents, alerts, their observables) in a
    read transaction, and holds the write lock (on SQLite, ingest's too) only to store them.
    An incident's document has the observables of each of its alerts, those that are no
    correlation key too (here the destination addresses)."""
    mapping = {"fields": {**MAPPING["fields"], "dst.ip": "dst"}}
    runtime.sources.create("edr", "http", "json", parser_options=mapping)
    runtime.pipeline.ingest(
        "edr",
        [
            orjson.dumps(
                {"title": "Password spraying", "ts": f"2026-11-28T08:0{n}:00Z",
                 "src": "203.0.113.77", "dst": f"198.51.100.{n + 1}", "rule": "Spray", "u": user}
            )
            for n, user in enumerate(("alice", "bob", "carol"))
        ],
    )  # fmt: skip
    (incident,) = [i.id for i in runtime.incidents.list_all()]
    assert len(runtime.alerts.list_all(incident_id=incident)) == 3
    in_write: list[str] = []

    def seen(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if conn.get_execution_options().get("quell_write"):
            in_write.append(" ".join(statement.split()))

    event.listen(runtime.db.engine, "before_cursor_execute", seen)
    try:
        assert runtime.incident_search.refresh() == 1
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", seen)
    stored = [s for s in in_write if s.upper().startswith(("INSERT", "DELETE"))]
    assert stored, in_write  # the document was stored, in a write transaction
    assert all(s.upper().startswith(("BEGIN", "INSERT", "DELETE")) for s in in_write), in_write
    assert not [s for s in in_write if "alerts" in s or "incident_keys" in s], in_write
    with runtime.db.read() as conn:
        body = conn.execute(
            select(incident_documents.c.body).where(incident_documents.c.incident_id == incident)
        ).scalar_one()
        keys = set(conn.execute(select(incident_keys.c.value)).scalars())
    lines = set(body.split("\n"))
    destinations = {"198.51.100.1", "198.51.100.2", "198.51.100.3"}
    assert not destinations & keys  # found only through the alerts' observables
    assert destinations | {"alice", "bob", "carol", "203.0.113.77"} <= lines


def _many(runtime: Runtime, count: int) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    alerts = [
        orjson.dumps({"title": f"scan {n}", "ts": "2026-11-28T08:00:00Z", "rule": "Scan",
                      "src": f"198.18.{n // 250}.{n % 250 + 1}", "u": f"user{n}"})
        for n in range(count)
    ]  # fmt: skip
    assert runtime.pipeline.ingest("edr", alerts).stored == count


def test_after_a_full_comparison_a_refresh_reads_the_changed_incidents_by_index(
    runtime: Runtime, clock: ManualClock
) -> None:
    """Every search refreshed first by comparing every incident with its document (11 ms
    of a 15 ms search at 13,700 incidents). After a first full comparison, a refresh reads the
    incidents changed since a minute before the newest change it saw."""
    _many(runtime, 600)
    search = runtime.incident_search
    assert search.refresh() == 600  # the full comparison
    clock.advance(timedelta(hours=1))
    beacon = _ingest(runtime, "Cobalt Strike beacon", "203.0.113.4", "C2 traffic", "mallory")
    assert search.refresh() == 1
    clock.advance(timedelta(minutes=10))
    runtime.cases.add_note(beacon, "Lateral movement towards the payroll server", by="alice")

    def reads(sql: str) -> bool:
        return "incident_documents" in sql and sql.lstrip().upper().startswith("SELECT")

    with statements(runtime.db, reads) as ran:
        found = [incident.id for incident, _rank in search.search("payroll")]
    assert found == [beacon]
    (stale, *_rest) = ran
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE incidents")
            conn.exec_driver_sql("ANALYZE incident_documents")
        plan = explain(conn, runtime.db.backend, stale)
    if runtime.db.backend is Backend.SQLITE:
        assert plan[0] == "SEARCH incidents USING INDEX ix_incidents_updated_at (updated_at>?)"
        assert not [step for step in plan if step.startswith("SCAN")], plan
    else:
        assert any("ix_incidents_updated_at" in step for step in plan), plan
        assert not [step for step in plan if "Seq Scan on incidents" in step], plan


def test_a_change_stamped_before_the_margin_is_indexed_by_the_next_full_comparison(
    runtime: Runtime, clock: ManualClock
) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    early = _ingest(runtime, "Cobalt Strike beacon", "203.0.113.4", "C2 traffic", "mallory")
    search = runtime.incident_search
    assert search.refresh() == 1
    clock.advance(timedelta(minutes=30))
    late = _ingest(runtime, "Credential phishing page", "203.0.113.9", "Phish kit", "alice")
    assert search.refresh() == 1  # the newest change moves the window on
    with runtime.db.write() as conn:  # a writer whose transaction began 20 minutes ago
        stamped = clock.now() - timedelta(minutes=20)
        conn.execute(update(incidents).where(incidents.c.id == early).values(updated_at=stamped))
    for _ in range(search_module.FULL_EVERY - 1):
        assert search.refresh() == 0  # older than what a partial refresh reads
    assert search.refresh() == 1  # the full comparison
    assert search.refresh() == 0
    assert {i.id for i, _rank in search.search("beacon")} == {early}
    assert {i.id for i, _rank in search.search("phishing")} == {late}


def test_a_search_matches_and_ranks_on_the_engines_index_without_tokenizing_again(
    runtime: Runtime,
) -> None:
    """On PostgreSQL the rank was computed from to_tsvector(body) for every match: 1.2 s for a
    word in 4,900 documents. It reads the stored tsvector now; SQLite reads FTS5."""
    _many(runtime, 300)
    search = runtime.incident_search

    def ranks(sql: str) -> bool:
        return "rank" in sql

    with statements(runtime.db, ranks) as ran:
        assert len(search.search("user7")) == 1  # one document in 300
    (ranked,) = ran
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:
            # 300 short documents fit a few pages, which PostgreSQL rightly reads whole: ask
            # whether the index can serve the query, as it does on a large store.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = explain(conn, runtime.db.backend, ranked)
    if runtime.db.backend is Backend.SQLITE:
        assert plan[0].startswith("SCAN incident_fts VIRTUAL TABLE INDEX"), plan
    else:
        assert any("ix_incident_documents_fts" in step for step in plan), plan
        assert not [step for step in plan if "to_tsvector" in step], plan
        assert any("body_tsv" in step for step in plan), plan


def test_a_refresh_cut_short_keeps_its_window(runtime: Runtime, clock: ManualClock) -> None:
    """A refresh that ran out of rounds leaves the rest to the next one, which still compares
    everything: the rest may be older than the newest change it saw."""
    _many(runtime, search_module.BATCH + 50)
    clock.advance(timedelta(minutes=10))
    newest = _ingest(runtime, "Cobalt Strike beacon", "203.0.113.4", "C2 traffic", "mallory")
    search = runtime.incident_search
    assert search.refresh(rounds=1) == search_module.BATCH
    assert search.refresh() == 51  # every one left, old and new
    assert search.refresh() == 0
    assert [i.id for i, _rank in search.search("beacon")] == [newest]
    assert len(search.search("scan", limit=500)) == 500


def test_a_refresh_reads_changes_from_a_minute_before_the_newest_it_saw(
    runtime: Runtime, clock: ManualClock
) -> None:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    _ingest(runtime, "Cobalt Strike beacon", "203.0.113.4", "C2 traffic", "mallory")
    search = runtime.incident_search
    assert search.refresh() == 1
    late = _ingest(runtime, "Credential phishing page", "203.0.113.9", "Phish kit", "alice")
    stamped = clock.now() - timedelta(seconds=30)  # committed after that refresh, stamped before
    with runtime.db.write() as conn:
        conn.execute(update(incidents).where(incidents.c.id == late).values(updated_at=stamped))
    assert search.refresh() == 1  # a partial refresh
    assert [i.id for i, _rank in search.search("phishing")] == [late]
