"""MISP events and MISP feeds as indicators.

:func:`parse_event` reads one MISP event as MISP exports it (``{"Event": {…}}``, the bare event,
or the API's ``{"response": [event, …]}``); :func:`parse_feed_dir` reads a MISP feed directory
(``manifest.json`` plus one ``<uuid>.json`` per event); :func:`events_to_fetch` tells a feed
puller which events of a manifest changed since its last pull.

How an attribute becomes indicators (event-level attributes and those of every ``Object``):

- **Types.** ``ip-src``, ``ip-dst`` (a CIDR value is a range), ``ip-src|port`` and
  ``ip-dst|port`` (the address), ``domain`` and ``hostname`` (the exact name),
  ``hostname|port`` (the name), ``domain|ip`` (both), ``url``, ``email``, ``email-src``,
  ``email-dst``, ``md5``, ``sha1``, ``sha256``, ``filename|md5``/``|sha1``/``|sha256`` and
  ``malware-sample`` (``filename|md5`` in MISP: the digest). A ``url`` without a scheme
  (``evil.example/x``, common in MISP) is read as ``http://``. Every other MISP type
  (``link``: a reference, not an IOC; ``text``, ``comment``, ``filename``, ``regkey``, ``mutex``,
  ``yara``, ``vulnerability``, ``AS``, ``size-in-bytes``, other hash kinds …) is counted
  unsupported: "MISP type X is not an indicator type Quell matches". A type that is not a MISP
  type at all (:data:`MISP_TYPES`, MISP's ``describeTypes``) makes the event malformed: the
  whole input is refused with an :class:`IntelError` naming the attribute and the type.
- **to_ids.** An attribute with ``to_ids`` false is context, not a detection (MISP itself leaves
  it out of its IDS exports): it is counted unsupported with the reason "to_ids is false", so
  it never raises a verdict. A missing ``to_ids`` counts as true (MISP's default for every type
  imported here). The indicator such an attribute made earlier, when it was a detection, is
  withdrawn (:attr:`Parsed.withdrawn`): it stops matching, unless another item has said the
  value since (the store keeps the last item's id).
- **Deleted** attributes (``"deleted": true``) are not counted, and withdraw what they made
  earlier the same way. A deleted object is skipped whole (its attributes withdraw nothing);
  a feed that leaves deleted attributes out of its export withdraws nothing either.
- **Tags** of the event and of the attribute (``Tag``, or ``EventTag``/``AttributeTag`` as
  MISP's database shape has them) become the record's tags, TLP tags excepted: a TLP
  tag (``tlp:red``, ``tlp:amber+strict``, ``tlp:white`` …) sets the record's TLP instead. An
  attribute's TLP beats the event's; among tags of one level the most restrictive wins; with
  none, ``default_tlp``.
- **Confidence** comes from a ``misp:confidence-level`` tag (completely 100, usually 75,
  fairly 50, rarely 25, unconfident 0) or an ``admiralty-scale:information-credibility`` tag
  (1 → 90, 2 → 70, 3 → 50, 4 → 30, 5 → 10, the scale STIX 2.1 appendix A gives), the
  attribute's beating the event's, the lowest winning among tags of one level; otherwise
  ``default_confidence`` (50).
- **Severity**: the event's ``threat_level_id`` 1 high, 2 medium, 3 low, 4 undefined becomes
  OCSF ``severity_id`` 4, 3, 2, None.
- **Times**: ``first_seen`` is the attribute's ``first_seen``, else the event ``date``;
  ``last_seen`` the attribute's ``last_seen``, else its ``timestamp`` (when the producer last
  changed it). Epoch seconds (MISP's strings) and ISO 8601 are both read.
- **Sightings** (``Sighting[]`` of an attribute, or of the event with an ``attribute_uuid``):
  type 0 (a sighting) goes to :attr:`Parsed.sightings`, seen at ``date_sighting``, where seen
  being the sighting's ``source`` or else its organisation's name; type 2 (expiration) sets the
  indicator's ``valid_until`` to that date (the earliest one), so it stops matching; type 1
  (false positive) is not a sighting and is ignored (Quell's allow-list is the place for that).
- **Ids**: ``stix_ids`` holds ``indicator--<uuid>``, the id MISP's own STIX 2 export
  (misp-stix) gives the same indicator (the attribute's uuid, or the object's for an attribute
  of an object), so an indicator imported both ways carries one id. The event is named in the
  description (``info``, then the attribute's comment); the MISP category is the kill-chain
  phase ``misp-category:<category>``, as misp-stix writes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from quell.intel.model import (
    MAX_TAGS,
    IndicatorRecord,
    IndicatorType,
    IntelError,
    Parsed,
    Tlp,
    Unsupported,
    keyed,
)

DEFAULT_CONFIDENCE = 50
MAX_DESCRIPTION = 1024
MAX_TAG_CHARS = 256

# MISP's attribute types: ``types`` of describeTypes.json (PyMISP pymisp/data, MISP 2.4/2.5),
# with the names later releases added. A type outside this set makes an event malformed.
MISP_TYPES: frozenset[str] = frozenset(
    {
        "AS", "aba-rtn", "anonymised", "attachment", "authentihash", "azure-application-id",
        "bank-account-nr", "bic", "bin", "boolean", "bro", "btc", "campaign-id",
        "campaign-name", "cc-number", "cdhash", "chrome-extension-id", "comment",
        "community-id", "cookie", "cortex", "counter", "country-of-residence", "cpe", "dash",
        "date-of-birth", "datetime", "dkim", "dkim-signature", "dns-soa-email", "dom-hash",
        "domain", "domain|ip", "email", "email-attachment", "email-body", "email-dst",
        "email-dst-display-name", "email-header", "email-message-id", "email-mime-boundary",
        "email-reply-to", "email-src", "email-src-display-name", "email-subject",
        "email-thread-index", "email-x-mailer", "eppn", "favicon-mmh3", "filename",
        "filename-pattern", "filename|authentihash", "filename|impfuzzy", "filename|imphash",
        "filename|md5", "filename|pehash", "filename|sha1", "filename|sha224",
        "filename|sha256", "filename|sha3-224", "filename|sha3-256", "filename|sha3-384",
        "filename|sha3-512", "filename|sha384", "filename|sha512", "filename|sha512/224",
        "filename|sha512/256", "filename|ssdeep", "filename|tlsh", "filename|vhash",
        "first-name", "float", "frequent-flyer-number", "full-name", "gender", "gene",
        "git-commit-id", "github-organisation", "github-repository", "github-username",
        "hassh-md5", "hasshserver-md5", "hex", "hostname", "hostname|port", "http-method",
        "iban", "identity-card-number", "impfuzzy", "imphash", "integer", "ip-dst",
        "ip-dst|port", "ip-src", "ip-src|port", "issue-date-of-the-visa",
        "ja3-fingerprint-md5", "jabber-id", "jarm-fingerprint", "kusto-query", "last-name",
        "link", "mac-address", "mac-eui-64", "malware-sample", "malware-type", "md5",
        "middle-name", "mime-type", "mobile-application-id", "mutex", "named pipe",
        "nationality", "onion-address", "other", "passenger-name-record-locator-number",
        "passport-country", "passport-expiration", "passport-number", "pattern-filename",
        "pattern-in-file", "pattern-in-memory", "pattern-in-traffic", "payment-details",
        "pdb", "pehash", "pgp-private-key", "pgp-public-key", "phone-number",
        "place-of-birth", "place-port-of-clearance",
        "place-port-of-onward-foreign-destination", "place-port-of-original-embarkation",
        "port", "primary-residence", "process-state", "prtn", "redress-number", "regkey",
        "regkey|value", "sha1", "sha224", "sha256", "sha3-224", "sha3-256", "sha3-384",
        "sha3-512", "sha384", "sha512", "sha512/224", "sha512/256", "sigma",
        "size-in-bytes", "snort", "special-service-request", "ssdeep", "ssh-fingerprint",
        "stix2-pattern", "target-email", "target-external", "target-location",
        "target-machine", "target-org", "target-user", "telfhash", "text", "threat-actor",
        "tlsh", "travel-details", "twitter-id", "uri", "url", "user-agent", "vhash",
        "visa-number", "vulnerability", "weakness", "whois-creation-date",
        "whois-registrant-email", "whois-registrant-name", "whois-registrant-org",
        "whois-registrant-phone", "whois-registrar", "windows-scheduled-task",
        "windows-service-displayname", "windows-service-name", "x509-fingerprint-md5",
        "x509-fingerprint-sha1", "x509-fingerprint-sha256", "xmr", "yara", "zeek",
    }
)  # fmt: skip

Values = list[tuple[IndicatorType, str]]


def ip_type(value: str) -> IndicatorType:
    """IPv6 when the value has a colon (and is not an IPv4 address with a port), else IPv4.
    The value is checked later, by :func:`~quell.intel.model.indicator_key`."""
    return IndicatorType.IPV6 if value.count(":") > 1 else IndicatorType.IPV4


def _ip(value: str) -> Values:
    return [(ip_type(value), value)]


def _first(value: str) -> str:
    return value.split("|", 1)[0].strip()


def _last(value: str) -> str:
    return value.rsplit("|", 1)[-1].strip()


def _url(value: str) -> Values:
    if "://" not in value and "." in value.split("/", 1)[0]:
        value = "http://" + value
    return [(IndicatorType.URL, value)]


def _domain_ip(value: str) -> Values:
    name, _, address = value.partition("|")
    found: Values = [(IndicatorType.DOMAIN, name.strip())]
    if address.strip():
        found.append((ip_type(address.strip()), address.strip()))
    return found


def _hash(kind: IndicatorType, part: Callable[[str], str]) -> Callable[[str], Values]:
    return lambda value: [(kind, part(value))]


_SHAPES: dict[str, Callable[[str], Values]] = {
    "ip-src": _ip,
    "ip-dst": _ip,
    "ip-src|port": lambda v: _ip(_first(v)),
    "ip-dst|port": lambda v: _ip(_first(v)),
    "domain": lambda v: [(IndicatorType.DOMAIN, v)],
    "hostname": lambda v: [(IndicatorType.DOMAIN, v)],
    "hostname|port": lambda v: [(IndicatorType.DOMAIN, _first(v))],
    "domain|ip": _domain_ip,
    "url": _url,
    "email": lambda v: [(IndicatorType.EMAIL, v)],
    "email-src": lambda v: [(IndicatorType.EMAIL, v)],
    "email-dst": lambda v: [(IndicatorType.EMAIL, v)],
    "md5": _hash(IndicatorType.MD5, str.strip),
    "sha1": _hash(IndicatorType.SHA1, str.strip),
    "sha256": _hash(IndicatorType.SHA256, str.strip),
    "filename|md5": _hash(IndicatorType.MD5, _last),
    "filename|sha1": _hash(IndicatorType.SHA1, _last),
    "filename|sha256": _hash(IndicatorType.SHA256, _last),
    "malware-sample": _hash(IndicatorType.MD5, _last),
}

INDICATOR_MISP_TYPES: frozenset[str] = frozenset(_SHAPES)
"""The MISP attribute types Quell turns into indicators."""


def misp_values(misp_type: str, value: str) -> Values | None:
    """The (indicator type, value) pairs a MISP attribute of ``misp_type`` carries, or None
    when the type is a MISP type Quell does not match. :class:`IntelError` when ``misp_type``
    is not a MISP type."""
    shape = _SHAPES.get(misp_type)
    if shape is None:
        if misp_type not in MISP_TYPES:
            raise IntelError(f"{misp_type!r} is not a MISP attribute type", type=misp_type)
        return None
    return shape(value.strip())


def not_matched(misp_type: str) -> str:
    """The reason an attribute of a MISP type that is not an indicator type is left out."""
    return f"MISP type {misp_type} is not an indicator type Quell matches"


# -- times -----------------------------------------------------------------------------------------

_EPOCH_MAX = 253402300799  # 9999-12-31T23:59:59Z


def parse_time(value: object) -> datetime | None:
    """An aware UTC time from epoch seconds (number or digits) or ISO 8601 (a date alone is
    its midnight UTC). None for an empty value or epoch 0; :class:`IntelError` otherwise."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _from_epoch(float(value))
    if not isinstance(value, str):
        raise IntelError(f"not a time: {value!r}")
    text = value.strip()
    if not text:
        return None
    if text.isdigit() or (text[0] == "-" and text[1:].isdigit()):
        return _from_epoch(float(text))
    try:
        if len(text) == 10:
            found = datetime.combine(date.fromisoformat(text), datetime.min.time())
        else:
            found = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: out of range once in UTC
        raise IntelError(f"not a time: {text[:64]!r}") from None


