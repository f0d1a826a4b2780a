"""ArcSight Common Event Format (CEF) records.

``CEF:Version|Device Vendor|Device Product|Device Version|Signature ID|Name|Severity|Extension``,
optionally after a syslog header (``Sep 19 08:26:10 host CEF:0|…``), which then supplies the
host and the time when the extension has none (see :func:`~quell.ingest.parsers.syslog.
split_payload`; a prefix that is not a syslog header is kept in ``extra["prefix"]``).

**Escaping** (the CEF standard): in the header ``\\|`` is a pipe and ``\\\\`` a backslash; in
extension values ``\\=`` is ``=``, ``\\\\`` is ``\\``, ``\\n`` and ``\\r`` are line breaks
(``\\|`` is read as a pipe too, as lenient producers write it). Other backslashes are kept.
Extension values may contain spaces: a value runs up to the next `` key=`` (a space, then a key
of letters, digits, ``_ . - [ ]``, then an unescaped ``=``); spaces before the next key and
trailing whitespace are dropped. Full key names (``sourceAddress``) are read as their short
forms (``src``).

**Mapping.** Name → ``title`` and ``rule_name``; Signature ID → ``rule_uid``; vendor, product;
``cat`` → category; ``msg`` → description; ``externalId`` → uid; ``src``/``spt``/``shost`` →
``src``; ``dst``/``dpt``/``dhost`` → ``dst``; ``dvc``/``dvchost`` → ``host`` (else the syslog
HOSTNAME); ``suser`` → user (else ``duser``); ``fname``/``filePath``/``fileHash`` (by length:
MD5, SHA-1, SHA-256)/``fsize`` → file; ``request`` → url. A value that does not fit its field
(a port of ``http``) stays in the extension. ``extra``: ``cef_version``, ``device_version``,
``cef_severity`` (as written), ``extension`` (every key not mapped above, by its short name:
``act``, ``proto``, ``requestMethod``, ``deviceExternalId``, ``start``, ``end``, …), ``custom``
(``cs1``…, ``cn1``…, ``cfp1``…, ``c6a1``…, ``flexString1``…, ``deviceCustomDate1``… by their
label: ``{"Rule": "…"}``; an unlabelled one by its key), ``syslog`` (the header, when there was
one), ``time_source``.

**Severity** (the CEF standard: "0-3=Low, 4-6=Medium, 7-8=High, and 9-10=Very-High") to OCSF:
0-3 and ``Low`` → Low (2); 4-6 and ``Medium`` → Medium (3); 7-8 and ``High`` → High (4); 9-10,
``Very-High`` (also ``Very High``, ``Critical``) → Critical (5); ``Unknown``, anything else,
or a number out of range → Unknown (0).

**Time**: ``rt``, else ``start``, else ``end``, each as epoch milliseconds (seconds below
10^11), one of the CEF date forms (``MMM dd [yyyy] HH:mm:ss[.SSS] [zzz]``) or ISO 8601; a form
without zone is read in ``dtz`` when the record has it, else in the ``timezone`` option; a form
without year takes the latest year not after receipt. A bad time is a ParseError naming the key.
Without any, the syslog header's time; without that, ParseError unless ``missing_time: receipt``
(see :mod:`quell.ingest.parsers.syslog`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from quell.clock import SYSTEM_CLOCK, Clock
from quell.ingest.model import Alert, Endpoint, FileInfo, Severity
from quell.ingest.parsers.base import ParseError, Parser, ParseResult, RecordKind
from quell.ingest.parsers.syslog import (
    SyslogHeader,
    TimePolicy,
    bounded,
    endpoint_for,
    is_ip,
    parse_event_time,
    parse_zone,
    require_text,
    split_payload,
)

MAX_EXTENSION_PAIRS = 1024

# Unrolled "(?:[^|\\]|\\.)*": one C loop per run of plain characters.
_FIELD = r"([^|\\]*(?:\\.[^|\\]*)*)\|"
_HEADER = re.compile(r"CEF: ?([0-9]{1,3}(?:\.[0-9]{1,3})?)\|" + _FIELD * 6, re.S)
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_HEADER_ESCAPE = re.compile(r"\\([|\\])")
_EXTENSION_KEY = re.compile(r" ([\w.\-\[\]]+)=", re.ASCII)
_EXTENSION_ESCAPE = re.compile(r"\\([\\=nr|])")
_ESCAPED = {"n": "\n", "r": "\r"}
_HEX = re.compile(r"[0-9A-Fa-f]+")
_PORT = re.compile(r"[0-9]{1,5}")
_SIZE = re.compile(r"[0-9]{1,18}")

SEVERITY_WORDS = {
    "unknown": Severity.UNKNOWN,
    "low": Severity.LOW,
    "medium": Severity.MEDIUM,
    "high": Severity.HIGH,
    "very-high": Severity.CRITICAL,
    "very high": Severity.CRITICAL,
    "veryhigh": Severity.CRITICAL,
    "critical": Severity.CRITICAL,
}

# The full names of the CEF extension dictionary, to the short keys this parser maps.
ALIASES = {
    "sourceAddress": "src",
    "destinationAddress": "dst",
    "sourcePort": "spt",
    "destinationPort": "dpt",
    "sourceHostName": "shost",
    "destinationHostName": "dhost",
    "sourceUserName": "suser",
    "destinationUserName": "duser",
    "deviceAddress": "dvc",
    "deviceHostName": "dvchost",
    "fileName": "fname",
    "fileSize": "fsize",
    "requestUrl": "request",
    "deviceAction": "act",
    "message": "msg",
    "deviceEventCategory": "cat",
    "deviceReceiptTime": "rt",
    "startTime": "start",
    "endTime": "end",
    "transportProtocol": "proto",
    "deviceTimeZone": "dtz",
    "applicationProtocol": "app",
    "sourceMacAddress": "smac",
    "destinationMacAddress": "dmac",
    "baseEventCount": "cnt",
    "bytesIn": "in",
    "bytesOut": "out",
}
_CUSTOM_FULL = {
    "deviceCustomString": "cs",
    "deviceCustomNumber": "cn",
    "deviceCustomFloatingPoint": "cfp",
    "deviceCustomIPv6Address": "c6a",
}
for _full, _short in _CUSTOM_FULL.items():
    for _n in range(1, 11):
        ALIASES[f"{_full}{_n}"] = f"{_short}{_n}"
        ALIASES[f"{_full}{_n}Label"] = f"{_short}{_n}Label"

_CUSTOM_PREFIXES = ("cs", "cn", "cfp", "c6a", "flexString", "flexNumber", "flexDate")
CUSTOM_KEYS = frozenset(
    f"{prefix}{n}" for prefix in (*_CUSTOM_PREFIXES, "deviceCustomDate") for n in range(1, 11)
)
_OPTIONS = TimePolicy.OPTIONS


def cef_severity(raw: str) -> Severity:
    """The OCSF severity for a CEF header severity (see the module docstring)."""
    text = raw.strip()
    if _PORT.fullmatch(text):  # a small non-negative integer
        number = int(text)
        if number <= 3:
            return Severity.LOW
        if number <= 6:
            return Severity.MEDIUM
        if number <= 8:
            return Severity.HIGH
        if number <= 10:
            return Severity.CRITICAL
        return Severity.UNKNOWN
    return SEVERITY_WORDS.get(text.lower(), Severity.UNKNOWN)


def _unescaped(match: re.Match[str]) -> str:
    char = match.group(1)
    return _ESCAPED.get(char, char)


def split_extension(
    text: str, *, unescape: bool = True, max_pairs: int = MAX_EXTENSION_PAIRS
) -> tuple[dict[str, str], str]:
    """The ``key=value`` pairs of a CEF-style extension, and any leading text that is no pair.

    A repeated key keeps its last value. More than ``max_pairs`` pairs is a ParseError.
    """
    text = text.strip(" ").rstrip()
    if not text:
        return {}, ""
    # One C-level split gives [leading, key, value, key, value, ...]: no Python loop per key.
    parts = _EXTENSION_KEY.split(" " + text)
    if len(parts) > 2 * max_pairs + 1:
        raise ParseError(f"the extension has more than {max_pairs} fields", field="extension")
    values = parts[2::2]
    if "  " in text:  # spaces before a key are separators, not part of the value
        values = [value.rstrip(" ") for value in values]
    if unescape and "\\" in text:
        values = [
            _EXTENSION_ESCAPE.sub(_unescaped, value) if "\\" in value else value for value in values
        ]
    return dict(zip(parts[1::2], values, strict=True)), parts[0].strip()


def _header_fields(payload: str) -> list[str]:
    match = _HEADER.match(payload)
    if match is None:
        found = len(_UNESCAPED_PIPE.findall(payload[:4096])) + 1
        raise ParseError(
            f"CEF header is malformed: it needs 'CEF:Version' and 7 '|'-separated fields, "
            f"found {min(found, 8)}",
            field="header",
        )
    return [
        _HEADER_ESCAPE.sub(r"\1", value) if "\\" in value else value for value in match.groups()
    ] + [payload[match.end() :]]


def _port(extension: dict[str, str], key: str) -> int | None:
    value = extension.get(key)
    if value is not None and _PORT.fullmatch(value) and int(value) <= 65535:
        del extension[key]
        return int(value)
    return None  # absent, or kept in the extension as written


def take_endpoint(
    extension: dict[str, str], ip_key: str, port_key: str, host_key: str
) -> Endpoint | None:
    """An Endpoint from an address, port and host name in ``extension``, taking what it uses.

    A port that is no port stays in ``extension``; so does an address that is no IP when a host
    name is given too (without one, it is taken as the host name).
    """
    address = extension.pop(ip_key, "") or None
    hostname = extension.pop(host_key, "") or None
    port = _port(extension, port_key)
    ip = None
    if address is not None:
        if is_ip(address):
            ip = address
        elif hostname is None:
            hostname = address  # some producers put a name in src/dst
        else:
            extension[ip_key] = address
    if ip is None and hostname is None and port is None:
        return None
    return Endpoint(ip=ip, port=port, hostname=hostname)


def _file(extension: dict[str, str]) -> FileInfo | None:
    name = extension.pop("fname", "") or None
    path = extension.pop("filePath", "") or None
    size_text = extension.get("fsize")
    size = None
    if size_text is not None and _SIZE.fullmatch(size_text):
        size = int(extension.pop("fsize"))
    info = FileInfo(name=name, path=path, size=size)
    digest = extension.get("fileHash", "").strip().lower()
    if digest and _HEX.fullmatch(digest) and len(digest) in (32, 40, 64):
        del extension["fileHash"]
        if len(digest) == 32:
            info.md5 = digest
        elif len(digest) == 40:
            info.sha1 = digest
        else:
            info.sha256 = digest
    if info == FileInfo():
        return None
    return info


def _custom_fields(extension: dict[str, str]) -> dict[str, str]:
    custom: dict[str, str] = {}
    for key in [key for key in extension if key in CUSTOM_KEYS]:
        value = extension.pop(key)
        label = extension.pop(f"{key}Label", "") or key
        if label in custom:
            label = f"{label} ({key})"
        custom[label] = value
    return custom


def _nameless(vendor: str, product: str) -> str:
    return f"{' '.join(part for part in (vendor, product) if part) or 'CEF'} event"


class CefParser(Parser):
    """One CEF record (a bare CEF line, or one behind a syslog header) to an alert."""

    format: ClassVar[str] = "cef"
    record_kind: ClassVar[RecordKind] = RecordKind.TEXT

    def __init__(self, options: Mapping[str, Any] | None = None, *, clock: Clock | None = None):
        super().__init__(options)
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.policy = TimePolicy.from_options(self.options, _OPTIONS)

    def parse(self, record: Any) -> ParseResult:
        """The alert in one CEF line; raises only ParseError."""
        text = require_text(record, "CEF")
        payload, header, prefix = split_payload(text, "CEF:", self.policy, self.clock)
        alert = self.parse_payload(payload, header)
        if prefix is not None:
            alert.extra["prefix"] = prefix
        return alert

    def parse_payload(self, payload: str, header: SyslogHeader | None) -> Alert:
        """The alert in a CEF payload (starting at ``CEF:``), with its syslog header if any."""
        version, vendor, product, device_version, signature, name, severity, rest = _header_fields(
            payload
        )
        extension, leading = split_extension(rest)
        if not ALIASES.keys().isdisjoint(extension):
            extension = {ALIASES.get(key, key): value for key, value in extension.items()}

        time, time_source = self.policy.resolve(
            self._event_time(extension), header, self.clock, field="rt"
        )
        host = None
        if extension.get("dvc") or extension.get("dvchost"):
            host = take_endpoint(extension, "dvc", "", "dvchost")  # a device has no port
        elif header is not None:
            host = endpoint_for(header.hostname)
        user = extension.pop("suser", "") or None
        if user is None:
            user = extension.pop("duser", "") or None

        extra: dict[str, Any] = {
            "cef_version": version,
            "device_version": device_version or None,
            "cef_severity": severity,
            "time_source": time_source,
        }
        alert = Alert(
            title=bounded(name.strip() or signature.strip() or _nameless(vendor, product)),
            time=time,
            severity=cef_severity(severity),
            uid=extension.pop("externalId", "") or None,
            rule_uid=signature or None,
            rule_name=name or None,
            category=extension.pop("cat", "") or None,
            description=extension.pop("msg", "") or None,
            product=product or None,
            vendor=vendor or None,
            src=take_endpoint(extension, "src", "spt", "shost"),
            dst=take_endpoint(extension, "dst", "dpt", "dhost"),
            host=host,
            user=user,
            file=_file(extension),
            url=extension.pop("request", "") or None,
            extra=extra,
        )
        custom = _custom_fields(extension)
        if custom:
            extra["custom"] = custom
        if extension:
            extra["extension"] = extension
        if leading:
            extra["unparsed"] = leading[:1024]
        if header is not None:
            extra["syslog"] = header.as_extra()
        return alert

    def _event_time(self, extension: dict[str, str]) -> datetime | None:
        """The event time in ``rt``, ``start`` or ``end`` (popped when used), or None."""
        zone_name = extension.get("dtz")
        zone = self.policy.timezone
        if zone_name:
            found = parse_zone(zone_name)
            if found is None:
                raise ParseError(f"field 'dtz' is not a time zone: {zone_name!r:.60}", field="dtz")
            zone = found
        for key in ("rt", "start", "end"):
            value = extension.get(key)
            if value:
                del extension[key]
                return parse_event_time(value, field=key, default_tz=zone, clock=self.clock)
        return None
