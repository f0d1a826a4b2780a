"""The ingest pipeline on both backends: corpus files, accounting, dedup, correlation, suppression,
dead letters and replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from quell.cases.incidents import IncidentStatus, Resolution
from quell.ingest.intake import IntakeResult
from quell.ingest.records import split_body
from quell.ingest.staging import StagingPool
from quell.runtime import Runtime
from quell.store.database import Backend
from quell.store.schema import alert_observables, alerts, dead_letters
from tests.fixtures.plans import explain, statements
from tests.fixtures.requirements import corpus_path

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _count(runtime: Runtime, table: Any) -> int:
    with runtime.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _observables(runtime: Runtime, source: str) -> set[tuple[str, str, str | None]]:
    with runtime.db.read() as conn:
        rows = conn.execute(
            select(alert_observables.c.type, alert_observables.c.value, alert_observables.c.role)
            .join(alerts, alerts.c.id == alert_observables.c.alert_id)
            .where(alerts.c.source == source)
        )
        return {(row.type, row.value, row.role) for row in rows}


def _ingest_file(runtime: Runtime, format_name: str, *parts: str) -> IntakeResult:
    source = runtime.sources.ensure(f"corpus-{format_name}", "file", format_name)
    body = corpus_path().joinpath(*parts).read_bytes()
    kind = runtime.pipeline.stager(source).parser.record_kind
    return runtime.pipeline.ingest_source(source, split_body(body, kind))


def _event(
    minute: int,
    *,
    rule: str = "brute force",
    host: str | None = "web-01",
    user: str | None = None,
    src: str | None = "203.0.113.7",
    title: str | None = None,
) -> bytes:
    record: dict[str, Any] = {
        "title": title or f"{rule} on {host}",
        "ts": (T0 + timedelta(minutes=minute)).isoformat(),
        "rule": rule,
    }
    if host:
        record["host"] = host
    if user:
        record["user"] = user
    if src:
        record["src"] = src
    return orjson.dumps(record)


MAPPING = {
    "fields": {
        "title": "title",
        "time": "ts",
        "rule_name": "rule",
        "host.hostname": "host",
        "user": "user",
        "src.ip": "src",
    }
}


@pytest.fixture
def generic(runtime: Runtime) -> str:
    runtime.sources.create("edr", "http", "json", parser_options=MAPPING)
    return "edr"


# -- the corpus ------------------------------------------------------------------------------


@pytest.mark.requires("corpus")
def test_every_corpus_alert_file_ingests_with_its_observables(runtime: Runtime) -> None:
    eve = _ingest_file(runtime, "suricata", "alerts", "suricata", "test-eve-small.log")
    assert eve == IntakeResult(received=12, stored=1, suppressed=11)
    assert {
        ("ipv4", "192.168.86.85", "src"),
        ("ipv4", "192.168.156.70", "dst"),
        ("hostname", "l2.io", "dst"),
    } <= _observables(runtime, "corpus-suricata")

    assert _ingest_file(runtime, "zeek", "alerts", "zeek", "test-notice.log").stored == 4
    assert {
        ("ipv4", "172.16.238.1", "src"),
        ("ipv4", "89.160.20.156", "src"),
        ("ipv4", "10.156.0.2", "src"),
    } <= _observables(runtime, "corpus-zeek")

    wazuh = _ingest_file(runtime, "wazuh", "alerts", "wazuh", "thecyberproject_wazuh_alert.json")
    assert wazuh.stored == 1
    assert {
        ("hostname", "deployment", "host"),
        ("ipv4", "192.168.130.29", "host"),
        ("file_name", "file16", "file"),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "file"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "file"),
    } <= _observables(runtime, "corpus-wazuh")

    assert (
        _ingest_file(runtime, "splunk", "alerts", "splunk", "response_two_events.json").stored == 2
    )
    assert (
        _ingest_file(runtime, "splunk", "alerts", "splunk", "test_notable_event.json").stored == 1
    )
    assert {("ipv4", "192.168.3.12", "dst"), ("hostname", "acme-workstation-012", "dst")} <= (
        _observables(runtime, "corpus-splunk")
    )

    ocsf = _ingest_file(runtime, "ocsf", "ocsf", "malware_infection_detected_sample.json")
    assert ocsf.stored == 4
    assert ("ipv4", "190.109.227.80", "host") in _observables(runtime, "corpus-ocsf")
    assert ("domain", "open.kickasstracker.com", None) in _observables(runtime, "corpus-ocsf")

    stored = sum(s.counters.stored for s in runtime.sources.list_all())
    assert _count(runtime, alerts) == stored == 13


@pytest.mark.requires("corpus")
def test_a_stored_alert_keeps_its_raw_bytes_verbatim(runtime: Runtime) -> None:
    _ingest_file(runtime, "suricata", "alerts", "suricata", "test-eve-small.log")
    (alert,) = runtime.alerts.list_all(source="corpus-suricata")
    line = next(
        line
        for line in (corpus_path() / "alerts/suricata/test-eve-small.log").read_bytes().splitlines()
        if b'"event_type":"alert"' in line
    )
    assert alert.raw == line
    assert alert.rule_uid == "2024833"
    assert alert.src is not None
    assert alert.src.ip == "192.168.86.85"


# -- accounting ------------------------------------------------------------------------------


def test_every_record_is_counted_once_and_nothing_is_lost(runtime: Runtime, generic: str) -> None:
    runtime.suppressions.add("drop-scanner", {"src.ip": "198.51.100.0/24"}, "drop")
    runtime.suppressions.add("close-lab", {"host": "lab-*"}, "close")
    records = [
        _event(0),
        _event(1),  # a repeat of the first within the window
        _event(2, host="db-02", src="192.0.2.10"),
        _event(3, src="198.51.100.9", host="x"),  # dropped
        _event(4, host="lab-3", src="192.0.2.99"),  # closed as benign, stored
        b'{"title": "truncated", "ts": "2026-03-01T12:00:00Z"',  # truncated JSON
        b'{"title": {"nested": "object"}, "ts": "2026-03-01T12:00:00Z"}',  # wrong type
        b'{"title": "bad \xff\xfe utf-8", "ts": "2026-03-01T12:00:00Z"}',  # invalid UTF-8
        b'{"title": "no time at all"}',  # missing mapped field
        b'"a bare string"',  # not an object
        orjson.dumps({"title": "x" * 70_000, "ts": T0.isoformat()}),  # over the record limit
    ]
    result = runtime.pipeline.ingest(generic, records)
    assert result.received == len(records)
    assert result.received == (
        result.stored + result.deduplicated + result.suppressed + result.dead_lettered
    )
    assert result == IntakeResult(
        received=11, stored=2, deduplicated=1, suppressed=2, dead_lettered=6
    )
    assert _count(runtime, alerts) == result.stored + 1  # + the alert closed as benign
    assert _count(runtime, dead_letters) == result.dead_lettered
    source = runtime.sources.get(generic)
    assert source.counters == result
    rules = {rule.name: rule.hits for rule in runtime.suppressions.list_all()}
    assert rules == {"drop-scanner": 1, "close-lab": 1}

    reasons = sorted(letter.reason for letter in runtime.dead_letters.list_all(source=generic))
    assert any(reason.startswith("invalid JSON: unexpected end") for reason in reasons)
    # Where the bad bytes are, not orjson's "surrogates" at the first character:
    assert "invalid UTF-8 at byte 15: invalid start byte" in reasons
    assert "json record must be a JSON object, not a string" in reasons
    assert any("exceeds the source's limit of 65536 bytes" in reason for reason in reasons)
    assert any("title" in reason for reason in reasons)
    assert all(letter.raw for letter in runtime.dead_letters.list_all(source=generic))


def test_a_closed_as_benign_alert_is_stored_suppressed_and_joins_no_incident(
    runtime: Runtime, generic: str
) -> None:
    runtime.suppressions.add("close-lab", {"host": "lab-*"}, "close")
    runtime.pipeline.ingest(generic, [_event(0, host="lab-1")])
    (alert,) = runtime.alerts.list_all()
    assert alert.status.value == "suppressed"
    assert alert.incident_id is None
    assert alert.extra["suppressed_by"] == "close-lab"
    assert runtime.incidents.list_all() == []


# -- deduplication ---------------------------------------------------------------------------


def test_a_repeat_within_the_window_raises_count_and_last_seen_only(
    runtime: Runtime, generic: str
) -> None:
    runtime.pipeline.ingest(generic, [_event(0)])
    result = runtime.pipeline.ingest(generic, [_event(10), _event(50)])
    assert result.deduplicated == 2
    (alert,) = runtime.alerts.list_all()
    assert alert.count == 3
    assert alert.first_seen == T0
    assert alert.last_seen == T0 + timedelta(minutes=50)
    incident = runtime.incidents.get(alert.incident_id or "")
    assert incident.last_seen == T0 + timedelta(minutes=50)


def test_a_repeat_outside_the_window_is_a_new_alert(runtime: Runtime, generic: str) -> None:
    runtime.pipeline.ingest(generic, [_event(0)])
    assert runtime.pipeline.ingest(generic, [_event(61)]).stored == 1
    assert _count(runtime, alerts) == 2


def test_a_record_sent_again_repeats_its_own_alert_not_only_the_newest(
    runtime: Runtime, generic: str
) -> None:
    """Two alerts of one fingerprint two hours apart are two alerts; the same file ingested
    again repeats each of them (a record is matched with every alert of its fingerprint near
    its time, not only with the newest one), and so does one late record on its own."""
    first = runtime.pipeline.ingest(generic, [_event(0), _event(120)])
    assert (first.stored, first.deduplicated) == (2, 0)
    again = runtime.pipeline.ingest(generic, [_event(0), _event(120)])
    assert (again.stored, again.deduplicated) == (0, 2)
    late = runtime.pipeline.ingest(generic, [_event(5)])
    assert (late.stored, late.deduplicated) == (0, 1)
    stored = sorted(runtime.alerts.list_all(), key=lambda alert: alert.first_seen)
    assert [(a.first_seen, a.last_seen, a.count) for a in stored] == [
        (T0, T0 + timedelta(minutes=5), 3),
        (T0 + timedelta(minutes=120), T0 + timedelta(minutes=120), 2),
    ]


def test_the_fingerprint_is_configurable(runtime: Runtime) -> None:
    runtime.sources.create(
        "by-rule", "http", "json", parser_options=MAPPING, settings={"fingerprint": ["rule"]}
    )
    result = runtime.pipeline.ingest(
        "by-rule", [_event(0, host="a", src="192.0.2.1"), _event(1, host="b", src="192.0.2.2")]
    )
    assert (result.stored, result.deduplicated) == (1, 1)


def test_a_repeat_that_brings_a_new_key_marks_its_incident_changed(
    runtime: Runtime, clock: Any
) -> None:
    """With a fingerprint of the rule alone, a repeat can carry a host its alert did not. Its
    key joins the incident, and the incident's search document must follow, even when the
    repeat is not the incident's newest sighting (which moved nothing before)."""
    runtime.sources.create(
        "by-rule", "http", "json", parser_options=MAPPING, settings={"fingerprint": ["rule"]}
    )
    first = runtime.pipeline.ingest(
        "by-rule", [_event(0, rule="r1", host="web-01"), _event(10, rule="r2", host="web-01")]
    )
    assert first.stored == 2
    search = runtime.incident_search
    ((incident, _rank),) = search.search("web-01")
    assert search.search("zeta-07") == []
    clock.advance(timedelta(seconds=5))
    # r1 again at minute 5: later than its alert's last sighting, earlier than the incident's.
    with statements(runtime.db, lambda sql: "FROM incident_keys" in sql) as looked_up:
        repeat = runtime.pipeline.ingest("by-rule", [_event(5, rule="r1", host="zeta-07")])
    assert (repeat.stored, repeat.deduplicated) == (0, 1)
    with runtime.db.read() as conn:  # which keys are new: by primary key, on ingest's path
        for statement in looked_up:
            plan = " ".join(explain(conn, runtime.db.backend, statement))
            if runtime.db.backend is Backend.SQLITE:
                # By the primary key's prefix: the incident and the type, not every value.
                assert plan.startswith("SEARCH incident_keys USING PRIMARY KEY"), plan
                assert "(incident_id=? AND type=?)" in plan, plan
                assert "SCAN" not in plan, plan
            else:
                assert "pk_incident_keys" in plan, plan
    changed = runtime.incidents.get(incident.id)
    assert changed.last_seen == T0 + timedelta(minutes=10)  # not moved back
    assert changed.updated_at > incident.updated_at
    assert [i.id for i, _rank in search.search("zeta-07")] == [incident.id]
    # A repeat that brings no new key leaves the incident as it was.
    clock.advance(timedelta(seconds=5))
    again = runtime.pipeline.ingest("by-rule", [_event(6, rule="r1", host="zeta-07")])
    assert again.deduplicated == 1
    assert runtime.incidents.get(incident.id).updated_at == changed.updated_at


