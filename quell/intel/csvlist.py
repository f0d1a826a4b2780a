"""CSV indicator files and plain indicator lists (abuse.ch, MISP CSV, Spamhaus DROP and kin).

:func:`parse_csv` reads a CSV whose columns say what they hold:

- **Value columns** are named after an indicator type: MISP attribute types (``md5``,
  ``sha1``, ``sha256``, ``ip-src``, ``ip-dst``, ``ip-dst|port``, ``domain``, ``hostname``,
  ``domain|ip``, ``url``, ``email``, ``email-src``, ``email-dst``, ``filename|sha256`` …, read as
  :mod:`quell.intel.misp` reads them) or Quell's (``ipv4``, ``ipv6``, ``domain``, ``url``,
  ``md5``, ``sha1``, ``sha256``, ``email``); ``auto`` detects each value's type (IP, CIDR, URL,
  e-mail, hash by length, and a domain under a known top-level domain); ``value`` takes its
  type from a ``type`` column of the row, else from ``default_type``. A row with several value
  columns gives several indicators. A column named after a MISP type Quell does not match
  (``filename``, ``size-in-bytes`` …) counts each of its values unsupported.
- **Field columns**: ``first_seen``, ``last_seen``, ``valid_until`` (ISO 8601 or epoch
  seconds), ``confidence`` (0-100), ``tags`` (split on ``,`` and ``;``), ``tlp``, ``comment``
  or ``description``, ``type`` (the type of the row's ``value`` column: a MISP or Quell type
  name, or ThreatFox's ``ip:port``, ``md5_hash`` …), ``to_ids`` (a row whose MISP ``to_ids``
  is false, 0 or no is unsupported, as in a MISP event), and ``skip``. ``ip:port`` is also a
  value type of its own (``198.51.100.4:443``, ``[2001:db8::1]:443``: the address).

Column names are case-sensitive, as MISP's own CSV loader has them: a header with another
name (``SHA1``) is refused with an :class:`IntelError` naming every such column and the mapping
that would read it. A ``mapping`` ``{column name or 1-based index: target}`` names the target of
columns whose names are not targets (``SHA1=sha1,fileName=skip``; :func:`parse_mapping` reads
that text); ``*`` maps every column the mapping does not name (``*=skip``).

The header is the first line that is not a comment (``header="first"``), the last ``#``
comment line before the data, as abuse.ch writes it (``header="comment"``: ``# id,dateadded,
url,…``), or absent (``header="none"``: the mapping then uses indexes; without a mapping,
column 1 is the value, of ``default_type``). Lines starting with ``#`` and blank lines are
skipped; fields may be quoted; spaces after a delimiter are dropped. A row whose value is not
valid for its type, whose field does not parse, or whose number of fields differs from the
header's is counted unsupported with its line number. A line longer than 64 KiB refuses the
whole input.

:func:`parse_list` reads one value per line: ``#`` and ``;`` comment lines and blank lines are
skipped, and a value ends at ``;`` or at `` #`` (Spamhaus DROP: ``1.2.3.0/24 ; SBL123``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from quell.ingest.observables import refang
from quell.ingest.observables._values import canonical_host, clean_email, has_known_tld
from quell.intel.misp import (
    INDICATOR_MISP_TYPES,
    MISP_TYPES,
    Values,
    ip_type,
    misp_values,
    not_matched,
    parse_time,
)
from quell.intel.model import (
    HASH_TYPES,
    MAX_TAGS,
    IndicatorRecord,
    IndicatorType,
    IntelError,
    Parsed,
    Tlp,
    Unsupported,
    keyed,
)

MAX_LINE_BYTES = 64 * 1024
DEFAULT_CONFIDENCE = 50
MAX_DESCRIPTION = 1024

Header = Literal["first", "comment", "none"]
ColumnMapping = Mapping[str, str] | Mapping[int, str] | Mapping[str | int, str]
"""Column (name, 1-based index, or ``*``) -> target."""
IP_PORT = "ip:port"  # an address with its port (ThreatFox): the address

QUELL_TYPES: frozenset[str] = frozenset(str(kind) for kind in IndicatorType)
FIELDS: frozenset[str] = frozenset(
    {"first_seen", "last_seen", "valid_until", "confidence", "tags", "tlp", "comment"}
    | {"description", "type", "to_ids"}
)
VALUE_TARGETS: frozenset[str] = QUELL_TYPES | INDICATOR_MISP_TYPES | {"auto", "value"}
TARGETS: frozenset[str] = VALUE_TARGETS | FIELDS | {"skip"}

# Type names found in the type column of other feeds (ThreatFox), as the types they are.
_ROW_TYPE_ALIASES = {
    "md5_hash": "md5",
    "sha1_hash": "sha1",
    "sha256_hash": "sha256",
    "email_address": "email",
}
_ABSENT = frozenset({"", "-", "none", "null", "n/a", "na"})
_HEX = frozenset("0123456789abcdefABCDEF")
_LIST_COMMENT = re.compile(r";|\s#")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:./%")
_IPV4_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}")
_IPV6_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:\d{1,5}")


# -- types -----------------------------------------------------------------------------------------


def detect(value: str) -> Values:
    """``value``'s indicator type, guessed: URL (``://``), IP or CIDR (also ``ip:port``),
    e-mail, hash by length (32, 40, 64 hex digits), or a domain under a top-level domain of the
    bundled public-suffix list. An empty list when it is none of these."""
    text = refang(value.strip())
    if "://" in text:
        return [(IndicatorType.URL, text)]
    # IPs are told by their shape; indicator_key checks them (octets, prefix) afterwards.
    if _IPV4.fullmatch(text):
        return [(IndicatorType.IPV4, text)]
    ported = _IPV4_PORT.fullmatch(text) or _IPV6_PORT.fullmatch(text)
    if ported:
        return [(ip_type(ported.group(1)), ported.group(1))]
    if text.count(":") >= 2 and _IPV6_CHARS.issuperset(text):
        return [(IndicatorType.IPV6, text)]
    if "@" in text:
        return [(IndicatorType.EMAIL, text)] if clean_email(text) else []
    if _HEX.issuperset(text):
        for kind, length in HASH_TYPES.items():
            if len(text) == length:
                return [(kind, text)]
        return []
    host = canonical_host(text.removeprefix("*."))
    if host is not None and "." in host and has_known_tld(host):
        return [(IndicatorType.DOMAIN, text)]
    return []


def typed_values(type_name: str, value: str) -> Values | None:
    """The indicators ``value`` gives as ``type_name`` (a Quell or MISP type, ``auto``, or
    ``ip:port``):
    None when the type is a MISP type Quell does not match. :class:`IntelError` for a name
    that is no type."""
    if type_name == "auto":
        return detect(value)
    if type_name == IP_PORT:
        text = value.strip()
        ported = _IPV4_PORT.fullmatch(text) or _IPV6_PORT.fullmatch(text)
        address = ported.group(1) if ported else text
        return [(ip_type(address), address)]
    if type_name in QUELL_TYPES:
        return [(IndicatorType(type_name), value.strip())]
    return misp_values(type_name, value)


def check_type(type_name: str) -> str:
    """``type_name`` when it names a type (Quell, MISP or ``auto``), else :class:`IntelError`."""
    if type_name in ("auto", IP_PORT) or type_name in QUELL_TYPES or type_name in MISP_TYPES:
        return type_name
    raise IntelError(
        f"unknown indicator type {type_name!r}: use auto, a Quell type "
        f"({', '.join(sorted(QUELL_TYPES))}) or a MISP attribute type (ip-dst, hostname, …)",
        type=type_name,
    )


def _is_target(name: str) -> bool:
    return name in TARGETS or name in MISP_TYPES


def _is_value(target: str) -> bool:
    """A value column: an indicator type, a MISP type, auto or value (fields win: ``comment``
    is also a MISP type, but a comment column is a field)."""
    return target not in FIELDS and target != "skip" and _is_target(target)


def _check_target(name: str, column: str) -> str:
    if _is_target(name):
        return name
    raise IntelError(
        f"column {column}: unknown target {name!r}: use skip, an indicator type "
        f"({', '.join(sorted(QUELL_TYPES))}, a MISP type such as ip-dst or filename|sha256, "
        f"auto, value) or a field ({', '.join(sorted(FIELDS))})",
        column=column,
        target=name,
    )


# -- mappings --------------------------------------------------------------------------------------


def parse_mapping(text: str) -> dict[str, str]:
    """``"col=target,3=skip,*=skip"`` as ``{"col": "target", "3": "skip", "*": "skip"}``:
    columns by name or 1-based index, each target checked. :class:`IntelError` on a malformed
    item, an unknown target, index 0 or a column given twice."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        column, sep, target = item.rpartition("=")
        column, target = column.strip(), target.strip()
        if not sep or not column or not target:
            raise IntelError(
                f"mapping item {item.strip()!r} is not column=target "
                "(e.g. SHA1=sha1,fileName=skip or 2=ip-dst)",
                mapping=text[:200],
            )
        if column.isdigit() and int(column) < 1:
            raise IntelError(f"mapping item {item.strip()!r}: column indexes start at 1")
        if column in mapping:
            raise IntelError(f"the mapping names column {column!r} twice")
        mapping[column] = _check_target(target, repr(column))
    if not mapping:
        raise IntelError("the mapping is empty: write column=target,…")
    return mapping


