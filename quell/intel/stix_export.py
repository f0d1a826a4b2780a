"""STIX 2.1 out: the indicator store (or one source of it) as a bundle.

:func:`export_bundle` returns the bundle as a dict; :func:`iter_objects` yields its objects one at
a time and :func:`iter_bundle_json` the bundle's JSON in pieces, for a store too large to hold.

* One ``indicator`` per stored indicator: ``pattern_type`` ``stix``, a pattern of one comparison
  (string literals escaped: ``\\`` and ``'``), ``ISSUBSET`` for a network range. A domain that
  matches its subdomains has the pattern ``[domain-name:value = 'x']`` (STIX has no "and below"
  short of ``LIKE``) and the property ``x_quell_match: "subdomain"``, which
  :mod:`quell.intel.stix` reads back.
* Ids are UUIDv5 over the source and the key (``indicator--``), so exporting again gives the same
  ids; ``created`` and ``modified`` are when Quell first and last wrote the row, so a changed
  indicator is a new version of the same object.
* ``valid_from`` is the first-seen time (else ``created``), moved a millisecond before
  ``valid_until`` when it is not earlier (STIX requires ``valid_until`` after ``valid_from``);
  ``valid_until``, ``revoked``, ``confidence``, ``labels`` (the tags), ``kill_chain_phases``
  (``chain:phase``; a phase without a chain gets the chain ``quell``), ``description``,
  ``x_quell_source``.
* TLP as ``object_marking_refs``: the TLP 1.0 definitions STIX 2.1 predefines for clear (white),
  green, amber and red; amber+strict, which TLP 1.0 lacks, the TLP 2.0 definition of the OASIS
  extension, whose object is then included in the bundle.
* ``created_by_ref`` an ``identity`` object (``identity_name``, class ``system``), in the bundle.
* A ``relationship`` ``indicates`` to each malware, campaign, ... id the indicator came with
  (its ``stix_ids``); the targets themselves are not in the store and not in the bundle.
* A ``sighting`` per recorded sighting (``include_sightings``), marked like its indicator;
  ``where_sighted_refs`` is Quell's identity for a sighting in an alert, or the identities a
  source reported.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select

from quell.intel.model import IndicatorType, MatchKind, Tlp
from quell.intel.stix import TLP1_MARKINGS, TLP2_EXTENSION, TLP2_MARKINGS
from quell.intel.store import IntelStore, utc
from quell.store.schema import indicator_sightings, indicators

__all__ = ["export_bundle", "iter_bundle_json", "iter_objects", "stix_pattern"]

# UUIDv5 namespace of the ids Quell gives STIX objects it exports.
NAMESPACE = uuid.UUID("50d71716-2ebe-4bb0-a2ac-0e8bb2692683")
_IDENTITY_TIME = "2024-01-01T00:00:00.000Z"  # fixed, so the identity object never changes
_TLP2_TIME = "2022-10-01T00:00:00.000Z"  # the published TLP 2.0 objects' own timestamp

_MARKING_OF = {level: ref for ref, level in TLP1_MARKINGS.items()}
_AMBER_STRICT = next(ref for ref, level in TLP2_MARKINGS.items() if level is Tlp.AMBER_STRICT)
_MARKING_OF[Tlp.AMBER_STRICT] = _AMBER_STRICT
AMBER_STRICT_DEFINITION: dict[str, Any] = {
    "type": "marking-definition",
    "spec_version": "2.1",
    "id": _AMBER_STRICT,
    "created": _TLP2_TIME,
    "name": "TLP:AMBER+STRICT",
    "extensions": {
        TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": "amber+strict"}
    },
}

_PROPERTIES = {
    IndicatorType.IPV4: "ipv4-addr:value",
    IndicatorType.IPV6: "ipv6-addr:value",
    IndicatorType.DOMAIN: "domain-name:value",
    IndicatorType.URL: "url:value",
    IndicatorType.EMAIL: "email-addr:value",
    IndicatorType.MD5: "file:hashes.'MD5'",
    IndicatorType.SHA1: "file:hashes.'SHA-1'",
    IndicatorType.SHA256: "file:hashes.'SHA-256'",
}
# What an indicator may indicate (STIX 2.1, the indicates relationship's targets).
_INDICATED = (
    "attack-pattern--",
    "campaign--",
    "infrastructure--",
    "intrusion-set--",
    "malware--",
    "threat-actor--",
    "tool--",
)
_PLACE = re.compile(
    r"(identity|location)--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def stix_pattern(type_: IndicatorType | str, match: MatchKind | str, value: str) -> str:
    """The STIX pattern of a stored indicator (its canonical value)."""
    kind = IndicatorType(type_)
    literal = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    op = "ISSUBSET" if MatchKind(match) is MatchKind.CIDR else "="
    return f"[{_PROPERTIES[kind]} {op} {literal}]"


def stix_id(kind: str, *parts: str) -> str:
    """``kind--<UUIDv5 of the parts>``: the same parts, the same id."""
    return f"{kind}--{uuid.uuid5(NAMESPACE, '|'.join((kind, *parts)))}"


def export_bundle(
    store: IntelStore,
    *,
    source: str | None = None,
    include_sightings: bool = True,
    identity_name: str = "Quell",
) -> dict[str, Any]:
    """The store's indicators (of ``source``, else all) as a STIX 2.1 bundle."""
    return {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid4()}",
        "objects": list(
            iter_objects(
                store,
                source=source,
                include_sightings=include_sightings,
                identity_name=identity_name,
            )
        ),
    }


