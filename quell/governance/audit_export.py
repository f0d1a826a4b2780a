"""Exporting the audit trail: JSON Lines to keep or re-check, CEF over syslog for a SIEM.

**JSON Lines.** One event per line, oldest first, as ``quell audit list --json`` shows it:
``seq``, ``id``, ``at``, ``actor``, ``action``, ``subject``, ``detail``, ``prev_hash`` and
``hash``. A receiver re-checks the chain with ``quell audit verify --file`` or by hand:
``hash = sha256(prev_hash + JSON of {id, at, actor, action, subject, detail} with sorted keys
and no spaces)``, and each ``prev_hash`` is the ``hash`` of the line before.

**CEF.** ``CEF:0|Quell|Quell|<version>|<action>|<name>|<severity>|<extension>``, where the name
is the action and its subject, and the severity follows the action (:func:`cef_severity`). The
extension: ``rt`` (the time, epoch milliseconds), ``cat`` (the action's first word), ``act``
(the action), ``suser`` (the actor), ``externalId`` (the event id), ``cn1`` = seq, ``cs1`` =
subject, ``cs2`` = detail (compact JSON, cut at :data:`DETAIL_MAX` characters), ``cs3`` = hash
and ``cs4`` = prev_hash, each custom field with its ``…Label``. Escaping follows the CEF
standard: in the header ``\\`` and ``|`` get a backslash, in the extension ``\\`` and ``=`` do and
line breaks become ``\\n`` / ``\\r``; other control characters become U+FFFD, so no value can
end a header field, start a key or split a syslog frame.

**Syslog.** Each CEF line is the MSG of an RFC 5424 message
(``<PRI>1 TIMESTAMP HOSTNAME quell - audit - CEF:0|…``; facility 13, "log audit", unless told
otherwise; syslog severity warning, notice or informational after the CEF severity). UDP sends
one datagram per message; TCP and TLS frame each with its octet count (RFC 6587, RFC 5425).

Details never hold a secret (the audit log records names of secrets, never values), and the
export adds nothing but what the trail holds.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import orjson

from quell import __version__
from quell.errors import InvalidInput, UpstreamUnavailable
from quell.governance.audit import AuditEvent

DETAIL_MAX = 4000  # characters of detail JSON in cs2 (ArcSight's custom string limit)
NAME_MAX = 512
FACILITY_AUDIT = 13  # "log audit" (RFC 5424)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_SPECIAL = re.compile(r"[\\|]")
_EXTENSION_SPECIAL = re.compile(r"[\\=\r\n]")
_EXTENSION_ESCAPES = {"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"}
_HOSTNAME_BAD = re.compile(r"[^\x21-\x7e]")

# The CEF severity of an action: the first rule whose word is in the action's name wins.
SEVERITY_RULES: tuple[tuple[str, int], ...] = (
    ("kill_switch_on", 8),
    ("refuse", 7),
    ("blocked", 7),
    ("breaker", 7),
    ("denied", 7),
    ("failed", 6),
    ("hold", 5),
    ("revert", 5),
    ("remove", 5),
    ("disable", 5),
    ("secret", 5),
    ("set_role", 5),
    ("retired", 5),
    ("rotation", 5),
)
DEFAULT_SEVERITY = 3


class Protocol(StrEnum):
    """How syslog messages travel."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


# -- JSON Lines ----------------------------------------------------------------------------------


def json_line(event: AuditEvent) -> bytes:
    """One event as one line of JSON (with its newline)."""
    return orjson.dumps(event.as_dict()) + b"\n"


def write_json_lines(events: Iterable[AuditEvent], out: IO[bytes]) -> int:
    """Write each event as a line; how many were written."""
    count = 0
    for event in events:
        out.write(json_line(event))
        count += 1
    return count


# -- CEF -----------------------------------------------------------------------------------------


def cef_severity(action: str) -> int:
    """The CEF severity (0-10) of an action (:data:`SEVERITY_RULES`)."""
    for word, severity in SEVERITY_RULES:
        if word in action:
            return severity
    return DEFAULT_SEVERITY


def _clean(value: str) -> str:
    return _CONTROL.sub("\ufffd", value)


