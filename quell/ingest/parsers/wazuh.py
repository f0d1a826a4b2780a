"""Wazuh alerts, as written to ``alerts.json`` or sent by the manager's integrations.

Mapping:

- ``rule.description`` → title and rule name; ``rule.id`` → rule uid; the most specific of
  ``rule.groups`` (the last) → category, all of them in extra; ``rule.mitre.id`` → techniques.
- ``timestamp`` (else ``@timestamp``) → time; ``id`` → uid; ``full_log`` → description.
- ``agent`` (name, ip) → host; for the manager's own agent ``000``, the ``predecoder.hostname``
  of a forwarded syslog line names the host instead.
- ``data.srcip``/``srcport`` → src, ``data.dstip``/``dstport`` → dst, with the Windows event
  equivalents (``data.win.eventdata.ipAddress``/``ipPort``); the user is ``data.dstuser``,
  ``data.srcuser``, ``data.win.eventdata.targetUserName`` or ``subjectUserName``, in that order.
- ``syscheck`` (file integrity) → file: path, size and the ``*_after`` hashes (the file as it
  is now); the owner, permissions and change kind go to extra.
- ``data.url`` → url. The agent id, manager, decoder, location, the rule's compliance tags
  (PCI DSS, GDPR, HIPAA, NIST 800-53, TSC, GPG13) and ``firedtimes`` go to extra.

Severity: ``rule.level`` runs from 0 to 15. The bands follow Wazuh's own dashboard (low 0-6,
medium 7-11, high 12-14, critical 15), with 0-3 (ignored, system notifications, successful
or authorized events) split off as informational:

    ===================  ====================
    rule.level           OCSF severity_id
    ===================  ====================
    0-3                  1 Informational
    4-6                  2 Low
    7-11                 3 Medium
    12-14                4 High
    15 and above         5 Critical
    absent or negative   0 Unknown
    ===================  ====================
"""

from __future__ import annotations

from typing import Any

from quell.codec import json_type
from quell.ingest.model import Alert, Endpoint, FileInfo, Severity
from quell.ingest.parsers.base import (
    ParseError,
    Parser,
    ParseResult,
    RecordKind,
    parse_time,
)
from quell.ingest.parsers.coerce import (
    basename,
    endpoint,
    file_hash,
    get,
    hostname,
    integer,
    ip,
    items,
    mapping,
    port,
    techniques,
    text,
    text_list,
)

_COMPLIANCE = ("pci_dss", "gdpr", "hipaa", "nist_800_53", "tsc", "gpg13")
_SYSCHECK_EXTRA = (
    "event",
    "mode",
    "uname_after",
    "gname_after",
    "uid_after",
    "gid_after",
    "perm_after",
    "mtime_after",
    "changed_attributes",
    "diff",
)


def severity_of(level: int | None) -> Severity:
    """OCSF severity for a Wazuh ``rule.level``."""
    if level is None or level < 0:
        return Severity.UNKNOWN
    if level <= 3:
        return Severity.INFORMATIONAL
    if level <= 6:
        return Severity.LOW
    if level <= 11:
        return Severity.MEDIUM
    if level <= 14:
        return Severity.HIGH
    return Severity.CRITICAL


