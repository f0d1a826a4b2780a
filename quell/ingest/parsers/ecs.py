"""Elastic Common Schema alerts, including Elastic Security (Kibana) detection alerts.

A record is one alert document: the ``_source`` of an ``.alerts-security.alerts-*`` search
hit, the hit itself (``_id``/``_source``), a hit's ``fields`` (every value an array), or any
ECS document with ``event.kind: alert``. Keys may be nested (``{"source": {"ip": …}}``),
dotted (``"source.ip"``) or a mix, as Kibana writes them (``kibana.alert.*`` dotted, the
copied source event nested). A document whose ``event.kind`` says it is a plain event, metric
or state, and that has no detection-engine fields, is :class:`NotAnAlert`.

Mapping, first found wins:

- title and rule name: ``kibana.alert.rule.name``, ``signal.rule.name``, ``rule.name``,
  ``message``. Rule uid: ``kibana.alert.rule.rule_id`` (stable across spaces and clusters),
  ``kibana.alert.rule.uuid``, ``signal.rule.rule_id``, ``signal.rule.id``, ``rule.id``,
  ``rule.uuid``; the other ids are kept in extra.
- time: ``kibana.alert.original_time`` (when the source event happened), ``signal.original_time``,
  ``@timestamp``, ``event.created``. uid: ``kibana.alert.uuid``, the hit's ``_id`` (or the
  ``@metadata._id`` the SIEM puller adds), ``event.id``.
- description: ``kibana.alert.reason``, ``signal.reason``, the rule's description, ``message``.
  Category: ``rule.category``, the first ``event.category`` (also of the original event).
- techniques: ``kibana.alert.rule.threat`` (and its ``parameters`` and legacy ``signal.rule``
  copies, nested or flattened), ``threat.technique.id``/``subtechnique.id``, and
  Sigma-style rule tags such as ``attack.t1558``.
- ``source.*``/``destination.*`` (ip, port, domain; ``tls.client.server_name`` names the
  destination when it has no domain) → src/dst; ``host.name``/``hostname``/``ip`` → host;
  ``user.name`` → user; ``file.*`` (else the process image: ``process.executable`` with
  ``process.hash.*``) → file; ``url.full``/``url.original`` → url; ``email.*`` → email;
  ``dns.question.name`` → an explicit domain observable with role ``text``.
- Workflow status, risk score, rule type, event module/dataset/action/outcome, network and
  process details, agent and observer names and tags are kept in extra.

Severity, first found:

    =============================================  ====================
    source                                         OCSF severity_id
    =============================================  ====================
    ``kibana.alert.severity`` (else ``kibana.      label: low 2, medium 3,
    alert.rule.severity``, ``signal.rule.          high 4, critical 5,
    severity``)                                    informational 1
    ``kibana.alert.risk_score``, ``event.          0-21 → 2 Low, 22-47 → 3
    risk_score``, ``event.severity`` (0-100)       Medium, 48-73 → 4 High,
                                                   74-100 → 5 Critical
    ``event.severity`` of Suricata events          the Suricata scale (1 → 4
    (``event.module: suricata``)                   High, 2 → 3, 3 → 2, 4+ → 1)
    nothing                                        0 Unknown
    =============================================  ====================

The 0-100 bands are Elastic's defaults between risk score and severity (21, 47, 73, 99).
"""

from __future__ import annotations

from typing import Any

from quell.codec import json_type
from quell.ingest.model import (
    Alert,
    EmailInfo,
    FileInfo,
    Observable,
    ObservableType,
    Severity,
)
from quell.ingest.parsers import suricata
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
    first_integer,
    first_text,
    hostname,
    ip,
    items,
    number,
    port,
    score_severity,
    severity_label,
    techniques,
    text_list,
)
from quell.ingest.parsers.coerce import get as nested_get

# Event modules whose product is not named by observer.* in their documents.
_MODULES = {"endpoint": ("Elastic Defend", "Elastic")}
_NOT_ALERTS = frozenset({"event", "metric", "state", "pipeline_error", "enrichment", "asset"})

