"""E-mail messages as alerts: above all, phishing that users report to a mailbox.

A record is the raw RFC 5322 message. Decisions, in the order the parser makes them:

- **Which message is the suspect.** A report usually attaches the original, as a
  ``message/rfc822`` part or as an ``.eml`` file; a forwarded report may wrap it once more.
  The parser unwraps up to :data:`MAX_NESTING` levels, always taking the first attached
  message, and the alert is about the innermost one. The reporter (the wrapper that attached
  the original) goes into ``extra`` as ``reported_by`` and ``report_subject``; outer wrappers,
  if any, as ``forwarded_by``. ``multipart/report`` containers (delivery status notices) are
  never unwrapped: the message they carry is a bounce, not a report. A message with nothing
  attached is itself the suspect. The option ``unwrap_reports: false`` turns unwrapping off
  for mailboxes that receive phish directly (honeypots).
- **Title.** ``Reported phishing: <subject>`` for a report, ``Suspicious e-mail: <subject>``
  when the message is itself the suspect; severity is MEDIUM either way.
- **Time.** The suspect's ``Date``; else the reporters' ``Date`` (innermost first); else the
  timestamp of the topmost ``Received`` header of the suspect, then of the reporters. A
  message with none of these is a ParseError: a parser has no clock to invent a time from.
- **Authentication.** Verdicts come from ``Authentication-Results`` (RFC 8601), the topmost
  header first (the receiving side added it; lower ones may come from the sender). Headers
  without an authserv-id, as Microsoft 365 writes them, are accepted; with the option
  ``trusted_authserv_ids`` only headers from those servers count. ``Received-SPF`` (the
  topmost) gives ``spf`` when no Authentication-Results header did. Among several results of
  one method in one header (several DKIM signatures) a ``pass`` wins.
- **Source endpoint.** ``src`` is the first external hop, only when it is reliable: its IP is
  the client IP that the receiving side's SPF or iprev check names (``sender IP is …``,
  ``smtp.remote-ip``, ``policy.iprev``, ``client-ip=``) and appears as a ``from`` address in
  the Received chain; or, without such a check, the first globally routable ``from`` address
  reading the chain from the top, so that every hop above it came from a private or loopback
  address. The hostname is the reverse-DNS name the receiving MTA wrote, never the HELO name
  the sender chose. Otherwise ``src`` stays empty; ``received_from`` still has the chain.
- **Received chain.** ``received_from`` lists the ``from`` host names (dotted ones) and IPs
  of the Received headers in header order: the hop nearest the mailbox first, the origin last.
- **URLs** come from every text/plain and text/html part of the suspect, attached ``.html``
  files included: ``href``, ``src``, ``action``, ``formaction`` and ``background`` attributes
  and meta refresh targets (read with the stdlib HTML parser, entities decoded) and bare URLs
  in the text. ``hxxp`` and ``[.]``-style defanging is undone; only absolute http, https and
  ftp URLs are kept, deduplicated in order of appearance and bounded.
- **Attachments** are the suspect's leaf parts other than its inline text bodies, hashed (MD5,
  SHA-1, SHA-256) within a total byte budget; the reporter's own attachments (a screenshot)
  are not the suspect's and are left out.
- **Sender's domain** goes into ``extra["sender_domain"]``, the display name into
  ``extra["sender_name"]``. Observables are left to :mod:`quell.ingest.observables`, which
  reads ``src`` and the EmailInfo fields with their roles (sender and its domain, reply-to,
  recipients, relays, URLs, attachments).
- **Bounds.** Messages over ``max_bytes`` (or over a million lines) are refused with a
  ParseError that names the limit. The MIME structure is read with the ``compat32`` policy,
  whose parameter parsing is linear (``policy.default`` spends ~50 µs per byte of a
  Content-Type); over-long Content-* headers are refused. Parts walked, text and HTML scanned,
  URLs, attachments, bytes hashed, addresses and header lengths are all bounded; every text
  value is valid UTF-8 without NUL.
- **Robustness.** A structured header that fails to parse is read raw instead, a broken part
  is skipped and counted in ``extra["part_errors"]``; anything else unexpected becomes a
  ParseError.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

from quell.ingest.model import Alert, EmailInfo, Endpoint, FileInfo, Severity
from quell.ingest.observables import refang
from quell.ingest.parsers.base import ParseError, Parser, ParseResult, RecordKind

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_URLS = 200
DEFAULT_MAX_ATTACHMENTS = 50
DEFAULT_MAX_HASH_BYTES = 50 * 1024 * 1024
MAX_NESTING = 3  # report -> forwarded report -> original, and one level of slack
MAX_PARTS = 500  # MIME parts walked per message
MAX_TEXT_CHARS = 4 * 1024 * 1024  # plain text scanned for URLs per parse
MAX_HTML_CHARS = 1024 * 1024  # HTML given to html.parser per parse; the rest is scanned as text
MAX_TAG_CHARS = 4096  # a '<' with no '>' this close is text (see _defuse)
MAX_LINES = 1_000_000  # the email package spends ~1-3 µs per line; base64 needs 1 per 78 bytes
MAX_MIME_HEADER_BYTES = 16 * 1024  # one Content-* header
MAX_MIME_HEADERS_BYTES = 1024 * 1024  # all Content-* headers of a message together
MAX_RECEIVED = 50
MAX_ADDRESSES = 100
MAX_HEADER_CHARS = 1000  # per kept header value
MAX_STRUCTURED_HEADER_CHARS = 2048  # longer address headers take the lenient, linear parser
MAX_URL_CHARS = 4096
MAX_TITLE_CHARS = 200
MAX_COMMENT_CHARS = 2000

# Headers worth keeping verbatim in EmailInfo.headers: client fingerprints, origin hints
# written by webmail and hosting panels, bulk-mail markers, and spam verdicts.
KEPT_HEADERS = (
    "X-Mailer",
    "User-Agent",
    "X-Originating-IP",
    "X-Sender-IP",
    "X-Source-IP",
    "X-Originating-Email",
    "X-Sender",
    "X-Authenticated-Sender",
    "X-AntiAbuse",
    "X-PHP-Originating-Script",
    "X-PHP-Script",
    "Sender",
    "In-Reply-To",
    "Organization",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Report-Abuse",
    "Feedback-ID",
    "Precedence",
    "Auto-Submitted",
    "X-Priority",
    "Importance",
    "Delivered-To",
    "X-Original-To",
    "X-Google-Original-From",
    "X-Spam-Status",
    "X-Spam-Score",
    "X-Spam-Flag",
    "X-MS-Exchange-Organization-SCL",
    "X-Forefront-Antispam-Report",
    "X-Microsoft-Antispam",
    "X-Virus-Scanned",
)

_IDENTIFYING_HEADERS = frozenset(
    {"from", "date", "subject", "message-id", "received", "return-path", "to", "sender"}
)
_MIME_HEADER = re.compile(
    rb"^(content-[a-z-]{1,40})[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE
)
_URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "background"})
_URL_SCHEMES = frozenset({"http", "https", "ftp"})
_VERDICT = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_RESINFO = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:\s*/\s*\d+)?\s*=\s*([A-Za-z0-9_-]+)")
_PROPERTY = re.compile(r"\b((?:smtp|header|body|policy)\.[A-Za-z0-9_-]{1,32})\s*=\s*([^\s;]+)")
_SENDER_IP = re.compile(r"sender IP is ([0-9A-Fa-f:.]{2,45})", re.IGNORECASE)
_CLIENT_IP = re.compile(r"client-ip\s*=\s*([0-9A-Fa-f:.]{2,45})", re.IGNORECASE)
_DKIM_DOMAIN = re.compile(r"(?:^|;)\s*d\s*=\s*([A-Za-z0-9.-]{1,253})")
_FROM_CLAUSE = re.compile(
    r"^\s*from\s+(.*?)(?=\s+(?:by|with|id|via|for)\s|;|$)", re.IGNORECASE | re.DOTALL
)
_BY_HOST = re.compile(r"\sby\s+([A-Za-z0-9._-]{1,253})", re.IGNORECASE)
_BRACKETED_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]", re.IGNORECASE)
_PARENTHESIZED_IP = re.compile(r"\(\s*([0-9A-Fa-f:.]{2,45})\s*\)")
_RDNS = re.compile(r"\(\s*([A-Za-z0-9._-]{1,253})\s+\[")
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]{0,62}\.?"
)
_BARE_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`{}|\\^\[\]]+", re.IGNORECASE)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_TRAILING = ".,;:!?'\"*]>"
_NOT_HOSTS = frozenset({"localhost", "localhost.localdomain", "unknown"})


def clean_text(value: str) -> str:
    """Valid UTF-8 text without NUL: undecodable header bytes become U+FFFD."""
    try:
        # The email package keeps undecodable bytes as surrogate escapes; give them back to the
        # UTF-8 decoder, which recovers raw UTF-8 headers and replaces everything else.
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        text = value.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "")


def normalize_url(candidate: str, *, bare: bool = False) -> str | None:
    """An absolute http(s)/ftp URL from ``candidate``, refanged; None when it is not one.

    ``bare`` URLs were found in running text, so trailing punctuation and an unbalanced
    closing parenthesis belong to the sentence, not to the URL.
    """
    url = refang(re.sub(r"\s+", "", clean_text(candidate))).strip("'\"")
    if bare:
        while url and (
            url[-1] in _TRAILING or (url[-1] == ")" and url.count("(") < url.count(")"))
        ):
            url = url[:-1]
    if not url or len(url) > MAX_URL_CHARS:
        return None
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in _URL_SCHEMES or not hostname:
        return None
    return url


def _one_line(value: str, limit: int) -> str:
    return " ".join(clean_text(value).split())[:limit]


class _Headers:
    """The raw header fields of one message, indexed once by lowercase name."""

    def __init__(self, msg: Message) -> None:
        self.by_name: dict[str, list[str]] = {}
        for name, value in msg.raw_items():
            self.by_name.setdefault(str(name).strip().lower(), []).append(str(value))

    def all(self, name: str) -> list[str]:
        """Every value of ``name``, top to bottom, unfolded (encoded words left as written)."""
        return [_FOLD.sub("", value).strip() for value in self.by_name.get(name.lower(), [])]

    def first(self, name: str) -> str | None:
        values = self.by_name.get(name.lower())
        return _FOLD.sub("", values[0]).strip() if values else None

    def one_line(self, name: str) -> str | None:
        """The first value as one bounded line, or None."""
        value = self.first(name)
        return (_one_line(value, MAX_HEADER_CHARS) or None) if value is not None else None

    def text(self, name: str) -> str | None:
        """The first value with RFC 2047 encoded words decoded; as written when they are bad."""
        value = self.first(name)
        return (_one_line(_decode_words(value), MAX_HEADER_CHARS) or None) if value else None


def _decode_words(value: str) -> str:
    if "=?" not in value or len(value) > 4 * MAX_HEADER_CHARS:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - bad charsets and bad encodings alike: show it as written
        return value


@dataclass
class _Mail:
    """A message being read, with its header index."""

    msg: Message
    headers: _Headers

    @classmethod
    def of(cls, msg: Message) -> _Mail:
        return cls(msg, _Headers(msg))


@dataclass
class _Budget:
    """What one parse may still spend, across every message of a report."""

    text_chars: int = MAX_TEXT_CHARS
    html_chars: int = MAX_HTML_CHARS
    hash_bytes: int = DEFAULT_MAX_HASH_BYTES
    part_errors: int = 0
    defects: set[str] = field(default_factory=set)


@dataclass
class _Urls:
    """URLs in order of appearance, deduplicated, at most ``limit``; counts the rest."""

    limit: int
    found: dict[str, None] = field(default_factory=dict)
    dropped: int = 0

    def add(self, candidate: str, *, bare: bool) -> None:
        url = normalize_url(candidate, bare=bare)
        if url is None or url in self.found:
            return
        if len(self.found) >= self.limit:
            self.dropped += 1
            return
        self.found[url] = None


@dataclass
class _Hop:
    helo: str | None
    ip: str | None
    rdns: str | None
    by: str | None

    def as_dict(self) -> dict[str, str]:
        items = {"from": self.helo, "ip": self.ip, "rdns": self.rdns, "by": self.by}
        return {key: value for key, value in items.items() if value}


@dataclass
class _Auth:
    verdicts: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    client_ips: list[str] = field(default_factory=list)


class EmailParser(Parser):
    """An RFC 5322 message (a phishing report, or a suspect message itself) to an alert.

    Options: ``max_bytes`` (25 MiB), ``max_urls`` (200), ``max_attachments`` (50),
    ``max_hash_bytes`` (50 MiB hashed in all), ``unwrap_reports`` (true) and
    ``trusted_authserv_ids`` (a list; empty trusts every Authentication-Results header).
    """

    format = "email"
    record_kind = RecordKind.BYTES

    _OPTIONS = frozenset(
        {
            "max_bytes",
            "max_urls",
            "max_attachments",
            "max_hash_bytes",
            "unwrap_reports",
            "trusted_authserv_ids",
        }
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        for name in self.options:
            if name not in self._OPTIONS:
                known = ", ".join(sorted(self._OPTIONS))
                raise ParseError(f"unknown option {name!r}; options are: {known}", field=name)
        self.max_bytes = _positive_int(self.options, "max_bytes", DEFAULT_MAX_BYTES)
        self.max_urls = _positive_int(self.options, "max_urls", DEFAULT_MAX_URLS)
        self.max_attachments = _positive_int(
            self.options, "max_attachments", DEFAULT_MAX_ATTACHMENTS
        )
        self.max_hash_bytes = _positive_int(self.options, "max_hash_bytes", DEFAULT_MAX_HASH_BYTES)
        unwrap = self.options.get("unwrap_reports", True)
        if not isinstance(unwrap, bool):
            raise ParseError(
                "option 'unwrap_reports' must be true or false", field="unwrap_reports"
            )
        self.unwrap_reports = unwrap
        trusted = self.options.get("trusted_authserv_ids", [])
        if not isinstance(trusted, list | tuple) or not all(isinstance(v, str) for v in trusted):
            raise ParseError(
                "option 'trusted_authserv_ids' must be a list of host names",
                field="trusted_authserv_ids",
            )
        self.trusted_authserv_ids = frozenset(v.strip().lower() for v in trusted if v.strip())

    def parse(self, record: Any) -> ParseResult:
        """The alert about the reported (or received) message; raises only ParseError."""
        if isinstance(record, bytearray | memoryview):
            record = bytes(record)
        if not isinstance(record, bytes):
            raise ParseError(f"an e-mail record must be bytes, not {type(record).__name__}")
        if len(record) > self.max_bytes:
            raise ParseError(
                f"message is {len(record)} bytes, over the max_bytes limit of {self.max_bytes}",
                field="max_bytes",
            )
        if not record.strip():
            raise ParseError("the message is empty")
        lines = record.count(b"\n")
        if lines > MAX_LINES:
            raise ParseError(f"message has {lines} lines, over the limit of {MAX_LINES}")
        _check_mime_headers(record)
        try:
            return self._parse(record)
        except ParseError:
            raise
        except Exception as exc:
            # The email package raises many kinds of exceptions on hostile input (it has had
            # IndexError, AttributeError and RecursionError bugs); all of them mean the same.
            raise ParseError(f"malformed message ({type(exc).__name__})") from exc

    def _parse(self, record: bytes) -> Alert:
        outer_msg = _read_message(record)
        if outer_msg is None:
            raise ParseError(
                "not an RFC 5322 message: no From, Date, Subject, Message-ID or Received header"
            )
        outer = _Mail.of(outer_msg)
        budget = _Budget(hash_bytes=self.max_hash_bytes)
        extra: dict[str, Any] = {}
        wrappers: list[_Mail] = []
        suspect = outer
        while self.unwrap_reports and len(wrappers) < MAX_NESTING:
            if suspect.msg.get_content_type() == "multipart/report":
                break
            attached = _attached_messages(suspect.msg, budget)
            if not attached:
                break
            if len(attached) > 1 and not wrappers:
                extra["attached_messages"] = len(attached)
            wrappers.append(suspect)
            suspect = _Mail.of(attached[0])
        return self._alert(outer, wrappers, suspect, budget, extra)

    def _alert(
        self,
        outer: _Mail,
        wrappers: list[_Mail],
        suspect: _Mail,
        budget: _Budget,
        extra: dict[str, Any],
    ) -> Alert:
        headers = suspect.headers
        info = EmailInfo()
        sender = _first_address(headers, "From")
        info.sender = sender[1] if sender else None
        reply_to = _first_address(headers, "Reply-To")
        info.reply_to = reply_to[1] if reply_to else None
        info.return_path = _normalize_address(headers.first("Return-Path") or "")
        info.to = [address for _, address in _addresses(headers, "To")]
        info.cc = [address for _, address in _addresses(headers, "Cc")]
        info.subject = headers.text("Subject")
        info.message_id = headers.one_line("Message-ID")
        info.date = _date(headers)
        hops = _received_hops(headers)
        info.received_from = _chain_values(hops)
        info.headers = {name: v for name in KEPT_HEADERS if (v := headers.text(name)) is not None}
        auth = self._auth(headers)
        info.auth = auth.verdicts
        urls = _Urls(self.max_urls)
        self._read_parts(suspect.msg, info, urls, budget, extra)
        info.urls = list(urls.found)
        if urls.dropped:
            extra["urls_dropped"] = urls.dropped

        if sender and sender[0]:
            extra["sender_name"] = sender[0]
        domain = info.sender.rpartition("@")[2] if info.sender else None
        if domain:
            extra["sender_domain"] = domain
        if auth.properties:
            extra["auth_properties"] = auth.properties
        if dkim_domains := _dkim_domains(headers):
            extra["dkim_domains"] = dkim_domains
        if hops:
            extra["received"] = [hop.as_dict() for hop in hops[:20]]

        time = info.date
        reporter_address = None
        if wrappers:
            reporter = wrappers[-1]
            by = _first_address(reporter.headers, "From")
            reporter_address = by[1] if by else None
            extra["reported_by"] = reporter_address
            extra["report_subject"] = reporter.headers.text("Subject")
            extra["report_message_id"] = reporter.headers.one_line("Message-ID")
            if comment := _report_comment(reporter.msg, budget):
                extra["report_comment"] = comment
            if len(wrappers) > 1:
                forwarders = (_first_address(w.headers, "From") for w in wrappers[:-1])
                extra["forwarded_by"] = [address[1] for address in forwarders if address]
        for wrapper in reversed(wrappers):
            time = time or _date(wrapper.headers)
        time = time or _received_time(headers)
        for wrapper in reversed(wrappers):
            time = time or _received_time(wrapper.headers)
        if time is None:
            raise ParseError(
                "the message has no Date header and no Received timestamp", field="Date"
            )
        if budget.part_errors:
            extra["part_errors"] = budget.part_errors
        if budget.defects:
            extra["mime_defects"] = sorted(budget.defects)

        subject = _one_line(info.subject or "", MAX_TITLE_CHARS) or "(no subject)"
        src = _source_endpoint(hops, auth.client_ips)
        reported = bool(wrappers)
        origin = f"from {info.sender}" if info.sender else "without a sender address"
        return Alert(
            title=f"{'Reported phishing' if reported else 'Suspicious e-mail'}: {subject}",
            time=time,
            severity=Severity.MEDIUM,
            uid=outer.headers.one_line("Message-ID"),
            rule_uid="email.reported_phishing" if reported else "email.suspicious",
            rule_name="User-reported phishing" if reported else "Suspicious e-mail",
            category="phishing",
            description=(
                f"{reporter_address or 'A user'} reported a message {origin} as phishing."
                if reported
                else f"A message {origin} arrived in a phishing mailbox."
            ),
            techniques=["T1566"],
            src=src,
            email=info,
            extra=extra,
        )

    def _read_parts(
        self, msg: Message, info: EmailInfo, urls: _Urls, budget: _Budget, extra: dict[str, Any]
    ) -> None:
        """URLs and attachments from the suspect's parts."""
        dropped = 0
        for part in _leaves(msg, budget):
            try:
                content_type = part.get_content_type()
                maintype = part.get_content_maintype()
                filename = _filename(part)
                if content_type in ("text/plain", "text/html") or maintype == "multipart":
                    # a multipart leaf lost its boundary; its body is best read as text
                    _part_urls(part, content_type, urls, budget)
                is_attachment = (
                    filename is not None
                    or part.get_content_disposition() == "attachment"
                    or maintype not in ("text", "multipart")
                )
                if not is_attachment:
                    continue
                if len(info.attachments) >= self.max_attachments:
                    dropped += 1
                    continue
                info.attachments.append(_file_info(part, filename, content_type, budget))
            except Exception:  # noqa: BLE001 - one broken part must not lose the whole alert
                budget.part_errors += 1
        if dropped:
            extra["attachments_dropped"] = dropped
        unhashed = sum(1 for a in info.attachments if a.size is not None and a.sha256 is None)
        if unhashed:
            extra["attachments_unhashed"] = unhashed

    def _auth(self, headers: _Headers) -> _Auth:
        auth = _Auth()
        for value in headers.all("Authentication-Results")[:20]:
            authserv, statements = _split_auth_results(value)
            if self.trusted_authserv_ids and (authserv or "") not in self.trusted_authserv_ids:
                continue
            verdicts: dict[str, str] = {}
            for statement in statements:
                match = _RESINFO.match(statement)
                if not match or "." in match.group(1):
                    continue
                method, verdict = match.group(1).lower(), _verdict(match.group(2))
                if verdict is None:
                    continue
                if method not in verdicts or (verdict == "pass" and verdicts[method] != "pass"):
                    verdicts[method] = verdict
                for name, prop_value in _PROPERTY.findall(statement[match.end() :]):
                    key = f"{method}.{name.lower()}"
                    if key not in auth.properties and len(auth.properties) < 20:
                        auth.properties[key] = _one_line(prop_value, 255)
                    if name.lower() in ("smtp.remote-ip", "policy.iprev"):
                        _add_ip(auth.client_ips, prop_value)
            for method, verdict in verdicts.items():
                if method not in auth.verdicts and len(auth.verdicts) < 16:
                    auth.verdicts[method] = verdict
            for ip in _SENDER_IP.findall(value):
                _add_ip(auth.client_ips, ip)
        received_spf = headers.first("Received-SPF")
        if received_spf:  # only the topmost one was written by the receiving side
            words = received_spf.split(None, 1)
            verdict = _verdict(words[0]) if words else None
            if verdict and "spf" not in auth.verdicts:
                auth.verdicts["spf"] = verdict
            for ip in _CLIENT_IP.findall(received_spf):
                _add_ip(auth.client_ips, ip)
        return auth


