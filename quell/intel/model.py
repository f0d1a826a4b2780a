"""What the indicator store holds, and the one normalization every part of it shares.

An importer (STIX, TAXII, MISP, CSV) turns its input into :class:`IndicatorRecord` values; the
store keys each by :func:`indicator_key` and keeps one row per (source, key). A lookup turns an
observable into the keys that could match it (:func:`probe_keys`): the same strings, so the
in-process index and the database answer the same question the same way.

Keys (the value part is canonical: lower-case hosts, compressed IPv6, lower-case hex):

=================  ======================  ==========================================
indicator          key                     matches
=================  ======================  ==========================================
IP address         ``ip:203.0.113.7``      that address (a /32 or /128 range is one)
IP range (CIDR)    ``net:10.0.0.0/8``      every address inside
domain, exact      ``dn:evil.example``     that name only
domain, subdomain  ``dn*:evil.example``    that name and every name below it
URL                ``url:http://h/p?q``    that URL, normalized (:func:`normalize_url`)
hashes             ``sha256:ab…``          that digest (``md5:``, ``sha1:`` likewise)
e-mail address     ``email:a@b.example``   that address
=================  ======================  ==========================================
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from quell.errors import InvalidInput
from quell.ingest.observables import refang
from quell.ingest.observables._ip import ip_info
from quell.ingest.observables._values import canonical_host, clean_email

MAX_VALUE_CHARS = 2048  # the longest indicator value kept (URLs); longer is unsupported
MAX_TAGS = 64


class IndicatorType(StrEnum):
    """The kinds of indicator the store matches."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"
    URL = "url"
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    EMAIL = "email"


class MatchKind(StrEnum):
    """How an indicator matches: the value itself, a network range, or a domain and below."""

    EXACT = "exact"
    CIDR = "cidr"
    SUBDOMAIN = "subdomain"


HASH_TYPES = {IndicatorType.MD5: 32, IndicatorType.SHA1: 40, IndicatorType.SHA256: 64}
_HEX = frozenset("0123456789abcdef")


class Tlp(IntEnum):
    """Traffic Light Protocol 2.0, ordered by how far the data may go (CLEAR farthest)."""

    CLEAR = 0
    GREEN = 1
    AMBER = 2
    AMBER_STRICT = 3
    RED = 4

    @property
    def label(self) -> str:
        """``TLP:AMBER+STRICT`` and the like."""
        return "TLP:" + self.name.replace("_STRICT", "+STRICT")

    @classmethod
    def parse(cls, text: str | Tlp | None, default: Tlp | None = None) -> Tlp:
        """``red``, ``TLP:RED``, ``tlp:amber+strict``, ``white`` (TLP 1.0 for CLEAR)."""
        if isinstance(text, Tlp):
            return text
        if text is None or not str(text).strip():
            if default is None:
                raise IntelError("a TLP level is required")
            return default
        word = str(text).strip().upper().removeprefix("TLP:").removeprefix("TLP-").strip()
        word = word.replace("+", "_").replace("-", "_").replace(" ", "_")
        if word == "WHITE":
            return cls.CLEAR
        try:
            return cls[word]
        except KeyError:
            raise IntelError(
                f"unknown TLP level {text!r}: use clear, green, amber, amber+strict or red"
            ) from None


class Verdict(IntEnum):
    """How bad an observable is, ordered: a higher verdict wins when sources disagree."""

    INFO = 0
    SAFE = 1
    SUSPICIOUS = 2
    MALICIOUS = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Verdict:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise IntelError(
                f"unknown verdict {text!r}: use info, safe, suspicious or malicious"
            ) from None


class IntelError(InvalidInput):
    """Intel input that cannot be used, with what is wrong and where."""