_TITLE = ("kibana.alert.rule.name", "signal.rule.name", "rule.name", "message")
_RULE_UID = (
    "kibana.alert.rule.rule_id",
    "kibana.alert.rule.uuid",
    "signal.rule.rule_id",
    "signal.rule.id",
    "rule.id",
    "rule.uuid",
)
_TIME = ("kibana.alert.original_time", "signal.original_time", "@timestamp", "event.created")
_DESCRIPTION = (
    "kibana.alert.reason",
    "signal.reason",
    "kibana.alert.rule.description",
    "signal.rule.description",
    "rule.description",
    "message",
)
_CATEGORY = ("rule.category", "event.category", "kibana.alert.original_event.category")
_SEVERITY_LABEL = ("kibana.alert.severity", "kibana.alert.rule.severity", "signal.rule.severity")
_RISK_SCORE = ("kibana.alert.risk_score", "kibana.alert.rule.risk_score", "event.risk_score")
# Lists of ATT&CK threat objects ({"technique": [{"id", "subtechnique": [...]}]}).
_THREAT_LISTS = (
    "kibana.alert.rule.threat",
    "kibana.alert.rule.parameters.threat",
    "signal.rule.threat",
)
# Technique ids as flat values: ECS threat.* and the flattened form of a hit's "fields".
_TECHNIQUE_IDS = (
    "threat.technique.id",
    "threat.technique.subtechnique.id",
    "kibana.alert.rule.threat.technique.id",
    "kibana.alert.rule.threat.technique.subtechnique.id",
    "kibana.alert.rule.tags",
    "signal.rule.tags",
)
_EXTRA = (
    "kibana.alert.workflow_status",
    "kibana.alert.status",
    "kibana.alert.risk_score",
    "kibana.alert.rule.uuid",
    "kibana.alert.rule.rule_id",
    "kibana.alert.rule.type",
    "kibana.alert.rule.category",
    "kibana.alert.building_block_type",
    "kibana.alert.rule.tags",
    "kibana.space_ids",
    "event.kind",
    "event.module",
    "event.dataset",
    "event.action",
    "event.outcome",
    "event.category",
    "event.severity",
    "event.risk_score",
    "network.transport",
    "network.protocol",
    "network.community_id",
    "process.name",
    "process.pid",
    "process.command_line",
    "process.parent.name",
    "user.domain",
    "host.os.name",
    "agent.type",
    "agent.id",
    "observer.name",
    "observer.type",
    "tags",
    "@metadata",
)


def _first(doc: dict[str, Any], paths: tuple[str, ...]) -> tuple[Any, str]:
    for path in paths:
        value = get(doc, path)
        if value is not None and value != [] and value != "":
            return value, path
    return None, paths[0]


def severity_of(doc: dict[str, Any]) -> Severity:
    """OCSF severity of an ECS alert document (see the module docstring)."""
    label, path = _first(doc, _SEVERITY_LABEL)
    if label is not None:
        found = severity_label(label, path)
        if found is not None:
            return found
    score, path = _first(doc, _RISK_SCORE)
    if score is not None:
        value = number(score, path)
        if value is not None and 0 <= value <= 100:
            return score_severity(value)
    event_severity = get(doc, "event.severity")
    if event_severity is None:
        return Severity.UNKNOWN
    module = first_text(get(doc, "event.module"), "event.module")
    if module == "suricata":
        return suricata.severity_of(first_integer(event_severity, "event.severity"))
    value = number(event_severity, "event.severity")
    if value is None or not 0 <= value <= 100:
        return Severity.UNKNOWN
    return score_severity(value)


_MAX_FLAT = 4096  # paths kept per document; a hostile one cannot make flattening unbounded


class Flat(dict[str, Any]):
    """A document made by :func:`flatten`: its keys are full dotted paths."""


def flatten(doc: dict[str, Any]) -> Flat:
    """Every dotted path of ``doc`` (objects included) mapped to its value, in one pass.

    ECS spells a field nested (``{"event": {"kind": …}}``), dotted (``{"event.kind": …}``) or
    both mixed; this gives one dict where each path is a single lookup, instead of walking
    the document for each of the sixty-odd paths a parse asks for (most of them absent).
    Shallower spellings win, as in :func:`~quell.ingest.parsers.coerce.get`: paths are
    filled level by level and the first value seen for a path is kept. Arrays are values.
    """
    flat = Flat()
    level: list[tuple[str, dict[str, Any]]] = [("", doc)]
    while level and len(flat) < _MAX_FLAT:
        deeper: list[tuple[str, dict[str, Any]]] = []
        for prefix, node in level:
            for key, value in node.items():
                path = prefix + key
                if path not in flat:
                    flat[path] = value
                if isinstance(value, dict):
                    deeper.append((path + ".", value))
        level = deeper
    return flat


