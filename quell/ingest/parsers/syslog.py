"""Syslog messages (RFC 5424 and RFC 3164), and the time rules the text formats share.

A record is one syslog message without its transport framing. :func:`parse_syslog` reads the
header; :class:`SyslogParser` turns the message into an alert. A message whose MSG is CEF or
LEEF is handed to :class:`~quell.ingest.parsers.cef.CefParser` or
:class:`~quell.ingest.parsers.leef.LeefParser`, which take the host and the time from the
syslog header when the payload has none. Any other message becomes a generic alert:

- title: ``APP-NAME: first line of MSG`` (at most :data:`TITLE_MAX` characters), else the line;
- severity from the syslog severity (table below); ``host`` from HOSTNAME (an IP goes to
  ``host.ip``); ``product`` and ``rule_name`` from APP-NAME, ``rule_uid`` from MSGID (so that
  dedup does not fold different programs together), ``description`` is the whole MSG;
- ``extra["syslog"]``: protocol, facility and severity (number and name), hostname, app_name,
  procid, msgid, the header time and the structured data as ``{sd_id: {name: value}}`` (a name
  repeated inside one element keeps every value, as a list).

Syslog severity to OCSF ``severity_id``: emergency → Fatal (6); alert and critical →
Critical (5); error → High (4); warning → Medium (3); notice → Low (2); informational and
debug → Informational (1); a message without PRI → Unknown (0).

**Time.** RFC 5424 timestamps are RFC 3339 (fractions of up to nine digits are accepted and cut
to microseconds; a time without offset, which the RFC forbids, is read in the ``timezone``
option). RFC 3164 timestamps (``Mmm dd hh:mm:ss``, optionally followed by a zone abbreviation
and a year, as in ``Aug 24 05:34:00 CST 1987``; or an ISO 8601 timestamp) carry no zone and
usually no year: the zone is the ``timezone`` option (default UTC) and the year is the latest
that does not put the time more than two days after receipt (the parser's clock), so a
``Dec 31`` message received on 1 January lands in the old year. A message without any
timestamp (RFC 3164 says a relay then treats the whole message as content) is refused with
ParseError by default; with ``missing_time: receipt`` it is dated by the parser's clock and
marked
``extra["time_source"] = "receipt"``. ``extra["time_source"]`` always says where the time came
from: ``event`` (the payload), ``syslog`` (the header) or ``receipt``.

Options (all parsers of text formats share the first two): ``timezone`` (IANA name, ``UTC``,
an abbreviation or an offset; for times that carry no zone), ``missing_time`` (``error`` or
``receipt``), and for this parser ``min_severity`` (a syslog severity name or 0-7): less severe
plain messages come back as NotAnAlert (CEF and LEEF payloads carry their own severity, and
their syslog PRI is often a fixed default, so they are not filtered).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo

from quell.clock import SYSTEM_CLOCK, Clock
from quell.ingest.model import Alert, Endpoint, Severity
from quell.ingest.parsers.base import NotAnAlert, ParseError, Parser, ParseResult, RecordKind

if TYPE_CHECKING:
    from quell.ingest.parsers.cef import CefParser
    from quell.ingest.parsers.leef import LeefParser

MAX_RECORD_CHARS = 1 << 20
"""Longer text is refused outright; the pipeline's own record limit is far smaller."""

TITLE_MAX = 256

FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "audit", "alert", "clock",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip
SEVERITIES = (
    "emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug",
)  # fmt: skip
_SEVERITY_ALIASES = {
    "emerg": 0, "panic": 0, "crit": 2, "err": 3, "warn": 4, "info": 6,
    **{name: number for number, name in enumerate(SEVERITIES)},
}  # fmt: skip
OCSF_SEVERITY = (
    Severity.FATAL,
    Severity.CRITICAL,
    Severity.CRITICAL,
    Severity.HIGH,
    Severity.MEDIUM,
    Severity.LOW,
    Severity.INFORMATIONAL,
    Severity.INFORMATIONAL,
)
"""OCSF severity for each syslog severity, indexed by the syslog number (0 = emergency)."""

# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------

MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}

# Minutes east of UTC. Abbreviations are ambiguous (CST, IST); these are the readings that
# syslog and CEF producers mean in practice. An IANA name (option ``timezone``, CEF ``dtz``)
# is always better.
ZONE_ABBREVIATIONS = {
    "UTC": 0, "UT": 0, "GMT": 0, "WET": 0,
    "EST": -300, "EDT": -240, "CST": -360, "CDT": -300, "MST": -420, "MDT": -360,
    "PST": -480, "PDT": -420, "AKST": -540, "AKDT": -480, "HST": -600,
    "CET": 60, "CEST": 120, "MET": 60, "MEST": 120, "WEST": 60, "BST": 60, "EET": 120,
    "EEST": 180, "MSK": 180, "IST": 330, "SGT": 480, "HKT": 480, "AWST": 480, "JST": 540,
    "KST": 540, "ACST": 570, "AEST": 600, "AEDT": 660, "NZST": 720, "NZDT": 780,
}  # fmt: skip
_OFFSET = re.compile(r"(?:GMT|UTC|UT)?([+-])([0-9]{1,2})(?::?([0-9]{2}))?")
_IANA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}")


@lru_cache(maxsize=256)
def parse_zone(text: str) -> tzinfo | None:
    """The zone ``text`` names (``Z``, ``UTC``, ``GMT+01:00``, ``-0500``, ``CET``, an IANA name).

    None when it names none.
    """
    name = text.strip()
    if not name or len(name) > 64:
        return None
    upper = name.upper()
    if upper == "Z":
        return UTC
    minutes = ZONE_ABBREVIATIONS.get(upper)
    if minutes is not None:
        return UTC if minutes == 0 else timezone(timedelta(minutes=minutes))
    offset = _OFFSET.fullmatch(upper)
    if offset is not None:
        sign, hours, mins = offset.groups()
        total = int(hours) * 60 + int(mins or 0)
        if int(hours) > 18 or int(mins or 0) > 59:
            return None
        return UTC if total == 0 else timezone(timedelta(minutes=-total if sign == "-" else total))
    if _IANA_NAME.fullmatch(name) is None:
        return None
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return None


YEAR_TOLERANCE = timedelta(days=2)
"""How far ahead of receipt a timestamp without a year may be and still count as this year."""


def infer_year(
    month: int, day: int, clock_time: tuple[int, int, int, int], tz: tzinfo, now: datetime
) -> datetime:
    """The time for a timestamp without a year: the latest year that is not in the future.

    A message cannot come from the future, but a sender's clock may run a little ahead, so a
    time up to :data:`YEAR_TOLERANCE` past ``now`` still counts: ``Dec 31`` received on
    1 January is last year's, ``Jan 1`` received late on 31 December is next year's.
    ``clock_time`` is (hour, minute, second, microsecond). Raises ValueError when the date
    exists in none of next year, this year and the four before (``Feb 30``).
    """
    latest = now + YEAR_TOLERANCE
    for year in range(latest.year, now.year - 5, -1):
        try:
            candidate = datetime(year, month, day, *clock_time, tzinfo=tz)
        except ValueError:
            continue  # Feb 29 outside a leap year
        if candidate <= latest:
            return candidate.astimezone(UTC)
    raise ValueError(f"no recent year has {month:02d}-{day:02d}")


def _fraction(digits: str | None) -> int:
    """Microseconds from the digits after a decimal point (cut past six digits)."""
    if not digits:
        return 0
    return int(digits[:6].ljust(6, "0"))


