"""Suricata EVE JSON: one ``event_type: "alert"`` record per alert.

Every other event type (``dns``, ``flow``, ``stats``, ``tls``, …) is well-formed EVE but not an
alert and comes back as :class:`NotAnAlert`, which the pipeline counts as suppressed by this
format's built-in filter.

Mapping:

- ``alert.signature`` → title and rule name; ``alert.signature_id`` → rule uid;
  ``alert.category`` → category; ``alert.metadata.mitre_technique_id`` (Emerging Threats
  rules) → techniques.
- ``src_ip``/``src_port`` and ``dest_ip``/``dest_port`` → src and dst. The server name from
  ``tls.sni`` or ``http.hostname`` goes on the server side (dst, or src for an alert raised on
  a ``to_client`` packet), so the pipeline derives it like any host name.
- ``http.hostname`` + ``http.url`` → url; ``fileinfo`` (or the first of ``files``) → file;
  ``email``/``smtp`` → email. DNS query names have no structured slot and become explicit
  domain observables with role ``text``.
- ``flow_id``, ``proto``, ``app_proto``, the sensor, the rule's gid/rev/action/metadata and the
  application-layer objects (``http``, ``tls``, ``dns``, ``flow`` …) are kept in ``extra``.

Severity: ``alert.severity`` is the rule's classtype priority, 1 the most severe.

    ===================  ====================
    alert.severity       OCSF severity_id
    ===================  ====================
    1                    4 High
    2                    3 Medium
    3                    2 Low
    4 and above          1 Informational
    absent, 0 or less    0 Unknown
    ===================  ====================

Priority 1 is not mapped to Critical: Suricata gives it to whole classtypes such as
"Potential Corporate Privacy Violation", which are rarely critical on their own.
"""

from __future__ import annotations

from typing import Any

from quell.codec import json_type
from quell.ingest.model import (
    Alert,
    EmailInfo,
    Endpoint,
    FileInfo,
    Observable,
    ObservableType,
    Severity,
)
from quell.ingest.parsers.base import (
    NotAnAlert,
    ParseError,
    Parser,
    ParseResult,
    RecordKind,
    parse_time,
)
from quell.ingest.parsers.coerce import (
    basename,
    domain,
    endpoint,
    file_hash,
    first_text,
    hostname,
    integer,
    ip,
    items,
    mapping,
    port,
    techniques,
    text,
    text_list,
    wrong_type,
)

_SEVERITY = {1: Severity.HIGH, 2: Severity.MEDIUM, 3: Severity.LOW}

# Application-layer objects an analyst reads next to the alert; kept whole in extra.
_APP_LAYER = (
    "http",
    "tls",
    "dns",
    "ssh",
    "smtp",
    "email",
    "fileinfo",
    "files",
    "flow",
    "smb",
    "ftp",
    "rdp",
    "krb5",
    "quic",
    "dhcp",
    "snmp",
    "sip",
    "anomaly",
)


# Kept in extra as they came: flow identity, the sensor ("host") and the app-layer objects.
_KEPT = frozenset(
    ("flow_id", "in_iface", "proto", "app_proto", "direction", "community_id", "host", *_APP_LAYER)
)


def severity_of(value: Any) -> Severity:
    """OCSF severity for Suricata's ``alert.severity`` (1 is the most severe)."""
    level = integer(value, "alert.severity")
    if level is None or level <= 0:
        return Severity.UNKNOWN
    return _SEVERITY.get(level, Severity.INFORMATIONAL)


class SuricataParser(Parser):
    """Parses Suricata EVE JSON records; only ``event_type: "alert"`` is an alert."""

    format = "suricata"
    record_kind = RecordKind.JSON

    def parse(self, record: Any) -> ParseResult:
        """The alert in one EVE record, or NotAnAlert for other event types."""
        if not isinstance(record, dict):
            raise ParseError(f"suricata record must be a JSON object, not {json_type(record)}")
        event_type = record.get("event_type")
        if event_type != "alert":
            if event_type is None:
                raise ParseError("missing field 'event_type'", field="event_type")
            if not isinstance(event_type, str):
                raise wrong_type("event_type", "a string", event_type)
            return NotAnAlert(f"suricata event_type {event_type[:60]!r} is not an alert")
        rule = mapping(record.get("alert"), "alert")
        if rule is None:
            raise ParseError("missing field 'alert'", field="alert")
        title = text(rule.get("signature"), "alert.signature")
        if title is None:
            raise ParseError("missing field 'alert.signature'", field="alert.signature")
        alert = Alert(
            title=title,
            time=parse_time(record.get("timestamp"), "timestamp"),
            severity=severity_of(rule.get("severity")),
            rule_uid=text(rule.get("signature_id"), "alert.signature_id"),
            rule_name=title,
            category=text(rule.get("category"), "alert.category"),
            product="Suricata",
            vendor="OISF",
        )
        metadata = mapping(rule.get("metadata"), "alert.metadata")
        if metadata is not None:
            techniques(
                items(metadata.get("mitre_technique_id"), "alert.metadata.mitre_technique_id"),
                "alert.metadata.mitre_technique_id",
                alert.techniques,
            )
        src = endpoint(ip(record.get("src_ip"), "src_ip"), port(record.get("src_port"), "src_port"))
        dst = endpoint(
            ip(record.get("dest_ip"), "dest_ip"), port(record.get("dest_port"), "dest_port")
        )
        http = mapping(record.get("http"), "http")
        tls = mapping(record.get("tls"), "tls")
        server_name = _server_name(http, tls)
        if server_name is not None:
            if record.get("direction") == "to_client":
                src = _with_hostname(src, server_name)
            else:
                dst = _with_hostname(dst, server_name)
        alert.src, alert.dst = src, dst
        if http is not None:
            alert.url = _url(http)
        alert.file = _file(record)
        alert.email = _email(record)
        _dns_names(record.get("dns"), alert.observables)
        alert.extra = _extra(record, rule)
        return alert