def test_a_quiet_sources_alerts_are_found_by_index_newest_first(
    runtime: Runtime, generic: str
) -> None:
    """Listing a source's alerts: a quiet one (a phishing mailbox beside an IDS) used to mean
    walking every alert newest first, 5.4 s at 73,000 alerts."""
    runtime.sources.create("mailbox", "http", "json", parser_options=MAPPING)
    busy = [_event(k % 60, rule=f"scan {k}", host=f"h{k}") for k in range(2000)]
    assert runtime.pipeline.ingest(generic, busy).stored == 2000
    quiet = [_event(k, rule=f"phish {k}", host="mail", src=None) for k in range(3)]
    assert runtime.pipeline.ingest("mailbox", quiet).stored == 3
    assert runtime.pipeline.ingest(generic, [busy[0], _event(59, rule="late")]).stored == 1

    def reads_alerts(sql: str) -> bool:
        return "FROM alerts" in sql

    with statements(runtime.db, reads_alerts) as ran:
        listed = runtime.alerts.list_all(source="mailbox")
    (by_source,) = ran
    assert [a.title for a in listed] == ["phish 2 on mail", "phish 1 on mail", "phish 0 on mail"]
    (incident_id,) = {a.incident_id for a in listed}
    # An incident's alerts of one source: the incident's few, not the source's many.
    with statements(runtime.db, reads_alerts) as by_incident:
        assert runtime.alerts.list_all(source=generic, incident_id=incident_id) == []
        assert len(runtime.alerts.list_all(source="mailbox", incident_id=incident_id)) == 3
    assert len(by_incident) == 2
    assert [a.title for a in runtime.alerts.list_all(source=generic, limit=1)] == ["late on web-01"]
    with runtime.db.write() as conn:
        if runtime.db.backend is Backend.POSTGRESQL:  # as autovacuum would; SQLite runs without
            conn.exec_driver_sql("ANALYZE alerts")
        plan = explain(conn, runtime.db.backend, by_source)
        if runtime.db.backend is Backend.SQLITE:
            assert plan == ["SEARCH alerts USING INDEX ix_alerts_source_id (source=?)"], plan
        else:
            assert any("ix_alerts_source_id" in step for step in plan), plan
            assert not any("Seq Scan on alerts" in step or "Sort" in step for step in plan), plan
        for statement in by_incident:
            plan = explain(conn, runtime.db.backend, statement)
            if runtime.db.backend is Backend.SQLITE:
                reads = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
                assert reads == ["SEARCH alerts USING INDEX ix_alerts_incident_id (incident_id=?)"]
            else:
                assert any("Index Cond" in step and "incident_id" in step for step in plan), plan


