"""IBM QRadar Log Event Extended Format (LEEF) 1.0 and 2.0 records.

``LEEF:1.0|Vendor|Product|Version|EventID|`` then ``key=value`` attributes separated by tabs;
LEEF 2.0 adds a field after EventID naming the attribute delimiter, as a character (``^``) or
in hex (``x5E``, ``0x5E``; 1-4 hex digits); an empty or missing field means a tab. A syslog
header may come first (``<13>Jan 18 11:07:53 192.168.1.1 LEEF:…``); it supplies the host and,
when there is no ``devTime``, the time. LEEF defines no escaping: a value runs to the next
delimiter and may contain ``=``. Attributes that were meant to be tab-separated but arrive
space-separated (a copy through a tool that turns tabs into spaces) are split like a CEF
extension, and ``extra["delimiter"]`` says so (``" "``).

**Mapping.** ``src``/``srcPort`` → ``src``; ``dst``/``dstPort`` → ``dst``; ``usrName`` (else
``accountName``) → user; ``cat`` → category; ``url`` → url; ``sev`` → severity; vendor,
product; EventID → ``rule_uid`` and ``rule_name``; the syslog HOSTNAME → ``host``. Every
other attribute (``proto``, ``identSrc``, ``identHostName``, NAT addresses, byte counts, vendor
keys) is kept in ``extra["attributes"]``. ``extra`` also holds ``leef_version``,
``device_version``, ``leef_severity`` (as written), ``syslog`` and ``time_source``.

**Title**: the EventID, prefixed with the product when the EventID is only a number
(``StealthWatch 41``), followed by the category in parentheses when there is one:
``Login Event (Failed)``. EventIDs are QRadar's QID keys: terse, stable, and, with ``cat``,
what tells one event type from another.

**Severity** ``sev`` 1-10 (1 lowest) to OCSF, in the same bands as CEF: 1-3 → Low (2), 4-6 →
Medium (3), 7-8 → High (4), 9-10 → Critical (5); missing or out of range → Unknown (0).

**Time**: ``devTime``, read with ``devTimeFormat`` (a Java SimpleDateFormat pattern such as
``MMM dd yyyy HH:mm:ss.SSS z``) when given, else as epoch seconds (10 digits) or milliseconds
(13 digits), a CEF date form, or ISO 8601. Times without zone are read in the ``timezone``
option; without year, the latest year not after receipt. Without ``devTime``, the syslog header's
time; without that, ParseError unless ``missing_time: receipt``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from quell.clock import SYSTEM_CLOCK, Clock
from quell.ingest.model import Alert, Severity
from quell.ingest.parsers.base import ParseError, Parser, ParseResult, RecordKind
from quell.ingest.parsers.cef import MAX_EXTENSION_PAIRS, split_extension, take_endpoint
from quell.ingest.parsers.syslog import (
    SyslogHeader,
    TimePolicy,
    bounded,
    datetime_from_parts,
    endpoint_for,
    parse_event_time,
    require_text,
    split_payload,
)

_HEADER = re.compile(
    r"LEEF: ?([0-9]{1,3}(?:\.[0-9]{1,3})?)\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)(?:\||$)"
)
_HEX_DELIMITER = re.compile(r"(?:0[xX]|[xX])([0-9A-Fa-f]{1,4})")
_SEVERITY = re.compile(r"[0-9]{1,2}")
_NUMBER = re.compile(r"[0-9]+")

# Java SimpleDateFormat: a quoted literal, a run of one letter, whitespace, or one character.
_JAVA_TOKEN = re.compile(r"'(?:[^']|'')*'|([A-Za-z])\1*|\s+|.", re.S)
_JAVA_FIELDS: dict[str, tuple[str, str | None]] = {
    # letter: (regex, group name); the group name is checked for repeats
    "d": (r"(?P<day> ?[0-9]{1,2})", "day"),
    "H": (r"(?P<hour>[0-9]{1,2})", "hour"),
    "k": (r"(?P<hour>[0-9]{1,2})", "hour"),
    "h": (r"(?P<hour12>[0-9]{1,2})", "hour12"),
    "K": (r"(?P<hour12>[0-9]{1,2})", "hour12"),
    "m": (r"(?P<minute>[0-9]{1,2})", "minute"),
    "s": (r"(?P<second>[0-9]{1,2})", "second"),
    "S": (r"(?P<frac>[0-9]{1,9})", "frac"),
    "a": (r"(?P<ampm>[AaPp][Mm])", "ampm"),
    "E": (r"(?:[A-Za-z]{2,9}\.?)", None),
    "z": (r"(?P<zone>[A-Za-z][A-Za-z0-9_/+\-:]{0,40})", "zone"),
    "Z": (r"(?P<zone>[+-][0-9]{4}|Z)", "zone"),
    "X": (r"(?P<zone>Z|[+-][0-9]{2}(?::?[0-9]{2})?)", "zone"),
}


def _java_field(letter: str, count: int) -> tuple[str, str | None]:
    if letter == "y":
        return (r"(?P<year2>[0-9]{2})", "year") if count == 2 else (r"(?P<year>[0-9]{4})", "year")
    if letter in "ML":
        if count >= 3:
            return r"(?P<monthname>[A-Za-z]{3,9}\.?)", "month"
        return r"(?P<month>[0-9]{1,2})", "month"
    found = _JAVA_FIELDS.get(letter)
    if found is None:
        raise ParseError(
            f"devTimeFormat letter {letter!r} is not supported (use y M d H h m s S a E z Z X)",
            field="devTimeFormat",
        )
    return found


@lru_cache(maxsize=64)
def java_date_regex(pattern: str) -> re.Pattern[str]:
    """A regex for times written in a Java SimpleDateFormat ``pattern``; else ParseError.

    Its named groups are those :func:`~quell.ingest.parsers.syslog.datetime_from_parts` reads.
    """
    if not pattern.strip() or len(pattern) > 64:
        raise ParseError("devTimeFormat must be 1 to 64 characters", field="devTimeFormat")
    pieces: list[str] = []
    seen: set[str] = set()
    for token in _JAVA_TOKEN.finditer(pattern):
        text, letter = token.group(), token.group(1)
        if letter:
            regex, name = _java_field(letter, len(text))
            if name is not None:
                if name in seen:
                    raise ParseError(
                        f"devTimeFormat names the {name} twice: {pattern!r}", field="devTimeFormat"
                    )
                seen.add(name)
            pieces.append(regex)
        elif text.startswith("'"):
            pieces.append(re.escape("'" if text == "''" else text[1:-1].replace("''", "'")))
        elif text.isspace():
            pieces.append(r"\s+")
        else:
            pieces.append(re.escape(text))
    return re.compile("".join(pieces))


def leef_severity(raw: str) -> Severity:
    """The OCSF severity for a LEEF ``sev`` (1-10; see the module docstring)."""
    text = raw.strip()
    if not _SEVERITY.fullmatch(text):
        return Severity.UNKNOWN
    number = int(text)
    if 1 <= number <= 3:
        return Severity.LOW
    if 4 <= number <= 6:
        return Severity.MEDIUM
    if 7 <= number <= 8:
        return Severity.HIGH
    if 9 <= number <= 10:
        return Severity.CRITICAL
    return Severity.UNKNOWN


def _delimiter(field: str) -> str | None:
    """The delimiter a LEEF 2.0 delimiter field names; None if the field is not one."""
    if field == "":
        return "\t"
    if len(field) == 1:
        delimiter = field
    else:
        hex_form = _HEX_DELIMITER.fullmatch(field)
        if hex_form is None:
            return None
        delimiter = chr(int(hex_form.group(1), 16))
    if delimiter == "=":
        raise ParseError("LEEF attribute delimiter cannot be '='", field="delimiter")
    return delimiter


def _title(event_id: str, product: str, vendor: str, category: str | None) -> str:
    base = event_id.strip()
    if not base or _NUMBER.fullmatch(base):
        base = f"{product.strip() or vendor.strip()} {base}".strip() or "LEEF event"
    return f"{base} ({category})" if category else base


class LeefParser(Parser):
    """One LEEF 1.0 or 2.0 record (bare, or behind a syslog header) to an alert."""

    format: ClassVar[str] = "leef"
    record_kind: ClassVar[RecordKind] = RecordKind.TEXT

    def __init__(self, options: Mapping[str, Any] | None = None, *, clock: Clock | None = None):
        super().__init__(options)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.policy = TimePolicy.from_options(self.options, TimePolicy.OPTIONS)

    def parse(self, record: Any) -> ParseResult:
        """The alert in one LEEF line; raises only ParseError."""
        text = require_text(record, "LEEF")
        payload, header, prefix = split_payload(text, "LEEF:", self.policy, self.clock)
        alert = self.parse_payload(payload, header)
        if prefix is not None:
            alert.extra["prefix"] = prefix
        return alert

    def parse_payload(self, payload: str, header: SyslogHeader | None) -> Alert:
        """The alert in a LEEF payload (starting at ``LEEF:``), with its syslog header if any."""
        match = _HEADER.match(payload)
        if match is None:
            raise ParseError(
                "LEEF header is malformed: it needs 'LEEF:Version|Vendor|Product|Version|EventID|'",
                field="header",
            )
        version, vendor, product, device_version, event_id = match.groups()
        attributes, delimiter, unparsed = self._attributes(version, payload[match.end() :])

        time, time_source = self.policy.resolve(
            self._event_time(attributes), header, self.clock, field="devTime"
        )
        severity_text = attributes.pop("sev", None)
        category = attributes.pop("cat", "").strip() or None
        user = attributes.pop("usrName", "").strip() or None
        if user is None:
            user = attributes.pop("accountName", "").strip() or None
        extra: dict[str, Any] = {
            "leef_version": version,
            "device_version": device_version or None,
            "time_source": time_source,
        }
        alert = Alert(
            title=bounded(_title(event_id, product, vendor, category)),
            time=time,
            severity=leef_severity(severity_text or ""),
            rule_uid=event_id or None,
            rule_name=event_id or None,
            category=category,
            product=product or None,
            vendor=vendor or None,
            src=take_endpoint(attributes, "src", "srcPort", "srcHostName"),
            dst=take_endpoint(attributes, "dst", "dstPort", "dstHostName"),
            host=endpoint_for(header.hostname) if header is not None else None,
            user=user,
            url=attributes.pop("url", "").strip() or None,
            extra=extra,
        )
        if severity_text is not None:
            extra["leef_severity"] = severity_text
        if delimiter != "\t":
            extra["delimiter"] = delimiter
        if attributes:
            extra["attributes"] = attributes
        if unparsed:
            extra["unparsed"] = unparsed[:1024]
        if header is not None:
            extra["syslog"] = header.as_extra()
        return alert

    def _attributes(self, version: str, rest: str) -> tuple[dict[str, str], str, str]:
        """The attributes after the header, the delimiter used, and text that held no pair."""
        delimiter = "\t"
        if not version.startswith(("0", "1")):
            if rest.startswith("||"):  # the delimiter is the pipe itself
                delimiter, rest = "|", rest[2:]
            else:
                bar = rest.find("|")
                named = _delimiter(rest[:bar]) if bar >= 0 else None
                if named is not None:
                    delimiter, rest = named, rest[bar + 1 :]
        if delimiter == "\t" and "\t" not in rest and rest.count("=") > 1:
            attributes, leading = split_extension(rest, unescape=False)
            return attributes, " ", leading
        attributes = {}
        unparsed: list[str] = []
        parts = rest.split(delimiter)
        if len(parts) > MAX_EXTENSION_PAIRS:
            raise ParseError(
                f"the record has more than {MAX_EXTENSION_PAIRS} attributes", field="attributes"
            )
        for part in parts:
            key, equals, value = part.partition("=")
            key = key.strip()
            if equals and key:
                attributes[key] = value.strip()
            elif part.strip():
                unparsed.append(part.strip())
        return attributes, delimiter, " ".join(unparsed)

    def _event_time(self, attributes: dict[str, str]) -> datetime | None:
        """The event time in ``devTime`` (with ``devTimeFormat``), or None."""
        value = attributes.pop("devTime", "").strip()
        pattern = attributes.pop("devTimeFormat", "").strip()
        if not value:
            return None
        if pattern:
            match = java_date_regex(pattern).fullmatch(value)
            if match is not None:
                try:
                    return datetime_from_parts(
                        match.groupdict(), default_tz=self.policy.timezone, clock=self.clock
                    )
                except (ValueError, OverflowError):
                    raise ParseError(
                        f"field 'devTime' is not a valid time: {value!r:.60}", field="devTime"
                    ) from None
            # QRadar reads epoch values whatever the format says; so do we, and the other forms.
        return parse_event_time(
            value, field="devTime", default_tz=self.policy.timezone, clock=self.clock
        )
