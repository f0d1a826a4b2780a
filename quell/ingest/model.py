"""The normalized alert, aligned with the OCSF Detection Finding (class 2004).

Parsers turn a vendor record into an :class:`Alert` with its content fields filled; the ingest
pipeline then assigns identity (id, source, fingerprint), timing of receipt and deduplication
counters, and adds the observables it extracts. Plain slotted dataclasses, not pydantic: an
ingest batch builds tens of thousands of them per second, and orjson serializes dataclasses
natively. :mod:`quell.ingest.ocsf` renders an Alert as OCSF JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any


class Severity(IntEnum):
    """OCSF ``severity_id``."""

    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5
    FATAL = 6
    OTHER = 99

    @property
    def label(self) -> str:
        """OCSF's caption: ``Informational``, ``High``, …"""
        return self.name.capitalize()


class ObservableType(StrEnum):
    """The kinds of observable Quell extracts, correlates on and enriches."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"
    URL = "url"
    EMAIL = "email"
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    FILE_NAME = "file_name"
    USER = "user"
    HOSTNAME = "hostname"
    CVE = "cve"
    ATTACK_TECHNIQUE = "attack_technique"


@dataclass(slots=True, frozen=True)
class Observable:
    """A typed value seen in an alert.

    ``role`` says where it was seen (``src``, ``dst``, ``host``, ``user``, ``file``, ``sender``,
    ``reply_to``, ``recipient``, ``url``, ``text``); ``private`` is set for IPs: True for
    RFC 1918, loopback, link-local and other non-global addresses.
    """

    type: ObservableType
    value: str
    role: str | None = None
    private: bool | None = None


@dataclass(slots=True)
class Endpoint:
    """A network endpoint or a device: OCSF ``src_endpoint``, ``dst_endpoint``, ``device``."""

    ip: str | None = None
    port: int | None = None
    hostname: str | None = None


@dataclass(slots=True)
class FileInfo:
    """A file named by an alert (or attached to an e-mail)."""

    name: str | None = None
    path: str | None = None
    size: int | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    mime_type: str | None = None


@dataclass(slots=True)
class EmailInfo:
    """A message an alert is about, such as a reported phish.

    ``auth`` holds the Authentication-Results verdicts by method: ``{"spf": "fail",
    "dkim": "none", "dmarc": "fail"}``.
    """

    sender: str | None = None
    reply_to: str | None = None
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    subject: str | None = None
    message_id: str | None = None
    date: datetime | None = None
    return_path: str | None = None
    received_from: list[str] = field(default_factory=list)
    auth: dict[str, str] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    attachments: list[FileInfo] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


class AlertStatus(StrEnum):
    """Where an alert stands. ``suppressed`` alerts were closed as benign by a rule."""

    NEW = "new"
    SUPPRESSED = "suppressed"
    CLOSED = "closed"


@dataclass(slots=True)
class Alert:
    """One normalized alert. Parsers fill the content; the pipeline fills identity."""

    # -- content, from the parser ----------------------------------------------------------
    title: str
    time: datetime  # when it happened, timezone-aware UTC
    severity: Severity = Severity.UNKNOWN
    uid: str | None = None  # the producer's own id for this alert, if it has one
    rule_uid: str | None = None  # OCSF finding_info.analytic.uid
    rule_name: str | None = None  # OCSF finding_info.analytic.name
    category: str | None = None  # e.g. "Potential Corporate Privacy Violation", "malware"
    description: str | None = None
    product: str | None = None
    vendor: str | None = None
    techniques: list[str] = field(default_factory=list)  # MITRE ATT&CK ids: T1110, T1059.001
    src: Endpoint | None = None
    dst: Endpoint | None = None
    host: Endpoint | None = None  # the device the alert is about
    user: str | None = None
    file: FileInfo | None = None
    url: str | None = None
    email: EmailInfo | None = None
    observables: list[Observable] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # vendor fields worth keeping
    # -- identity and bookkeeping, from the pipeline -------------------------------------------
    id: str = ""
    source: str = ""
    format: str = ""
    fingerprint: str = ""
    count: int = 1
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    received_at: datetime | None = None
    status: AlertStatus = AlertStatus.NEW
    incident_id: str | None = None
    raw: bytes = b""
