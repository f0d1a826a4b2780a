"""Render a normalized :class:`~quell.ingest.model.Alert` as an OCSF Detection Finding event.

The event is class 2004 (Detection Finding, category 2 Findings), activity 1 Create, so
``type_uid`` 200401, written against OCSF 1.8.0 (:data:`OCSF_VERSION`; the definitions were
read from the ocsf/ocsf-schema repository, see ``tests/ingest/ocsf_detection_finding.schema.json``
for the files and commits). Only attributes OCSF defines for each object are written, no
profile is applied, and deprecated attributes are avoided (``email.reply_to_list``, not
``email.reply_to``).

Mapping:

==================================  =========================================================
Alert                               OCSF
==================================  =========================================================
title                               ``message``, ``finding_info.title``
time                                ``time`` (epoch ms), ``timezone_offset`` (minutes)
severity                            ``severity_id`` and its caption ``severity``
status new / suppressed / closed    ``status_id`` 1 New / 3 Suppressed / 4 Resolved;
                                    ``is_alert`` is false only for suppressed alerts
count                               ``count``
uid (else id)                       ``finding_info.uid``
description                         ``finding_info.desc``
category                            ``finding_info.types[0]``, ``finding_info.analytic.category``
rule_uid, rule_name                 ``finding_info.analytic`` {uid, name, type_id 1 Rule}
techniques                          ``finding_info.attacks[]``: ``technique.uid``; a
                                    sub-technique (T1059.001) also fills ``sub_technique.uid``
                                    with its parent in ``technique``; a tactic id (TA0001)
                                    fills ``tactic.uid``
first_seen, last_seen               ``finding_info.first_seen_time``, ``last_seen_time``
product, vendor                     ``metadata.product.name``, ``vendor_name``
id, source, format                  ``metadata.uid``, ``log_name``, ``log_format``
incident_id                         ``metadata.correlation_uid``
received_at                         ``metadata.processed_time``
src, dst                            ``evidences[0].src_endpoint``, ``dst_endpoint`` {ip,
                                    port, hostname}
host                                ``device`` and ``evidences[0].device`` {ip, hostname,
                                    type_id 0 Unknown}
user                                ``evidences[0].user.name``
file                                ``evidences[0].file`` {name, path, size, mime_type,
                                    hashes[] as fingerprints, type_id 1 Regular File}
url                                 ``evidences[0].url`` {url_string, scheme, hostname, port,
                                    path, query_string}
email                               ``evidences[0].email`` {from, to, cc, reply_to_list,
                                    return_path, subject, message_uid, urls[], files[]}
observables                         ``observables[]`` {name, type_id, type, value}
raw                                 ``raw_data`` (UTF-8 text up to 64 KiB), ``raw_data_size``
extra                               ``unmapped``
==================================  =========================================================

A value that breaks its OCSF data type (an IP that does not parse, an e-mail address outside
``email_t``, a hash that is not hex, a port outside 0-65535, a size beyond ``long_t``) is left
out of the typed attribute rather than written wrong; the observable that carries it, if any,
still shows it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

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

__all__ = ["OCSF_VERSION", "RAW_DATA_LIMIT", "to_ocsf"]

OCSF_VERSION = "1.8.0"
# raw_data beyond this is left out (raw_data_size still says how big it was): a verbatim
# payload cut in the middle is not the payload, and the API answer should stay small.
RAW_DATA_LIMIT = 64 * 1024

_CLASS_UID = 2004
_CATEGORY_UID = 2
_ACTIVITY_CREATE = 1
_TYPE_UID = _CLASS_UID * 100 + _ACTIVITY_CREATE

_STATUS: dict[AlertStatus, tuple[int, str]] = {
    AlertStatus.NEW: (1, "New"),
    AlertStatus.SUPPRESSED: (3, "Suppressed"),
    AlertStatus.CLOSED: (4, "Resolved"),
}

# Observable type_id and its caption; the key groups values that name the same thing in the
# evidence, so an observable finds the attribute path it came from.
_OBSERVABLE_TYPES: dict[ObservableType, tuple[int, str, str]] = {
    ObservableType.HOSTNAME: (1, "Hostname", "host"),
    ObservableType.DOMAIN: (1, "Hostname", "host"),
    ObservableType.IPV4: (2, "IP Address", "ip"),
    ObservableType.IPV6: (2, "IP Address", "ip"),
    ObservableType.USER: (4, "User Name", "user"),
    ObservableType.EMAIL: (5, "Email Address", "email"),
    ObservableType.URL: (6, "URL String", "url"),
    ObservableType.FILE_NAME: (7, "File Name", "file"),
    ObservableType.MD5: (8, "Hash", "hash"),
    ObservableType.SHA1: (8, "Hash", "hash"),
    ObservableType.SHA256: (8, "Hash", "hash"),
}
_OTHER = 99
# Compared case-insensitively: DNS names, mail domains and hex digests have no case.
_FOLDED_KINDS = frozenset({"host", "email", "hash"})

# fingerprint.algorithm_id and caption for the hashes FileInfo carries.
_FINGERPRINTS = (("md5", 1, "MD5"), ("sha1", 2, "SHA-1"), ("sha256", 3, "SHA-256"))

# OCSF data-type constraints (dictionary.json "types"): email_t's regex, file_hash_t's
# regex, ip_t's max_len, port_t's range, and the 8-byte long_t / 4-byte integer_t.
_EMAIL = re.compile(r"[a-zA-Z0-9!#$%&'*+-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+")
_HEX = re.compile(r"[a-fA-F0-9]+")
_IP_MAX_LEN = 40
_LONG_MAX = 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_TZ_OFFSET_MAX = 1080  # minutes, as timezone_offset's definition bounds it

_SUB_TECHNIQUE = re.compile(r"((?:AML\.)?T\d{4})\.\d{3}")
_TACTIC = re.compile(r"(?:AML\.)?TA\d{4}")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
# For the rare alert that has no identity yet (not stored): finding_info.uid is required.
_UID_NAMESPACE = uuid.UUID("5b0c1c9e-8f0e-4c55-9d4e-2f4b0a7d6c11")


def to_ocsf(alert: Alert) -> dict[str, Any]:
    """Render ``alert`` as an OCSF 1.8.0 Detection Finding (class 2004, Create) event."""
    paths = _Paths()
    severity = Severity(alert.severity)  # also right when a store hands back a plain int
    status_id, status = _STATUS[alert.status]
    event: dict[str, Any] = {
        "activity_id": _ACTIVITY_CREATE,
        "activity_name": "Create",
        "category_uid": _CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": _CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": _TYPE_UID,
        "type_name": "Detection Finding: Create",
        "severity_id": int(severity),
        "severity": severity.label,
        "time": _ms(alert.time),
        "message": alert.title,
        "status_id": status_id,
        "status": status,
        "is_alert": alert.status != AlertStatus.SUPPRESSED,
        "metadata": _metadata(alert),
        "finding_info": _finding_info(alert),
    }
    offset = _timezone_offset(alert.time)
    if offset is not None:
        event["timezone_offset"] = offset
    if _INT_MIN <= alert.count <= _INT_MAX:
        event["count"] = alert.count

    evidence: dict[str, Any] = {}
    if alert.src is not None:
        _put(evidence, "src_endpoint", _endpoint(alert.src, "src", paths, network=True))
    if alert.dst is not None:
        _put(evidence, "dst_endpoint", _endpoint(alert.dst, "dst", paths, network=True))
    if alert.host is not None:
        device = _endpoint(alert.host, "host", paths, network=False)
        if device is not None:
            device["type_id"] = 0
            device["type"] = "Unknown"
            event["device"] = device
            evidence["device"] = dict(device)
    if alert.user:
        evidence["user"] = {"name": alert.user}
        paths.note("user", alert.user, "user", "evidences.user.name")
    if alert.file is not None:
        _put(evidence, "file", _file(alert.file, "file", "evidences.file", paths))
    if alert.url:
        evidence["url"] = _url(alert.url, "url", "evidences.url", paths)
    if alert.email is not None:
        _put(evidence, "email", _email(alert.email, paths))
    if evidence:
        event["evidences"] = [evidence]

    if alert.observables:
        event["observables"] = [_observable(found, paths) for found in alert.observables]
    if alert.raw:
        event["raw_data_size"] = len(alert.raw)
        # Not text: raw_data is a string, so binary payloads stay in Quell's own view only.
        if len(alert.raw) <= RAW_DATA_LIMIT:
            with contextlib.suppress(UnicodeDecodeError):
                event["raw_data"] = alert.raw.decode("utf-8")
    if alert.extra:
        event["unmapped"] = dict(alert.extra)
    return event


class _Paths:
    """Where each value was written, so an observable can name its attribute path."""

    __slots__ = ("_by_role", "_by_value")

    def __init__(self) -> None:
        self._by_role: dict[tuple[str, str, str], str] = {}
        self._by_value: dict[tuple[str, str], str] = {}

    def note(self, kind: str, value: str, role: str, path: str) -> None:
        key = value.lower() if kind in _FOLDED_KINDS else value
        self._by_role.setdefault((kind, key, role), path)
        self._by_value.setdefault((kind, key), path)

    def find(self, kind: str, value: str, role: str | None) -> str | None:
        key = value.lower() if kind in _FOLDED_KINDS else value
        if role is not None:
            # The same address can be both src and host: the observable's role decides.
            found = self._by_role.get((kind, key, role))
            if found is not None:
                return found
        return self._by_value.get((kind, key))


def _put(into: dict[str, Any], key: str, value: dict[str, Any] | None) -> None:
    if value is not None:
        into[key] = value


def _ms(moment: datetime) -> int:
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)  # the model's times are UTC; naive ones too
    # Integer arithmetic: a float timestamp loses the millisecond for far-off dates.
    return (moment - _EPOCH) // _MILLISECOND


def _timezone_offset(moment: datetime) -> int | None:
    offset = moment.utcoffset()
    if offset is None:
        return None
    minutes = int(offset.total_seconds() // 60)
    return minutes if -_TZ_OFFSET_MAX <= minutes <= _TZ_OFFSET_MAX else None


def _metadata(alert: Alert) -> dict[str, Any]:
    # product is required and needs a name or uid; "Unknown" says the producer was not named.
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {
            "name": alert.product or "Unknown",
            "vendor_name": alert.vendor or "Unknown",
        },
    }
    if alert.id:
        metadata["uid"] = alert.id
    if alert.source:
        metadata["log_name"] = alert.source
    if alert.format:
        metadata["log_format"] = alert.format
    if alert.incident_id:
        metadata["correlation_uid"] = alert.incident_id
    if alert.received_at is not None:
        metadata["processed_time"] = _ms(alert.received_at)
    return metadata


def _finding_info(alert: Alert) -> dict[str, Any]:
    info: dict[str, Any] = {"uid": _finding_uid(alert), "title": alert.title}
    if alert.description:
        info["desc"] = alert.description
    if alert.category:
        info["types"] = [alert.category]
    if alert.rule_uid or alert.rule_name:
        analytic: dict[str, Any] = {"type_id": 1, "type": "Rule"}
        if alert.rule_uid:
            analytic["uid"] = alert.rule_uid
        if alert.rule_name:
            analytic["name"] = alert.rule_name
        if alert.category:
            analytic["category"] = alert.category
        info["analytic"] = analytic
    attacks = _attacks(alert.techniques)
    if attacks:
        info["attacks"] = attacks
    info["first_seen_time"] = _ms(alert.first_seen or alert.time)
    if alert.last_seen is not None:
        info["last_seen_time"] = _ms(alert.last_seen)
    elif alert.count <= 1:
        # Seen once: it was last seen when it was first seen. A repeat without last_seen
        # gets none rather than a wrong one.
        info["last_seen_time"] = info["first_seen_time"]
    return info


def _finding_uid(alert: Alert) -> str:
    if alert.uid:
        return alert.uid
    if alert.id:
        return alert.id
    if alert.fingerprint:
        return alert.fingerprint
    seed = f"{alert.source}\x00{alert.title}\x00{alert.time.isoformat()}"
    return str(uuid.uuid5(_UID_NAMESPACE, seed))


def _attacks(techniques: Iterable[str]) -> list[dict[str, Any]]:
    attacks: list[dict[str, Any]] = []
    for technique in dict.fromkeys(techniques):  # once each, in the order given
        if not technique:
            continue
        sub = _SUB_TECHNIQUE.fullmatch(technique)
        if sub is not None:
            attacks.append(
                {"technique": {"uid": sub.group(1)}, "sub_technique": {"uid": technique}}
            )
        elif _TACTIC.fullmatch(technique):
            attacks.append({"tactic": {"uid": technique}})
        else:
            attacks.append({"technique": {"uid": technique}})
    return attacks


def _endpoint(
    endpoint: Endpoint, role: str, paths: _Paths, *, network: bool
) -> dict[str, Any] | None:
    prefix = f"evidences.{role}_endpoint" if network else "device"
    found: dict[str, Any] = {}
    if endpoint.ip and _is_ip(endpoint.ip):
        found["ip"] = endpoint.ip
        paths.note("ip", endpoint.ip, role, f"{prefix}.ip")
    if endpoint.hostname:
        found["hostname"] = endpoint.hostname
        paths.note("host", endpoint.hostname, role, f"{prefix}.hostname")
    if not found:
        return None  # OCSF needs one of ip, hostname, … and a port alone names nothing
    # device has no port attribute (only network_endpoint does): a host's port is dropped.
    if network and endpoint.port is not None and 0 <= endpoint.port <= 65535:
        found["port"] = endpoint.port
    return found


def _is_ip(value: str) -> bool:
    # ip_t allows 40 characters; a zone index (%eth0) is left out as it is host-local.
    if len(value) > _IP_MAX_LEN or "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _file(info: FileInfo, role: str, prefix: str, paths: _Paths) -> dict[str, Any] | None:
    name = info.name or _basename(info.path)
    if not name:
        return None  # file.name is required; the hashes still appear as observables
    found: dict[str, Any] = {"name": name, "type_id": 1, "type": "Regular File"}
    paths.note("file", name, role, f"{prefix}.name")
    if info.path:
        found["path"] = info.path
    if info.size is not None and 0 <= info.size <= _LONG_MAX:
        found["size"] = info.size
    if info.mime_type:
        found["mime_type"] = info.mime_type
    hashes: list[dict[str, Any]] = []
    for attribute, algorithm_id, algorithm in _FINGERPRINTS:
        digest = getattr(info, attribute)
        if digest and _HEX.fullmatch(digest):
            hashes.append({"algorithm_id": algorithm_id, "algorithm": algorithm, "value": digest})
            paths.note("hash", digest, role, f"{prefix}.hashes.value")
    if hashes:
        found["hashes"] = hashes
    return found


def _basename(path: str | None) -> str | None:
    if not path:
        return None
    # Windows and POSIX paths both reach here; either separator ends a directory.
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1] or None


def _url(value: str, role: str, prefix: str, paths: _Paths) -> dict[str, Any]:
    found: dict[str, Any] = {"url_string": value}
    paths.note("url", value, role, f"{prefix}.url_string")
    try:
        parts = urlsplit(value)
    except ValueError:
        return found  # "http://[::1" and the like: the string alone is still the URL
    if not (parts.scheme and parts.netloc):
        return found  # "example.com/a" has no authority: its "path" would be a lie
    found["scheme"] = parts.scheme
    if parts.hostname:
        found["hostname"] = parts.hostname
        paths.note("host", parts.hostname, role, f"{prefix}.hostname")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        found["port"] = port
    if parts.path:
        found["path"] = parts.path
    if parts.query:
        found["query_string"] = parts.query
    return found


def _address(value: str | None) -> str | None:
    """The bare address in ``value`` when it is an OCSF ``email_t``, else None."""
    if not value:
        return None
    address = parseaddr(value)[1]
    return address if address and _EMAIL.fullmatch(address) else None


def _addresses(values: Iterable[str], role: str, path: str, paths: _Paths) -> list[str]:
    found: list[str] = []
    for value in values:
        address = _address(value)
        if address is not None:
            found.append(address)
            paths.note("email", address, role, path)
    return found


def _email(info: EmailInfo, paths: _Paths) -> dict[str, Any] | None:
    prefix = "evidences.email"
    found: dict[str, Any] = {}
    sender = _address(info.sender)
    if sender is not None:
        found["from"] = sender
        paths.note("email", sender, "sender", f"{prefix}.from")
    to = _addresses(info.to, "recipient", f"{prefix}.to", paths)
    if to:
        found["to"] = to
    if not found:
        return None  # OCSF's email needs a from or a to
    cc = _addresses(info.cc, "recipient", f"{prefix}.cc", paths)
    if cc:
        found["cc"] = cc
    reply_to = _address(info.reply_to)
    if reply_to is not None:
        found["reply_to_list"] = [reply_to]  # email.reply_to is deprecated since 1.4.0
        paths.note("email", reply_to, "reply_to", f"{prefix}.reply_to_list")
    return_path = _address(info.return_path)
    if return_path is not None:
        found["return_path"] = return_path
    if info.subject:
        found["subject"] = info.subject
    if info.message_id:
        found["message_uid"] = info.message_id
    urls = [_url(url, "url", f"{prefix}.urls", paths) for url in info.urls if url]
    if urls:
        found["urls"] = urls
    files: list[dict[str, Any]] = []
    for attachment in info.attachments:
        rendered = _file(attachment, "file", f"{prefix}.files", paths)
        if rendered is not None:
            files.append(rendered)
    if files:
        found["files"] = files
    return found


def _observable(observable: Observable, paths: _Paths) -> dict[str, Any]:
    # The attribute path the value was written to, else the role it was seen in (OCSF's
    # name is a pointer into the event, and a value found only in free text has none).
    fallback = observable.role or observable.type.value
    known = _OBSERVABLE_TYPES.get(observable.type)
    if known is None:
        # CVE ids and ATT&CK technique ids have no OCSF observable type of their own.
        return {
            "name": fallback,
            "type_id": _OTHER,
            "type": observable.type.value,
            "value": observable.value,
        }
    type_id, caption, kind = known
    return {
        "name": paths.find(kind, observable.value, observable.role) or fallback,
        "type_id": type_id,
        "type": caption,
        "value": observable.value,
    }
