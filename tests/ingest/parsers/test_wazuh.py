"""Wazuh alerts: rule, agent, network, user, file integrity and MITRE fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from quell.ingest.model import Endpoint, FileInfo, Severity
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.wazuh import WazuhParser, severity_of
from tests.ingest.parsers.records import corpus_records

PARSER = WazuhParser()

SSHD_BRUTE_FORCE: dict[str, Any] = {
    "timestamp": "2024-03-02T04:11:58.120+0000",
    "rule": {
        "level": 10,
        "description": "sshd: brute force trying to get access to the system. Non existent user.",
        "id": "5712",
        "frequency": 8,
        "firedtimes": 3,
        "mail": False,
        "groups": ["syslog", "sshd", "authentication_failures"],
        "mitre": {"id": ["T1110"], "tactic": ["Credential Access"], "technique": ["Brute Force"]},
        "pci_dss": ["11.4", "10.2.4", "10.2.5"],
    },
    "agent": {"id": "000", "name": "wazuh-manager"},
    "manager": {"name": "wazuh-manager"},
    "id": "1709352718.4471221",
    "full_log": (
        "Mar  2 04:11:57 bastion-2 sshd[2211]: Invalid user oracle from 198.51.100.23 port 40112"
    ),
    "predecoder": {"program_name": "sshd", "timestamp": "Mar  2 04:11:57", "hostname": "bastion-2"},
    "decoder": {"parent": "sshd", "name": "sshd"},
    "data": {"srcip": "198.51.100.23", "srcport": "40112", "srcuser": "oracle"},
    "location": "/var/log/secure",
}


@pytest.mark.requires("corpus")
def test_corpus_file_added_alert() -> None:
    (record,) = corpus_records("alerts", "wazuh", "thecyberproject_wazuh_alert.json")
    alert = PARSER.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == alert.rule_name == "File added to the system."
    assert alert.rule_uid == "554"
    assert alert.uid == "1721227225.1536988"
    assert alert.severity is Severity.LOW
    assert alert.time == datetime(2024, 7, 17, 14, 40, 25, 967000, tzinfo=UTC)
    assert alert.category == "syscheck_file"
    assert alert.description == "File '/home/ansible/file16' added Mode: realtime"
    assert alert.host == Endpoint(ip="192.168.130.29", hostname="deployment")
    assert alert.file == FileInfo(
        name="file16",
        path="/home/ansible/file16",
        size=0,
        md5="d41d8cd98f00b204e9800998ecf8427e",
        sha1="da39a3ee5e6b4b0d3255bfef95601890afd80709",
        sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    assert alert.src is None
    assert alert.user is None
    assert alert.techniques == []
    assert alert.extra["agent_id"] == "001"
    assert alert.extra["manager"] == "wazuh-aio"
    assert alert.extra["decoder"] == "syscheck_new_entry"
    assert alert.extra["groups"] == ["ossec", "syscheck", "syscheck_entry_added", "syscheck_file"]
    assert alert.extra["compliance"]["pci_dss"] == ["11.5"]
    assert alert.extra["syscheck_event"] == "added"
    assert alert.extra["syscheck_uname_after"] == "root"
    assert (alert.product, alert.vendor) == ("Wazuh", "Wazuh")


def test_sshd_brute_force_maps_source_user_host_and_technique() -> None:
    alert = PARSER.parse(SSHD_BRUTE_FORCE)
    assert not isinstance(alert, NotAnAlert)
    assert alert.severity is Severity.MEDIUM
    assert alert.techniques == ["T1110"]
    assert alert.src == Endpoint(ip="198.51.100.23", port=40112)
    assert alert.user == "oracle"
    # The manager's own agent decoded a line forwarded by bastion-2.
    assert alert.host == Endpoint(hostname="bastion-2")
    assert alert.category == "authentication_failures"
    assert alert.extra["mitre"]["tactic"] == ["Credential Access"]


def test_windows_logon_failure_uses_eventdata() -> None:
    record = {
        "@timestamp": "2024-05-06T07:08:09.000Z",
        "rule": {"level": 5, "description": "Logon failure", "id": "60122"},
        "agent": {"id": "012", "name": "DC01", "ip": "10.0.0.10"},
        "data": {
            "win": {
                "eventdata": {
                    "targetUserName": "administrator",
                    "ipAddress": "10.0.0.77",
                    "ipPort": "52100",
                },
                "system": {"eventID": "4625"},
            }
        },
    }
    alert = PARSER.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.time == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert alert.user == "administrator"
    assert alert.src == Endpoint(ip="10.0.0.77", port=52100)
    assert alert.host == Endpoint(ip="10.0.0.10", hostname="DC01")


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (0, Severity.INFORMATIONAL),
        (3, Severity.INFORMATIONAL),
        (4, Severity.LOW),
        (6, Severity.LOW),
        (7, Severity.MEDIUM),
        (11, Severity.MEDIUM),
        (12, Severity.HIGH),
        (14, Severity.HIGH),
        (15, Severity.CRITICAL),
        (16, Severity.CRITICAL),
        (-1, Severity.UNKNOWN),
        (None, Severity.UNKNOWN),
    ],
)
def test_level_bands(level: int | None, expected: Severity) -> None:
    assert severity_of(level) is expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"rule": None}, "rule"),
        ({"rule": {"id": "1", "level": 3}}, "rule.description"),
        ({"rule": {"description": "x", "level": "high"}}, "rule.level"),
        ({"timestamp": None}, "@timestamp"),
        ({"agent": ["001"]}, "agent"),
        ({"data": {"srcuser": {"name": "x"}}}, "data.srcuser"),
        ({"rule": {"description": "x", "mitre": {"id": [["T1110"]]}}}, "rule.mitre.id"),
    ],
)
def test_bad_records_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ParseError) as caught:
        PARSER.parse({**SSHD_BRUTE_FORCE, **change})
    assert caught.value.field == field
