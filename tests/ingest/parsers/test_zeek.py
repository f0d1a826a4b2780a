"""Zeek notice.log: notices map to alerts; other Zeek logs are not alerts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quell.errors import InvalidInput
from quell.ingest.model import Endpoint, FileInfo, Severity
from quell.ingest.parsers import build_parser
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.zeek import ZeekParser
from tests.ingest.parsers.records import corpus_records

PARSER = ZeekParser()


def _notices() -> list[object]:
    return [PARSER.parse(record) for record in corpus_records("alerts", "zeek", "test-notice.log")]


@pytest.mark.requires("corpus")
def test_corpus_password_guessing_notice() -> None:
    alert = _notices()[0]
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == (
        "172.16.238.1 appears to be guessing SSH passwords (seen in 30 connections)."
    )
    assert alert.rule_uid == alert.rule_name == "SSH::Password_Guessing"
    assert alert.category == "SSH"
    assert alert.severity is Severity.MEDIUM
    assert alert.time == datetime(2011, 11, 4, 19, 44, 35, 879278, tzinfo=UTC)
    assert alert.src == Endpoint(ip="172.16.238.1")
    assert alert.dst is None
    assert alert.description is not None
    assert alert.description.startswith("Sampled servers:  172.16.238.136")
    assert alert.extra["peer_descr"] == "bro"
    assert alert.extra["actions"] == ["Notice::ACTION_LOG"]
    assert (alert.product, alert.vendor) == ("Zeek", "Zeek")


@pytest.mark.requires("corpus")
def test_corpus_invalid_certificate_notice_has_the_connection() -> None:
    alert = _notices()[3]
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == "SSL certificate validation failed with (self signed certificate)"
    assert alert.rule_uid == "SSL::Invalid_Server_Cert"
    assert alert.severity is Severity.LOW
    assert alert.time == datetime(2021, 3, 30, 9, 52, 9, 601155, tzinfo=UTC)
    assert alert.src == Endpoint(ip="10.156.0.2", port=48818)
    assert alert.dst == Endpoint(ip="89.160.20.156", port=443)
    assert alert.description == "CN=*.badssl.com,O=BadSSL,L=San Francisco,ST=California,C=US"
    assert alert.extra["conn_uid"] == "CmvrSS1wIiuOGYCbfi"
    assert alert.extra["fuid"] == "F39b0Bdfm3FW1rNS5"
    assert alert.extra["proto"] == "tcp"


@pytest.mark.requires("corpus")
def test_corpus_scan_and_capture_loss_severities() -> None:
    scan, loss = _notices()[1:3]
    assert not isinstance(scan, NotAnAlert)
    assert not isinstance(loss, NotAnAlert)
    assert scan.rule_uid == "Scan::Port_Scan"
    assert scan.severity is Severity.LOW
    assert scan.src == scan.dst == Endpoint(ip="89.160.20.156")
    assert loss.rule_uid == "CaptureLoss::Too_Much_Loss"
    assert loss.severity is Severity.INFORMATIONAL
    assert loss.src is None
    assert loss.time == datetime(2021, 3, 30, 9, 49, 0, 958466, tzinfo=UTC)


def test_nested_conn_id_iso_time_and_mime_type() -> None:
    alert = PARSER.parse(
        {
            "ts": "2024-02-01T12:00:00.5Z",
            "note": "TeamCymruMalwareHashRegistry::Match",
            "msg": "Malware Hash Registry Detection rate: 42%",
            "id": {"orig_h": "10.0.0.5", "orig_p": 51515, "resp_h": "198.51.100.7", "resp_p": 80},
            "file_mime_type": "application/x-dosexec",
            "file_desc": "http://198.51.100.7/a.exe",
        }
    )
    assert not isinstance(alert, NotAnAlert)
    assert alert.severity is Severity.HIGH
    assert alert.time == datetime(2024, 2, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert alert.src == Endpoint(ip="10.0.0.5", port=51515)
    assert alert.dst == Endpoint(ip="198.51.100.7", port=80)
    assert alert.file == FileInfo(mime_type="application/x-dosexec")
    assert alert.extra["file_desc"] == "http://198.51.100.7/a.exe"


def test_other_zeek_logs_are_not_alerts() -> None:
    result = PARSER.parse({"_path": "conn", "ts": 1.0, "uid": "C1"})
    assert result == NotAnAlert("zeek 'conn' log is not notice.log")


def test_options_set_severities_for_notes() -> None:
    parser = ZeekParser({"severity": {"Local::Beacon": "high"}, "default_severity": 2})
    beacon = parser.parse({"ts": 1, "note": "Local::Beacon"})
    other = parser.parse({"ts": 1, "note": "Local::Other"})
    assert not isinstance(beacon, NotAnAlert)
    assert not isinstance(other, NotAnAlert)
    assert beacon.severity is Severity.HIGH
    assert other.severity is Severity.LOW


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"severity": {"X::Y": "severe"}}, "options.severity.X::Y"),
        ({"default_severity": 7}, "options.default_severity"),
        ({"severity": ["X::Y"]}, "options.severity"),
        ({"colour": "red"}, "options.colour"),
    ],
)
def test_bad_options_are_invalid_input(options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_parser("zeek", options)
    assert caught.value.details["field"] == field


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"ts": 1}, "note"),
        ({"note": "A::B"}, "ts"),
        ({"note": {"x": 1}, "ts": 1}, "note"),
        ({"note": "A::B", "ts": 1, "p": True}, "p"),
    ],
)
def test_bad_records_name_the_field(record: dict[str, object], field: str) -> None:
    with pytest.raises(ParseError) as caught:
        PARSER.parse(record)
    assert caught.value.field == field