def _from_epoch(seconds: float) -> datetime | None:
    if seconds == 0:
        return None
    if not 0 < seconds <= _EPOCH_MAX:
        raise IntelError(f"epoch time out of range: {seconds:g}")
    return datetime.fromtimestamp(seconds, UTC)


# -- tags ------------------------------------------------------------------------------------------

_CONFIDENCE_LEVELS = {
    "completely-confident": 100,
    "usually-confident": 75,
    "fairly-confident": 50,
    "rarely-confident": 25,
    "unconfident": 0,
}
_ADMIRALTY_CREDIBILITY = {"1": 90, "2": 70, "3": 50, "4": 30, "5": 10}
_SEVERITY = {"1": 4, "2": 3, "3": 2, "4": None}


def tag_confidence(name: str) -> int | None:
    """The confidence a ``misp:confidence-level`` or admiralty-scale credibility tag states."""
    prefix, _, value = name.partition("=")
    value = value.strip().strip('"').strip().lower()
    prefix = prefix.strip().lower()
    if prefix == "misp:confidence-level":
        return _CONFIDENCE_LEVELS.get(value)
    if prefix == "admiralty-scale:information-credibility":
        return _ADMIRALTY_CREDIBILITY.get(value)
    return None


def tag_tlp(name: str) -> Tlp | None:
    """The TLP level a ``tlp:…`` tag names, or None (also for ``tlp:ex:…`` extensions)."""
    if not name.lower().startswith("tlp:"):
        return None
    try:
        return Tlp.parse(name)
    except IntelError:
        return None