# -- streams staged in worker processes --------------------------------------------------------


def test_a_stream_staged_in_a_worker_is_committed_in_order_and_fully_counted(
    runtime: Runtime, generic: str
) -> None:
    source = runtime.sources.get(generic)
    batches = [
        [_event(k, rule="scan"), _event(k, rule=f"new {k}", host=f"h{k}", src=None), b"{oops"]
        for k in range(4)
    ]
    pool = StagingPool(1)
    try:
        result = runtime.pipeline.ingest_stream(source, iter(batches), pool=pool)
    finally:
        pool.close()
    assert result == IntakeResult(received=12, stored=5, deduplicated=3, dead_lettered=4)
    assert runtime.sources.get(generic).counters == result
    scan = next(a for a in runtime.alerts.list_all() if a.title == "scan on web-01")
    # Staged ahead in the worker, the batches were still committed in their order.
    assert (scan.count, scan.first_seen, scan.last_seen) == (4, T0, T0 + timedelta(minutes=3))
    assert runtime.alerts.get(scan.id).raw == batches[0][0]


# -- correlation -----------------------------------------------------------------------------


def test_alerts_sharing_a_key_observable_join_one_incident(runtime: Runtime, generic: str) -> None:
    runtime.pipeline.ingest(generic, [_event(0, rule="login failure", host="web-01")])
    runtime.pipeline.ingest(generic, [_event(5, rule="malware", host="web-01", src=None)])
    runtime.pipeline.ingest(generic, [_event(6, rule="other", host="db-09", src="192.0.2.44")])
    incidents = runtime.incidents.list_all()
    assert len(incidents) == 2
    web = next(i for i in incidents if i.alert_count == 2)
    assert ("host", "web-01") in runtime.incidents.keys(web.id)
    assert {a.incident_id for a in runtime.alerts.list_all() if a.title.endswith("web-01")} == {
        web.id
    }