def datetime_from_parts(
    parts: Mapping[str, str | None], *, default_tz: tzinfo, clock: Clock
) -> datetime:
    """A UTC datetime from named date parts (the groups of the date regexes in this package).

    Names: ``year``/``year2``, ``month``/``monthname``, ``day``, ``hour``/``hour12`` with
    ``ampm``, ``minute``, ``second``, ``frac``, ``zone``. Raises ValueError on a bad part.
    ``clock`` gives the receipt time, asked only when the year is missing.
    """
    month_text = parts.get("month")
    if month_text:
        month = int(month_text)
    else:
        month_name = (parts.get("monthname") or "")[:3].lower()
        if month_name not in MONTHS:
            raise ValueError(f"unknown month {parts.get('monthname')!r}")
        month = MONTHS[month_name]
    day = int((parts.get("day") or "1").strip())
    hour_text = parts.get("hour")
    if hour_text is not None:
        hour = int(hour_text)
    else:
        hour = int(parts.get("hour12") or 0) % 12
        if (parts.get("ampm") or "").upper() == "PM":
            hour += 12
    clock_time = (
        hour,
        int(parts.get("minute") or 0),
        int(parts.get("second") or 0),
        _fraction(parts.get("frac")),
    )
    zone_text = parts.get("zone")
    tz = default_tz
    if zone_text:
        named = parse_zone(zone_text)
        if named is None:
            raise ValueError(f"unknown time zone {zone_text!r}")
        tz = named
    year_text = parts.get("year")
    year2 = parts.get("year2")
    if year_text is None and year2 is not None:
        year_text = str(2000 + int(year2))
    if year_text is None:
        return infer_year(month, day, clock_time, tz, clock.now())
    return datetime(int(year_text), month, day, *clock_time, tzinfo=tz).astimezone(UTC)


# The vendor date forms of CEF (``MMM dd [yyyy] HH:mm:ss[.SSS] [zzz]``), which QRadar also
# suggests for LEEF devTime. One regex for all eight forms: it is tried on every record.
_VENDOR_DATE = re.compile(
    r"(?P<monthname>[A-Za-z]{3})\.? +(?P<day>[0-9]{1,2}),?(?: (?P<year>[0-9]{4}))? "
    r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<frac>[0-9]{1,9}))?"
    r"(?: +(?P<zone>\S.{0,63}))?"
)
_EPOCH = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_ISO_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)


def epoch_time(text: str) -> datetime:
    """Epoch seconds or, above 10^11, milliseconds (as in CEF ``rt``). Raises ValueError."""
    number = float(text)
    seconds = number / 1000 if number > 1e11 else number
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(str(exc)) from None


def iso_time(text: str, default_tz: tzinfo) -> datetime:
    """An ISO 8601 time in UTC; a time without offset is read in ``default_tz``."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_tz)
    return parsed.astimezone(UTC)


def parse_event_time(value: str, *, field: str, default_tz: tzinfo, clock: Clock) -> datetime:
    """A vendor event time: epoch (s or ms), a CEF date form, or ISO 8601; else ParseError."""
    text = value.strip()
    try:
        if _EPOCH.fullmatch(text):
            return epoch_time(text)
        match = _VENDOR_DATE.fullmatch(text)
        if match is not None:
            return datetime_from_parts(match.groupdict(), default_tz=default_tz, clock=clock)
        if _ISO_DATE.fullmatch(text):
            return iso_time(text, default_tz)
    except (ValueError, OverflowError):
        pass
    raise ParseError(f"field {field!r} is not a timestamp: {text!r:.80}", field=field)


@dataclass(frozen=True, slots=True)
class TimePolicy:
    """How a text parser dates a record: the zone for zoneless times, and what if no time."""

    timezone: tzinfo = UTC
    missing_time: str = "error"  # or "receipt"

    OPTIONS: ClassVar[frozenset[str]] = frozenset({"timezone", "missing_time"})

    @classmethod
    def from_options(cls, options: Mapping[str, Any], allowed: frozenset[str]) -> TimePolicy:
        """The policy in a source's parser options; ParseError names a bad or unknown option."""
        for name in options:
            if name not in allowed:
                known = ", ".join(sorted(allowed))
                raise ParseError(f"unknown option {name!r}; options are: {known}", field=name)
        zone_name = options.get("timezone", "UTC")
        zone = parse_zone(zone_name) if isinstance(zone_name, str) else None
        if zone is None:
            raise ParseError(
                f"option 'timezone' is not a time zone: {zone_name!r:.60}", field="timezone"
            )
        missing = options.get("missing_time", "error")
        if missing not in ("error", "receipt"):
            raise ParseError(
                f"option 'missing_time' must be 'error' or 'receipt', not {missing!r:.40}",
                field="missing_time",
            )
        return cls(timezone=zone, missing_time=missing)

    def resolve(
        self,
        event_time: datetime | None,
        header: SyslogHeader | None,
        clock: Clock,
        *,
        field: str,
    ) -> tuple[datetime, str]:
        """The alert time and where it came from: the event, the syslog header, or receipt."""
        if event_time is not None:
            return event_time, "event"
        if header is not None and header.time is not None:
            return header.time, "syslog"
        if self.missing_time == "receipt":
            return clock.now().astimezone(UTC), "receipt"
        missing = "no timestamp" if field == "timestamp" else f"no {field} and no syslog timestamp"
        raise ParseError(
            f"the record has no time: {missing} (the parser option missing_time: receipt "
            "dates such records on receipt)",
            field=field,
        )