def escape_header(value: str) -> str:
    """A CEF header field: ``\\`` and ``|`` escaped, line breaks made spaces."""
    value = _clean(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return _HEADER_SPECIAL.sub(lambda match: "\\" + match.group(0), value)


def escape_extension(value: str) -> str:
    """A CEF extension value: ``\\``, ``=`` and line breaks escaped."""
    return _EXTENSION_SPECIAL.sub(lambda match: _EXTENSION_ESCAPES[match.group(0)], _clean(value))


def _millis(at: datetime) -> int:
    return (at.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)


def to_cef(event: AuditEvent, *, version: str = __version__) -> str:
    """The event as one CEF line (no syslog header)."""
    name = f"{event.action} {event.subject}" if event.subject else event.action
    detail = orjson.dumps(event.detail, option=orjson.OPT_SORT_KEYS).decode()
    if len(detail) > DETAIL_MAX:
        detail = detail[: DETAIL_MAX - 1] + "…"
    pairs: list[tuple[str, str]] = [
        ("rt", str(_millis(event.at))),
        ("cat", event.action.split(".", 1)[0]),
        ("act", event.action),
        ("suser", event.actor),
        ("externalId", event.id),
        ("cn1Label", "seq"),
        ("cn1", str(event.seq)),
    ]
    if event.subject is not None:
        pairs += [("cs1Label", "subject"), ("cs1", event.subject)]
    pairs += [
        ("cs2Label", "detail"),
        ("cs2", detail),
        ("cs3Label", "hash"),
        ("cs3", event.hash),
        ("cs4Label", "prev_hash"),
        ("cs4", event.prev_hash),
    ]
    header = "|".join(
        escape_header(part)
        for part in (
            "CEF:0",
            "Quell",
            "Quell",
            version,
            event.action,
            name[:NAME_MAX],
            str(cef_severity(event.action)),
        )
    )
    extension = " ".join(f"{key}={escape_extension(value)}" for key, value in pairs)
    return f"{header}|{extension}"


# -- syslog --------------------------------------------------------------------------------------


def syslog_hostname(name: str | None = None) -> str:
    """A HOSTNAME field for RFC 5424: printable ASCII without spaces, at most 255; ``-`` if
    there is none."""
    cleaned = _HOSTNAME_BAD.sub("", name if name is not None else socket.gethostname())[:255]
    return cleaned or "-"


def _syslog_severity(cef: int) -> int:
    if cef >= 7:
        return 4  # warning
    if cef >= 5:
        return 5  # notice
    return 6  # informational


def to_syslog(
    event: AuditEvent,
    *,
    hostname: str,
    facility: int = FACILITY_AUDIT,
    version: str = __version__,
) -> bytes:
    """The event as an RFC 5424 message whose MSG is its CEF line (no transport framing)."""
    pri = facility * 8 + _syslog_severity(cef_severity(event.action))
    stamp = event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = f"<{pri}>1 {stamp} {hostname} quell - audit - "
    return (header + to_cef(event, version=version)).encode()


@dataclass(frozen=True)
class SyslogTarget:
    """Where to send: ``HOST:PORT`` (``[::1]:6514`` for an IPv6 address)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SyslogTarget:
        """Read ``HOST:PORT``; InvalidInput naming the problem."""
        host, colon, port = text.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(
                f"a syslog target is HOST:PORT with a port from 1 to 65535, not {text!r}",
                field="syslog",
            )
        return cls(host, int(port))


def tls_context(
    ca_file: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context that checks the server's certificate and name (against ``ca_file``, else
    the system's CAs), with a client certificate when given."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot load the TLS files: {exc}", field="tls") from None
    return context


class SyslogSender:
    """Sends syslog messages to one target over UDP, TCP or TLS (blocking sockets)."""

    def __init__(
        self,
        target: SyslogTarget,
        protocol: Protocol,
        *,
        context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.protocol = protocol
        self._socket: socket.socket | None = None
        try:
            if protocol is Protocol.UDP:
                family, kind, proto, _, address = socket.getaddrinfo(
                    target.host, target.port, type=socket.SOCK_DGRAM
                )[0]
                udp = socket.socket(family, kind, proto)
                udp.settimeout(timeout)
                udp.connect(address)
                self._socket = udp
                return
            stream = socket.create_connection((target.host, target.port), timeout=timeout)
            if protocol is Protocol.TLS:
                context = context or tls_context()
                try:
                    stream = context.wrap_socket(stream, server_hostname=target.host)
                except BaseException:
                    stream.close()
                    raise
            self._socket = stream
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(
                f"cannot reach the syslog receiver {target.host}:{target.port} over "
                f"{protocol.value}: {exc}",
                target=f"{target.host}:{target.port}",
            ) from None

    def send(self, message: bytes) -> None:
        """Send one message, framed for the protocol."""
        assert self._socket is not None
        try:
            if self.protocol is Protocol.UDP:
                self._socket.send(message)
            else:
                self._socket.sendall(b"%d " % len(message) + message)
        except OSError as exc:
            raise UpstreamUnavailable(
                f"sending to {self.target.host}:{self.target.port} failed: {exc}",
                target=f"{self.target.host}:{self.target.port}",
            ) from None

    def close(self) -> None:
        """Close the connection (TLS: with its close_notify)."""
        if self._socket is None:
            return
        try:
            if isinstance(self._socket, ssl.SSLSocket):
                self._socket.unwrap()
        except (OSError, ssl.SSLError):
            pass  # the receiver hung up first: everything was sent already
        finally:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def send_events(
    events: Iterable[AuditEvent],
    sender: SyslogSender,
    *,
    hostname: str,
    facility: int = FACILITY_AUDIT,
) -> tuple[int, int | None]:
    """Send each event as CEF over syslog: how many were sent, and the last seq sent."""
    count, last = 0, None
    for event in events:
        sender.send(to_syslog(event, hostname=hostname, facility=facility))
        count, last = count + 1, event.seq
    return count, last


__all__ = [
    "DEFAULT_SEVERITY",
    "DETAIL_MAX",
    "FACILITY_AUDIT",
    "SEVERITY_RULES",
    "Protocol",
    "SyslogSender",
    "SyslogTarget",
    "cef_severity",
    "escape_extension",
    "escape_header",
    "json_line",
    "send_events",
    "syslog_hostname",
    "tls_context",
    "to_cef",
    "to_syslog",
    "write_json_lines",
]