def test_alerts_further_apart_than_the_window_open_separate_incidents(
    runtime: Runtime, generic: str
) -> None:
    runtime.pipeline.ingest(generic, [_event(0, rule="a", host="web-01")])
    runtime.pipeline.ingest(generic, [_event(121, rule="b", host="web-01")])
    assert len(runtime.incidents.list_all()) == 2


def test_an_alert_linking_two_incidents_merges_them_and_both_record_it(
    runtime: Runtime, generic: str
) -> None:
    runtime.pipeline.ingest(generic, [_event(0, rule="a", host="web-01", src="192.0.2.1")])
    runtime.pipeline.ingest(
        generic, [_event(1, rule="b", host="db-02", src="192.0.2.2", user="eve")]
    )
    first, second = sorted(runtime.incidents.list_all(), key=lambda i: i.first_seen)
    # Shares the host with the first incident and the user with the second.
    runtime.pipeline.ingest(generic, [_event(2, rule="c", host="web-01", user="eve", src=None)])

    survivor = runtime.incidents.get(first.id)
    merged = runtime.incidents.get(second.id)
    assert survivor.status is IncidentStatus.NEW
    assert survivor.alert_count == 3
    assert merged.status is IncidentStatus.CLOSED
    assert merged.resolution is Resolution.DUPLICATE
    assert merged.merged_into == survivor.id
    assert {a.incident_id for a in runtime.alerts.list_all()} == {survivor.id}
    # All the merged incident's keys moved, not only those the linking alert carried.
    assert {("user", "eve"), ("host", "db-02"), ("src_ip", "192.0.2.2")} <= set(
        runtime.incidents.keys(survivor.id)
    )
    assert runtime.incidents.keys(merged.id) == []
    kinds = {event.kind: event.data for event in runtime.incidents.timeline(survivor.id)}
    assert kinds["merged"]["merged"] == merged.id
    assert [e.kind for e in runtime.incidents.timeline(merged.id)][-1] == "merged_into"
    # So a later alert on the merged incident's other host still finds the case.
    runtime.pipeline.ingest(generic, [_event(30, rule="d", host="db-02", src=None)])
    assert {a.incident_id for a in runtime.alerts.list_all()} == {survivor.id}


