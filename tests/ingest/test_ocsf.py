"""The OCSF rendering of an alert is a valid OCSF 1.8.0 Detection Finding.

Validity is checked against ``ocsf_detection_finding.schema.json``, a JSON Schema derived by
hand from the ocsf/ocsf-schema definitions (its ``$comment`` names the files and commits): every
object closed with ``additionalProperties: false``, OCSF's required attributes, data types and
the enums of the ``*_id`` attributes. The last tests show the schema rejects what it should.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from quell.ingest.model import (
    Alert,
    AlertStatus,
    EmailInfo,
    Endpoint,
    FileInfo,
    Observable,
    ObservableType,
    Severity,
)
from quell.ingest.ocsf import OCSF_VERSION, RAW_DATA_LIMIT, to_ocsf

SCHEMA_PATH = Path(__file__).with_name("ocsf_detection_finding.schema.json")
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
Draft202012Validator.check_schema(SCHEMA)
VALIDATOR = Draft202012Validator(SCHEMA)

WHEN = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
WHEN_MS = 1714564800123
MD5 = "44d88612fea8a8f36de82e1278abb02f"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"


def errors_of(document: dict[str, Any]) -> list[str]:
    """Every schema violation in ``document``, as 'path: message' lines."""
    return [
        f"{error.json_path}: {error.message[:160]}" for error in VALIDATOR.iter_errors(document)
    ]


def assert_valid(document: dict[str, Any]) -> None:
    problems = errors_of(document)
    assert not problems, "\n".join(problems)


# -- realistic alerts, built by hand ----------------------------------------------------------


def suricata_alert() -> Alert:
    """An EVE alert: a scan from an internal host to an external one, with ATT&CK ids."""
    return Alert(
        title="ET SCAN Potential SSH Scan OUTBOUND",
        time=WHEN,
        severity=Severity.HIGH,
        uid="1234567890123456",
        rule_uid="2003068",
        rule_name="ET SCAN Potential SSH Scan OUTBOUND",
        category="Attempted Information Leak",
        product="Suricata",
        vendor="OISF",
        techniques=["T1046", "T1021.004", "TA0007", "T1046"],
        src=Endpoint(ip="10.1.2.3", port=51515, hostname="build-07.corp.example"),
        dst=Endpoint(ip="2001:db8::7", port=22),
        observables=[
            Observable(ObservableType.IPV4, "10.1.2.3", role="src", private=True),
            Observable(ObservableType.IPV6, "2001:db8::7", role="dst", private=True),
            Observable(ObservableType.HOSTNAME, "build-07.corp.example", role="src"),
            Observable(ObservableType.ATTACK_TECHNIQUE, "T1046", role="text"),
        ],
        extra={"flow_id": 1822331945122316, "in_iface": "eth0", "app_proto": "ssh"},
        id="alr_01J0SURICATA",
        source="perimeter-ids",
        format="suricata",
        fingerprint="fp-suricata",
        count=3,
        first_seen=WHEN,
        last_seen=WHEN + timedelta(minutes=4),
        received_at=WHEN + timedelta(seconds=2),
        incident_id="inc_01J0SCAN",
        raw=b'{"event_type":"alert","src_ip":"10.1.2.3","alert":{"signature_id":2003068}}',
    )


def wazuh_alert() -> Alert:
    """A Wazuh syscheck alert: a changed binary on a host, with its hashes."""
    return Alert(
        title="Integrity checksum changed.",
        time=WHEN,
        severity=Severity.MEDIUM,
        uid="1714564800.1234",
        rule_uid="550",
        rule_name="Integrity checksum changed.",
        category="syscheck",
        product="Wazuh",
        vendor="Wazuh",
        techniques=["T1565.001"],
        host=Endpoint(ip="192.168.50.10", hostname="web-01", port=1514),
        user="www-data",
        file=FileInfo(
            path="/usr/bin/passwd",
            size=59976,
            md5=MD5,
            sha1=SHA1,
            sha256=SHA256,
            mime_type="application/x-executable",
        ),
        observables=[
            Observable(ObservableType.HOSTNAME, "web-01", role="host"),
            Observable(ObservableType.IPV4, "192.168.50.10", role="host", private=True),
            Observable(ObservableType.USER, "www-data", role="user"),
            Observable(ObservableType.FILE_NAME, "passwd", role="file"),
            Observable(ObservableType.MD5, MD5.upper(), role="file"),
            Observable(ObservableType.SHA256, SHA256, role="file"),
        ],
        id="alr_01J0WAZUH",
        source="wazuh-manager",
        format="wazuh",
        received_at=WHEN,
        raw=b'{"rule":{"id":"550"},"syscheck":{"path":"/usr/bin/passwd"}}',
    )


def phishing_alert() -> Alert:
    """A user-reported phish: sender, recipients, URLs and an attachment with hashes."""
    return Alert(
        title="Reported phish: Invoice overdue",
        time=WHEN,
        severity=Severity.MEDIUM,
        category="phishing",
        product="Quell IMAP poller",
        techniques=["T1566.001", "T1566.002"],
        url="https://login.examp1e.net:8443/owa/auth?session=42",
        email=EmailInfo(
            sender="Billing Team <billing@examp1e.net>",
            reply_to="collect@payme.example",
            to=["alice@corp.example"],
            cc=["bob@corp.example", "not an address"],
            subject="Invoice overdue",
            message_id="<20240501120000.1@examp1e.net>",
            date=WHEN - timedelta(minutes=30),
            return_path="<bounce@examp1e.net>",
            received_from=["mail.examp1e.net [198.51.100.20]"],
            auth={"spf": "fail", "dkim": "none", "dmarc": "fail"},
            urls=["https://login.examp1e.net:8443/owa/auth?session=42", "http://cdn.example/x.js"],
            attachments=[
                FileInfo(name="invoice.pdf.exe", size=48213, sha256=SHA256),
                FileInfo(size=12),  # nameless: not a valid OCSF file, left out
            ],
            headers={"X-Mailer": "PHPMailer 6.0"},
        ),
        observables=[
            Observable(ObservableType.EMAIL, "billing@examp1e.net", role="sender"),
            Observable(ObservableType.EMAIL, "collect@payme.example", role="reply_to"),
            Observable(ObservableType.EMAIL, "alice@corp.example", role="recipient"),
            Observable(
                ObservableType.URL, "https://login.examp1e.net:8443/owa/auth?session=42", "url"
            ),
            Observable(ObservableType.URL, "http://cdn.example/x.js", role="url"),
            Observable(ObservableType.DOMAIN, "LOGIN.examp1e.net", role="url"),
            Observable(ObservableType.FILE_NAME, "invoice.pdf.exe", role="file"),
            Observable(ObservableType.SHA256, SHA256, role="file"),
            Observable(ObservableType.IPV4, "198.51.100.20", role="text"),
            Observable(ObservableType.CVE, "CVE-2023-23397"),
        ],
        id="alr_01J0PHISH",
        source="phish-mailbox",
        format="email",
        raw="Subject: Invoice overdue\r\n\r\nBitte zahlen: €420.".encode(),
    )


def minimal_alert() -> Alert:
    """Only what the model requires."""
    return Alert(title="Something happened", time=WHEN)


EXAMPLES = {
    "suricata": suricata_alert,
    "wazuh": wazuh_alert,
    "phishing": phishing_alert,
    "minimal": minimal_alert,
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_renders_to_a_valid_detection_finding(name: str) -> None:
    document = to_ocsf(EXAMPLES[name]())
    assert_valid(document)
    assert orjson.loads(orjson.dumps(document)) == document


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_class_is_detection_finding_create(name: str) -> None:
    document = to_ocsf(EXAMPLES[name]())
    assert document["class_uid"] == 2004
    assert document["class_name"] == "Detection Finding"
    assert document["category_uid"] == 2
    assert document["category_name"] == "Findings"
    assert document["activity_id"] == 1
    assert document["activity_name"] == "Create"
    assert document["type_uid"] == 200401
    assert document["type_name"] == "Detection Finding: Create"
    assert document["metadata"]["version"] == OCSF_VERSION == "1.8.0"


def test_times_are_epoch_milliseconds() -> None:
    document = to_ocsf(suricata_alert())
    assert document["time"] == WHEN_MS
    assert document["timezone_offset"] == 0
    info = document["finding_info"]
    assert info["first_seen_time"] == WHEN_MS
    assert info["last_seen_time"] == WHEN_MS + 4 * 60 * 1000
    assert document["metadata"]["processed_time"] == WHEN_MS + 2000


def test_an_offset_time_is_the_same_instant_with_its_offset() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5, minutes=30)))
    document = to_ocsf(Alert(title="t", time=local))
    assert document["time"] == WHEN_MS
    assert document["timezone_offset"] == 330


def test_a_repeat_without_last_seen_gets_no_last_seen_time() -> None:
    document = to_ocsf(Alert(title="t", time=WHEN, count=5))
    assert document["count"] == 5
    assert document["finding_info"]["first_seen_time"] == WHEN_MS
    assert "last_seen_time" not in document["finding_info"]


@pytest.mark.parametrize(
    ("severity", "caption"),
    [
        (Severity.UNKNOWN, "Unknown"),
        (Severity.INFORMATIONAL, "Informational"),
        (Severity.LOW, "Low"),
        (Severity.MEDIUM, "Medium"),
        (Severity.HIGH, "High"),
        (Severity.CRITICAL, "Critical"),
        (Severity.FATAL, "Fatal"),
        (Severity.OTHER, "Other"),
    ],
)
def test_severity_is_the_ocsf_severity_id_and_caption(severity: Severity, caption: str) -> None:
    document = to_ocsf(Alert(title="t", time=WHEN, severity=severity))
    assert document["severity_id"] == int(severity)
    assert document["severity"] == caption
    assert_valid(document)


@pytest.mark.parametrize(
    ("status", "status_id", "caption", "is_alert"),
    [
        (AlertStatus.NEW, 1, "New", True),
        (AlertStatus.SUPPRESSED, 3, "Suppressed", False),
        (AlertStatus.CLOSED, 4, "Resolved", True),
    ],
)
def test_status_maps_to_the_finding_status(
    status: AlertStatus, status_id: int, caption: str, is_alert: bool
) -> None:
    document = to_ocsf(Alert(title="t", time=WHEN, status=status))
    assert (document["status_id"], document["status"]) == (status_id, caption)
    assert document["is_alert"] is is_alert


def test_the_network_alert_has_endpoints_rule_attacks_and_metadata() -> None:
    document = to_ocsf(suricata_alert())
    (evidence,) = document["evidences"]
    assert evidence["src_endpoint"] == {
        "ip": "10.1.2.3",
        "hostname": "build-07.corp.example",
        "port": 51515,
    }
    assert evidence["dst_endpoint"] == {"ip": "2001:db8::7", "port": 22}
    info = document["finding_info"]
    assert info["uid"] == "1234567890123456"  # the producer's id wins over Quell's
    assert info["analytic"] == {
        "type_id": 1,
        "type": "Rule",
        "uid": "2003068",
        "name": "ET SCAN Potential SSH Scan OUTBOUND",
        "category": "Attempted Information Leak",
    }
    assert info["types"] == ["Attempted Information Leak"]
    assert info["attacks"] == [
        {"technique": {"uid": "T1046"}},
        {"technique": {"uid": "T1021"}, "sub_technique": {"uid": "T1021.004"}},
        {"tactic": {"uid": "TA0007"}},
    ]
    assert document["metadata"] == {
        "version": "1.8.0",
        "product": {"name": "Suricata", "vendor_name": "OISF"},
        "uid": "alr_01J0SURICATA",
        "log_name": "perimeter-ids",
        "log_format": "suricata",
        "correlation_uid": "inc_01J0SCAN",
        "processed_time": WHEN_MS + 2000,
    }
    assert document["count"] == 3
    assert document["message"] == "ET SCAN Potential SSH Scan OUTBOUND"
    assert document["unmapped"] == {
        "flow_id": 1822331945122316,
        "in_iface": "eth0",
        "app_proto": "ssh",
    }
    assert "device" not in document
    assert [(o["name"], o["type_id"], o["type"]) for o in document["observables"]] == [
        ("evidences.src_endpoint.ip", 2, "IP Address"),
        ("evidences.dst_endpoint.ip", 2, "IP Address"),
        ("evidences.src_endpoint.hostname", 1, "Hostname"),
        ("text", 99, "attack_technique"),
    ]


def test_the_host_alert_has_device_user_and_file_with_fingerprints() -> None:
    document = to_ocsf(wazuh_alert())
    device = {"ip": "192.168.50.10", "hostname": "web-01", "type_id": 0, "type": "Unknown"}
    assert document["device"] == device  # a device has no port in OCSF
    (evidence,) = document["evidences"]
    assert evidence["device"] == device
    assert evidence["user"] == {"name": "www-data"}
    assert evidence["file"] == {
        "name": "passwd",  # from the path: OCSF requires file.name
        "type_id": 1,
        "type": "Regular File",
        "path": "/usr/bin/passwd",
        "size": 59976,
        "mime_type": "application/x-executable",
        "hashes": [
            {"algorithm_id": 1, "algorithm": "MD5", "value": MD5},
            {"algorithm_id": 2, "algorithm": "SHA-1", "value": SHA1},
            {"algorithm_id": 3, "algorithm": "SHA-256", "value": SHA256},
        ],
    }
    assert [(o["name"], o["type_id"]) for o in document["observables"]] == [
        ("device.hostname", 1),
        ("device.ip", 2),
        ("evidences.user.name", 4),
        ("evidences.file.name", 7),
        ("evidences.file.hashes.value", 8),  # matched without regard to case
        ("evidences.file.hashes.value", 8),
    ]
    assert document["finding_info"]["attacks"] == [
        {"technique": {"uid": "T1565"}, "sub_technique": {"uid": "T1565.001"}}
    ]


def test_the_phish_has_an_email_object_with_urls_and_attachments() -> None:
    document = to_ocsf(phishing_alert())
    (evidence,) = document["evidences"]
    email = evidence["email"]
    assert email["from"] == "billing@examp1e.net"
    assert email["to"] == ["alice@corp.example"]
    assert email["cc"] == ["bob@corp.example"]  # "not an address" is no email_t
    assert email["reply_to_list"] == ["collect@payme.example"]
    assert "reply_to" not in email  # deprecated since OCSF 1.4.0
    assert email["return_path"] == "bounce@examp1e.net"
    assert email["subject"] == "Invoice overdue"
    assert email["message_uid"] == "<20240501120000.1@examp1e.net>"
    assert email["urls"] == [
        {
            "url_string": "https://login.examp1e.net:8443/owa/auth?session=42",
            "scheme": "https",
            "hostname": "login.examp1e.net",
            "port": 8443,
            "path": "/owa/auth",
            "query_string": "session=42",
        },
        {
            "url_string": "http://cdn.example/x.js",
            "scheme": "http",
            "hostname": "cdn.example",
            "path": "/x.js",
        },
    ]
    assert email["files"] == [
        {
            "name": "invoice.pdf.exe",
            "type_id": 1,
            "type": "Regular File",
            "size": 48213,
            "hashes": [{"algorithm_id": 3, "algorithm": "SHA-256", "value": SHA256}],
        }
    ]
    assert evidence["url"]["url_string"] == "https://login.examp1e.net:8443/owa/auth?session=42"
    names = {o["value"]: (o["name"], o["type_id"]) for o in document["observables"]}
    assert names == {
        "billing@examp1e.net": ("evidences.email.from", 5),
        "collect@payme.example": ("evidences.email.reply_to_list", 5),
        "alice@corp.example": ("evidences.email.to", 5),
        "https://login.examp1e.net:8443/owa/auth?session=42": ("evidences.url.url_string", 6),
        "http://cdn.example/x.js": ("evidences.email.urls.url_string", 6),
        "LOGIN.examp1e.net": ("evidences.url.hostname", 1),
        "invoice.pdf.exe": ("evidences.email.files.name", 7),
        SHA256: ("evidences.email.files.hashes.value", 8),
        "198.51.100.20": ("text", 2),  # seen only in a header: named by its role
        "CVE-2023-23397": ("cve", 99),  # no role either: named by its type
    }
    cve = next(o for o in document["observables"] if o["type_id"] == 99)
    assert cve["type"] == "cve"


def test_the_minimal_alert_has_only_what_it_knows() -> None:
    document = to_ocsf(minimal_alert())
    assert_valid(document)
    for absent in ("evidences", "observables", "device", "raw_data", "raw_data_size", "unmapped"):
        assert absent not in document
    assert document["metadata"] == {
        "version": "1.8.0",
        "product": {"name": "Unknown", "vendor_name": "Unknown"},
    }
    info = document["finding_info"]
    assert set(info) == {"uid", "title", "first_seen_time", "last_seen_time"}
    assert info["title"] == document["message"] == "Something happened"
    # No id yet: a stable uid derived from the alert, since OCSF requires one.
    assert info["uid"] == to_ocsf(minimal_alert())["finding_info"]["uid"]
    assert info["first_seen_time"] == info["last_seen_time"] == WHEN_MS


def test_raw_utf8_is_written_as_raw_data_with_its_size() -> None:
    raw = '{"msg":"héllo ✓"}'.encode()
    document = to_ocsf(Alert(title="t", time=WHEN, raw=raw))
    assert document["raw_data"] == '{"msg":"héllo ✓"}'
    assert document["raw_data_size"] == len(raw) == 20


def test_raw_bytes_that_are_not_utf8_are_left_out_but_counted() -> None:
    document = to_ocsf(Alert(title="t", time=WHEN, raw=b"\xff\xfe\x00binary"))
    assert "raw_data" not in document
    assert document["raw_data_size"] == 9
    assert_valid(document)


def test_raw_data_is_bounded_at_64_kib() -> None:
    assert RAW_DATA_LIMIT == 65536
    at_limit = to_ocsf(Alert(title="t", time=WHEN, raw=b"a" * RAW_DATA_LIMIT))
    assert len(at_limit["raw_data"]) == RAW_DATA_LIMIT
    over = to_ocsf(Alert(title="t", time=WHEN, raw=b"a" * (RAW_DATA_LIMIT + 1)))
    assert "raw_data" not in over  # never a truncated, non-verbatim payload
    assert over["raw_data_size"] == RAW_DATA_LIMIT + 1


def test_values_that_break_their_ocsf_type_are_left_out() -> None:
    alert = Alert(
        title="t",
        time=WHEN,
        src=Endpoint(ip="999.1.1.1", port=70000, hostname="h"),
        dst=Endpoint(ip="fe80::1%eth0", port=-1),
        host=Endpoint(ip="not-an-ip", port=22),
        count=2**40,
        file=FileInfo(name="a.bin", size=2**70, md5="not-hex", sha1=""),
        email=EmailInfo(sender="nobody", to=["ok@example.org"], reply_to="bad@", urls=[""]),
        url="http://[::1/",
        techniques=["", "T1059.001"],
    )
    document = to_ocsf(alert)
    assert_valid(document)
    (evidence,) = document["evidences"]
    assert evidence["src_endpoint"] == {"hostname": "h"}
    assert "dst_endpoint" not in evidence  # nothing left that names it
    assert "device" not in document
    assert "count" not in document
    assert evidence["file"] == {"name": "a.bin", "type_id": 1, "type": "Regular File"}
    assert evidence["email"] == {"to": ["ok@example.org"]}
    assert evidence["url"] == {"url_string": "http://[::1/"}
    assert len(document["finding_info"]["attacks"]) == 1
    orjson.dumps(document)


def test_an_email_without_from_or_to_is_left_out() -> None:
    document = to_ocsf(Alert(title="t", time=WHEN, email=EmailInfo(subject="hi")))
    assert "evidences" not in document
    assert_valid(document)


# -- the validator bites ----------------------------------------------------------------------


def _valid_document() -> dict[str, Any]:
    document = to_ocsf(phishing_alert())
    document["evidences"][0]["src_endpoint"] = {"ip": "10.0.0.1", "port": 25}
    document["device"] = {"hostname": "mx-01", "type_id": 0, "type": "Unknown"}
    document["finding_info"]["analytic"] = {"type_id": 1, "type": "Rule", "uid": "phish-1"}
    assert_valid(document)
    return document


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ((), "severity_label"),
        (("metadata",), "quell_source"),
        (("metadata", "product"), "vendor"),
        (("finding_info",), "rule"),
        (("finding_info", "analytic"), "rule_id"),
        (("finding_info", "attacks", 0, "technique"), "id"),
        (("evidences", 0), "host"),
        (("evidences", 0, "src_endpoint"), "private"),
        (("evidences", 0, "email"), "reply_to"),  # defined, but deprecated: out of the subset
        (("evidences", 0, "email", "files", 0, "hashes", 0), "sha256"),
        (("evidences", 0, "url"), "host"),
        (("device",), "port"),
        (("observables", 0), "role"),
    ],
)
def test_the_schema_rejects_an_invented_key(where: tuple[str | int, ...], key: str) -> None:
    document = _valid_document()
    node: Any = document
    for step in where:
        node = node[step]
    node[key] = "x"
    assert any(f"'{key}' was unexpected" in problem for problem in errors_of(document))


@pytest.mark.parametrize(
    "path",
    [
        ("time",),
        ("type_uid",),
        ("severity_id",),
        ("finding_info",),
        ("finding_info", "uid"),
        ("metadata", "version"),
        ("metadata", "product"),
        ("finding_info", "analytic", "type_id"),
        ("device", "type_id"),
        ("evidences", 0, "email", "files", 0, "name"),
        ("evidences", 0, "email", "files", 0, "hashes", 0, "algorithm_id"),
        ("observables", 0, "type_id"),
    ],
)
def test_the_schema_rejects_a_missing_required_attribute(path: tuple[str | int, ...]) -> None:
    document = _valid_document()
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    assert any("is a required property" in problem for problem in errors_of(document))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("severity_id",), 7),
        (("status_id",), 9),
        (("activity_id",), 4),
        (("class_uid",), 2001),
        (("category_uid",), 4),
        (("type_uid",), 200402),  # a real type_uid, but not the one activity_id 1 gives
        (("observables", 0, "type_id"), 13),
        (("finding_info", "analytic", "type_id"), 12),
        (("device", "type_id"), 16),
        (("evidences", 0, "email", "files", 0, "type_id"), 9),
        (("evidences", 0, "email", "files", 0, "hashes", 0, "algorithm_id"), 19),
    ],
)
def test_the_schema_rejects_a_wrong_enum_id(path: tuple[str | int, ...], value: int) -> None:
    document = _valid_document()
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert errors_of(document)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("time",), 1714564800.123),  # a timestamp is an integer of milliseconds
        (("time",), "2024-05-01T12:00:00Z"),
        (("count",), 2**40),  # integer_t
        (("raw_data_size",), 2**64),  # long_t
        (("message",), 42),
        (("finding_info", "types"), "phishing"),  # an array
        (("evidences", 0, "src_endpoint", "ip"), "10.0.0.300"),
        (("evidences", 0, "src_endpoint", "port"), 65536),
        (("evidences", 0, "email", "from"), "Billing <billing@examp1e.net>"),
        (("evidences", 0, "email", "files", 0, "hashes", 0, "value"), "zz"),
        (("timezone_offset",), 1200),
        (("is_alert",), "true"),
    ],
)
def test_the_schema_rejects_a_wrong_type(path: tuple[str | int, ...], value: object) -> None:
    document = _valid_document()
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert errors_of(document)


@pytest.mark.parametrize(
    ("path", "empty"),
    [
        (("evidences", 0), {}),  # evidences needs at least one artifact
        (("evidences", 0, "src_endpoint"), {"port": 25}),  # an endpoint needs ip, name, …
        (("evidences", 0, "email"), {"subject": "hi"}),  # email needs from or to
        (("finding_info", "attacks", 0), {}),  # attack needs tactic or technique
        (("metadata", "product"), {"vendor_name": "X"}),  # product needs name or uid
    ],
)
def test_the_schema_enforces_at_least_one_constraints(
    path: tuple[str | int, ...], empty: dict[str, Any]
) -> None:
    document = _valid_document()
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = copy.deepcopy(empty)
    assert errors_of(document)


# -- any alert the model allows -----------------------------------------------------------------

_ROLES = ("src", "dst", "host", "user", "file", "sender", "reply_to", "recipient", "url", "text")
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson stores and reads
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=12,
)
_times = st.datetimes(timezones=st.none()) | st.datetimes(
    timezones=st.sampled_from(
        [
            UTC,
            timezone(timedelta(hours=5, minutes=30)),
            timezone(timedelta(hours=-23, minutes=-59)),  # beyond timezone_offset's range
            timezone(timedelta(hours=18)),
        ]
    )
)
_maybe_text = st.none() | st.text(max_size=24)
_ips = st.ip_addresses().map(str) | st.text(max_size=45)
_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=64)
_hashes = st.none() | _hex | st.text()
_atoms = st.text(alphabet="abcxyz0189.-_+", min_size=1, max_size=8)
_emails = (
    st.builds("{}@{}.{}".format, _atoms, _atoms, _atoms)
    | st.builds("Name <{}@{}.example>".format, _atoms, _atoms)
    | st.text(max_size=30)
)
_urls = st.sampled_from(
    ["https://a.example/p?q=1", "http://[::1]:8080/", "ftp://x", "http://h:99999/", "//x/y"]
) | st.text(max_size=40)
_big = st.integers(min_value=-(2**80), max_value=2**80)
_endpoints = st.builds(Endpoint, ip=st.none() | _ips, port=st.none() | _big, hostname=_maybe_text)
_files = st.builds(
    FileInfo,
    name=_maybe_text,
    path=_maybe_text,
    size=st.none() | _big,
    md5=_hashes,
    sha1=_hashes,
    sha256=_hashes,
    mime_type=_maybe_text,
)
_email_infos = st.builds(
    EmailInfo,
    sender=st.none() | _emails,
    reply_to=st.none() | _emails,
    to=st.lists(_emails, max_size=3),
    cc=st.lists(_emails, max_size=3),
    subject=_maybe_text,
    message_id=_maybe_text,
    date=st.none() | _times,
    return_path=st.none() | _emails,
    received_from=st.lists(st.text(), max_size=2),
    auth=st.dictionaries(st.text(), st.text(), max_size=3),
    urls=st.lists(_urls, max_size=3),
    attachments=st.lists(_files, max_size=3),
    headers=st.dictionaries(st.text(), st.text(), max_size=3),
)
_observables = st.builds(
    Observable,
    type=st.sampled_from(ObservableType),
    value=st.text(max_size=24),
    role=st.none() | st.sampled_from(_ROLES) | st.text(max_size=8),
    private=st.none() | st.booleans(),
)
_technique_ids = st.builds(
    "{}{:04d}{}".format,
    st.sampled_from(["T", "TA", "AML.T", "AML.TA"]),
    st.integers(0, 9999),
    st.sampled_from(["", ".001", ".013"]),
)
_techniques = st.lists(_technique_ids | st.text(max_size=12), max_size=5)
_alerts = st.builds(
    Alert,
    title=st.text(max_size=40),
    time=_times,
    severity=st.sampled_from(Severity),
    uid=_maybe_text,
    rule_uid=_maybe_text,
    rule_name=_maybe_text,
    category=_maybe_text,
    description=_maybe_text,
    product=_maybe_text,
    vendor=_maybe_text,
    techniques=_techniques,
    src=st.none() | _endpoints,
    dst=st.none() | _endpoints,
    host=st.none() | _endpoints,
    user=_maybe_text,
    file=st.none() | _files,
    url=st.none() | _urls,
    email=st.none() | _email_infos,
    observables=st.lists(_observables, max_size=6),
    extra=st.dictionaries(st.text(), _json_values, max_size=4),
    id=st.text(max_size=30),
    source=st.text(max_size=20),
    format=st.text(max_size=10),
    fingerprint=st.text(max_size=20),
    count=_big,
    first_seen=st.none() | _times,
    last_seen=st.none() | _times,
    received_at=st.none() | _times,
    status=st.sampled_from(AlertStatus),
    incident_id=_maybe_text,
    raw=st.binary(max_size=300) | st.text(max_size=100).map(str.encode),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_alerts)
def test_any_alert_renders_to_valid_ocsf_that_orjson_serializes(alert: Alert) -> None:
    document = to_ocsf(alert)
    assert_valid(document)
    assert orjson.loads(orjson.dumps(document)) == document


@given(st.ip_addresses())
def test_every_address_python_accepts_is_kept_and_fits_ip_t(address: Any) -> None:
    text = str(address)
    document = to_ocsf(Alert(title="t", time=WHEN, src=Endpoint(ip=text)))
    assert document["evidences"][0]["src_endpoint"]["ip"] == text
    assert_valid(document)


def test_an_ipv4_mapped_address_longer_than_ip_t_allows_is_left_out() -> None:
    text = "0000:0000:0000:0000:0000:ffff:192.168.100.200"
    assert ipaddress.ip_address(text)
    assert len(text) > 40
    document = to_ocsf(Alert(title="t", time=WHEN, src=Endpoint(ip=text, hostname="h")))
    assert "ip" not in document["evidences"][0]["src_endpoint"]