def get(doc: dict[str, Any], path: str) -> Any:
    """The value at ``path``: one lookup in a flattened document, a walk in any other."""
    if isinstance(doc, Flat):
        return doc.get(path)
    return nested_get(doc, path)


def _unwrap(record: dict[str, Any]) -> tuple[dict[str, Any], Any, bool]:
    """The alert document inside a search hit, the hit's ``_id``, and whether it is ``fields``."""
    source = record.get("_source")
    if isinstance(source, dict):
        return source, record.get("_id"), False
    fields = record.get("fields")
    if isinstance(fields, dict) and "_index" in record:
        return fields, record.get("_id"), True
    return record, None, False


def _is_detection(doc: dict[str, Any]) -> bool:
    return (
        get(doc, "kibana.alert.rule.name") is not None
        or get(doc, "kibana.alert.uuid") is not None
        or get(doc, "signal.rule.name") is not None
    )


class EcsParser(Parser):
    """Parses ECS alert documents and Elastic Security detection alerts."""

    format = "ecs"
    record_kind = RecordKind.JSON

    def parse(self, record: Any) -> ParseResult:
        """The alert in one ECS document or search hit."""
        if not isinstance(record, dict):
            raise ParseError(f"ecs record must be a JSON object, not {json_type(record)}")
        nested, hit_id, arrays = _unwrap(record)
        doc = flatten(nested)
        kind = first_text(get(doc, "event.kind"), "event.kind")
        if kind in _NOT_ALERTS and not _is_detection(doc):
            return NotAnAlert(f"ecs event.kind {kind!r} is not an alert")
        value, title_path = _first(doc, _TITLE)
        title = first_text(value, title_path)
        if title is None:
            raise ParseError(
                "missing field 'kibana.alert.rule.name' (or 'rule.name', 'message')",
                field="kibana.alert.rule.name",
            )
        value, time_path = _first(doc, _TIME)
        if isinstance(value, list):
            value = value[0] if value else None
        value_uid, uid_path = _first(doc, ("kibana.alert.uuid",))
        uid = (
            first_text(value_uid, uid_path)
            or first_text(hit_id, "_id")
            or first_text(get(doc, "@metadata._id"), "@metadata._id")
            or first_text(get(doc, "event.id"), "event.id")
        )
        rule_uid, rule_path = _first(doc, _RULE_UID)
        description, description_path = _first(doc, _DESCRIPTION)
        if description_path == title_path:
            description = None  # the message was the only text and is the title already
        category, category_path = _first(doc, _CATEGORY)
        detection = _is_detection(doc)
        alert = Alert(
            title=title,
            time=parse_time(value, time_path),
            severity=severity_of(doc),
            uid=uid,
            rule_uid=first_text(rule_uid, rule_path),
            rule_name=title if title_path != "message" else None,
            category=first_text(category, category_path),
            description=first_text(description, description_path),
            product="Elastic Security" if detection else _producer(doc, "product"),
            vendor="Elastic" if detection else _producer(doc, "vendor"),
            user=first_text(get(doc, "user.name"), "user.name"),
        )
        _techniques(doc, alert.techniques)
        _endpoints(doc, alert)
        alert.file = _file(doc)
        alert.url = first_text(get(doc, "url.full"), "url.full") or first_text(
            get(doc, "url.original"), "url.original"
        )
        alert.email = _email(doc)
        for name in items(get(doc, "dns.question.name"), "dns.question.name"):
            found = domain(name, "dns.question.name")
            if found is not None:
                alert.observables.append(Observable(ObservableType.DOMAIN, found, role="text"))
        extra: dict[str, Any] = {}
        for key in _EXTRA:
            found_value = get(doc, key)
            if found_value is not None:
                # A hit's "fields" wraps every value in an array; keep the _source shape.
                if arrays and isinstance(found_value, list) and len(found_value) == 1:
                    found_value = found_value[0]
                extra[key] = found_value
        alert.extra = extra
        return alert


def _producer(doc: dict[str, Any], what: str) -> str | None:
    """The product or vendor: ``observer.*``, else what the event module names."""
    found = first_text(get(doc, f"observer.{what}"), f"observer.{what}")
    if found is not None:
        return found
    module = first_text(get(doc, "event.module"), "event.module")
    if module is None:
        return None
    known = _MODULES.get(module)
    if known is not None:
        return known[0] if what == "product" else known[1]
    return module if what == "product" else None