class WazuhParser(Parser):
    """Parses Wazuh alert JSON."""

    format = "wazuh"
    record_kind = RecordKind.JSON

    def parse(self, record: Any) -> ParseResult:
        """The alert in one Wazuh alert object."""
        if not isinstance(record, dict):
            raise ParseError(f"wazuh record must be a JSON object, not {json_type(record)}")
        rule = mapping(record.get("rule"), "rule")
        if rule is None:
            raise ParseError("missing field 'rule'", field="rule")
        title = text(rule.get("description"), "rule.description")
        if title is None:
            raise ParseError("missing field 'rule.description'", field="rule.description")
        when = record.get("timestamp")
        alert = Alert(
            title=title,
            time=parse_time(
                when if when is not None else record.get("@timestamp"),
                "timestamp" if when is not None else "@timestamp",
            ),
            severity=severity_of(integer(rule.get("level"), "rule.level")),
            uid=text(record.get("id"), "id"),
            rule_uid=text(rule.get("id"), "rule.id"),
            rule_name=title,
            description=text(record.get("full_log"), "full_log"),
            product="Wazuh",
            vendor="Wazuh",
        )
        extra: dict[str, Any] = {}
        groups = text_list(rule.get("groups"), "rule.groups")
        if groups:
            alert.category = groups[-1]
            extra["groups"] = groups
        mitre = mapping(rule.get("mitre"), "rule.mitre")
        if mitre is not None:
            techniques(items(mitre.get("id"), "rule.mitre.id"), "rule.mitre.id", alert.techniques)
            extra["mitre"] = mitre
        compliance = {key: rule[key] for key in _COMPLIANCE if rule.get(key) is not None}
        if compliance:
            extra["compliance"] = compliance
        if rule.get("firedtimes") is not None:
            extra["firedtimes"] = rule["firedtimes"]
        alert.host = _host(record, extra)
        data = mapping(record.get("data"), "data")
        if data is not None:
            _network(data, alert, extra)
        alert.file = _syscheck(mapping(record.get("syscheck"), "syscheck"), extra)
        for key, path in (
            ("manager", "manager.name"),
            ("decoder", "decoder.name"),
            ("location", "location"),
        ):
            value = get(record, path)
            if value is not None:
                extra[key] = value
        alert.extra = extra
        return alert


def _host(record: dict[str, Any], extra: dict[str, Any]) -> Endpoint | None:
    agent = mapping(record.get("agent"), "agent")
    if agent is None:
        return None
    agent_id = text(agent.get("id"), "agent.id")
    if agent_id is not None:
        extra["agent_id"] = agent_id
    name = hostname(agent.get("name"), "agent.name")
    if agent_id == "000":
        # The manager's own agent also decodes syslog forwarded by other hosts.
        forwarded = hostname(get(record, "predecoder.hostname"), "predecoder.hostname")
        if forwarded is not None:
            return Endpoint(hostname=forwarded)
    return endpoint(ip(agent.get("ip"), "agent.ip"), None, name)


def _network(data: dict[str, Any], alert: Alert, extra: dict[str, Any]) -> None:
    eventdata = mapping(get(data, "win.eventdata"), "data.win.eventdata") or {}
    src_ip = ip(data.get("srcip"), "data.srcip") or ip(
        eventdata.get("ipAddress"), "data.win.eventdata.ipAddress"
    )
    src_port = port(data.get("srcport"), "data.srcport")
    if src_port is None:
        src_port = port(eventdata.get("ipPort"), "data.win.eventdata.ipPort")
    alert.src = endpoint(src_ip, src_port)
    alert.dst = endpoint(
        ip(data.get("dstip"), "data.dstip"), port(data.get("dstport"), "data.dstport")
    )
    alert.user = (
        text(data.get("dstuser"), "data.dstuser")
        or text(data.get("srcuser"), "data.srcuser")
        or text(eventdata.get("targetUserName"), "data.win.eventdata.targetUserName")
        or text(eventdata.get("subjectUserName"), "data.win.eventdata.subjectUserName")
    )
    alert.url = text(data.get("url"), "data.url")
    protocol = data.get("protocol")
    if protocol is not None:
        extra["protocol"] = protocol


def _syscheck(syscheck: dict[str, Any] | None, extra: dict[str, Any]) -> FileInfo | None:
    if syscheck is None:
        return None
    path = text(syscheck.get("path"), "syscheck.path")
    for key in _SYSCHECK_EXTRA:
        value = syscheck.get(key)
        if value is not None:
            extra[f"syscheck_{key}"] = value
    found = FileInfo(
        name=(basename(path) or None) if path is not None else None,
        path=path,
        size=integer(syscheck.get("size_after"), "syscheck.size_after"),
        md5=file_hash(syscheck.get("md5_after"), "syscheck.md5_after", 32),
        sha1=file_hash(syscheck.get("sha1_after"), "syscheck.sha1_after", 40),
        sha256=file_hash(syscheck.get("sha256_after"), "syscheck.sha256_after", 64),
    )
    if found.path is None and found.md5 is None and found.sha1 is None and found.sha256 is None:
        return None
    return found