@dataclass(slots=True)
class IndicatorRecord:
    """One indicator as an importer read it, before the store keys and keeps it.

    ``value`` is as given (``203.0.113.0/24``, ``hxxp://evil[.]example/x``): :func:`keyed`
    normalizes it. ``severity_id`` uses OCSF's scale (1 informational … 5 critical).
    """

    type: IndicatorType
    value: str
    match: MatchKind = MatchKind.EXACT
    confidence: int | None = None
    severity_id: int | None = None
    tlp: Tlp = Tlp.CLEAR
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    valid_until: datetime | None = None
    revoked: bool = False
    tags: tuple[str, ...] = ()
    kill_chain: tuple[str, ...] = ()  # "phase" or "chain:phase"
    stix_ids: tuple[str, ...] = ()
    description: str | None = None
    sightings: int = 0  # sightings the source itself reported (MISP)
    origin: str | None = None  # where in the input it came from, for error messages


@dataclass(slots=True, frozen=True)
class Unsupported:
    """An input item that is not an indicator the store can match, and why."""

    where: str
    reason: str
    text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"where": self.where, "reason": self.reason, "text": self.text}


@dataclass(slots=True)
class Parsed:
    """What an importer read: the indicators, and the items it could not turn into one."""

    records: list[IndicatorRecord] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)
    sightings: list[tuple[str, datetime, str | None]] = field(default_factory=list)
    """Sightings reported by the input, as (key, seen_at, where seen)."""

    def extend(self, other: Parsed) -> None:
        self.records.extend(other.records)
        self.unsupported.extend(other.unsupported)
        self.sightings.extend(other.sightings)


@dataclass(slots=True)
class ImportReport:
    """The counts an import reports. Each input indicator lands in exactly one bucket."""

    source: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    expired: int = 0
    unsupported: int = 0
    unsupported_items: list[Unsupported] = field(default_factory=list)
    sightings: int = 0

    def as_dict(self, *, items: int = 50) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "expired": self.expired,
            "unsupported": self.unsupported,
            "sightings": self.sightings,
            "unsupported_items": [u.as_dict() for u in self.unsupported_items[:items]],
        }


# -- normalization -------------------------------------------------------------------------------


def keyed(record: IndicatorRecord) -> tuple[str, IndicatorType, MatchKind, str]:
    """``(key, type, match, canonical value)`` of a record; :class:`IntelError` when invalid.

    An IP given with a prefix becomes a range (a full-length prefix is the address itself);
    a range's host bits are cleared (``10.1.2.3/8`` is ``10.0.0.0/8``)."""
    return indicator_key(record.type, record.value, record.match)


@lru_cache(maxsize=65536)
def indicator_key(
    type_: IndicatorType, value: str, match: MatchKind = MatchKind.EXACT
) -> tuple[str, IndicatorType, MatchKind, str]:
    """See :func:`keyed`."""
    text = value.strip()
    if not text:
        raise IntelError(f"empty {type_} value")
    if len(text) > MAX_VALUE_CHARS:
        raise IntelError(f"{type_} value longer than {MAX_VALUE_CHARS} characters")
    if type_ in (IndicatorType.IPV4, IndicatorType.IPV6):
        return _ip_key(type_, refang(text), match)
    if type_ is IndicatorType.DOMAIN:
        host = canonical_host(refang(text).removeprefix("*."))
        if host is None or "." not in host:
            raise IntelError(f"not a domain name: {value!r}")
        if match is MatchKind.CIDR:
            raise IntelError("a domain cannot match as a network range")
        wild = match is MatchKind.SUBDOMAIN or text.startswith("*.")
        if wild:
            return f"dn*:{host}", type_, MatchKind.SUBDOMAIN, host
        return f"dn:{host}", type_, MatchKind.EXACT, host
    if match is not MatchKind.EXACT:
        raise IntelError(f"a {type_} indicator matches exactly, not by {match}")
    if type_ is IndicatorType.URL:
        url = normalize_url(text)
        if url is None:
            raise IntelError(f"not a URL: {value!r}")
        return f"url:{url}", type_, match, url
    if type_ is IndicatorType.EMAIL:
        email = clean_email(refang(text))
        if email is None:
            raise IntelError(f"not an e-mail address: {value!r}")
        return f"email:{email}", type_, match, email
    digest = text.lower()
    if len(digest) != HASH_TYPES[type_] or not _HEX.issuperset(digest):
        raise IntelError(f"not a {type_} digest ({HASH_TYPES[type_]} hex digits): {value!r}")
    return f"{type_}:{digest}", type_, match, digest