def test_repeats_keep_their_incident_findable(runtime: Runtime, generic: str) -> None:
    """A key's last sighting is the latest repeat's, across batches and within one."""
    runtime.pipeline.ingest(generic, [_event(0, rule="scan", host="web-01")])
    assert runtime.pipeline.ingest(generic, [_event(50, rule="scan", host="web-01")]).deduplicated
    runtime.pipeline.ingest(generic, [_event(100, rule="exfil", host="web-01", src=None)])
    runtime.pipeline.ingest(
        generic,
        [
            _event(200, rule="probe", host="fs-01", src=None),
            _event(250, rule="probe", host="fs-01", src=None),
        ],
    )
    runtime.pipeline.ingest(generic, [_event(300, rule="exfil", host="fs-01", src=None)])
    by_host: dict[str, set[str | None]] = {}
    for alert in runtime.alerts.list_all():
        by_host.setdefault(alert.title.rsplit(" ", 1)[-1], set()).add(alert.incident_id)
    assert all(len(ids) == 1 for ids in by_host.values()), by_host


def test_a_late_alert_does_not_move_a_key_back_in_time(runtime: Runtime, generic: str) -> None:
    runtime.pipeline.ingest(generic, [_event(50, rule="a", host="web-01", src=None)])
    runtime.pipeline.ingest(generic, [_event(0, rule="b", host="web-01", src=None)])  # late
    runtime.pipeline.ingest(generic, [_event(100, rule="c", host="web-01", src=None)])
    assert len(runtime.incidents.list_all()) == 1


