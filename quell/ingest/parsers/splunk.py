"""Splunk Enterprise Security notable events, one result object of the search API at a time.

Mapping (field names are the Splunk CIM names a notable carries):

- ``rule_title`` (else ``rule_name``, ``search_name``) → title; ``search_name`` (else
  ``source``, the correlation search that fired) → rule uid; ``rule_name`` → rule name;
  ``rule_description`` (else ``savedsearch_description``) → description; ``security_domain``
  → category; ``event_id`` → uid.
- ``_time`` (else ``_indextime``) → time.
- ``src``/``src_ip``/``src_dns``/``src_nt_host``/``src_port`` → src, ``dest``/``dest_ip``/
  ``dest_dns``/``dest_nt_host``/``dest_port`` → dst. ``src`` and ``dest`` are an address or a
  name, whichever they hold; CIM placeholders such as ``unknown`` count as absent.
- The device the notable is about: ``dvc`` (``dvc_ip``/``dvc_host``) when present, else the
  destination asset, which is what ES correlation searches key on.
- ``user`` (else ``src_user``) → user; ``url`` → url; ``file_name``/``file_path``/``file_hash``
  → file (the hash kind from its length); MITRE ids from ``annotations.mitre_attack`` and
  ``annotations.mitre_attack.mitre_technique_id`` → techniques.
- Status, owner, disposition, urgency and the vendor severity, the risk score, the original
  sourcetype and the asset enrichment of ``dest`` are kept in extra. ``_raw`` is not copied:
  the pipeline keeps the whole record verbatim.

Multi-value fields (JSON arrays) give their first value where one value is expected.

Severity: ``urgency`` (severity combined with the asset's priority; what Incident Review sorts
by) when it is set, else ``severity``:

    ====================================  ====================
    urgency / severity                    OCSF severity_id
    ====================================  ====================
    informational (info)                  1 Informational
    low                                   2 Low
    medium                                3 Medium
    high                                  4 High
    critical                              5 Critical
    unknown, absent or anything else      0 Unknown
    ====================================  ====================
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
    first_text,
    get,
    hash_kind,
    hostname,
    ip,
    items,
    port,
    severity_label,
    techniques,
)

_PLACEHOLDERS = frozenset({"unknown", "-", "n/a", "null", "none"})

_EXTRA = (
    "urgency",
    "severity",
    "priority",
    "risk_score",
    "risk_object",
    "risk_object_type",
    "status",
    "status_label",
    "owner",
    "disposition",
    "disposition_label",
    "notable_type",
    "signature",
    "signature_id",
    "action",
    "app",
    "vendor_product",
    "orig_sourcetype",
    "orig_source",
    "orig_host",
    "count",
    "info_min_time",
    "info_max_time",
    "drilldown_search",
    "dest_priority",
    "dest_category",
    "dest_bunit",
    "dest_asset_id",
    "dest_asset_tag",
    "dest_risk_score",
    "dest_pci_domain",
    "src_priority",
    "src_category",
    "src_bunit",
)

_TECHNIQUE_FIELDS = (
    "annotations.mitre_attack",
    "annotations.mitre_attack.mitre_technique_id",
    "mitre_technique_id",
)


def severity_of(record: dict[str, Any]) -> Severity:
    """OCSF severity from a notable's ``urgency``, else its ``severity``."""
    urgency = severity_label(record.get("urgency"), "urgency")
    if urgency is not None and urgency is not Severity.UNKNOWN:
        return urgency
    found = severity_label(record.get("severity"), "severity")
    if found is None or found in (Severity.FATAL, Severity.OTHER):
        return Severity.UNKNOWN
    return found


def _value(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if value.__class__ is str:
        value = value.strip()
    else:
        value = first_text(value, key)
        if value is None:
            return None
    if not value or (len(value) <= 7 and value.lower() in _PLACEHOLDERS):
        return None
    return str(value)


class SplunkParser(Parser):
    """Parses one Splunk ES notable event object."""

    format = "splunk"
    record_kind = RecordKind.JSON

    def parse(self, record: Any) -> ParseResult:
        """The alert in one notable."""
        if not isinstance(record, dict):
            raise ParseError(f"splunk record must be a JSON object, not {json_type(record)}")
        search_name = _value(record, "search_name") or _value(record, "source")
        rule_name = _value(record, "rule_name")
        title = _value(record, "rule_title") or rule_name or search_name
        if title is None:
            raise ParseError(
                "missing field 'rule_title' (or 'rule_name', 'search_name')", field="rule_title"
            )
        when = record.get("_time")
        alert = Alert(
            title=title,
            time=parse_time(
                when if when is not None else record.get("_indextime"),
                "_time" if when is not None else "_indextime",
            ),
            severity=severity_of(record),
            uid=_value(record, "event_id"),
            rule_uid=search_name or rule_name,
            rule_name=rule_name or search_name,
            category=_value(record, "security_domain"),
            description=_value(record, "rule_description")
            or _value(record, "savedsearch_description"),
            product="Splunk Enterprise Security",
            vendor="Splunk",
            user=_value(record, "user") or _value(record, "src_user"),
            url=_value(record, "url"),
        )
        alert.src = _side(record, "src")
        alert.dst = _side(record, "dest")
        alert.host = _device(record, alert.dst)
        alert.file = _file(record)
        for key in _TECHNIQUE_FIELDS:
            techniques(items(get(record, key), key), key, alert.techniques)
        alert.extra = {key: record[key] for key in _EXTRA if record.get(key) is not None}
        return alert


def _side(record: dict[str, Any], prefix: str) -> Endpoint | None:
    """src or dest: the CIM field itself holds an address or a name, the others refine it."""
    value = _value(record, prefix)
    address = ip(_value(record, f"{prefix}_ip"), f"{prefix}_ip")
    name = hostname(_value(record, f"{prefix}_dns"), f"{prefix}_dns") or hostname(
        _value(record, f"{prefix}_nt_host"), f"{prefix}_nt_host"
    )
    if value is not None:
        as_ip = ip(value, prefix)
        if as_ip is not None:
            address = address or as_ip
        else:
            name = name or hostname(value, prefix)
    return endpoint(address, port(record.get(f"{prefix}_port"), f"{prefix}_port"), name)


def _device(record: dict[str, Any], dst: Endpoint | None) -> Endpoint | None:
    value = _value(record, "dvc")
    address = ip(_value(record, "dvc_ip"), "dvc_ip")
    name = hostname(_value(record, "dvc_host"), "dvc_host")
    if value is not None:
        as_ip = ip(value, "dvc")
        if as_ip is not None:
            address = address or as_ip
        else:
            name = name or hostname(value, "dvc")
    if address is None and name is None:
        if dst is None or (dst.ip is None and dst.hostname is None):
            return None
        return Endpoint(ip=dst.ip, hostname=dst.hostname)
    return Endpoint(ip=address, hostname=name)


def _file(record: dict[str, Any]) -> FileInfo | None:
    path = _value(record, "file_path")
    name = _value(record, "file_name") or (basename(path) if path else None)
    digest = _value(record, "file_hash")
    kind = hash_kind(digest) if digest is not None else None
    if name is None and path is None and kind is None:
        return None
    found = FileInfo(name=name, path=path)
    if digest is not None and kind is not None:
        digest = digest.lower()
        if kind == "md5":
            found.md5 = digest
        elif kind == "sha1":
            found.sha1 = digest
        else:
            found.sha256 = digest
    return found
