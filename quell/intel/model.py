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
    withdrawn: list[IndicatorRecord] = field(default_factory=list)
    """Values the input's own items no longer assert as detections (a MISP attribute deleted,
    or set ``to_ids: false``): each stops the stored indicator that item made, if it is still
    that item's (its first STIX id), and nothing else."""

    def extend(self, other: Parsed) -> None:
        self.records.extend(other.records)
        self.unsupported.extend(other.unsupported)
        self.sightings.extend(other.sightings)
        self.withdrawn.extend(other.withdrawn)


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
    withdrawn: int = 0  # stored indicators stopped because their item no longer asserts them

    def as_dict(self, *, items: int = 50) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "expired": self.expired,
            "unsupported": self.unsupported,
            "sightings": self.sightings,
            "withdrawn": self.withdrawn,
            "unsupported_items": [u.as_dict() for u in self.unsupported_items[:items]],
        }


# -- normalization -------------------------------------------------------------------------------


def keyed(record: IndicatorRecord) -> tuple[str, IndicatorType, MatchKind, str]:
    """``(key, type, match, canonical value)`` of a record; :class:`IntelError` when invalid.

    An IP given with a prefix becomes a range (a full-length prefix is the address itself);
    a range's host bits are cleared (``10.1.2.3/8`` is ``10.0.0.0/8``)."""
    return indicator_key(record.type, record.value, record.match)


def indicator_key(
    type_: IndicatorType | str, value: str, match: MatchKind | str = MatchKind.EXACT
) -> tuple[str, IndicatorType, MatchKind, str]:
    """See :func:`keyed`. No cache: a feed's values are all different, and the common forms
    (dotted IPv4, lower-case hex, plain URLs) take a short path of plain string operations."""
    text = value.strip()
    if not text:
        raise IntelError(f"empty {type_} value")
    if len(text) > MAX_VALUE_CHARS:
        raise IntelError(f"{type_} value longer than {MAX_VALUE_CHARS} characters")
    kind = _TYPES.get(type_)
    if kind is None:
        raise IntelError(f"unknown indicator type {type_!r}")
    how = _MATCHES.get(match)
    if how is None:
        raise IntelError(f"unknown match {match!r}: use exact, cidr or subdomain")
    return _KEYERS[kind](kind, text, how)


def _hash_key(
    kind: IndicatorType, text: str, how: MatchKind
) -> tuple[str, IndicatorType, MatchKind, str]:
    _exact_only(kind, how)
    digest = text.lower()
    if len(digest) != HASH_TYPES[kind] or not _HEX.issuperset(digest):
        raise IntelError(f"not a {kind} digest ({HASH_TYPES[kind]} hex digits): {text!r}")
    return f"{kind}:{digest}", kind, how, digest


def _domain_key(
    kind: IndicatorType, text: str, how: MatchKind
) -> tuple[str, IndicatorType, MatchKind, str]:
    if how is MatchKind.CIDR:
        raise IntelError("a domain cannot match as a network range")
    wild = how is MatchKind.SUBDOMAIN or text.startswith("*.")
    host = canonical_host(_fanged(text).removeprefix("*."))
    if host is None or "." not in host:
        raise IntelError(f"not a domain name: {text!r}")
    if wild:
        return f"dn*:{host}", kind, MatchKind.SUBDOMAIN, host
    return f"dn:{host}", kind, MatchKind.EXACT, host


def _url_key(
    kind: IndicatorType, text: str, how: MatchKind
) -> tuple[str, IndicatorType, MatchKind, str]:
    _exact_only(kind, how)
    url = normalize_url(text)
    if url is None:
        raise IntelError(f"not a URL: {text!r}")
    return f"url:{url}", kind, how, url


def _email_key(
    kind: IndicatorType, text: str, how: MatchKind
) -> tuple[str, IndicatorType, MatchKind, str]:
    _exact_only(kind, how)
    email = clean_email(_fanged(text))
    if email is None:
        raise IntelError(f"not an e-mail address: {text!r}")
    return f"email:{email}", kind, how, email