@dataclass(slots=True)
class _Level:
    """What the tags of one level (the event, or an attribute) say."""

    tags: list[str] = field(default_factory=list)
    tlp: Tlp | None = None
    confidence: int | None = None


def _read_tags(node: Mapping[str, Any], where: str) -> _Level:
    found = _Level()
    raw: list[Any] = []
    for key in ("Tag", "EventTag", "AttributeTag"):
        items = node.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise IntelError(f"{where}: {key} is not a list")
        # EventTag and AttributeTag (MISP's database shape) wrap each tag: {"Tag": {...}}.
        raw.extend(
            item.get("Tag") if isinstance(item, dict) and key != "Tag" else item for item in items
        )
    for tag in raw:
        name = tag.get("name") if isinstance(tag, dict) else tag
        if not isinstance(name, str) or not name.strip():
            continue
        name = name.strip()[:MAX_TAG_CHARS]
        level = tag_tlp(name)
        if level is not None:
            found.tlp = level if found.tlp is None else max(found.tlp, level)
            continue
        confidence = tag_confidence(name)
        if confidence is not None:
            found.confidence = (
                confidence if found.confidence is None else min(found.confidence, confidence)
            )
        found.tags.append(name)
    return found


# -- events ----------------------------------------------------------------------------------------


def load_json(data: bytes | str | Mapping[str, Any] | list[Any], what: str) -> Any:
    """``data`` parsed as JSON (a mapping or list is taken as already parsed)."""
    if isinstance(data, Mapping | list):
        return data
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IntelError(f"{what} is not valid JSON: {exc}") from None


