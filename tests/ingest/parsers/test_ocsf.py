"""OCSF passthrough: Detection Finding (2004) and the deprecated Security Finding (2001)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from quell.ingest.model import Endpoint, FileInfo, Observable, ObservableType, Severity
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.ocsf import OcsfParser
from tests.ingest.parsers.records import corpus_records, fixture

PARSER = OcsfParser()


def _corpus() -> list[Any]:
    return corpus_records("ocsf", "malware_infection_detected_sample.json")


@pytest.mark.requires("corpus")
def test_corpus_security_finding_maps_to_an_alert() -> None:
    records = _corpus()
    assert len(records) == 4
    alert = PARSER.parse(records[0])
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "Infection found on 1.183.190.110"
    assert alert.uid == "2b7908d7-4b72-4f65-afa0-09bdaea46ae3"
    assert alert.time == datetime(2022, 11, 15, 17, 59, 59, 945000, tzinfo=UTC)
    assert alert.severity is Severity.INFORMATIONAL
    assert alert.category == "malware_infection"
    assert alert.description == (
        "Potentially vulnerable application infection detected on IP address 1.183.190.110 "
        "communicating with Command-and-Control domain open-internet.nl"
    )
    assert alert.product == "SecurityScorecard Attack Surface Intelligence"
    assert alert.vendor == "SecurityScorecard"
    assert alert.host == Endpoint(ip="1.183.190.110")
    assert alert.rule_uid is None
    assert alert.techniques == []
    assert alert.observables == [
        Observable(ObservableType.IPV4, "1.183.190.110"),
        Observable(ObservableType.DOMAIN, "open-internet.nl"),
    ]
    # What has no typed slot is kept under its OCSF name.
    assert alert.extra["class_uid"] == 2001
    assert alert.extra["malware"][0]["name"] == "pva.torrent.openinternet"
    assert alert.extra["finding"]["src_url"] == (
        "https://platform.securityscorecard.io/#/asi/details/1.183.190.110"
    )
    assert "title" not in alert.extra["finding"]
    assert alert.extra["metadata"]["profiles"] == ["malware", "reputation"]
    assert alert.extra["state_id"] == 1
    assert "time" not in alert.extra


@pytest.mark.requires("corpus")
def test_corpus_null_observable_value_is_skipped() -> None:
    alert = PARSER.parse(_corpus()[1])
    assert not isinstance(alert, NotAnAlert)
    assert alert.observables == [Observable(ObservableType.IPV4, "59.11.81.231")]
    assert alert.time == datetime(2022, 11, 15, 17, 59, 59, 946000, tzinfo=UTC)


@pytest.mark.requires("corpus")
def test_corpus_all_findings_parse() -> None:
    titles = [getattr(PARSER.parse(record), "title", None) for record in _corpus()]
    assert titles == [
        "Infection found on 1.183.190.110",
        "Infection found on 59.11.81.231",
        "Infection found on 190.109.227.80",
        "Infection found on 38.7.186.198",
    ]


def test_detection_finding_maps_evidences_device_and_attacks() -> None:
    alert = PARSER.parse(fixture("ocsf_detection_finding.json"))
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "Credential Dumping via Mimikatz"
    assert alert.uid == "ldt:7f3e9a21c84b4f6e:1830021"
    assert alert.rule_uid == "IOA-210"
    assert alert.rule_name == "LSASS Memory Access by Unsigned Tool"
    assert alert.severity is Severity.HIGH
    assert alert.time == datetime(2024, 11, 1, 11, 27, 1, 337000, tzinfo=UTC)
    assert alert.category == "credential_access"
    assert alert.description == "A process matching Mimikatz read LSASS memory."
    assert alert.techniques == ["T1003", "T1003.001"]
    assert alert.host == Endpoint(ip="10.8.0.31", hostname="srv-db-03")
    assert alert.src == Endpoint(ip="10.8.0.31", port=50644, hostname="srv-db-03")
    assert alert.dst == Endpoint(ip="198.51.100.200", port=443, hostname="paste.example.org")
    assert alert.user == "svc_backup"
    assert alert.url == "https://paste.example.org/raw/Xk29"
    assert alert.file == FileInfo(
        name="m64.exe",
        path="C:\\ProgramData\\m64.exe",
        size=1355264,
        md5="29efd64dd3c7fe1e2b022b7ad73a1ba5",
        sha256="92804faaab2175dc501d73e814663058c78c0a042675a8937266357bcfb96c50",
    )
    assert (alert.product, alert.vendor) == ("Falconer EDR", "Example Security")
    assert [(o.type, o.value) for o in alert.observables] == [
        (ObservableType.DOMAIN, "paste.example.org"),
        (ObservableType.IPV4, "10.8.0.31"),
        (ObservableType.USER, "svc_backup"),
        (ObservableType.SHA256, "92804faaab2175dc501d73e814663058c78c0a042675a8937266357bcfb96c50"),
        (ObservableType.URL, "https://paste.example.org/raw/Xk29"),
        (ObservableType.HOSTNAME, "srv-db-03"),
    ]
    assert alert.extra["risk_score"] == 82
    assert alert.extra["finding_info"]["analytic"]["type"] == "Rule"
    assert alert.extra["evidences"][0]["process"]["name"] == "m64.exe"


def test_other_classes_are_not_alerts() -> None:
    result = PARSER.parse({"class_uid": 4001, "time": 1})
    assert isinstance(result, NotAnAlert)
    assert "4001" in result.reason


def test_severity_caption_is_read_without_an_id() -> None:
    record = copy.deepcopy(fixture("ocsf_detection_finding.json"))
    del record["severity_id"]
    record["severity"] = "critical"
    alert = PARSER.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.severity is Severity.CRITICAL


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"class_uid": None}, "class_uid"),
        ({"class_uid": "finding"}, "class_uid"),
        ({"severity_id": 7}, "severity_id"),
        ({"time": None}, "time_dt"),
        ({"time": "later"}, "time"),
        ({"finding_info": {"uid": "x"}, "message": None}, "finding_info.title"),
        ({"finding_info": ["x"]}, "finding_info"),
        ({"evidences": [{"src_endpoint": "10.0.0.1"}]}, "evidences.src_endpoint"),
        ({"observables": [{"type_id": 2, "value": {"ip": "1.2.3.4"}}]}, "observables.value"),
    ],
)
def test_bad_findings_name_the_field(change: dict[str, Any], field: str) -> None:
    record = {**fixture("ocsf_detection_finding.json"), **change}
    with pytest.raises(ParseError) as caught:
        PARSER.parse(record)
    assert caught.value.field == field