def test_alerts_of_one_batch_group_with_each_other(runtime: Runtime, generic: str) -> None:
    runtime.pipeline.ingest(
        generic,
        [
            _event(0, rule="a", host="h1", src=None, user="u1"),
            _event(1, rule="b", host="h2", src=None, user="u1"),
            _event(2, rule="c", host="h2", src=None, user="u2"),
            _event(3, rule="d", host="h9", src=None, user="u9"),
        ],
    )
    counts = sorted(i.alert_count for i in runtime.incidents.list_all(status="open"))
    assert counts == [1, 3]


def test_correlation_keys_are_configurable(runtime: Runtime) -> None:
    runtime.sources.create(
        "users-only", "http", "json", parser_options=MAPPING, settings={"correlate_on": ["user"]}
    )
    runtime.pipeline.ingest(
        "users-only",
        [_event(0, rule="a", host="same", user="u1"), _event(1, rule="b", host="same", user="u2")],
    )
    assert len(runtime.incidents.list_all()) == 2


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letters_replay_after_the_mapping_is_fixed(runtime: Runtime) -> None:
    runtime.sources.create(
        "siem", "http", "json", parser_options={"fields": {"title": "name", "time": "ts"}}
    )
    result = runtime.pipeline.ingest("siem", [_event(0), _event(1, host="db")])
    assert result.dead_lettered == 2
    letters = runtime.dead_letters.list_all(source="siem")
    assert "name" in letters[0].reason

    runtime.sources.update("siem", parser_options=MAPPING)
    replay = runtime.pipeline.replay(letters)
    assert (replay.replayed, replay.still_failing, replay.outcome.stored) == (2, 0, 2)
    assert runtime.dead_letters.list_all(source="siem") == []
    assert _count(runtime, alerts) == 2


def test_a_replay_that_fails_again_keeps_the_letter_with_the_new_reason(runtime: Runtime) -> None:
    runtime.sources.create(
        "siem", "http", "json", parser_options={"fields": {"title": "name", "time": "ts"}}
    )
    runtime.pipeline.ingest("siem", [_event(0)])
    (letter,) = runtime.dead_letters.list_all(source="siem")
    runtime.sources.update("siem", parser_options={"fields": {"title": "title", "time": "when"}})
    replay = runtime.pipeline.replay([letter])
    assert (replay.replayed, replay.still_failing) == (0, 1)
    (again,) = runtime.dead_letters.list_all(source="siem")
    assert again.attempts == 2
    assert "when" in again.reason


def test_a_replay_moves_the_source_counters_and_never_stores_twice(runtime: Runtime) -> None:
    runtime.sources.create(
        "siem", "http", "json", parser_options={"fields": {"title": "name", "time": "ts"}}
    )
    runtime.pipeline.ingest("siem", [_event(0), _event(1, host="db")])
    letters = runtime.dead_letters.list_all(source="siem")
    runtime.sources.update("siem", parser_options=MAPPING)
    first = runtime.pipeline.replay(letters)
    stale = runtime.pipeline.replay(letters)  # the same list again: a racing second replay
    assert (first.replayed, first.outcome.stored) == (2, 2)
    assert (stale.replayed, stale.still_failing, stale.outcome.stored) == (0, 0, 0)
    assert _count(runtime, alerts) == 2
    counters = runtime.sources.get("siem").counters
    assert (counters.received, counters.stored, counters.dead_lettered) == (2, 2, 0)


