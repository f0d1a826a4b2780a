"""Zeek ``notice.log`` (and ``notice_alarm.log``) written as JSON lines.

Mapping:

- ``msg`` → title (the note name when there is no message); ``note`` → rule uid and name;
  the note's module (``SSH`` of ``SSH::Password_Guessing``) → category; ``sub`` → description.
- ``ts`` (epoch seconds, or ISO 8601 with ``JSON::TimestampFormat``) → time.
- ``src`` (else ``id.orig_h``) with ``id.orig_p`` → src; ``dst`` (else ``id.resp_h``) with ``p``
  (else ``id.resp_p``) → dst. Both flat (``"id.orig_h"``) and nested (``"id": {…}``) keys work.
- ``file_mime_type`` → file; the connection ``uid`` (as ``conn_uid``), ``fuid``, ``file_desc``,
  ``proto``, ``actions``, the sensor (``peer_descr``/``peer_name``) and the rest → extra.

A record of another Zeek log (``_path`` other than ``notice``/``notice_alarm``, as written by
streaming log writers) is :class:`NotAnAlert`.

Severity: notices carry none. Well-known notices of Zeek's own scripts get one; every other
note is Unknown (0) unless the source's options say otherwise:

    ======================================================  ====================
    note                                                    OCSF severity_id
    ======================================================  ====================
    CaptureLoss::*, PacketFilter::*, Weird::Activity,       1 Informational
    Traceroute::Detected, ProtocolDetector::*,
    SSL::Certificate_Expires_Soon
    Scan::Address_Scan, Scan::Port_Scan, SSL::Invalid_*,    2 Low
    SSL::Certificate_Expired, SSL::Certificate_Not_Valid_
    Yet, SSL::Weak_Key, SSL::Weak_Cipher, SSL::Old_Version,
    SSH::Interesting_Hostname_Login, SSH::Watched_Country_
    Login, DNS::External_Name
    SSH::Password_Guessing, FTP::Bruteforcing,              3 Medium
    Intel::Notice, Software::Vulnerable_Version,
    Signatures::Sensitive_Signature
    SSH::Login_By_Password_Guesser, FTP::Site_Exec_Success  4 High
    HTTP::SQL_Injection_Attacker, HTTP::SQL_Injection_
    Victim, TeamCymruMalwareHashRegistry::Match,
    Heartbleed::SSL_Heartbeat_Attack
    Heartbleed::SSL_Heartbeat_Attack_Success                5 Critical
    ======================================================  ====================

Options: ``{"severity": {"MyPolicy::Beacon": "high", …}, "default_severity": 2}``; values are
an OCSF ``severity_id`` or its label. The option table wins over the built-in one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quell.codec import json_type
from quell.ingest.model import Alert, FileInfo, Severity
from quell.ingest.parsers.base import (
    NotAnAlert,
    ParseError,
    Parser,
    ParseResult,
    RecordKind,
    parse_time,
)
from quell.ingest.parsers.coerce import endpoint, get, ip, port, severity_option, text

BUILTIN_SEVERITY: dict[str, Severity] = {
    "CaptureLoss::Too_Much_Loss": Severity.INFORMATIONAL,
    "CaptureLoss::Too_Little_Traffic": Severity.INFORMATIONAL,
    "PacketFilter::Dropped_Packets": Severity.INFORMATIONAL,
    "PacketFilter::Too_Long_To_Compile_Filter": Severity.INFORMATIONAL,
    "PacketFilter::Compile_Failure": Severity.INFORMATIONAL,
    "PacketFilter::Install_Failure": Severity.INFORMATIONAL,
    "Weird::Activity": Severity.INFORMATIONAL,
    "Traceroute::Detected": Severity.INFORMATIONAL,
    "ProtocolDetector::Protocol_Found": Severity.INFORMATIONAL,
    "ProtocolDetector::Server_Found": Severity.INFORMATIONAL,
    "SSL::Certificate_Expires_Soon": Severity.INFORMATIONAL,
    "Scan::Address_Scan": Severity.LOW,
    "Scan::Port_Scan": Severity.LOW,
    "SSL::Invalid_Server_Cert": Severity.LOW,
    "SSL::Invalid_Ocsp_Response": Severity.LOW,
    "SSL::Certificate_Expired": Severity.LOW,
    "SSL::Certificate_Not_Valid_Yet": Severity.LOW,
    "SSL::Weak_Key": Severity.LOW,
    "SSL::Weak_Cipher": Severity.LOW,
    "SSL::Old_Version": Severity.LOW,
    "SSH::Interesting_Hostname_Login": Severity.LOW,
    "SSH::Watched_Country_Login": Severity.LOW,
    "DNS::External_Name": Severity.LOW,
    "SSH::Password_Guessing": Severity.MEDIUM,
    "FTP::Bruteforcing": Severity.MEDIUM,
    "Intel::Notice": Severity.MEDIUM,
    "Software::Vulnerable_Version": Severity.MEDIUM,
    "Signatures::Sensitive_Signature": Severity.MEDIUM,
    "SSH::Login_By_Password_Guesser": Severity.HIGH,
    "FTP::Site_Exec_Success": Severity.HIGH,
    "HTTP::SQL_Injection_Attacker": Severity.HIGH,
    "HTTP::SQL_Injection_Victim": Severity.HIGH,
    "TeamCymruMalwareHashRegistry::Match": Severity.HIGH,
    "Heartbleed::SSL_Heartbeat_Attack": Severity.HIGH,
    "Heartbleed::SSL_Heartbeat_Attack_Success": Severity.CRITICAL,
}

_NOTICE_PATHS = frozenset({"notice", "notice_alarm"})

# Read into typed slots; every other field of the notice is kept in extra as it came.
_MAPPED = frozenset(
    {
        "ts",
        "note",
        "msg",
        "sub",
        "src",
        "dst",
        "p",
        "id.orig_h",
        "id.orig_p",
        "id.resp_h",
        "id.resp_p",
        "id",
        "file_mime_type",
        "_path",
    }
)


class ZeekParser(Parser):
    """Parses Zeek notice.log JSON records."""

    format = "zeek"
    record_kind = RecordKind.JSON

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - {"severity", "default_severity"})
        if unknown:
            raise ParseError(f"unknown zeek option {unknown[0]!r}", field=unknown[0])
        table = dict(BUILTIN_SEVERITY)
        configured = self.options.get("severity", {})
        if not isinstance(configured, Mapping):
            raise ParseError(
                "option 'severity' must map note names to severities", field="severity"
            )
        for note, value in configured.items():
            table[str(note)] = severity_option(value, f"severity.{note}")
        self._severity = table
        default = self.options.get("default_severity")
        self._default = (
            Severity.UNKNOWN if default is None else severity_option(default, "default_severity")
        )

    def parse(self, record: Any) -> ParseResult:
        """The alert in one notice record."""
        if not isinstance(record, dict):
            raise ParseError(f"zeek record must be a JSON object, not {json_type(record)}")
        log = record.get("_path")
        if isinstance(log, str) and log not in _NOTICE_PATHS:
            return NotAnAlert(f"zeek {log[:40]!r} log is not notice.log")
        note = text(record.get("note"), "note")
        if note is None:
            raise ParseError("missing field 'note'", field="note")
        message = text(record.get("msg"), "msg")
        module, _, _ = note.partition("::")
        alert = Alert(
            title=message or note,
            time=parse_time(record.get("ts"), "ts"),
            severity=self._severity.get(note, self._default),
            rule_uid=note,
            rule_name=note,
            category=module,
            description=text(record.get("sub"), "sub"),
            product="Zeek",
            vendor="Zeek",
        )
        src_ip = ip(record.get("src"), "src") or ip(get(record, "id.orig_h"), "id.orig_h")
        dst_ip = ip(record.get("dst"), "dst") or ip(get(record, "id.resp_h"), "id.resp_h")
        dst_port = port(record.get("p"), "p")
        if dst_port is None:
            dst_port = port(get(record, "id.resp_p"), "id.resp_p")
        alert.src = endpoint(src_ip, port(get(record, "id.orig_p"), "id.orig_p"))
        alert.dst = endpoint(dst_ip, dst_port)
        mime_type = text(record.get("file_mime_type"), "file_mime_type")
        if mime_type is not None:
            alert.file = FileInfo(mime_type=mime_type)
        extra = {key: value for key, value in record.items() if key not in _MAPPED}
        if "uid" in extra:
            extra["conn_uid"] = extra.pop("uid")
        alert.extra = extra
        return alert