def _techniques(doc: dict[str, Any], into: list[str]) -> None:
    for path in _THREAT_LISTS:
        for threat in items(get(doc, path), path):
            if not isinstance(threat, dict):
                continue
            for technique in items(threat.get("technique"), f"{path}.technique"):
                if not isinstance(technique, dict):
                    continue
                techniques((technique.get("id"),), f"{path}.technique.id", into)
                subs = items(technique.get("subtechnique"), f"{path}.technique.subtechnique")
                techniques(
                    (sub.get("id") for sub in subs if isinstance(sub, dict)),
                    f"{path}.technique.subtechnique.id",
                    into,
                )
    for path in _TECHNIQUE_IDS:
        value = get(doc, path)
        if value is not None:
            # Tags are free text ("attack.t1558, attack.lateral_movement"); split them.
            if path.endswith("tags"):
                value = [
                    part
                    for tag in items(value, path)
                    if isinstance(tag, str)
                    for part in tag.replace(",", " ").split()
                ]
            techniques(items(value, path), path, into)


def _endpoints(doc: dict[str, Any], alert: Alert) -> None:
    src_name = hostname(get(doc, "source.domain"), "source.domain")
    alert.src = endpoint(
        ip(get(doc, "source.ip"), "source.ip") or ip(get(doc, "source.address"), "source.address"),
        port(get(doc, "source.port"), "source.port"),
        src_name,
    )
    dst_name = hostname(get(doc, "destination.domain"), "destination.domain") or hostname(
        get(doc, "tls.client.server_name"), "tls.client.server_name"
    )
    alert.dst = endpoint(
        ip(get(doc, "destination.ip"), "destination.ip")
        or ip(get(doc, "destination.address"), "destination.address"),
        port(get(doc, "destination.port"), "destination.port"),
        dst_name,
    )
    host_name = hostname(get(doc, "host.name"), "host.name") or hostname(
        get(doc, "host.hostname"), "host.hostname"
    )
    alert.host = endpoint(ip(get(doc, "host.ip"), "host.ip"), None, host_name)


def _file(doc: dict[str, Any]) -> FileInfo | None:
    path = first_text(get(doc, "file.path"), "file.path")
    found = FileInfo(
        name=first_text(get(doc, "file.name"), "file.name") or (basename(path) if path else None),
        path=path,
        size=first_integer(get(doc, "file.size"), "file.size"),
        md5=file_hash(get(doc, "file.hash.md5"), "file.hash.md5", 32),
        sha1=file_hash(get(doc, "file.hash.sha1"), "file.hash.sha1", 40),
        sha256=file_hash(get(doc, "file.hash.sha256"), "file.hash.sha256", 64),
        mime_type=first_text(get(doc, "file.mime_type"), "file.mime_type"),
    )
    if found.name is not None or found.md5 or found.sha1 or found.sha256:
        return found
    # A process alert names its image by the process fields instead.
    md5 = file_hash(get(doc, "process.hash.md5"), "process.hash.md5", 32)
    sha1 = file_hash(get(doc, "process.hash.sha1"), "process.hash.sha1", 40)
    sha256 = file_hash(get(doc, "process.hash.sha256"), "process.hash.sha256", 64)
    if md5 is None and sha1 is None and sha256 is None:
        return None
    executable = first_text(get(doc, "process.executable"), "process.executable")
    return FileInfo(
        name=first_text(get(doc, "process.name"), "process.name")
        or (basename(executable) if executable else None),
        path=executable,
        md5=md5,
        sha1=sha1,
        sha256=sha256,
    )


def _email(doc: dict[str, Any]) -> EmailInfo | None:
    sender = first_text(get(doc, "email.from.address"), "email.from.address")
    recipients = text_list(get(doc, "email.to.address"), "email.to.address")
    subject = first_text(get(doc, "email.subject"), "email.subject")
    if sender is None and not recipients and subject is None:
        return None
    return EmailInfo(
        sender=sender,
        to=recipients,
        cc=text_list(get(doc, "email.cc.address"), "email.cc.address"),
        subject=subject,
        reply_to=first_text(get(doc, "email.reply_to.address"), "email.reply_to.address"),
        message_id=first_text(get(doc, "email.message_id"), "email.message_id"),
    )