def test_replaying_a_source_pages_through_all_its_letters(runtime: Runtime) -> None:
    runtime.sources.create(
        "siem", "http", "json", parser_options={"fields": {"title": "name", "time": "ts"}}
    )
    good = [_event(n, host=f"h{n}") for n in range(7)]
    hopeless = [orjson.dumps({"title": f"no time {n}"}) for n in range(3)]
    runtime.pipeline.ingest("siem", good + hopeless)
    runtime.sources.update("siem", parser_options=MAPPING)
    result = runtime.pipeline.replay_source("siem", page=2)
    assert (result.replayed, result.still_failing) == (7, 3)
    assert result.outcome.received == 10
    assert result.outcome.dead_lettered == 3
    assert len(runtime.dead_letters.list_all(source="siem")) == 3
    counters = runtime.sources.get("siem").counters
    assert (counters.received, counters.stored, counters.dead_lettered) == (10, 7, 3)


def test_nul_characters_in_a_record_do_not_break_the_batch(runtime: Runtime, generic: str) -> None:
    """PostgreSQL refuses NUL in text and JSON: it is replaced, and the batch still lands."""
    evil = orjson.dumps(
        {"title": "nul\x00inside", "ts": T0.isoformat(), "host": "h\x00x", "src": "192.0.2.1"}
    )
    result = runtime.pipeline.ingest(generic, [evil, _event(1)])
    assert result.stored == 2
    titles = {alert.title for alert in runtime.alerts.list_all()}
    assert "nul\ufffdinside" in titles


def test_a_record_with_an_impossible_time_is_dead_lettered_alone(
    runtime: Runtime, generic: str
) -> None:
    ancient = orjson.dumps({"title": "t", "ts": "0001-01-01T00:00:00Z", "host": "a"})
    future = orjson.dumps({"title": "t", "ts": "9999-12-31T23:59:59Z", "host": "b"})
    result = runtime.pipeline.ingest(generic, [ancient, _event(1), future, _event(2, host="c")])
    assert (result.stored, result.dead_lettered) == (2, 2)
    reasons = sorted(letter.reason for letter in runtime.dead_letters.list_all(source=generic))
    assert "before 1970" in reasons[0]
    assert "more than a year after it was received" in reasons[1]


def test_long_observables_that_collide_once_cut_are_stored_once(
    runtime: Runtime, generic: str
) -> None:
    runtime.sources.update(
        generic, parser_options={"fields": {**MAPPING["fields"], "description": "body"}}
    )
    base = "https://phish.example/" + "a" * 600
    record = orjson.dumps(
        {"title": "t", "ts": T0.isoformat(), "host": "h", "body": f"{base}1 and {base}2"}
    )
    assert runtime.pipeline.ingest(generic, [record, _event(1)]).stored == 2


def test_a_value_the_database_refuses_costs_only_its_own_alert(
    runtime: Runtime, generic: str
) -> None:
    """The pipeline splits a refused batch down to the culprit and dead-letters it alone."""
    source = runtime.sources.get(generic)
    staged = runtime.pipeline.stager(source).stage(
        [_event(n, host=f"h{n}") for n in range(5)], T0, []
    )
    staged.staged[3].row[9] = 12345  # a title the schema cannot hold in a text column
    staged.staged[3].row[15] = {"not": "json text"}  # nor a data column given a dict
    result = runtime.pipeline.commit(source, staged, T0)
    assert (result.received, result.stored, result.dead_lettered) == (5, 4, 1)
    (letter,) = runtime.dead_letters.list_all(source=generic)
    assert letter.reason.startswith("could not be stored:")
    assert runtime.sources.get(generic).counters == result