# -- lines -----------------------------------------------------------------------------------------


def _lines(data: bytes) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, checked for length and UTF-8."""
    for number, raw in enumerate(data.split(b"\n"), 1):
        if len(raw) > MAX_LINE_BYTES:
            raise IntelError(
                f"line {number} is longer than 64 KiB ({len(raw)} bytes): not an indicator file",
                line=number,
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IntelError(f"line {number} is not UTF-8 text", line=number) from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        yield number, text.rstrip("\r")


def _where(origin: str | None, number: int) -> str:
    return f"{origin}: line {number}" if origin else f"line {number}"


def _absent(text: str) -> bool:
    return len(text) <= 4 and text.strip().lower() in _ABSENT


@dataclass(slots=True)
class _Defaults:
    tlp: Tlp
    confidence: int | None
    tags: tuple[str, ...]
    origin: str | None


def _add(
    parsed: Parsed,
    values: Values,
    where: str,
    defaults: _Defaults,
    fields: _Fields | None = None,
) -> None:
    """Records for ``values``, each checked; an invalid one is unsupported where it was."""
    fields = fields or _Fields()
    tags = list(dict.fromkeys([*defaults.tags, *fields.tags]))[:MAX_TAGS]
    for kind, value in values:
        record = IndicatorRecord(
            type=kind,
            value=value,
            confidence=fields.confidence if fields.confidence is not None else defaults.confidence,
            tlp=fields.tlp if fields.tlp is not None else defaults.tlp,
            first_seen=fields.first_seen,
            last_seen=fields.last_seen,
            valid_until=fields.valid_until,
            tags=tuple(tags),
            description=fields.description,
            origin=where,
        )
        try:
            keyed(record)
        except IntelError as exc:
            parsed.unsupported.append(Unsupported(where, exc.message, value[:200]))
            continue
        parsed.records.append(record)


# -- plain lists -----------------------------------------------------------------------------------


def parse_list(
    data: bytes,
    *,
    type: str = "auto",
    tlp: Tlp = Tlp.CLEAR,
    confidence: int | None = DEFAULT_CONFIDENCE,
    tags: Sequence[str] = (),
    origin: str | None = None,
) -> Parsed:
    """A plain list, one value per line, of ``type`` (a Quell or MISP type, or ``auto``)."""
    type_name = check_type(type)
    defaults = _Defaults(tlp, _check_confidence(confidence), _clean_tags(tags), origin)
    parsed = Parsed()
    for number, line in _lines(data):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        if ";" in text or "#" in text:
            text = _LIST_COMMENT.split(text, maxsplit=1)[0].strip()
        where = _where(origin, number)
        if not text:
            continue
        if len(text.split()) > 1:
            parsed.unsupported.append(
                Unsupported(where, "more than one value on the line", text[:200])
            )
            continue
        values = typed_values(type_name, text)
        if values is None:
            parsed.unsupported.append(Unsupported(where, not_matched(type_name), text[:200]))
        elif not values:
            parsed.unsupported.append(Unsupported(where, _UNDETECTED, text[:200]))
        else:
            _add(parsed, values, where, defaults)
    return parsed


_UNDETECTED = "not an IP address, network, URL, e-mail address, hash or domain name"


# -- CSV -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Fields:
    """The fields of one row that apply to each of its indicators."""

    first_seen: datetime | None = None
    last_seen: datetime | None = None
    valid_until: datetime | None = None
    confidence: int | None = None
    tlp: Tlp | None = None
    tags: tuple[str, ...] = ()
    description: str | None = None
    row_type: str | None = None


@dataclass(slots=True, frozen=True)
class _Column:
    index: int  # 0-based
    name: str  # as the header has it, or "column N"
    target: str


def _check_confidence(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 100:
        raise IntelError(f"a confidence is 0 to 100, not {value}")
    return value


def _clean_tags(tags: Sequence[str]) -> tuple[str, ...]:
    return tuple(tag.strip()[:256] for tag in tags if tag.strip())


def parse_csv(
    data: bytes,
    *,
    mapping: ColumnMapping | None = None,
    delimiter: str = ",",
    header: Header = "first",
    default_type: str | None = None,
    tlp: Tlp = Tlp.CLEAR,
    confidence: int | None = DEFAULT_CONFIDENCE,
    tags: Sequence[str] = (),
    origin: str | None = None,
) -> Parsed:
    """The indicators of a CSV file (see the module for columns, headers and mappings).

    :class:`IntelError`, and nothing imported, when the header has a column that is not a
    target and no mapping names it, the mapping names a column that does not exist or an
    unknown target, or a line is over 64 KiB."""
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise IntelError(f"a CSV delimiter is one character other than a quote, not {delimiter!r}")
    if header not in ("first", "comment", "none"):
        raise IntelError(f"header is first, comment or none, not {header!r}")
    if default_type is not None:
        check_type(default_type)
    defaults = _Defaults(tlp, _check_confidence(confidence), _clean_tags(tags), origin)
    lines = _lines(data)
    names, first = _header(lines, header, delimiter)
    if names is None and first is None:
        return Parsed()  # nothing but comments
    columns = _columns(names, mapping, default_type)
    if first is None:
        return Parsed()  # a header and no rows
    at = [first[0]]  # the line the reader is on, for messages

    def rows() -> Iterator[str]:
        yield first[1]
        for number, text in lines:
            at[0] = number
            if text.strip() and not text.lstrip().startswith("#"):
                yield text

    parsed = Parsed()
    width = len(names) if names is not None else None
    reader = csv.reader(rows(), delimiter=delimiter, skipinitialspace=True, strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise IntelError(f"{_where(origin, at[0])}: not CSV: {exc}", line=at[0]) from None
        _row(parsed, [cell.strip() for cell in row], columns, width, at[0], defaults, default_type)
    return parsed


def _header(
    lines: Iterator[tuple[int, str]], header: Header, delimiter: str
) -> tuple[list[str] | None, tuple[int, str] | None]:
    """The column names, and the first data line."""
    last_comment: str | None = None
    names: list[str] | None = None
    for number, text in lines:
        stripped = text.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            last_comment = stripped.lstrip("#").strip() or last_comment
            continue
        if header == "first" and names is None:
            names = _split(stripped, delimiter, number)
            continue
        if header == "comment" and names is None:
            if not last_comment:
                raise IntelError(
                    f"line {number}: no comment line before the data to take the header from "
                    '(use header="first" when the header is a plain line)',
                    line=number,
                )
            names = _split(last_comment, delimiter, number)
        return names, (number, text)
    return names, None


def _split(text: str, delimiter: str, number: int) -> list[str]:
    try:
        row = next(csv.reader([text], delimiter=delimiter, skipinitialspace=True, strict=True))
    except (csv.Error, StopIteration) as exc:
        raise IntelError(f"line {number}: the header is not CSV: {exc}", line=number) from None
    return [name.strip() for name in row]


def _columns(
    names: list[str] | None, mapping: ColumnMapping | None, default_type: str | None
) -> list[_Column]:
    given = {str(key).strip(): target for key, target in (mapping or {}).items()}
    rest = given.pop("*", None)
    if rest is not None:
        _check_target(rest, "*")
    targets: dict[int, _Column] = {}
    for key, target in given.items():
        if names is not None and key in names:
            index = names.index(key)
        elif key.isdigit() and int(key) >= 1:
            index = int(key) - 1
            if names is not None and index >= len(names):
                raise IntelError(
                    f"the mapping names column {key}, but the header has {len(names)} columns",
                    column=key,
                )
        else:
            shown = ", ".join(repr(n) for n in names) if names is not None else "none: no header"
            raise IntelError(
                f"the mapping names column {key!r}, which is not in the header "
                f"(columns: {shown}); name a column as the header spells it, or by its "
                "1-based index",
                column=key,
            )
        label = names[index] if names is not None and names[index] else f"column {index + 1}"
        targets[index] = _Column(index, label, _check_target(target, repr(key)))
    if names is not None:
        unknown: list[str] = []
        for index, name in enumerate(names):
            if index in targets:
                continue
            target = rest or (name if name else "skip")
            if not _is_target(target):
                unknown.append(name)
                continue
            targets[index] = _Column(index, name or f"column {index + 1}", target)
        if unknown:
            raise IntelError(_unknown_message(names, unknown, given), columns=unknown)
    elif not targets:
        if rest is not None:
            raise IntelError("a CSV without a header needs its columns mapped by index")
        if default_type is None:
            raise IntelError(
                "a CSV without a header needs a mapping (1=ip-dst,2=first_seen …) "
                "or a default_type for column 1"
            )
        targets[0] = _Column(0, "column 1", "value")
    columns = [targets[index] for index in sorted(targets)]
    kinds = [c.target for c in columns]
    if kinds.count("type") > 1:
        raise IntelError("only one column can give the type of the row's value")
    if "value" in kinds and "type" not in kinds and default_type is None:
        raise IntelError(
            "a value column needs its type: map a type column, or give default_type "
            "(auto detects it)"
        )
    if not any(_is_value(c.target) for c in columns):
        raise IntelError(
            "no column holds indicator values: map one to a type (sha256, ip-dst, url, auto …)"
        )
    return columns


def _suggest(name: str) -> str | None:
    for candidate in (name.lower(), name.lower().replace("_", "-"), name.replace("-", "_")):
        if candidate in TARGETS and candidate != "skip":
            return candidate
    return None


def _unknown_message(names: list[str], unknown: list[str], given: Mapping[str, str]) -> str:
    described = []
    for name in unknown:
        hint = _suggest(name)
        described.append(
            f"{name!r} (names are case-sensitive: did you mean {hint!r}?)" if hint else repr(name)
        )
    example = {**given}
    for name in unknown:
        example[name] = _suggest(name) or "skip"
    mapping = ",".join(f"{column}={target}" for column, target in example.items())
    return (
        f"the CSV header has columns that are not indicator fields: {', '.join(described)}. "
        "A column is named after an indicator type (a MISP attribute type such as md5, sha1, "
        "sha256, ip-src, ip-dst, domain, hostname, url, email-src, or ipv4, ipv6, email) or a "
        f"field ({', '.join(sorted(FIELDS))}); to read this file, give a mapping of column to "
        f"target, e.g. {mapping}"
    )


def _row(
    parsed: Parsed,
    row: list[str],
    columns: list[_Column],
    width: int | None,
    number: int,
    defaults: _Defaults,
    default_type: str | None,
) -> None:
    where = _where(defaults.origin, number)
    text = ",".join(row)[:200]
    if width is not None and len(row) != width:
        parsed.unsupported.append(
            Unsupported(where, f"{len(row)} fields where the header has {width}", text)
        )
        return
    if width is None and len(row) <= columns[-1].index:
        parsed.unsupported.append(
            Unsupported(
                where, f"{len(row)} fields; the mapping reads {columns[-1].index + 1}", text
            )
        )
        return
    try:
        fields = _fields(row, columns)
    except IntelError as exc:
        parsed.unsupported.append(Unsupported(where, exc.message, text))
        return
    value_columns = [c for c in columns if _is_value(c.target)]
    found = False
    for column in value_columns:
        cell = row[column.index]
        if _absent(cell):
            continue
        found = True
        at = f"{where}, {column.name}" if len(value_columns) > 1 else where
        type_name = column.target
        if type_name == "value":
            type_name = fields.row_type or default_type or "auto"
        values = typed_values(type_name, cell)
        if values is None:
            parsed.unsupported.append(Unsupported(at, not_matched(type_name), cell[:200]))
        elif not values:
            parsed.unsupported.append(Unsupported(at, _UNDETECTED, cell[:200]))
        else:
            _add(parsed, values, at, defaults, fields)
    if not found:
        parsed.unsupported.append(Unsupported(where, "no indicator value on the line", text))


def _fields(row: list[str], columns: list[_Column]) -> _Fields:
    fields = _Fields()
    notes: list[str] = []
    tags: list[str] = []
    for column in columns:
        cell = row[column.index]
        target = column.target
        if target not in FIELDS or _absent(cell):
            continue
        if target in ("first_seen", "last_seen", "valid_until"):
            try:
                setattr(fields, target, parse_time(cell))
            except IntelError as exc:
                raise IntelError(f"{column.name}: {exc.message}") from None
        elif target == "confidence":
            if not cell.isdigit() or int(cell) > 100:
                raise IntelError(f"{column.name}: a confidence is 0 to 100, not {cell[:32]!r}")
            fields.confidence = int(cell)
        elif target == "tlp":
            try:
                fields.tlp = Tlp.parse(cell)
            except IntelError as exc:
                raise IntelError(f"{column.name}: {exc.message}") from None
        elif target == "tags":
            tags.extend(tag.strip()[:256] for tag in re.split(r"[,;]", cell) if tag.strip())
        elif target == "to_ids":
            if cell.strip().lower() in ("0", "false", "no"):
                raise IntelError("to_ids is false: MISP marks it context, not a detection")
        elif target == "type":
            name = _ROW_TYPE_ALIASES.get(cell, cell)
            try:
                fields.row_type = check_type(name)
            except IntelError:
                raise IntelError(f"{column.name}: unknown indicator type {cell[:64]!r}") from None
        else:  # comment, description
            notes.append(cell)
    fields.tags = tuple(tags)
    if notes:
        fields.description = "; ".join(notes)[:MAX_DESCRIPTION]
    return fields