def events_of(document: Any) -> list[Mapping[str, Any]]:
    """The events in a MISP document: ``{"Event": …}``, a bare event, ``{"response": […]}``
    or a list of either."""
    if isinstance(document, list):
        found: list[Mapping[str, Any]] = []
        for item in document:
            found.extend(events_of(item))
        return found
    if not isinstance(document, Mapping):
        raise IntelError("a MISP event is a JSON object")
    if "Event" in document:
        event = document["Event"]
        if not isinstance(event, Mapping):
            raise IntelError("a MISP event's Event is not an object")
        return [event]
    if "response" in document:
        response = document["response"]
        if not isinstance(response, list):
            raise IntelError("a MISP response is not a list of events")
        return events_of(response)
    if any(key in document for key in ("Attribute", "Object", "uuid", "info")):
        return [document]
    raise IntelError("not a MISP event: no Event, Attribute or Object")


def parse_event(
    data: bytes | str | Mapping[str, Any] | list[Any],
    *,
    default_tlp: Tlp = Tlp.CLEAR,
    default_confidence: int | None = DEFAULT_CONFIDENCE,
    origin: str | None = None,
) -> Parsed:
    """The indicators of a MISP event document (see the module for every rule).

    :class:`IntelError` when the document is not a MISP event, is malformed, or has an
    attribute whose type MISP does not define; nothing is returned then."""
    events = events_of(load_json(data, origin or "the MISP event"))
    parsed = Parsed()
    for number, event in enumerate(events, 1):
        label = f"event {number}" if len(events) > 1 else "event"
        uuid = event.get("uuid")
        if isinstance(uuid, str) and uuid.strip():
            label = f"event {uuid.strip()}"
        _EventReader(
            event,
            f"{origin}: {label}" if origin else label,
            default_tlp,
            default_confidence,
            parsed,
        ).read()
    return parsed


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


