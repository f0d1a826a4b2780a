"""Splunk ES notables: one search result object at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from quell.ingest.model import Endpoint, FileInfo, Severity
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.splunk import SplunkParser, severity_of
from tests.ingest.parsers.records import corpus_records

PARSER = SplunkParser()


@pytest.mark.requires("corpus")
def test_corpus_list_of_two_recurring_malware_notables() -> None:
    records = corpus_records("alerts", "splunk", "response_two_events.json")
    assert len(records) == 2
    first, second = (PARSER.parse(record) for record in records)
    assert not isinstance(first, NotAnAlert)
    assert not isinstance(second, NotAnAlert)
    rule = "Endpoint - Recurring Malware Infection - Rule"
    assert first.title == first.rule_name == first.rule_uid == rule
    assert first.time == datetime(2020, 8, 24, 19, 10, 17, tzinfo=UTC)
    assert second.time == datetime(2020, 8, 24, 20, 30, 17, tzinfo=UTC)
    # severity "unknown", urgency "low": urgency wins.
    assert first.severity is Severity.LOW
    assert first.dst == Endpoint(ip="192.168.3.12", hostname="ACME-workstation-012")
    assert first.host == Endpoint(ip="192.168.3.12", hostname="ACME-workstation-012")
    assert first.src is None
    assert first.user is None
    assert first.uid is None
    assert first.extra["signature"] == "Trojan.Gen.2"
    assert first.extra["urgency"] == "low"
    assert first.extra["dest_priority"] == "medium"
    assert first.extra["dest_category"] == ["cardholder", "pci"]
    assert "_raw" not in first.extra
    assert (first.product, first.vendor) == ("Splunk Enterprise Security", "Splunk")


@pytest.mark.requires("corpus")
def test_corpus_single_root_user_notable() -> None:
    (record,) = corpus_records("alerts", "splunk", "test_notable_event.json")
    alert = PARSER.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "Root user use"
    assert alert.rule_name == "Root sucess"
    assert alert.rule_uid == "Identity - Root sucess - Rule"
    assert (
        alert.uid
        == "5E6DE97D-B137-47AB-8905-8C4F42998937@@notable@@e4f07602f507975e9f7ba47c4ae0c417"
    )
    assert alert.time == datetime(2024, 6, 5, 9, 15, 24, tzinfo=UTC)
    assert alert.severity is Severity.INFORMATIONAL
    assert alert.category == "identity"
    assert alert.description == "user=root AND (action=success OR action=failure)"
    assert alert.user == "root"
    # The redacted "xxx.xxx.x.x" is not an address; dest_dns names the destination.
    assert alert.dst == Endpoint(hostname="xx")
    assert alert.host == Endpoint(hostname="xx")
    assert alert.extra["status_label"] == "New"
    assert alert.extra["vendor_product"] == "OSSEC:HIDS"
    assert alert.extra["disposition_label"] == "Undetermined"


def test_network_notable_with_file_hash_and_annotations() -> None:
    alert = PARSER.parse(
        {
            "_time": "2024-10-01T08:00:00.000+02:00",
            "search_name": "Network - Malware Download - Rule",
            "rule_name": "Malware Download",
            "rule_title": "Malware downloaded by 10.9.8.7",
            "severity": "high",
            "urgency": "critical",
            "src": "10.9.8.7",
            "src_port": "51000",
            "dest": "cdn.bad.example",
            "dest_ip": "203.0.113.9",
            "dest_port": 443,
            "user": ["alice", "bob"],
            "url": "https://cdn.bad.example/p.exe",
            "file_name": "p.exe",
            "file_hash": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "annotations.mitre_attack": ["T1105", "T1204.002"],
            "dvc": "proxy-01",
        }
    )
    assert not isinstance(alert, NotAnAlert)
    assert alert.time == datetime(2024, 10, 1, 6, 0, tzinfo=UTC)
    assert alert.severity is Severity.CRITICAL
    assert alert.src == Endpoint(ip="10.9.8.7", port=51000)
    assert alert.dst == Endpoint(ip="203.0.113.9", port=443, hostname="cdn.bad.example")
    assert alert.host == Endpoint(hostname="proxy-01")
    assert alert.user == "alice"
    assert alert.url == "https://cdn.bad.example/p.exe"
    assert alert.file == FileInfo(
        name="p.exe", sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert alert.techniques == ["T1105", "T1204.002"]


def test_placeholders_are_absent_and_indextime_is_the_fallback_time() -> None:
    alert = PARSER.parse(
        {"search_name": "R", "_indextime": "1717578924", "src": "unknown", "user": "unknown"}
    )
    assert not isinstance(alert, NotAnAlert)
    assert alert.src is None
    assert alert.user is None
    assert alert.time == datetime(2024, 6, 5, 9, 15, 24, tzinfo=UTC)


@pytest.mark.parametrize(
    ("urgency", "severity", "expected"),
    [
        ("informational", None, Severity.INFORMATIONAL),
        ("low", "high", Severity.LOW),
        ("medium", None, Severity.MEDIUM),
        ("HIGH", None, Severity.HIGH),
        ("critical", None, Severity.CRITICAL),
        ("unknown", "medium", Severity.MEDIUM),
        (None, "unknown", Severity.UNKNOWN),
        (None, "bizarre", Severity.UNKNOWN),
        (None, None, Severity.UNKNOWN),
    ],
)
def test_urgency_then_severity(
    urgency: str | None, severity: str | None, expected: Severity
) -> None:
    assert severity_of({"urgency": urgency, "severity": severity}) is expected


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"_time": "2024-01-01T00:00:00Z"}, "rule_title"),
        ({"search_name": "R"}, "_indextime"),
        ({"search_name": "R", "_time": "soon"}, "_time"),
        ({"search_name": {"a": 1}, "_time": 1}, "search_name"),
        ({"search_name": "R", "_time": 1, "dest_port": [True]}, "dest_port"),
    ],
)
def test_bad_records_name_the_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as caught:
        PARSER.parse(record)
    assert caught.value.field == field
