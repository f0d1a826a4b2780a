"""Suricata EVE: alerts map to the alert model; every other event type is not an alert."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from quell.ingest.model import Endpoint, ObservableType, Severity
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.suricata import SuricataParser, severity_of
from tests.ingest.parsers.records import corpus_records

PARSER = SuricataParser()


def _alert(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "timestamp": "2023-09-12T10:15:02.331052+0200",
        "flow_id": 1131297482711375,
        "in_iface": "ens192",
        "event_type": "alert",
        "src_ip": "10.1.20.33",
        "src_port": 50412,
        "dest_ip": "203.0.113.80",
        "dest_port": 80,
        "proto": "TCP",
        "direction": "to_server",
        "app_proto": "http",
        "alert": {
            "action": "allowed",
            "gid": 1,
            "signature_id": 2018959,
            "rev": 4,
            "signature": "ET POLICY PE EXE or DLL Windows file download HTTP",
            "category": "Potential Corporate Privacy Violation",
            "severity": 1,
            "metadata": {
                "mitre_technique_id": ["T1105"],
                "signature_severity": ["Informational"],
            },
        },
        "http": {
            "hostname": "downloads.example.net",
            "url": "/tools/setup.exe",
            "http_user_agent": "Mozilla/5.0",
            "http_method": "GET",
            "status": 200,
        },
        "fileinfo": {
            "filename": "/tools/setup.exe",
            "size": 1048576,
            "md5": "8B1A9953C4611296A827ABF8C47804D7",
            "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        },
    }
    record.update(overrides)
    return record


@pytest.mark.requires("corpus")
def test_corpus_alert_maps_every_field() -> None:
    records = corpus_records("alerts", "suricata", "test-eve-small.log")
    alerts = [result for result in map(PARSER.parse, records) if not isinstance(result, NotAnAlert)]
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.title == "ET POLICY Observed IP Lookup Domain (l2 .io in TLS SNI)"
    assert alert.rule_name == alert.title
    assert alert.rule_uid == "2024833"
    assert alert.category == "Potential Corporate Privacy Violation"
    assert alert.time == datetime(2018, 7, 5, 19, 7, 20, 910626, tzinfo=UTC)
    assert alert.severity is Severity.HIGH
    assert alert.src == Endpoint(ip="192.168.86.85", port=55641)
    assert alert.dst == Endpoint(ip="192.168.156.70", port=443, hostname="l2.io")
    assert (alert.product, alert.vendor) == ("Suricata", "OISF")
    assert alert.extra["flow_id"] == 904992230150281
    assert alert.extra["app_proto"] == "tls"
    assert alert.extra["proto"] == "TCP"
    assert alert.extra["alert_gid"] == 1
    assert alert.extra["alert_rev"] == 3
    assert alert.extra["tls"]["sni"] == "l2.io"
    assert alert.techniques == []


@pytest.mark.requires("corpus")
def test_corpus_other_event_types_are_not_alerts() -> None:
    records = corpus_records("alerts", "suricata", "test-eve-small.log")
    reasons = Counter(
        result.reason for result in map(PARSER.parse, records) if isinstance(result, NotAnAlert)
    )
    assert reasons == {
        "suricata event_type 'ssh' is not an alert": 1,
        "suricata event_type 'http' is not an alert": 3,
        "suricata event_type 'fileinfo' is not an alert": 1,
        "suricata event_type 'dns' is not an alert": 1,
        "suricata event_type 'stats' is not an alert": 1,
        "suricata event_type 'tls' is not an alert": 3,
        "suricata event_type 'flow' is not an alert": 1,
    }


def test_http_alert_builds_url_file_and_techniques() -> None:
    alert = PARSER.parse(_alert())
    assert not isinstance(alert, NotAnAlert)
    assert alert.url == "http://downloads.example.net/tools/setup.exe"
    assert alert.dst == Endpoint(ip="203.0.113.80", port=80, hostname="downloads.example.net")
    assert alert.file is not None
    assert alert.file.name == "setup.exe"
    assert alert.file.path == "/tools/setup.exe"
    assert alert.file.size == 1048576
    assert alert.file.md5 == "8b1a9953c4611296a827abf8c47804d7"
    assert alert.file.sha256 == "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    assert alert.techniques == ["T1105"]
    assert alert.time == datetime(2023, 9, 12, 8, 15, 2, 331052, tzinfo=UTC)
    assert alert.extra["alert_metadata"]["signature_severity"] == ["Informational"]


def test_server_name_goes_to_the_source_side_of_a_to_client_alert() -> None:
    alert = PARSER.parse(_alert(direction="to_client", src_ip="203.0.113.80", src_port=80))
    assert not isinstance(alert, NotAnAlert)
    assert alert.src is not None
    assert alert.src.hostname == "downloads.example.net"
    assert alert.dst is not None
    assert alert.dst.hostname is None


def test_http_port_and_absolute_proxy_urls() -> None:
    with_port = PARSER.parse(
        _alert(http={"hostname": "intranet.example", "http_port": 8081, "url": "/uuid"})
    )
    proxied = PARSER.parse(
        _alert(http={"hostname": "a.example", "url": "http://a.example/x.cab?1"})
    )
    assert not isinstance(with_port, NotAnAlert)
    assert not isinstance(proxied, NotAnAlert)
    assert with_port.url == "http://intranet.example:8081/uuid"
    assert proxied.url == "http://a.example/x.cab?1"


def test_dns_query_names_become_domain_observables() -> None:
    record = _alert(
        app_proto="dns",
        dns={"query": [{"type": "query", "rrname": "Evil.Example.COM.", "rrtype": "A"}]},
    )
    del record["http"], record["fileinfo"]
    alert = PARSER.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert [(o.type, o.value, o.role) for o in alert.observables] == [
        (ObservableType.DOMAIN, "evil.example.com", "text")
    ]


def test_smtp_alert_fills_the_email() -> None:
    record = _alert(
        app_proto="smtp",
        smtp={
            "helo": "mx.example",
            "mail_from": "<billing@phish.example>",
            "rcpt_to": ["<a@corp.example>"],
        },
        email={"status": "PARSE_DONE", "subject": "Invoice overdue"},
    )
    alert = PARSER.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.email is not None
    assert alert.email.sender == "billing@phish.example"
    assert alert.email.to == ["a@corp.example"]
    assert alert.email.subject == "Invoice overdue"


def test_ipv6_addresses_are_canonical() -> None:
    alert = PARSER.parse(_alert(src_ip="fe80:0000:0000:0000:fada:0cff:fedc:87f1"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.src is not None
    assert alert.src.ip == "fe80::fada:cff:fedc:87f1"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (1, Severity.HIGH),
        (2, Severity.MEDIUM),
        (3, Severity.LOW),
        (4, Severity.INFORMATIONAL),
        (255, Severity.INFORMATIONAL),
        (0, Severity.UNKNOWN),
        (None, Severity.UNKNOWN),
        ("2", Severity.MEDIUM),
    ],
)
def test_severity_scale_is_inverted(level: object, expected: Severity) -> None:
    assert severity_of(level) is expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"alert": None}, "alert"),
        ({"alert": "x"}, "alert"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"event_type": None}, "event_type"),
        ({"event_type": 7}, "event_type"),
        ({"src_port": {"n": 1}}, "src_port"),
        ({"alert": {"signature": ["x"]}}, "alert.signature"),
        ({"alert": {"signature": "x", "severity": "high"}}, "alert.severity"),
    ],
)
def test_bad_records_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as caught:
        PARSER.parse(_alert(**change))
    assert caught.value.field == field
    assert field in caught.value.reason


def test_placeholder_ports_and_addresses_are_left_out() -> None:
    alert = PARSER.parse(_alert(src_ip="not-an-ip", src_port=70000, dest_port="x"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.src is None
    assert alert.dst == Endpoint(ip="203.0.113.80", hostname="downloads.example.net")