def _with_hostname(side: Endpoint | None, name: str) -> Endpoint:
    if side is None:
        return Endpoint(hostname=name)
    side.hostname = name
    return side


def _server_name(http: dict[str, Any] | None, tls: dict[str, Any] | None) -> str | None:
    if tls is not None:
        name = hostname(tls.get("sni"), "tls.sni")
        if name is not None:
            return name
    if http is not None:
        return hostname(http.get("hostname"), "http.hostname")
    return None


def _url(http: dict[str, Any]) -> str | None:
    path = text(http.get("url"), "http.url")
    if path is None:
        return None
    if path.startswith(("http://", "https://")):
        return path  # a proxy request line already carries the absolute URL
    host = text(http.get("hostname"), "http.hostname")
    if host is None or not path.startswith("/"):
        return None
    http_port = port(http.get("http_port"), "http.http_port")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    authority = host if http_port in (None, 80) else f"{host}:{http_port}"
    # Suricata cannot see inside TLS, so the HTTP it logs was sent in the clear.
    return f"http://{authority}{path}"


def _file(record: dict[str, Any]) -> FileInfo | None:
    info = mapping(record.get("fileinfo"), "fileinfo")
    where = "fileinfo"
    if info is None:
        files = record.get("files")
        if isinstance(files, list) and files:
            info = mapping(files[0], "files[0]")
            where = "files[0]"
        elif files is not None and not isinstance(files, list):
            raise wrong_type("files", "an array", files)
    if info is None:
        return None
    path = text(info.get("filename"), f"{where}.filename")
    found = FileInfo(
        name=(basename(path) or None) if path is not None else None,
        path=path,
        size=integer(info.get("size"), f"{where}.size"),
        md5=file_hash(info.get("md5"), f"{where}.md5", 32),
        sha1=file_hash(info.get("sha1"), f"{where}.sha1", 40),
        sha256=file_hash(info.get("sha256"), f"{where}.sha256", 64),
    )
    if found.path is None and found.md5 is None and found.sha1 is None and found.sha256 is None:
        return None
    return found


def _address(value: str) -> str:
    return value.strip().strip("<>")


def _email(record: dict[str, Any]) -> EmailInfo | None:
    message = mapping(record.get("email"), "email")
    smtp = mapping(record.get("smtp"), "smtp")
    if message is None and smtp is None:
        return None
    sender = None
    recipients: list[str] = []
    subject = None
    if message is not None:
        sender = first_text(message.get("from"), "email.from")
        recipients = text_list(message.get("to"), "email.to")
        subject = text(message.get("subject"), "email.subject")
    if smtp is not None:
        sender = sender or text(smtp.get("mail_from"), "smtp.mail_from")
        recipients = recipients or text_list(smtp.get("rcpt_to"), "smtp.rcpt_to")
    if sender is None and not recipients and subject is None:
        return None
    return EmailInfo(
        sender=_address(sender) if sender else None,
        to=[_address(value) for value in recipients],
        subject=subject,
    )


def _dns_names(dns: Any, into: list[Observable]) -> None:
    """DNS query names: EVE v1 ``rrname``, v2 ``queries[]`` and alert ``query[]`` shapes."""
    if dns is None:
        return
    if not isinstance(dns, dict):
        raise wrong_type("dns", "an object", dns)
    names = [dns.get("rrname")]
    for key in ("query", "queries"):
        for entry in items(dns.get(key), f"dns.{key}"):
            if isinstance(entry, dict):
                names.append(entry.get("rrname"))
    seen: set[str] = set()
    for value in names:
        name = domain(value, "dns.rrname")
        if name is not None and name not in seen:
            seen.add(name)
            into.append(Observable(ObservableType.DOMAIN, name, role="text"))


def _extra(record: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
    extra = {key: value for key, value in record.items() if key in _KEPT and value is not None}
    sensor = extra.pop("host", None)
    if sensor is not None:
        extra["sensor"] = sensor
    for key in ("action", "gid", "rev", "metadata", "rule", "source", "target"):
        value = rule.get(key)
        if value is not None:
            extra[f"alert_{key}"] = value
    return extra
