"""What the edges (CLI, API) do with intel, in one place: import a file or a body, look a value
up, change the allow-list, export. Every change is audited.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quell.errors import TooLarge
from quell.intel.formats import IMPORT_FORMATS, guess_format, parse
from quell.intel.model import (
    HASH_TYPES,
    ImportReport,
    IndicatorType,
    IntelError,
    Parsed,
    ipv4_int,
    normalize_url,
)
from quell.intel.store import Allowed, check_source

if TYPE_CHECKING:
    from quell.runtime import Runtime


def import_bytes(
    runtime: Runtime,
    data: bytes,
    *,
    format_: str | None,
    source: str,
    options: Mapping[str, Any] | None = None,
    actor: str,
    name: str = "input",
) -> ImportReport:
    """Parse ``data`` (its format guessed when None) and keep it under ``source``; one
    transaction, audited. Larger than ``intel_max_bytes`` is refused before parsing."""
    limit = runtime.settings.intel_max_bytes
    if len(data) > limit:
        raise TooLarge(f"{name} is {len(data):,} bytes; intel imports stop at {limit:,}")
    chosen = format_ or guess_format(data, name)
    parsed = parse(chosen, data, options=options, origin=name)
    return _apply(runtime, source, parsed, actor=actor, what=f"{chosen} {name}")


def import_path(
    runtime: Runtime,
    path: Path,
    *,
    format_: str | None,
    source: str | None,
    options: Mapping[str, Any] | None = None,
    actor: str,
) -> ImportReport:
    """Import a file (any format) or a MISP feed directory (``manifest.json`` and events)."""
    if format_ == "misp-feed" or path.is_dir():
        from quell.intel.misp import parse_feed_dir

        if not (path / "manifest.json").is_file():
            raise IntelError(f"{path} is not a MISP feed: it has no manifest.json")
        parsed = parse_feed_dir(path)
        return _apply(runtime, source or path.name, parsed, actor=actor, what=f"misp-feed {path}")
    limit = runtime.settings.intel_max_bytes
    size = path.stat().st_size
    if size > limit:
        raise TooLarge(f"{path} is {size:,} bytes; intel imports stop at {limit:,}")
    return import_bytes(
        runtime,
        path.read_bytes(),
        format_=format_,
        source=source or path.stem,
        options=options,
        actor=actor,
        name=path.name,
    )


def _apply(runtime: Runtime, source: str, parsed: Parsed, *, actor: str, what: str) -> ImportReport:
    report = runtime.intel.apply(check_source(source), parsed)
    counts = report.as_dict(items=0)
    counts.pop("unsupported_items")
    runtime.audit.record(actor, "intel.import", source, {"input": what[:300], **counts})
    return report


def allow(
    runtime: Runtime, type_: str, value: str, reason: str, *, actor: str, match: str | None = None
) -> Allowed:
    """Add an allow-list entry, audited."""
    entry = runtime.intel.allow(type_, value, reason, by=actor, match=match)
    runtime.audit.record(actor, "intel.allow", entry.value, {"type": entry.type,
                         "match": entry.match, "reason": entry.reason})  # fmt: skip
    return entry


def disallow(runtime: Runtime, entry: str, *, actor: str) -> Allowed:
    """Remove an allow-list entry, audited."""
    removed = runtime.intel.disallow(entry)
    runtime.audit.record(actor, "intel.disallow", removed.value, {"type": removed.type})
    return removed


def guess_type(value: str) -> str:
    """The indicator type of a bare value: an IP, a hash by its length, a URL, an e-mail
    address, else a domain."""
    text = value.strip()
    if ipv4_int(text) is not None:
        return IndicatorType.IPV4.value
    if ":" in text and "://" not in text and "@" not in text:
        return IndicatorType.IPV6.value
    lowered = text.lower()
    for kind, length in HASH_TYPES.items():
        if len(lowered) == length and all(c in "0123456789abcdef" for c in lowered):
            return kind.value
    if normalize_url(text) is not None:
        return IndicatorType.URL.value
    if "@" in text:
        return IndicatorType.EMAIL.value
    return IndicatorType.DOMAIN.value


__all__ = [
    "IMPORT_FORMATS",
    "allow",
    "disallow",
    "guess_type",
    "import_bytes",
    "import_path",
]