class _EventReader:
    def __init__(
        self,
        event: Mapping[str, Any],
        label: str,
        default_tlp: Tlp,
        default_confidence: int | None,
        parsed: Parsed,
    ) -> None:
        self.event = event
        self.label = label
        self.parsed = parsed
        self.level = _read_tags(event, label)
        self.tlp = self.level.tlp if self.level.tlp is not None else default_tlp
        self.confidence = (
            self.level.confidence if self.level.confidence is not None else default_confidence
        )
        self.severity = _SEVERITY.get(str(event.get("threat_level_id", "")).strip())
        self.first_seen = self._time(event.get("date"), label, "date")
        info = event.get("info")
        self.info = info.strip() if isinstance(info, str) else ""
        self.by_uuid: dict[str, list[tuple[str, IndicatorRecord]]] = {}
        self.seen_sightings: set[str] = set()

    def read(self) -> None:
        for index, attribute in enumerate(self._list(self.event, "Attribute", self.label), 1):
            self._attribute(attribute, f"{self.label}, attribute {index}", None)
        for index, obj in enumerate(self._list(self.event, "Object", self.label), 1):
            where = f"{self.label}, object {index}"
            if not isinstance(obj, Mapping):
                raise IntelError(f"{where} is not an object")
            if _true(obj.get("deleted")):
                continue
            name = obj.get("name")
            if isinstance(name, str) and name:
                where += f" ({name})"
            object_uuid = obj.get("uuid")
            for number, attribute in enumerate(self._list(obj, "Attribute", where), 1):
                self._attribute(
                    attribute,
                    f"{where} attribute {number}",
                    object_uuid if isinstance(object_uuid, str) else None,
                )
        for sighting in self._list(self.event, "Sighting", self.label):
            if isinstance(sighting, Mapping):
                target = self.by_uuid.get(str(sighting.get("attribute_uuid", "")).lower())
                if target:
                    self._sighting(sighting, target, self.label)

    @staticmethod
    def _list(node: Mapping[str, Any], name: str, where: str) -> list[Any]:
        items = node.get(name)
        if items is None:
            return []
        if not isinstance(items, list):
            raise IntelError(f"{where}: {name} is not a list")
        return items

    @staticmethod
    def _time(value: object, where: str, name: str) -> datetime | None:
        try:
            return parse_time(value)
        except IntelError as exc:
            raise IntelError(f"{where}: {name}: {exc.message}") from None

    def _attribute(self, attribute: Any, where: str, object_uuid: str | None) -> None:
        if not isinstance(attribute, Mapping):
            raise IntelError(f"{where} is not an object")
        uuid = attribute.get("uuid")
        uuid = uuid.strip() if isinstance(uuid, str) and uuid.strip() else None
        if uuid:
            where += f" ({uuid})"
        misp_type = attribute.get("type")
        if not isinstance(misp_type, str) or not misp_type:
            raise IntelError(f"{where} has no type", where=where)
        if misp_type not in MISP_TYPES:
            raise IntelError(
                f"{where} has type {misp_type!r}, which is not a MISP attribute type",
                where=where,
                type=misp_type,
            )
        deleted = _true(attribute.get("deleted"))
        raw = attribute.get("value")
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            if deleted:
                return
            raise IntelError(f"{where} ({misp_type}) has no value", where=where)
        values = misp_values(misp_type, raw)
        if values is None:
            if not deleted:
                self.parsed.unsupported.append(
                    Unsupported(where, not_matched(misp_type), raw[:200])
                )
            return
        detection = _true(attribute.get("to_ids", True))
        if deleted or not detection:
            # What this attribute made earlier (when it was a detection) stops matching: an
            # analyst clears a false positive in MISP by unticking to_ids, or deleting it.
            owner = object_uuid if object_uuid is not None else uuid
            if owner and _UUID.fullmatch(owner):
                self.parsed.withdrawn.extend(
                    IndicatorRecord(
                        type=kind, value=value, stix_ids=(f"indicator--{owner.lower()}",)
                    )
                    for kind, value in values
                )
            if not deleted:
                self.parsed.unsupported.append(
                    Unsupported(
                        where, "to_ids is false: MISP marks it context, not a detection", raw[:200]
                    )
                )
            return
        level = _read_tags(attribute, where)
        first_seen = self._time(attribute.get("first_seen"), where, "first_seen")
        last_seen = self._time(attribute.get("last_seen"), where, "last_seen") or self._time(
            attribute.get("timestamp"), where, "timestamp"
        )
        first_seen = first_seen or self.first_seen
        if first_seen and last_seen and first_seen > last_seen:
            first_seen = last_seen
        comment = attribute.get("comment")
        comment = comment.strip() if isinstance(comment, str) else ""
        description = ": ".join(part for part in (self.info, comment) if part) or None
        category = attribute.get("category")
        stix_id = object_uuid if object_uuid is not None else uuid
        tags = list(dict.fromkeys([*self.level.tags, *level.tags]))[:MAX_TAGS]
        made: list[tuple[str, IndicatorRecord]] = []
        for kind, value in values:
            record = IndicatorRecord(
                type=kind,
                value=value,
                confidence=level.confidence if level.confidence is not None else self.confidence,
                severity_id=self.severity,
                # The higher of the attribute's and the event's: a tag never lowers it.
                tlp=self.tlp if level.tlp is None else max(level.tlp, self.tlp),
                first_seen=first_seen,
                last_seen=last_seen,
                tags=tuple(tags),
                kill_chain=(
                    (f"misp-category:{category.strip()}",)
                    if isinstance(category, str) and category.strip()
                    else ()
                ),
                stix_ids=(
                    (f"indicator--{stix_id.lower()}",)
                    if stix_id and _UUID.fullmatch(stix_id)
                    else ()
                ),
                description=description[:MAX_DESCRIPTION] if description else None,
                origin=where,
            )
            try:
                key = keyed(record)[0]
            except IntelError as exc:
                self.parsed.unsupported.append(Unsupported(where, exc.message, value[:200]))
                continue
            made.append((key, record))
            self.parsed.records.append(record)
        if uuid:
            self.by_uuid.setdefault(uuid.lower(), []).extend(made)
        for sighting in self._list(attribute, "Sighting", where):
            if isinstance(sighting, Mapping):
                self._sighting(sighting, made, where)

    def _sighting(
        self,
        sighting: Mapping[str, Any],
        targets: list[tuple[str, IndicatorRecord]],
        where: str,
    ) -> None:
        when = self._time(sighting.get("date_sighting"), where, "date_sighting")
        if when is None:
            return
        ident = sighting.get("uuid") or sighting.get("id")
        if isinstance(ident, str | int) and not isinstance(ident, bool):
            if str(ident) in self.seen_sightings:
                return  # listed under the attribute and again under the event
            self.seen_sightings.add(str(ident))
        kind = str(sighting.get("type", "0")).strip() or "0"
        if kind == "2":
            for _key, record in targets:
                if record.valid_until is None or when < record.valid_until:
                    record.valid_until = when
            return
        if kind != "0":
            return
        source = sighting.get("source")
        seen_by = source.strip() if isinstance(source, str) and source.strip() else None
        if seen_by is None:
            org = sighting.get("Organisation")
            name = org.get("name") if isinstance(org, Mapping) else None
            seen_by = name.strip() if isinstance(name, str) and name.strip() else None
        for key, record in targets:
            record.sightings += 1
            self.parsed.sightings.append((key, when, seen_by[:200] if seen_by else None))


