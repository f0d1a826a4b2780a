"""OCSF findings passed through: Detection Finding (class 2004) and Security Finding (2001).

Security Finding was deprecated in OCSF 1.1 but older producers (AWS Security Lake 1.0 data,
the ocsf/examples SecurityScorecard sample) still emit it. It carries ``finding`` where 2004
has ``finding_info``, and ``analytic``/``attacks`` at the top level; both shapes map to the
same Alert. Records of any other class are :class:`NotAnAlert`.

Mapping:

- ``finding_info``/``finding``: ``title`` (else ``message``) → title, ``uid`` → uid, ``desc``
  (else ``message``) → description, the first of ``types`` → category, ``analytic.uid``/
  ``name`` → rule, ``attacks[].technique.uid`` and ``sub_technique.uid`` → techniques.
- ``time`` (epoch milliseconds; ``time_dt`` as a fallback) → time; ``metadata.product.name``/
  ``vendor_name`` → product and vendor.
- ``device`` → host; without one, the first of ``resources[]`` whose ``uid`` is an IP address
  (a finding about an address, like the SecurityScorecard sample) becomes the host.
- ``evidences[]`` (2004): the first ``src_endpoint``, ``dst_endpoint``, ``user`` (or
  ``actor.user``), ``file``, ``url`` and ``email`` found fill src, dst, user, file, url and
  email; ``query.hostname`` becomes a domain observable.
- ``observables[]`` become typed Observables by ``type_id`` (1 Hostname, 2 IP Address,
  4 User Name, 5 Email Address, 6 URL String, 7 File Name, 8 Hash); other types stay in the
  record only.
- Everything else is kept in ``extra`` under its OCSF name (``metadata``, ``malware``,
  ``resources``, ``evidences``, ``status_id``, ``confidence`` …); of the finding object, the
  title, uid and description are dropped as they have their own fields.

Severity: ``severity_id`` is already OCSF's and is kept as is (0-6, 99); a value outside
that enum is a ParseError. Without ``severity_id``, the ``severity`` caption is read
(``"Informational "`` → 1), and without either the alert is Unknown (0).
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
    domain,
    endpoint,
    file_hash,
    hash_kind,
    hostname,
    integer,
    ip,
    items,
    mapping,
    port,
    severity_label,
    techniques,
    text,
    text_list,
)

DETECTION_FINDING = 2004
SECURITY_FINDING = 2001

# Fully represented by typed Alert fields; every other top-level key goes to extra.
_MAPPED = frozenset({"time", "time_dt", "severity_id", "severity", "observables"})
_FINDING_MAPPED = frozenset({"title", "uid", "desc"})
# At most this many evidences and observables are read: the rest stay in extra and raw.
_MAX_ITEMS = 100
_HASH_ALGORITHMS = {1: "md5", 2: "sha1", 3: "sha256"}
_HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64}


def severity_of(record: dict[str, Any]) -> Severity:
    """OCSF severity: ``severity_id`` as is, else the ``severity`` caption."""
    severity_id = integer(record.get("severity_id"), "severity_id")
    if severity_id is not None:
        try:
            return Severity(severity_id)
        except ValueError:
            raise ParseError(
                f"field 'severity_id' must be an OCSF severity_id (0-6, 99), not {severity_id}",
                field="severity_id",
            ) from None
    return severity_label(record.get("severity"), "severity") or Severity.UNKNOWN


class OcsfParser(Parser):
    """Parses OCSF Detection Finding (2004) and Security Finding (2001) events."""

    format = "ocsf"
    record_kind = RecordKind.JSON

    def parse(self, record: Any) -> ParseResult:
        """The alert in one OCSF finding event."""
        if not isinstance(record, dict):
            raise ParseError(f"ocsf record must be a JSON object, not {json_type(record)}")
        class_uid = integer(record.get("class_uid"), "class_uid")
        if class_uid is None:
            raise ParseError("missing field 'class_uid'", field="class_uid")
        if class_uid not in (DETECTION_FINDING, SECURITY_FINDING):
            return NotAnAlert(
                f"ocsf class_uid {class_uid} is not a Detection Finding (2004) "
                "or Security Finding (2001)"
            )
        key = "finding_info" if class_uid == DETECTION_FINDING else "finding"
        info = mapping(record.get(key), key)
        if info is None:
            # Producers that moved to 2004 half-way still write the other object name.
            key = "finding" if key == "finding_info" else "finding_info"
            info = mapping(record.get(key), key) or {}
        message = text(record.get("message"), "message")
        title = text(info.get("title"), f"{key}.title") or message
        if title is None:
            raise ParseError(f"missing field '{key}.title' (or 'message')", field=f"{key}.title")
        when = record.get("time")
        analytic = mapping(info.get("analytic"), f"{key}.analytic") or mapping(
            record.get("analytic"), "analytic"
        )
        product = mapping(_dig(record, "metadata", "product"), "metadata.product") or {}
        types = text_list(info.get("types"), f"{key}.types")
        alert = Alert(
            title=title,
            time=parse_time(
                when if when is not None else record.get("time_dt"),
                "time" if when is not None else "time_dt",
            ),
            severity=severity_of(record),
            uid=text(info.get("uid"), f"{key}.uid"),
            rule_uid=text(analytic.get("uid"), "analytic.uid") if analytic else None,
            rule_name=text(analytic.get("name"), "analytic.name") if analytic else None,
            category=types[0] if types else None,
            description=text(info.get("desc"), f"{key}.desc") or message,
            product=text(product.get("name"), "metadata.product.name"),
            vendor=text(product.get("vendor_name"), "metadata.product.vendor_name"),
        )
        for attacks, where in (
            (info.get("attacks"), f"{key}.attacks"),
            (record.get("attacks"), "attacks"),
        ):
            _techniques(attacks, where, alert.techniques)
        alert.host = _host(record)
        _evidences(record.get("evidences"), alert)
        _observables(record.get("observables"), alert.observables)
        extra = {name: value for name, value in record.items() if name not in _MAPPED}
        extra[key] = {name: value for name, value in info.items() if name not in _FINDING_MAPPED}
        alert.extra = extra
        return alert


def _dig(record: dict[str, Any], *keys: str) -> Any:
    node: Any = record
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _techniques(attacks: Any, where: str, into: list[str]) -> None:
    for attack in items(attacks, where)[:_MAX_ITEMS]:
        if not isinstance(attack, dict):
            continue
        for part in ("technique", "sub_technique"):
            found = attack.get(part)
            if isinstance(found, dict):
                techniques((found.get("uid"),), f"{where}.{part}.uid", into)


def _endpoint(value: Any, where: str) -> Endpoint | None:
    found = mapping(value, where)
    if found is None:
        return None
    name = (
        hostname(found.get("hostname"), f"{where}.hostname")
        or hostname(found.get("domain"), f"{where}.domain")
        or hostname(found.get("name"), f"{where}.name")
    )
    return endpoint(
        ip(found.get("ip"), f"{where}.ip"), port(found.get("port"), f"{where}.port"), name
    )


def _host(record: dict[str, Any]) -> Endpoint | None:
    device = _endpoint(record.get("device"), "device")
    if device is not None:
        device.port = None
        return device
    for resource in items(record.get("resources"), "resources")[:_MAX_ITEMS]:
        if isinstance(resource, dict):
            address = ip(resource.get("uid"), "resources.uid")
            if address is not None:
                return Endpoint(ip=address)
    return None


def _evidences(evidences: Any, alert: Alert) -> None:
    for evidence in items(evidences, "evidences")[:_MAX_ITEMS]:
        if not isinstance(evidence, dict):
            continue
        if alert.src is None:
            alert.src = _endpoint(evidence.get("src_endpoint"), "evidences.src_endpoint")
        if alert.dst is None:
            alert.dst = _endpoint(evidence.get("dst_endpoint"), "evidences.dst_endpoint")
        if alert.user is None:
            user = mapping(evidence.get("user"), "evidences.user") or mapping(
                _dig(evidence, "actor", "user"), "evidences.actor.user"
            )
            if user is not None:
                alert.user = text(user.get("name"), "evidences.user.name")
        if alert.file is None:
            alert.file = _file(evidence.get("file"))
        if alert.url is None:
            url = mapping(evidence.get("url"), "evidences.url")
            if url is not None:
                alert.url = text(url.get("url_string"), "evidences.url.url_string")
        if alert.email is None:
            alert.email = _email(evidence.get("email"))
        query = mapping(evidence.get("query"), "evidences.query")
        if query is not None:
            name = domain(query.get("hostname"), "evidences.query.hostname")
            if name is not None:
                alert.observables.append(Observable(ObservableType.DOMAIN, name, role="text"))


def _file(value: Any) -> FileInfo | None:
    found = mapping(value, "evidences.file")
    if found is None:
        return None
    result = FileInfo(
        name=text(found.get("name"), "evidences.file.name"),
        path=text(found.get("path"), "evidences.file.path"),
        size=integer(found.get("size"), "evidences.file.size"),
        mime_type=text(found.get("mime_type"), "evidences.file.mime_type"),
    )
    for fingerprint in items(found.get("hashes"), "evidences.file.hashes")[:_MAX_ITEMS]:
        if not isinstance(fingerprint, dict):
            continue
        digest = text(fingerprint.get("value"), "evidences.file.hashes.value")
        if digest is None:
            continue
        algorithm = integer(fingerprint.get("algorithm_id"), "evidences.file.hashes.algorithm_id")
        kind = _HASH_ALGORITHMS.get(algorithm) if algorithm is not None else hash_kind(digest)
        if kind is None:
            continue
        checked = file_hash(digest, "evidences.file.hashes.value", _HASH_LENGTHS[kind])
        if kind == "md5":
            result.md5 = result.md5 or checked
        elif kind == "sha1":
            result.sha1 = result.sha1 or checked
        else:
            result.sha256 = result.sha256 or checked
    return result


def _email(value: Any) -> EmailInfo | None:
    found = mapping(value, "evidences.email")
    if found is None:
        return None
    return EmailInfo(
        sender=text(found.get("from"), "evidences.email.from"),
        reply_to=text(found.get("reply_to"), "evidences.email.reply_to"),
        to=text_list(found.get("to"), "evidences.email.to"),
        cc=text_list(found.get("cc"), "evidences.email.cc"),
        subject=text(found.get("subject"), "evidences.email.subject"),
        message_id=text(found.get("message_uid"), "evidences.email.message_uid"),
    )


def _observables(observables: Any, into: list[Observable]) -> None:
    for entry in items(observables, "observables")[:_MAX_ITEMS]:
        if not isinstance(entry, dict):
            continue
        type_id = entry.get("type_id")
        value = text(entry.get("value"), "observables.value")
        if value is None or isinstance(type_id, bool) or not isinstance(type_id, int):
            continue
        found = _observable(type_id, value)
        if found is not None:
            into.append(found)


def _observable(type_id: int, value: str) -> Observable | None:
    if type_id == 1:
        name = domain(value, "observables.value")
        if name is not None:
            return Observable(ObservableType.DOMAIN, name)
        return Observable(ObservableType.HOSTNAME, value)
    if type_id == 2:
        address = ip(value, "observables.value")
        if address is None:
            return None
        kind = ObservableType.IPV6 if ":" in address else ObservableType.IPV4
        return Observable(kind, address)
    if type_id == 4:
        return Observable(ObservableType.USER, value)
    if type_id == 5:
        return Observable(ObservableType.EMAIL, value)
    if type_id == 6:
        return Observable(ObservableType.URL, value)
    if type_id == 7:
        return Observable(ObservableType.FILE_NAME, value)
    if type_id == 8:
        digest = hash_kind(value)
        if digest is not None:
            return Observable(ObservableType(digest), value.lower())
    return None