def iter_bundle_json(
    store: IntelStore,
    *,
    source: str | None = None,
    include_sightings: bool = True,
    identity_name: str = "Quell",
) -> Iterator[bytes]:
    """:func:`export_bundle` as JSON, an object at a time (to write or stream a large store)."""
    yield b'{"type":"bundle","id":"bundle--' + str(uuid.uuid4()).encode() + b'","objects":['
    separator = b""
    for obj in iter_objects(
        store, source=source, include_sightings=include_sightings, identity_name=identity_name
    ):
        yield separator + orjson.dumps(obj)
        separator = b","
    yield b"]}"


def iter_objects(
    store: IntelStore,
    *,
    source: str | None = None,
    include_sightings: bool = True,
    identity_name: str = "Quell",
) -> Iterator[dict[str, Any]]:
    """The bundle's objects: the identity, the indicators and their relationships, the
    sightings, and the TLP 2.0 marking definition when one was used."""
    identity = identity_object(identity_name)
    me = identity["id"]
    yield identity
    strict = False
    query = select(indicators).order_by(indicators.c.source, indicators.c.key)
    if source is not None:
        query = query.where(indicators.c.source == source)
    with store.db.read() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query):
            tlp = Tlp(row.tlp)
            strict = strict or tlp is Tlp.AMBER_STRICT
            indicator = _indicator(row, me)
            yield indicator
            for target in dict.fromkeys(row.stix_ids or ()):
                if isinstance(target, str) and target.startswith(_INDICATED):
                    yield {
                        "type": "relationship",
                        "spec_version": "2.1",
                        "id": stix_id("relationship", row.source, row.key, "indicates", target),
                        "created": indicator["created"],
                        "modified": indicator["modified"],
                        "created_by_ref": me,
                        "relationship_type": "indicates",
                        "source_ref": indicator["id"],
                        "target_ref": target,
                        "object_marking_refs": indicator["object_marking_refs"],
                    }
    if include_sightings:
        yield from _sightings(store, source, me)
    if strict:
        yield AMBER_STRICT_DEFINITION


def identity_object(name: str) -> dict[str, Any]:
    """The ``identity`` the exported objects are created by."""
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": stix_id("identity", name),
        "created": _IDENTITY_TIME,
        "modified": _IDENTITY_TIME,
        "name": name,
        "identity_class": "system",
    }


def _indicator(row: Any, me: str) -> dict[str, Any]:
    created = _ms(row.created_at)
    modified = max(_ms(row.updated_at), created)
    valid_from = utc(row.first_seen or row.created_at)
    valid_until = utc(row.valid_until) if row.valid_until is not None else None
    if valid_until is not None and valid_until <= valid_from:
        valid_from = valid_until - timedelta(milliseconds=1)
    indicator: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": stix_id("indicator", row.source, row.key),
        "created": _timestamp(created),
        "modified": _timestamp(modified),
        "created_by_ref": me,
        "name": row.value,
        "pattern": stix_pattern(row.type, row.match, row.value),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": _timestamp(valid_from),
    }
    if valid_until is not None:
        indicator["valid_until"] = _timestamp(valid_until)
    if row.revoked:
        indicator["revoked"] = True
    if row.confidence is not None:
        indicator["confidence"] = row.confidence
    if row.description:
        indicator["description"] = row.description
    if row.tags:
        indicator["labels"] = list(row.tags)
    if row.kill_chain:
        indicator["kill_chain_phases"] = [_phase(text) for text in row.kill_chain]
    if row.match == MatchKind.SUBDOMAIN:
        indicator["x_quell_match"] = "subdomain"
    indicator["x_quell_source"] = row.source
    indicator["object_marking_refs"] = [_MARKING_OF[Tlp(row.tlp)]]
    return indicator


def _sightings(store: IntelStore, source: str | None, me: str) -> Iterator[dict[str, Any]]:
    query = (
        select(
            indicator_sightings.c.id,
            indicator_sightings.c.seen_at,
            indicator_sightings.c.reported_by,
            indicators.c.source,
            indicators.c.key,
            indicators.c.tlp,
        )
        .join(indicators, indicators.c.id == indicator_sightings.c.indicator_id)
        .order_by(indicators.c.source, indicators.c.key, indicator_sightings.c.seen_at)
    )
    if source is not None:
        query = query.where(indicators.c.source == source)
    with store.db.read() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query):
            seen = _timestamp(utc(row.seen_at))
            sighting: dict[str, Any] = {
                "type": "sighting",
                "spec_version": "2.1",
                "id": stix_id("sighting", row.id),
                "created": _timestamp(_ms(row.seen_at)),
                "modified": _timestamp(_ms(row.seen_at)),
                "created_by_ref": me,
                "sighting_of_ref": stix_id("indicator", row.source, row.key),
                "first_seen": seen,
                "last_seen": seen,
                "count": 1,
                "object_marking_refs": [_MARKING_OF[Tlp(row.tlp)]],
            }
            if row.reported_by is None:  # seen by Quell itself (in an alert)
                places = [me]
            else:
                places = [p for p in (row.reported_by or "").split(",") if _PLACE.fullmatch(p)]
            if places:
                sighting["where_sighted_refs"] = places
            yield sighting


def _phase(text: str) -> dict[str, str]:
    chain, _, phase = text.rpartition(":")
    return {"kill_chain_name": chain or "quell", "phase_name": phase}


def _ms(value: datetime) -> datetime:
    """``value`` in UTC, to the millisecond (what ``created`` and ``modified`` carry)."""
    moment = utc(value)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``: milliseconds, or microseconds when there are any."""
    moment = utc(value)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micro = moment.microsecond
    return f"{text}.{micro // 1000:03d}Z" if micro % 1000 == 0 else f"{text}.{micro:06d}Z"