def _true(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


# -- feeds -----------------------------------------------------------------------------------------


def parse_manifest(data: bytes | str | Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A feed's ``manifest.json``: event uuid -> its summary. :class:`IntelError`
    when it is not an object of uuids to objects."""
    document = load_json(data, "the MISP feed manifest")
    if not isinstance(document, Mapping):
        raise IntelError("a MISP feed manifest is a JSON object of event uuids")
    found: dict[str, Mapping[str, Any]] = {}
    for uuid, summary in document.items():
        if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
            raise IntelError(f"the MISP feed manifest lists {str(uuid)[:64]!r}, not an event uuid")
        if not isinstance(summary, Mapping):
            raise IntelError(f"the MISP feed manifest entry {uuid} is not an object")
        found[uuid] = summary
    return found


def _manifest_timestamp(uuid: str, summary: Mapping[str, Any]) -> int | None:
    value = summary.get("timestamp")
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise IntelError(f"the MISP feed manifest entry {uuid} has timestamp {value!r}") from None


def events_to_fetch(manifest: Mapping[str, Any], *, since_timestamp: int | None) -> list[str]:
    """The uuids of the manifest's events changed after ``since_timestamp`` (every event when
    None, and any without a timestamp), oldest first: what a puller fetches as
    ``<feed url>/<uuid>.json``."""
    entries = parse_manifest(manifest)
    wanted: list[tuple[int, str]] = []
    for uuid, summary in entries.items():
        stamp = _manifest_timestamp(uuid, summary)
        if since_timestamp is None or stamp is None or stamp > since_timestamp:
            wanted.append((stamp if stamp is not None else -1, uuid))
    return [uuid for _stamp, uuid in sorted(wanted)]


def manifest_timestamp(manifest: Mapping[str, Any]) -> int | None:
    """The newest event timestamp of a manifest: the ``since_timestamp`` of the next pull."""
    stamps = [
        stamp
        for uuid, summary in parse_manifest(manifest).items()
        if (stamp := _manifest_timestamp(uuid, summary)) is not None
    ]
    return max(stamps, default=None)


def parse_feed_event(
    uuid: str,
    data: bytes | str | Mapping[str, Any],
    *,
    default_tlp: Tlp = Tlp.CLEAR,
    default_confidence: int | None = DEFAULT_CONFIDENCE,
) -> Parsed:
    """One event file of a feed; :class:`IntelError` when it holds another event."""
    document = load_json(data, f"{uuid}.json")
    for event in events_of(document):
        found = event.get("uuid")
        if isinstance(found, str) and found.strip() and found.strip().lower() != uuid.lower():
            raise IntelError(f"{uuid}.json holds event {found.strip()[:64]}, not {uuid}")
    return parse_event(
        document,
        default_tlp=default_tlp,
        default_confidence=default_confidence,
        origin=f"{uuid}.json",
    )


def parse_feed_dir(
    path: Path,
    *,
    default_tlp: Tlp = Tlp.CLEAR,
    default_confidence: int | None = DEFAULT_CONFIDENCE,
    since_timestamp: int | None = None,
) -> Parsed:
    """Every event a MISP feed directory's ``manifest.json`` lists (changed after
    ``since_timestamp``, when given). ``hashes.csv`` is not read: it holds digests of values
    for correlation, not the values. :class:`IntelError` when the manifest or a listed event
    file is missing or malformed."""
    manifest_path = path / "manifest.json"
    try:
        manifest = parse_manifest(manifest_path.read_bytes())
    except FileNotFoundError:
        raise IntelError(f"{manifest_path} does not exist: not a MISP feed directory") from None
    parsed = Parsed()
    for uuid in events_to_fetch(manifest, since_timestamp=since_timestamp):
        event_path = path / f"{uuid}.json"
        try:
            data = event_path.read_bytes()
        except FileNotFoundError:
            raise IntelError(
                f"the MISP feed manifest lists event {uuid}, but {event_path.name} is missing",
                file=event_path.name,
            ) from None
        parsed.extend(
            parse_feed_event(
                uuid, data, default_tlp=default_tlp, default_confidence=default_confidence
            )
        )
    return parsed