def bounded(text: str, limit: int = TITLE_MAX) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    if "\n" in text or "\r" in text:
        text = " ".join(text[: limit * 2].split())
    if len(text) > limit:
        return text[: limit - 1].rstrip() + "…"
    return text


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (a regex first: ipaddress is slow)."""
    if _IPV4.fullmatch(text) is not None:
        return True
    if ":" not in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def endpoint_for(name: str | None) -> Endpoint | None:
    """An Endpoint for a host named by address or by name."""
    if not name:
        return None
    if is_ip(name):
        return Endpoint(ip=name)
    return Endpoint(hostname=name)


def require_text(record: Any, what: str) -> str:
    """``record`` as a bounded line of text, trailing newline removed; else ParseError."""
    if not isinstance(record, str):
        raise ParseError(f"{what} record must be text, not {type(record).__name__}")
    if len(record) > MAX_RECORD_CHARS:
        raise ParseError(f"{what} record is longer than {MAX_RECORD_CHARS} characters")
    return record.rstrip("\r\n")


# --------------------------------------------------------------------------------------------
# The syslog header
# --------------------------------------------------------------------------------------------

_PRI = re.compile(r"<([0-9]{1,3})>")
_RFC5424_HEAD = re.compile(r"(?P<version>[1-9][0-9]{0,2}) (?P<ts>-|[0-9]{4}-[0-9]{2}-[0-9]{2}T\S+)")
_RFC5424_FIELD = re.compile(r" (\S+)")
_RFC5424_FIELDS = ("hostname", "app_name", "procid", "msgid")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})?"
)
_SD_ELEMENT = re.compile(
    r'\[(?P<id>[^\s=\]"]{1,64})(?P<params>(?: +[^\s=\]"]{1,64}="[^"\\]*(?:\\.[^"\\]*)*")*) *\]',
    re.S,
)
_SD_PARAM = re.compile(r'([^\s=\]"]{1,64})="([^"\\]*(?:\\.[^"\\]*)*)"', re.S)
_SD_ESCAPE = re.compile(r'\\(["\\\]])')
_BSD_TIME = re.compile(
    r"(?P<monthname>[A-Za-z]{3}) +(?P<day>[0-9]{1,2}) (?:(?P<year>[0-9]{4}) )?"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<frac>[0-9]{1,9}))?"
    r"(?P<colon>:)?(?= |$)"  # Cisco ASA and IOS end the time with a colon: "… 22:21:02: %ASA-…"
)
_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-9]{2}:?[0-9]{2})?(?= |$)"
)
_YEAR = re.compile(r"[0-9]{4}")
_TAG = re.compile(r"(?P<tag>[^\s\[\]:]{1,48})(?:\[(?P<pid>[^\]\s]{0,128})\])?(?P<colon>:)?(?: |$)")
_PAYLOAD_MARKERS = ("CEF:", "LEEF:")


@dataclass(slots=True)
class SyslogHeader:
    """What a syslog header says about its message; ``message`` is the MSG part."""

    protocol: str  # "rfc5424" or "rfc3164"
    facility: int | None = None
    severity: int | None = None
    time: datetime | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: dict[str, dict[str, str | list[str]]] = field(default_factory=dict)
    message: str = ""

    def as_extra(self) -> dict[str, Any]:
        """The header as JSON-ready data for ``Alert.extra["syslog"]`` (without the message)."""
        extra: dict[str, Any] = {"protocol": self.protocol}
        if self.facility is not None:
            extra["facility"] = self.facility
            extra["facility_name"] = FACILITIES[self.facility]
        if self.severity is not None:
            extra["severity"] = self.severity
            extra["severity_name"] = SEVERITIES[self.severity]
        if self.time is not None:
            extra["time"] = self.time.isoformat()
        for name in ("hostname", "app_name", "procid", "msgid"):
            value = getattr(self, name)
            if value is not None:
                extra[name] = value
        if self.structured_data:
            extra["structured_data"] = self.structured_data
        return extra


def _nil(value: str) -> str | None:
    return None if value == "-" else value


def _parse_structured_data(
    text: str, pos: int
) -> tuple[dict[str, dict[str, str | list[str]]], int]:
    """The SD elements starting at ``text[pos]`` (a ``[``) and the position after them."""
    elements: dict[str, dict[str, str | list[str]]] = {}
    while pos < len(text) and text[pos] == "[":
        match = _SD_ELEMENT.match(text, pos)
        if match is None:
            raise ParseError("malformed RFC 5424 structured data", field="structured_data")
        params: dict[str, str | list[str]] = elements.setdefault(match["id"], {})
        for name, raw in _SD_PARAM.findall(match["params"]):
            value = _SD_ESCAPE.sub(r"\1", raw) if "\\" in raw else raw
            # RFC 5424 lets a name repeat inside one element: keep every value.
            previous = params.get(name)
            if previous is None:
                params[name] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                params[name] = [previous, value]
        pos = match.end()
    return elements, pos


def _parse_rfc5424(
    text: str, pos: int, head: re.Match[str], header: SyslogHeader, default_tz: tzinfo
) -> None:
    timestamp = head["ts"]
    if timestamp != "-":
        if _RFC3339.fullmatch(timestamp) is None:
            raise ParseError(
                f"RFC 5424 timestamp {timestamp!r:.60} is not RFC 3339", field="timestamp"
            )
        try:
            header.time = iso_time(timestamp, default_tz)
        except ValueError:
            raise ParseError(
                f"RFC 5424 timestamp {timestamp!r:.60} is invalid", field="timestamp"
            ) from None
    pos = head.end()
    for name in _RFC5424_FIELDS:
        if text.startswith(_PAYLOAD_MARKERS, pos + 1):
            # "<13>1 2019-01-18T11:07:53.520Z 192.168.1.1 LEEF:…" (QRadar's documented form):
            # a header cut short before a CEF or LEEF payload.
            header.message = text[pos + 1 :]
            return
        token = _RFC5424_FIELD.match(text, pos)
        if token is None:
            if pos >= len(text):
                return  # a header that ends early, without SD or MSG
            raise ParseError(f"RFC 5424 header has no {name}", field=name)
        setattr(header, name, _nil(token.group(1)))
        pos = token.end()
    if pos >= len(text):
        return
    pos += 1  # the space before the structured data
    if pos >= len(text):
        return
    if text[pos] == "-":
        pos += 1
    elif text[pos] == "[":
        header.structured_data, pos = _parse_structured_data(text, pos)
    else:
        raise ParseError(
            "RFC 5424 structured data must be '-' or start with '['", field="structured_data"
        )
    if pos < len(text):
        if text[pos] != " ":
            raise ParseError(
                "RFC 5424 structured data is not followed by a space", field="structured_data"
            )
        message = text[pos + 1 :]
        header.message = message[1:] if message.startswith("\ufeff") else message


def _bsd_timestamp(
    text: str, pos: int, default_tz: tzinfo, clock: Clock
) -> tuple[datetime | None, int]:
    """An RFC 3164 timestamp at ``pos`` (with its optional zone and year); (None, pos) if none."""
    iso = _ISO_TIME.match(text, pos) if text[pos : pos + 1].isdigit() else None
    if iso is not None:
        try:
            return iso_time(iso.group(), default_tz), iso.end()
        except ValueError:
            raise ParseError(f"timestamp {iso.group()!r} is invalid", field="timestamp") from None
    match = _BSD_TIME.match(text, pos)
    if match is None or match["monthname"][:3].lower() not in MONTHS:
        return None, pos
    pos = match.end()
    # Some senders add a zone and a year after the time: "Aug 24 05:34:00 CST 1987 host ...".
    zone = year = None
    token, after = _next_token(text, pos)
    if token and (token.upper() in ZONE_ABBREVIATIONS or _OFFSET.fullmatch(token.upper())):
        zone = token
        pos = after
        token, after = _next_token(text, pos)
    if token and match["year"] is None and _YEAR.fullmatch(token):
        year = token
        pos = after
    try:
        if zone is None and year is None and match["year"] is None:
            # The common case, without the general builder: ``Oct 11 22:14:15``.
            month, day, hour, minute, second, frac = match.group(
                "monthname", "day", "hour", "minute", "second", "frac"
            )
            clock_time = (int(hour), int(minute), int(second), _fraction(frac))
            stamp = infer_year(
                MONTHS[month[:3].lower()], int(day), clock_time, default_tz, clock.now()
            )
            return stamp, pos
        parts: dict[str, str | None] = match.groupdict()
        parts["zone"] = zone
        parts["year"] = parts["year"] or year
        return datetime_from_parts(parts, default_tz=default_tz, clock=clock), pos
    except ValueError as exc:
        raise ParseError(f"timestamp is invalid: {exc}", field="timestamp") from None


def _next_token(text: str, pos: int) -> tuple[str, int]:
    """The space-separated token after ``text[pos]`` (a space) and the position after it."""
    if pos >= len(text) or text[pos] != " ":
        return "", pos
    start = pos + 1
    end = text.find(" ", start)
    if end < 0:
        end = len(text)
    return text[start:end], end


def _parse_rfc3164(
    text: str, pos: int, header: SyslogHeader, default_tz: tzinfo, clock: Clock
) -> None:
    header.time, pos = _bsd_timestamp(text, pos, default_tz, clock)
    if header.time is None:
        # RFC 3164 4.3.3: without a valid timestamp, all of it is content.
        header.message = text[pos:]
        return
    if pos < len(text) and text[pos] == " ":
        pos += 1
    rest = text[pos:]
    if not rest.startswith(_PAYLOAD_MARKERS):
        token, _, after = rest.partition(" ")
        # The hostname is often left out ("<13>Oct 11 22:14:15 su: ..."): a token that reads
        # as a TAG is one.
        tag_like = _TAG.fullmatch(token + " ")
        if token and not (tag_like and (tag_like["colon"] or tag_like["pid"] is not None)):
            header.hostname = token
            rest = after
    if not rest.startswith(_PAYLOAD_MARKERS):
        tag = _TAG.match(rest)
        if tag is not None and (tag["colon"] or tag["pid"] is not None):
            header.app_name = tag["tag"]
            header.procid = tag["pid"] or None
            rest = rest[tag.end() :]
    header.message = rest


def parse_syslog(
    text: str, *, default_tz: tzinfo = UTC, clock: Clock = SYSTEM_CLOCK
) -> SyslogHeader:
    """The header and MSG of one syslog message (RFC 5424, else RFC 3164); else ParseError.

    ``clock`` gives the receipt time, for RFC 3164 timestamps without a year.
    """
    pos = 0
    facility = severity = None
    pri = _PRI.match(text)
    if pri is not None:
        value = int(pri.group(1))
        if value > 191:
            raise ParseError(f"syslog PRI {value} is above 191", field="pri")
        facility, severity = divmod(value, 8)
        pos = pri.end()
        head = _RFC5424_HEAD.match(text, pos)
        if head is not None:
            header = SyslogHeader("rfc5424", facility, severity)
            _parse_rfc5424(text, pos, head, header, default_tz)
            return header
    header = SyslogHeader("rfc3164", facility, severity)
    _parse_rfc3164(text, pos, header, default_tz, clock)
    return header


def split_payload(
    text: str, marker: str, policy: TimePolicy, clock: Clock
) -> tuple[str, SyslogHeader | None, str | None]:
    """A CEF or LEEF line cut at ``marker``: (payload, syslog header, unread prefix).

    A line that starts with the marker has neither. A prefix that reads as a syslog header
    gives the header; any other prefix (a vendor's own) is returned as text.
    """
    if text.startswith(marker):
        return text, None, None
    index = text.find(marker)
    if index < 0:
        raise ParseError(f"not a {marker[:-1]} record: no {marker!r} header", field="header")
    try:
        header = parse_syslog(text, default_tz=policy.timezone, clock=clock)
    except ParseError:
        header = None
    if header is not None:
        payload = header.message.lstrip(" \ufeff")
        if payload.startswith(marker):
            header.message = ""
            return payload, header, None
    return text[index:], None, text[:index].strip()[:256] or None


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def _severity_option(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value
    if isinstance(value, str):
        number = _SEVERITY_ALIASES.get(value.strip().lower())
        if number is not None:
            return number
        if value.strip() in {str(n) for n in range(8)}:
            return int(value)
    raise ParseError(
        f"option 'min_severity' must be a syslog severity (0-7 or a name such as 'warning'), "
        f"not {value!r:.40}",
        field="min_severity",
    )


class SyslogParser(Parser):
    """One syslog message (RFC 5424 or RFC 3164) to an alert; CEF and LEEF payloads delegated."""

    format: ClassVar[str] = "syslog"
    record_kind: ClassVar[RecordKind] = RecordKind.TEXT

    def __init__(self, options: Mapping[str, Any] | None = None, *, clock: Clock | None = None):
        super().__init__(options)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.policy = TimePolicy.from_options(self.options, TimePolicy.OPTIONS | {"min_severity"})
        self.min_severity = _severity_option(self.options.get("min_severity"))
        # Imported here, not at the top: CEF and LEEF read their syslog prefixes with this
        # module, so a top-level import would be circular.
        from quell.ingest.parsers.cef import CefParser
        from quell.ingest.parsers.leef import LeefParser

        payload_options = {k: v for k, v in self.options.items() if k in TimePolicy.OPTIONS}
        self._cef: CefParser = CefParser(payload_options, clock=self.clock)
        self._leef: LeefParser = LeefParser(payload_options, clock=self.clock)

    def parse(self, record: Any) -> ParseResult:
        """The alert in one syslog message; raises only ParseError."""
        text = require_text(record, "syslog")
        header = parse_syslog(text, default_tz=self.policy.timezone, clock=self.clock)
        payload = header.message.lstrip(" ")
        if payload.startswith("CEF:"):
            header.message = ""
            return self._cef.parse_payload(payload, header)
        if payload.startswith("LEEF:"):
            header.message = ""
            return self._leef.parse_payload(payload, header)
        if (
            self.min_severity is not None
            and header.severity is not None
            and header.severity > self.min_severity
        ):
            return NotAnAlert(
                f"syslog severity {SEVERITIES[header.severity]} is below the source's minimum "
                f"{SEVERITIES[self.min_severity]}"
            )
        return self._generic(header)

    def _generic(self, header: SyslogHeader) -> Alert:
        time, source = self.policy.resolve(None, header, self.clock, field="timestamp")
        message = header.message
        line = message[: TITLE_MAX * 4].strip()
        if "\n" in line:
            line = line.split("\n", 1)[0].strip()
        if header.app_name and line:
            title = f"{header.app_name}: {line}"
        else:
            title = line or header.app_name or "syslog message"
        severity = (
            OCSF_SEVERITY[header.severity] if header.severity is not None else Severity.UNKNOWN
        )
        return Alert(
            title=bounded(title),
            time=time,
            severity=severity,
            rule_uid=header.msgid,
            rule_name=header.app_name,
            product=header.app_name,
            description=message or None,
            host=endpoint_for(header.hostname),
            extra={"syslog": header.as_extra(), "time_source": source},
        )
