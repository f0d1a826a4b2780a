"""One entry point for every import format: bytes in, :class:`~quell.intel.model.Parsed` out.

``stix`` (a STIX 2.1 bundle), ``misp`` (a MISP event), ``csv`` (columns, with a mapping) and
``list`` (one value per line). A MISP *feed* and a TAXII *collection* are many documents, pulled
by :mod:`quell.intel.feeds`; each document goes through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import orjson

from quell.intel.model import IntelError, Parsed, Tlp

FORMATS = ("stix", "misp", "csv", "list")
# What an import accepts: the formats above, and a MISP feed (its manifest and events), which
# quell.intel.service reads through quell.intel.feeds.
IMPORT_FORMATS = (*FORMATS, "misp-feed")


def guess_format(data: bytes, name: str = "") -> str:
    """The format of ``data`` from its name and first bytes: JSON is STIX when it is a bundle
    or STIX objects (a ``type`` and a ``type--uuid`` id), else MISP; ``.csv`` is CSV; anything
    else a plain list."""
    from quell.intel.stix import is_stix_object

    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise IntelError(f"{name or 'input'} is not valid JSON: {exc}") from None
        if isinstance(document, dict) and (
            document.get("type") == "bundle" or is_stix_object(document)
        ):
            return "stix"
        if isinstance(document, list) and document and isinstance(document[0], dict):
            return "stix" if is_stix_object(document[0]) else "misp"
        return "misp"
    if name.lower().endswith(".csv"):
        return "csv"
    return "list"


def parse(
    format_: str, data: bytes, *, options: Mapping[str, Any] | None = None, origin: str = "input"
) -> Parsed:
    """Parse ``data`` as ``format_``. ``options``: ``tlp`` (the default TLP), ``confidence``
    (the default confidence, else each parser's: 50), ``mapping`` (CSV columns, as a dict or
    ``col=target,...``), ``header`` (CSV: ``first`` line, the last ``comment`` line before the
    data as abuse.ch writes it, or ``none``), ``delimiter``, ``type`` (a list's type)."""
    opts = dict(options or {})
    tlp = Tlp.parse(opts.get("tlp"), Tlp.CLEAR)
    confidence = opts.get("confidence")
    if format_ == "stix":
        from quell.intel.stix import parse_bundle

        return parse_bundle(data, default_tlp=tlp, origin=origin)
    if format_ == "misp":
        from quell.intel.misp import parse_event

        if confidence is None:
            return parse_event(data, default_tlp=tlp, origin=origin)
        return parse_event(data, default_tlp=tlp, default_confidence=int(confidence), origin=origin)
    extra: dict[str, Any] = {} if confidence is None else {"confidence": int(confidence)}
    if format_ == "csv":
        from quell.intel.csvlist import parse_csv, parse_mapping

        mapping = opts.get("mapping")
        if isinstance(mapping, str):
            mapping = parse_mapping(mapping)
        header: Literal["first", "comment", "none"] = opts.get("header") or "first"
        if header not in ("first", "comment", "none"):
            raise IntelError(f"unknown CSV header option {header!r}: use first, comment or none")
        return parse_csv(
            data,
            mapping=mapping,
            delimiter=opts.get("delimiter") or ",",
            header=header,
            tlp=tlp,
            origin=origin,
            **extra,
        )
    if format_ == "list":
        from quell.intel.csvlist import parse_list

        return parse_list(data, type=opts.get("type") or "auto", tlp=tlp, origin=origin, **extra)
    raise IntelError(f"unknown intel format {format_!r}: use {', '.join(FORMATS)}")