def _positive_int(options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ParseError(f"option {name!r} must be a positive integer", field=name)
    return value


# -- the MIME tree -----------------------------------------------------------------------------


def _check_mime_headers(record: bytes) -> None:
    """Refuse Content-* headers long enough to make the email package crawl."""
    total = 0
    for match in _MIME_HEADER.finditer(record):
        size = match.end() - match.start()
        if size > MAX_MIME_HEADER_BYTES:
            name = match.group(1).decode("ascii", "replace")
            raise ParseError(
                f"a {name} header is {size} bytes, over the limit of {MAX_MIME_HEADER_BYTES}",
                field=name,
            )
        total += size
        if total > MAX_MIME_HEADERS_BYTES:
            raise ParseError(
                f"the Content-* headers exceed {MAX_MIME_HEADERS_BYTES} bytes in all",
                field="Content-Type",
            )


def _read_message(data: bytes) -> Message | None:
    """The parsed message, or None when ``data`` has none of the headers a message has."""
    msg = BytesParser(policy=policy.compat32).parsebytes(data)
    names = {str(name).strip().lower() for name, _ in msg.raw_items()}
    return msg if names & _IDENTIFYING_HEADERS else None


def _leaves(msg: Message, budget: _Budget) -> Iterator[Message]:
    """The leaf parts of ``msg`` in order; attached messages are leaves, not descended into."""
    stack: list[Message] = [msg]
    walked = 0
    while stack:
        part = stack.pop()
        walked += 1
        if walked > MAX_PARTS:
            budget.defects.add("TooManyParts")
            return
        for defect in getattr(part, "defects", ())[:5]:
            if len(budget.defects) < 20:
                budget.defects.add(type(defect).__name__)
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
            continue
        yield part


def _attached_messages(msg: Message, budget: _Budget) -> list[Message]:
    """Messages attached to ``msg`` as message/rfc822 parts or ``.eml`` files, in order."""
    found: list[Message] = []
    for part in _leaves(msg, budget):
        try:
            inner = _attached_message(part)
        except Exception:  # noqa: BLE001 - an unreadable attachment is just not a message
            budget.part_errors += 1
            continue
        if inner is not None:
            found.append(inner)
    return found


def _attached_message(part: Message) -> Message | None:
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            return None
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            # Outlook sometimes encodes the attached message, which RFC 2046 forbids; the
            # email package then reads the encoded text as a message without headers.
            body = inner.get_payload()
            if not isinstance(body, str):
                return None
            holder = Message()
            holder["Content-Transfer-Encoding"] = cte
            holder.set_payload(body)
            raw = holder.get_payload(decode=True)
            return _read_message(raw) if isinstance(raw, bytes) else None
        names = {str(name).strip().lower() for name, _ in inner.raw_items()}
        return inner if names & _IDENTIFYING_HEADERS else None
    filename = _filename(part)
    if filename and filename.lower().endswith(".eml"):
        raw = part.get_payload(decode=True)
        if isinstance(raw, bytes) and raw.strip():
            return _read_message(raw)
    return None


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001 - a malformed parameter just means no name
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return _one_line(_decode_words(name), 255) or None


def _decoded_text(part: Message, budget: _Budget) -> str | None:
    if budget.text_chars <= 0:
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    payload = payload[: budget.text_chars]
    try:
        text = payload.decode(part.get_content_charset() or "utf-8", "replace")
    except (LookupError, ValueError):  # unknown charsets and non-text codecs alike
        text = payload.decode("utf-8", "replace")
    budget.text_chars -= len(text)
    return text


def _part_urls(part: Message, content_type: str, urls: _Urls, budget: _Budget) -> None:
    text = _decoded_text(part, budget)
    if not text:
        return
    if content_type == "text/html" and budget.html_chars > 0:
        html, rest = text[: budget.html_chars], text[budget.html_chars :]
        budget.html_chars -= len(html)
        _html_urls(html, urls)
        text = rest
    _text_urls(text, urls)


def _file_info(part: Message, filename: str | None, content_type: str, budget: _Budget) -> FileInfo:
    info = FileInfo(name=filename, mime_type=clean_text(content_type))
    if part.get_content_maintype() == "message":
        return info  # an attached message keeps no byte-exact form to hash
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return info
    info.size = len(payload)
    if len(payload) <= budget.hash_bytes:
        budget.hash_bytes -= len(payload)
        info.md5 = hashlib.md5(payload, usedforsecurity=False).hexdigest()
        info.sha1 = hashlib.sha1(payload, usedforsecurity=False).hexdigest()
        info.sha256 = hashlib.sha256(payload).hexdigest()
    return info


def _report_comment(reporter: Message, budget: _Budget) -> str | None:
    """What the reporter wrote above the attached original, if anything."""
    for part in _leaves(reporter, budget):
        try:
            if part.get_content_type() != "text/plain" or _filename(part):
                continue
            text = _decoded_text(part, budget)
        except Exception:  # noqa: BLE001 - the comment is a nicety
            text = None
        if text and text.strip():
            return clean_text(text.strip())[:MAX_COMMENT_CHARS]
    return None


# -- headers -----------------------------------------------------------------------------------


def _addresses(headers: _Headers, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header (its first occurrence), bounded."""
    raw = headers.first(name)
    if not raw:
        return []
    pairs: list[tuple[str, str]] = []
    if len(raw) <= MAX_STRUCTURED_HEADER_CHARS:
        try:
            # The RFC 5322 parser of policy.default is strict where the lenient one can be
            # fooled into reading another address than a mail client shows, but it is slow.
            header = policy.default.header_factory(name, raw)
            pairs = [(a.display_name, a.addr_spec) for a in getattr(header, "addresses", ())]
        except Exception:  # noqa: BLE001 - fall back to the lenient parser below
            pairs = []
    if not pairs:
        try:
            # Cut before parsing: the lenient parser is linear but slow, and only the first
            # MAX_ADDRESSES are kept anyway.
            head = raw[: MAX_ADDRESSES * 320]
            pairs = [(_decode_words(d), a) for d, a in getaddresses([head])[: MAX_ADDRESSES * 2]]
        except Exception:  # noqa: BLE001 - an unreadable header has no addresses
            pairs = []
    found: list[tuple[str, str]] = []
    for display, address in pairs:
        normalized = _normalize_address(str(address))
        if normalized and len(found) < MAX_ADDRESSES:
            found.append((_one_line(str(display), 255), normalized))
    return found


def _first_address(headers: _Headers, name: str) -> tuple[str, str] | None:
    addresses = _addresses(headers, name)
    return addresses[0] if addresses else None


def _normalize_address(address: str) -> str | None:
    """``local@domain`` with the domain lowercased; None when it is not an address."""
    address = clean_text(address).strip().strip("<>").strip()
    if len(address) > 320 or any(c.isspace() for c in address):
        return None
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return None
    return f"{local}@{domain.lower().rstrip('.')}"


def _date(headers: _Headers) -> datetime | None:
    value = headers.first("Date")
    return _parse_date(value) if value else None


def _parse_date(text: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(clean_text(text).strip()[:200])
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _received_time(headers: _Headers) -> datetime | None:
    value = headers.first("Received")
    if value and ";" in value:
        return _parse_date(value.rpartition(";")[2])
    return None


def _dkim_domains(headers: _Headers) -> list[str]:
    domains: list[str] = []
    for value in headers.all("DKIM-Signature")[:10]:
        match = _DKIM_DOMAIN.search(value)
        if match and match.group(1).lower() not in domains:
            domains.append(match.group(1).lower())
    return domains


# -- Received ----------------------------------------------------------------------------------


def _received_hops(headers: _Headers) -> list[_Hop]:
    hops = []
    for value in headers.all("Received")[:MAX_RECEIVED]:
        value = clean_text(value)[: 2 * MAX_HEADER_CHARS]
        match = _FROM_CLAUSE.match(value)
        by_match = _BY_HOST.search(value)
        by = by_match.group(1).lower() if by_match else None
        if not match:
            if by:
                hops.append(_Hop(helo=None, ip=None, rdns=None, by=by))
            continue
        clause = match.group(1)
        words = clause.split(None, 1)
        helo = words[0] if words else None
        ip = None
        for candidate in (
            *_BRACKETED_IP.findall(clause),
            *_PARENTHESIZED_IP.findall(clause),
            (helo or "").strip("[]"),
        ):
            if ip := _ip(candidate):
                break
        rdns_match = _RDNS.search(clause)
        rdns = rdns_match.group(1).lower().rstrip(".") if rdns_match else None
        if rdns and (rdns in _NOT_HOSTS or not _HOSTNAME.fullmatch(rdns)):
            rdns = None
        if helo and (helo.startswith("[") or _ip(helo)):
            helo = None
        hops.append(_Hop(helo=helo[:253] if helo else None, ip=ip, rdns=rdns, by=by))
    return hops


def _chain_values(hops: list[_Hop]) -> list[str]:
    values: dict[str, None] = {}
    for hop in hops:
        for host in (hop.rdns, hop.helo):
            if host and host.lower() not in _NOT_HOSTS and _HOSTNAME.fullmatch(host):
                values.setdefault(host.lower().rstrip("."), None)
        if hop.ip:
            values.setdefault(hop.ip, None)
    return list(values)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip().split("%", 1)[0]))
    except ValueError:
        return None


def _add_ip(ips: list[str], text: str) -> None:
    ip = _ip(text)
    if ip and ip not in ips and len(ips) < 10:
        ips.append(ip)


def _is_global(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_global


def _source_endpoint(hops: list[_Hop], confirmed_ips: list[str]) -> Endpoint | None:
    for hop in hops:
        if hop.ip and hop.ip in confirmed_ips and _is_global(hop.ip):
            return Endpoint(ip=hop.ip, hostname=hop.rdns)
    for hop in hops:
        if hop.ip and _is_global(hop.ip):
            return Endpoint(ip=hop.ip, hostname=hop.rdns)
    return None


# -- Authentication-Results ----------------------------------------------------------------


def _split_auth_results(value: str) -> tuple[str | None, list[str]]:
    """(authserv-id, result statements) of one Authentication-Results header."""
    statements = [s.strip() for s in _strip_comments(clean_text(value)[:8192]).split(";")]
    first = statements[0].split(None, 1) if statements else []
    if first and "=" not in first[0]:
        return first[0].lower(), statements[1:]
    return None, statements  # Microsoft 365 leaves the authserv-id out


def _strip_comments(text: str) -> str:
    """``text`` without RFC 5322 comments (nested parentheses), quoted strings kept."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"' and depth == 0:
            quoted = True
        elif char == "(":
            depth += 1
            out.append(" ")
            continue
        elif char == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)


def _verdict(word: str) -> str | None:
    word = word.strip().lower()
    if word == "hardfail":
        return "fail"
    return word if _VERDICT.fullmatch(word) else None


# -- URLs --------------------------------------------------------------------------------------


class _LinkCollector(HTMLParser):
    """URL-bearing attributes and the text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and name in _URL_ATTRIBUTES:
                self.links.append(value)
        if tag == "meta":
            values = dict(attrs)
            if (values.get("http-equiv") or "").strip().lower() == "refresh":
                _, _, target = (values.get("content") or "").partition("=")
                if target:
                    self.links.append(target)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _defuse(html: str) -> str:
    """``html`` with every '<' that no '>' closes within MAX_TAG_CHARS escaped as text.

    On Python 3.11 html.parser backtracks for minutes on unclosed tags and comments
    (``"<a " * 25000``). Such a '<' opens nothing a browser would render as a link either.
    """
    closes = [m.start() for m in re.finditer(">", html)]
    out: list[str] = []
    last = 0
    for match in re.finditer("<", html):
        i = match.start()
        k = bisect.bisect_left(closes, i)
        if k < len(closes) and closes[k] - i <= MAX_TAG_CHARS:
            continue
        out.append(html[last:i])
        out.append("&lt;")
        last = i + 1
    out.append(html[last:])
    return "".join(out)


def _html_urls(html: str, urls: _Urls) -> None:
    collector = _LinkCollector()
    try:
        collector.feed(_defuse(html))
        collector.close()
    except Exception:  # noqa: BLE001 - html.parser still asserts on some broken markup
        _text_urls(html, urls)
        return
    for link in collector.links:
        urls.add(link, bare=False)
    _text_urls("\n".join(collector.text), urls)


def _text_urls(text: str, urls: _Urls) -> None:
    for match in _BARE_URL.finditer(refang(text)):
        urls.add(match.group(0), bare=True)