def _exact_only(kind: IndicatorType, how: MatchKind) -> None:
    if how is not MatchKind.EXACT:
        raise IntelError(f"a {kind} indicator matches exactly, not by {how}")


def _fanged(text: str) -> str:
    """``refang`` only when something in the text could be defanged (most values are not)."""
    if "[" in text or "(" in text or "{" in text or "hxx" in text or "fxp" in text:
        return refang(text)
    return text


def ipv4_int(text: str) -> int | None:
    """A dotted-quad IPv4 address as an integer, without ``ipaddress`` (ten times faster);
    None for anything else (leading zeros too, as ``ipaddress`` refuses them)."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    number = 0
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()):
            return None
        if len(part) > 1 and part[0] == "0":
            return None
        octet = int(part)
        if octet > 255:
            return None
        number = number << 8 | octet
    return number


def _ip_key(
    kind: IndicatorType, text: str, how: MatchKind
) -> tuple[str, IndicatorType, MatchKind, str]:
    if how is MatchKind.SUBDOMAIN:
        raise IntelError("an IP address cannot match by subdomain")
    text = _fanged(text)
    if kind is IndicatorType.IPV4 and "/" not in text and ipv4_int(text) is not None:
        return f"ip:{text}", kind, MatchKind.EXACT, text
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
        else:
            network = ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        raise IntelError(f"not an IP address or network: {text!r}") from None
    found = IndicatorType.IPV4 if network.version == 4 else IndicatorType.IPV6
    if found is not kind:
        raise IntelError(f"{text!r} is an {found} value, not {kind}")
    if network.num_addresses == 1:
        address = str(network.network_address)
        return f"ip:{address}", kind, MatchKind.EXACT, address
    return f"net:{network}", kind, MatchKind.CIDR, str(network)


_TYPES: dict[str, IndicatorType] = {str(t): t for t in IndicatorType}
_MATCHES: dict[str, MatchKind] = {str(m): m for m in MatchKind}
_KEYERS = {
    IndicatorType.IPV4: _ip_key,
    IndicatorType.IPV6: _ip_key,
    IndicatorType.DOMAIN: _domain_key,
    IndicatorType.URL: _url_key,
    IndicatorType.EMAIL: _email_key,
    IndicatorType.MD5: _hash_key,
    IndicatorType.SHA1: _hash_key,
    IndicatorType.SHA256: _hash_key,
}


def normalize_url(text: str) -> str | None:
    """A URL as the store matches it: refanged; scheme and host lower-case; default port,
    fragment and user info dropped; an empty path is ``/``. None when it is not a URL.

    The common form (``scheme://host[:port]/path?query``, no user info, no IPv6 brackets,
    no defanging) is split by hand; anything else goes through ``urlsplit``."""
    if len(text) > MAX_VALUE_CHARS:
        return None
    raw = _fanged(text.strip())
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return None
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        return None
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1 and found < end:
            end = found
    authority, tail = rest[:end], rest[end:]
    if "@" in authority or "[" in authority or "\\" in authority:
        return _normalize_url_slowly(raw)
    host, colon, port_text = authority.partition(":")
    port: int | None = None
    if colon:
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            return None
        port = int(port_text)
    shown = _url_host(host)
    if shown is None:
        return None
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        shown = f"{shown}:{port}"
    tail = tail.partition("#")[0]
    if not tail or tail[0] == "?":
        tail = "/" + tail
    url = f"{scheme}://{shown}{tail}"
    return url if len(url) <= MAX_VALUE_CHARS else None


def _url_host(host: str) -> str | None:
    if host and host[-1].isdigit() and ipv4_int(host) is not None:
        return host
    info = ip_info(host) if host and (host[-1].isdigit() or ":" in host) else None
    if info is not None:
        return info[1] if ":" not in info[1] else f"[{info[1]}]"
    return canonical_host(host) if host else None


def _normalize_url_slowly(raw: str) -> str | None:
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or not parts.hostname:
        return None
    shown = _url_host(parts.hostname)
    if shown is None:
        return None
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        shown = f"{shown}:{port}"
    url = urlunsplit((scheme, shown, parts.path or "/", parts.query, ""))
    return url if len(url) <= MAX_VALUE_CHARS else None


_SCHEMES = frozenset(("http", "https", "ftp", "ftps", "sftp", "ws", "wss"))
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


class Probe:
    """An observable ready to look up: its canonical value, its exact key, and for IPs the
    integer and version the range search needs, for domains the ``dn*:`` keys of the name and
    every parent domain. (A plain slotted class: built once per lookup, so it must be cheap.)"""

    __slots__ = ("ip", "key", "parents", "type", "value", "version")

    def __init__(
        self,
        type_: IndicatorType,
        value: str,
        key: str,
        ip: int | None = None,
        version: int | None = None,
        parents: tuple[str, ...] = (),
    ) -> None:
        self.type = type_
        self.value = value
        self.key = key
        self.ip = ip
        self.version = version
        self.parents = parents

    def __repr__(self) -> str:
        return f"Probe({self.type}, {self.value!r})"

    def candidates(self, prefixes: dict[int, tuple[int, ...]] | None = None) -> list[str]:
        """Every key that could match: exact, subdomain parents, and each network of the
        prefix lengths given (all lengths when None)."""
        found = [self.key, *self.parents]
        if self.ip is not None and self.version is not None:
            bits = 32 if self.version == 4 else 128
            lengths = range(bits) if prefixes is None else prefixes.get(self.version, ())
            for length in lengths:
                network = self.ip >> (bits - length) << (bits - length)
                address = ipaddress.IPv6Address(network) if self.version == 6 else _v4(network)
                found.append(f"net:{address}/{length}")
        return found


def _v4(number: int) -> str:
    return f"{number >> 24}.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"


def probe(type_: str, value: str) -> Probe | None:
    """The probe for an observable (``type_`` an indicator or ingest observable type), or None
    when the type cannot carry an indicator or the value is not well formed."""
    kind = OBSERVABLE_TYPES.get(type_)
    if kind is None:
        return None
    text = value.strip()
    if kind is IndicatorType.IPV4:
        number = ipv4_int(text)
        if number is not None:  # the common case, without the general path's checks
            return Probe(kind, text, "ip:" + text, number, 4)
    if kind is IndicatorType.DOMAIN:
        name = text.rstrip(".").lower()
        # The common case: already a plain ASCII name. Only what the index could hold is
        # looked for, so a name that is not one (a stray character) takes the full path.
        if 3 <= len(name) <= 253 and "." in name and _HOST_CHARS.issuperset(name):
            return _domain_probe(name)
    elif kind is IndicatorType.EMAIL:
        address = text.lower()
        if address.count("@") == 1 and _EMAIL_CHARS.issuperset(address):
            host = address.rpartition("@")[2]
            if "." in host and not host.startswith(".") and not address.startswith("@"):
                return Probe(kind, address, "email:" + address)
    if kind is IndicatorType.URL and "://" not in text:
        # Alerts keep a URL written without a scheme (evil.example/login) as it was; feeds
        # that list one mean http.
        text = "http://" + text
    try:
        key, kind, _, canonical = _KEYERS[kind](kind, text, MatchKind.EXACT)
    except IntelError:
        return None
    if kind is IndicatorType.IPV4 or kind is IndicatorType.IPV6:
        ip = ipaddress.ip_address(canonical)
        return Probe(kind, canonical, key, int(ip), ip.version)
    if kind is IndicatorType.DOMAIN:
        return _domain_probe(canonical)
    return Probe(kind, canonical, key)


def _domain_probe(name: str) -> Probe:
    parents: list[str] = []  # the name and each parent, down to a registrable name
    start = 0
    while (dot := name.find(".", start)) != -1:
        parents.append("dn*:" + name[start:])
        start = dot + 1
    return Probe(IndicatorType.DOMAIN, name, "dn:" + name, parents=tuple(parents))


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_EMAIL_CHARS = _HOST_CHARS | frozenset("+@")