def _ip_key(
    type_: IndicatorType, text: str, match: MatchKind
) -> tuple[str, IndicatorType, MatchKind, str]:
    if match is MatchKind.SUBDOMAIN:
        raise IntelError("an IP address cannot match by subdomain")
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
        else:
            network = ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        raise IntelError(f"not an IP address or network: {text!r}") from None
    found = IndicatorType.IPV4 if network.version == 4 else IndicatorType.IPV6
    if found is not type_:
        raise IntelError(f"{text!r} is an {found} value, not {type_}")
    if network.num_addresses == 1:
        address = str(network.network_address)
        return f"ip:{address}", type_, MatchKind.EXACT, address
    return f"net:{network}", type_, MatchKind.CIDR, str(network)


def normalize_url(text: str) -> str | None:
    """A URL as the store matches it: refanged; scheme and host lower-case; default port,
    fragment and user info dropped; an empty path is ``/``. None when it is not a URL."""
    return _normalize_url(text) if len(text) <= MAX_VALUE_CHARS else None


@lru_cache(maxsize=16384)
def _normalize_url(text: str) -> str | None:
    raw = refang(text.strip())
    if "://" not in raw:
        return None
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ftp", "ftps", "sftp", "ws", "wss") or not parts.hostname:
        return None
    host = parts.hostname
    info = ip_info(host)
    if info is not None:
        shown = info[1] if ":" not in info[1] else f"[{info[1]}]"
    else:
        canonical = canonical_host(host)
        if canonical is None:
            return None
        shown = canonical
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        shown = f"{shown}:{port}"
    return urlunsplit((scheme, shown, parts.path or "/", parts.query, ""))


_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ws": 80, "wss": 443}

# -- probing ---------------------------------------------------------------------------------------

# The observable types of quell.ingest that indicators can match, by their ingest names.
OBSERVABLE_TYPES = {
    "ipv4": IndicatorType.IPV4,
    "ipv6": IndicatorType.IPV6,
    "domain": IndicatorType.DOMAIN,
    "hostname": IndicatorType.DOMAIN,
    "url": IndicatorType.URL,
    "email": IndicatorType.EMAIL,
    "md5": IndicatorType.MD5,
    "sha1": IndicatorType.SHA1,
    "sha256": IndicatorType.SHA256,
}


@dataclass(slots=True, frozen=True)
class Probe:
    """An observable ready to look up: its canonical value, its exact key, and for IPs the
    integer and version the range search needs, for domains the parents to try."""

    type: IndicatorType
    value: str
    key: str
    ip: int | None = None
    version: int | None = None
    parents: tuple[str, ...] = ()  # "dn*:" keys of the name and every parent domain

    def candidates(self, prefixes: dict[int, tuple[int, ...]] | None = None) -> list[str]:
        """Every key that could match: exact, subdomain parents, and each network of the
        prefix lengths given (all lengths when None)."""
        found = [self.key, *self.parents]
        if self.ip is not None and self.version is not None:
            bits = 32 if self.version == 4 else 128
            lengths = range(bits) if prefixes is None else prefixes.get(self.version, ())
            for length in lengths:
                network = self.ip >> (bits - length) << (bits - length)
                address = ipaddress.ip_address(network) if self.version == 6 else _v4(network)
                found.append(f"net:{address}/{length}")
        return found


def _v4(number: int) -> str:
    return f"{number >> 24}.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"


@lru_cache(maxsize=65536)
def probe(type_: str, value: str) -> Probe | None:
    """The probe for an observable (``type_`` an indicator or ingest observable type), or None
    when the type cannot carry an indicator or the value is not well formed."""
    kind = OBSERVABLE_TYPES.get(type_)
    if kind is None:
        return None
    try:
        key, kind, _, canonical = indicator_key(kind, value)
    except IntelError:
        return None
    if key.startswith("ip:"):
        address = ipaddress.ip_address(canonical)
        return Probe(kind, canonical, key, int(address), address.version)
    if key.startswith("dn:"):
        labels = canonical.split(".")
        parents = tuple("dn*:" + ".".join(labels[i:]) for i in range(len(labels) - 1))
        return Probe(kind, canonical, key, parents=parents)
    return Probe(kind, canonical, key)
