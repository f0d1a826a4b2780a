"""ECS and Elastic Security detection alerts, nested, dotted, as hits and as ``fields``.

The fixtures in ``data/`` follow the documented shapes: an ``.alerts-security.alerts-*`` hit
whose ``_source`` has dotted ``kibana.alert.*`` keys beside the nested source event, the same
kind of alert read through the search API's ``fields`` (every value an array, threat objects
flattened), a Filebeat Suricata alert and an Elastic Defend malware alert.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from quell.ingest.model import Endpoint, FileInfo, ObservableType, Severity
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.ecs import EcsParser, severity_of
from tests.ingest.parsers.records import fixture

PARSER = EcsParser()


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_kibana_alert_hit() -> None:
    alert = PARSER.parse(fixture("kibana_alert_hit.json"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == alert.rule_name == "Suspicious PowerShell Encoded Command"
    assert alert.rule_uid == "9f2e4c61-3a7b-4d85-b0c9-e6f1a2d3b4c5"
    assert alert.uid == "6f1c2b7a9e0d4c55b1e8a3f27d94c0ab5e61f8d2c4b7a09e3d15c6b8f2a7e401"
    # original_time, when the process started, not @timestamp, when the rule ran.
    assert alert.time == datetime(2025, 3, 14, 9, 24, 3, 118000, tzinfo=UTC)
    assert alert.severity is Severity.HIGH
    assert alert.description is not None
    assert alert.description.startswith("process event with process powershell.exe")
    assert alert.techniques == ["T1059", "T1059.001", "T1027"]
    assert alert.host == Endpoint(ip="10.40.12.87", hostname="ws-fin-042")
    assert alert.user == "jdoe"
    assert alert.file == FileInfo(
        name="powershell.exe",
        path="C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
        md5="7353f60b1739074eb17c5f4dddefe239",
        sha1="6cbce4a295c163791b60fc23d285e6d84f28ee4c",
        sha256="de96a6e69944335375dc1ac238336066889d9ffc7d73628ef4fe1b1b160ab32c",
    )
    assert (alert.product, alert.vendor) == ("Elastic Security", "Elastic")
    assert alert.extra["kibana.alert.workflow_status"] == "open"
    assert alert.extra["kibana.alert.rule.uuid"] == "0b3c7f52-8e1d-4f6a-9c2b-51d7a8e3f604"
    assert alert.extra["kibana.alert.risk_score"] == 73
    assert alert.extra["process.parent.name"] == "WINWORD.EXE"
    assert alert.extra["user.domain"] == "CORP"


def test_source_without_the_hit_gives_the_same_alert() -> None:
    hit = fixture("kibana_alert_hit.json")
    assert PARSER.parse(hit["_source"]) == PARSER.parse(hit)


def test_fully_dotted_document_gives_the_same_alert_as_nested() -> None:
    source = fixture("kibana_alert_hit.json")["_source"]
    assert PARSER.parse(_flatten(source)) == PARSER.parse(source)


def test_siem_puller_metadata_gives_the_uid() -> None:
    document = fixture("ecs_suricata_alert.json")
    document["@metadata"] = {
        "_index": ".ds-logs-suricata.eve-default-2024.11.20-000001",
        "_id": "AbC1",
    }
    alert = PARSER.parse(document)
    assert not isinstance(alert, NotAnAlert)
    assert alert.uid == "AbC1"
    assert alert.extra["@metadata"]["_id"] == "AbC1"


def test_kibana_alert_fields_form() -> None:
    alert = PARSER.parse(fixture("kibana_alert_fields.json"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "Threat Intel Indicator Match - DNS"
    assert alert.rule_uid == "a1b2c3d4-0000-4e5f-8a9b-threatintel01"
    assert alert.uid == "c0ffee4d2b9a8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"
    assert alert.time == datetime(2025, 5, 2, 22, 40, 51, 377000, tzinfo=UTC)
    assert alert.severity is Severity.CRITICAL
    assert alert.techniques == ["T1071", "T1071.004"]
    assert alert.src == Endpoint(ip="10.20.30.40", port=51234)
    assert alert.dst == Endpoint(ip="10.0.0.53", port=53)
    assert alert.host == Endpoint(hostname="dns-sensor-01")
    assert alert.category == "network"
    assert [(o.type, o.value, o.role) for o in alert.observables] == [
        (ObservableType.DOMAIN, "update-check.badcdn.example", "text")
    ]
    assert alert.extra["kibana.alert.workflow_status"] == "acknowledged"
    assert alert.extra["network.transport"] == "udp"


def test_filebeat_suricata_alert_uses_the_suricata_scale() -> None:
    alert = PARSER.parse(fixture("ecs_suricata_alert.json"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "ET DNS Query for .cc TLD"
    assert alert.rule_uid == "2027758"
    assert alert.category == "Potentially Bad Traffic"
    assert alert.time == datetime(2024, 11, 20, 14, 3, 12, 448000, tzinfo=UTC)
    assert alert.severity is Severity.MEDIUM  # event.severity 2 on Suricata's inverted scale
    assert alert.src == Endpoint(ip="192.168.10.23", port=49822)
    assert alert.dst == Endpoint(ip="192.168.10.1", port=53)
    assert alert.techniques == ["T1071", "T1071.004"]
    assert (alert.product, alert.vendor) == ("Suricata", "OISF")
    assert alert.observables[0].value == "tracker.example.cc"
    assert alert.extra["observer.name"] == "ids-edge-1"


def test_elastic_defend_malware_alert() -> None:
    alert = PARSER.parse(fixture("ecs_endpoint_malware.json"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "Malware Detection Alert"
    assert alert.rule_name is None
    assert alert.description is None
    assert alert.uid == "Nu8Ns5Aq3k0YgQ1p+++++2l7"
    assert alert.severity is Severity.HIGH
    assert alert.category == "malware"
    assert alert.host == Endpoint(ip="10.50.3.17", hostname="lt-sales-17")
    assert alert.user == "mkhan"
    assert alert.file == FileInfo(
        name="invoice_0412.pdf.exe",
        path="C:\\Users\\mkhan\\Downloads\\invoice_0412.pdf.exe",
        size=388096,
        md5="5a8a3e9f0c4d7b21e6f3a9c08d1b4e72",
        sha1="0e2d7c9a4b1f85e36d0a2c7b9f41e8d35a6c0b12",
        sha256="9d4c1e7a3b05f28e6c1d9a0b47e3f5c28d61a9e0f3b7c4d2a5e8f1b06c9d3a7e",
    )
    assert (alert.product, alert.vendor) == ("Elastic Defend", "Elastic")


def test_legacy_signal_document() -> None:
    alert = PARSER.parse(
        {
            "@timestamp": "2021-06-01T10:00:05Z",
            "event": {"kind": "signal"},
            "signal": {
                "original_time": "2021-06-01T09:59:00Z",
                "status": "open",
                "reason": "user admin logged in from 192.0.2.4",
                "rule": {
                    "id": "b7e2",
                    "rule_id": "f1a3",
                    "name": "Admin login from unusual place",
                    "severity": "medium",
                    "risk_score": 47,
                    "threat": [{"technique": [{"id": "T1078"}]}],
                },
            },
            "source": {"ip": "192.0.2.4"},
        }
    )
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "Admin login from unusual place"
    assert alert.rule_uid == "f1a3"
    assert alert.time == datetime(2021, 6, 1, 9, 59, tzinfo=UTC)
    assert alert.severity is Severity.MEDIUM
    assert alert.techniques == ["T1078"]
    assert alert.description == "user admin logged in from 192.0.2.4"


def test_plain_events_are_not_alerts() -> None:
    assert PARSER.parse({"event": {"kind": "event"}, "message": "x"}) == NotAnAlert(
        "ecs event.kind 'event' is not an alert"
    )


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"kibana.alert.severity": "low"}, Severity.LOW),
        ({"kibana.alert.rule.severity": "critical"}, Severity.CRITICAL),
        ({"kibana.alert.risk_score": 21}, Severity.LOW),
        ({"kibana.alert.risk_score": 22}, Severity.MEDIUM),
        ({"event": {"risk_score": 48.5}}, Severity.HIGH),
        ({"event": {"severity": 99}}, Severity.CRITICAL),
        ({"event": {"severity": 1, "module": "suricata"}}, Severity.HIGH),
        ({"event": {"severity": 500}}, Severity.UNKNOWN),
        ({}, Severity.UNKNOWN),
    ],
)
def test_severity_sources(document: dict[str, Any], expected: Severity) -> None:
    assert severity_of(document) is expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("kibana.alert.rule.name", None), "kibana.alert.rule.name"),
        (("kibana.alert.original_time", "not a time"), "kibana.alert.original_time"),
        (("kibana.alert.severity", {"x": 1}), "kibana.alert.severity"),
        (("kibana.alert.uuid", {"x": 1}), "kibana.alert.uuid"),
        (("host", {"name": {"x": 1}}), "host.name"),
    ],
)
def test_bad_documents_name_the_field(change: tuple[str, Any], field: str) -> None:
    source = copy.deepcopy(fixture("kibana_alert_hit.json")["_source"])
    key, value = change
    source[key] = value
    if key == "kibana.alert.rule.name":
        source.pop("message", None)
    with pytest.raises(ParseError) as caught:
        PARSER.parse(source)
    assert caught.value.field == field
