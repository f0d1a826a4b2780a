"""Canonical forms of observable values, and the bounded, de-duplicating collector.

Both the text scanner and the structured path (:func:`observables_of`) put what they find
through these helpers, so a value reads the same wherever it came from: lowercase domains,
host names, e-mail addresses and hashes; upper-case CVE and ATT&CK ids; URLs with a lowercase
scheme and host and the rest verbatim.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Final

import idna

from quell.ingest.model import Observable, ObservableType
from quell.ingest.observables._ip import ip_info
from quell.ingest.observables._psl import registered_domain, tlds

MAX_OBSERVABLES: Final = 256
"""At most this many observables per alert (and per :func:`extract_text` call)."""

MAX_URL_CHARS: Final = 4096
"""A URL longer than this is cut: enough for any real link, bounded for the index."""

_HOSTNAME = re.compile(
    r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
)
_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"]{1,64}@[^\s@<>()\[\],;:\"]{1,253}")
_HASH_TYPES: Final = {32: ObservableType.MD5, 40: ObservableType.SHA1, 64: ObservableType.SHA256}
_HEX_DIGITS = frozenset("0123456789abcdef")
_TECHNIQUE = re.compile(r"(?:ATTACK\.)?(T[0-9]{4}(?:\.[0-9]{3})?)(?![0-9A-Z])")
_CVE = re.compile(r"CVE-[0-9]{4}-[0-9]{4,7}")
# Placeholders that producers write for "no value" (Zeek "-", Windows "N/A", "(null)"…).
_ABSENT = frozenset(
    {"", "-", "--", "n/a", "na", "none", "null", "(null)", "nil", "unknown", "undefined"}
)
# The URL authority: optional userinfo, then a bracketed IPv6 literal or a host, then a port.
_AUTHORITY = re.compile(
    r"(?:[^/?#@]*@)?(\[[0-9A-Fa-f:.]{2,45}(?:%[^\]/?#]{0,32})?\]|[^/?#:@\[\]]+)(?::[0-9]{0,5})?"
)
# 0.0.0.0 and ::, "any address": a bind or placeholder value, never an observable.
_UNSPECIFIED = frozenset({str(ipaddress.IPv4Address(0)), str(ipaddress.IPv6Address(0))})
_URL_TRAILING = ".,;:!?'\"*"
_OPENER = {")": "(", "]": "[", "}": "{"}


# Observables are immutable values and the same few recur across an alert stream (an
# internal scanner, a user, a rule's domain): sharing instances costs 0.2 µs against 0.9 µs for
# building one. Only short values are shared, so the cache stays under ~10 MB.
_shared_observable = lru_cache(maxsize=16384)(Observable)


def _observable(
    type_: ObservableType, value: str, role: str | None, private: bool | None
) -> Observable:
    if len(value) <= 128:
        return _shared_observable(type_, value, role, private)
    return Observable(type_, value, role, private)


class Collector:
    """Observables keyed by ``(type, value)``: the first one seen wins, at most ``limit``."""

    __slots__ = ("found", "limit")

    def __init__(self, limit: int = MAX_OBSERVABLES) -> None:
        self.found: dict[tuple[ObservableType, str], Observable] = {}
        self.limit = limit

    @property
    def full(self) -> bool:
        """True once ``limit`` observables are held: callers stop scanning."""
        return len(self.found) >= self.limit

    def add(
        self, type_: ObservableType, value: str, role: str | None, private: bool | None = None
    ) -> None:
        """Keep a value unless it is already held (under any role) or the bound is reached."""
        key = (type_, value)
        if key not in self.found and len(self.found) < self.limit:
            self.found[key] = _observable(type_, value, role, private)

    def add_ip(self, value: str, role: str | None) -> bool:
        """Add an IP if ``value`` is one (the unspecified address is not an observable)."""
        info = ip_info(value)
        if info is None:
            return False
        if info[1] not in _UNSPECIFIED:
            self.add(info[0], info[1], role, info[2])
        return True


def is_absent(value: str) -> bool:
    """True for an empty value or a placeholder such as ``-`` or ``N/A``."""
    return len(value) <= 9 and value.lower() in _ABSENT


def canonical_host(host: str) -> str | None:
    """A host name lowercase, without a trailing dot, IDNs in punycode; None when malformed."""
    # Checked before the cache so that a megabyte "host name" is never kept as a cache key.
    return None if len(host) > 300 else _canonical_host(host)


@lru_cache(maxsize=16384)
def _canonical_host(host: str) -> str | None:
    name = host.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        return None
    if not name.isascii():
        converted = _to_ascii(name)
        if converted is None:
            return None
        name = converted
    return name if _HOSTNAME.fullmatch(name) else None


def _to_ascii(name: str) -> str | None:
    """An internationalized name in its ``xn--`` form as DNS and browsers have it: IDNA 2008
    with the UTS #46 mapping, non-transitional (``straße.example`` is ``xn--strae-oqa.example``,
    not ``strasse.example``, another domain). A name IDNA 2008 refuses (an emoji, say) takes
    IDNA 2003, Python's codec, as before."""
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        pass
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def has_known_tld(host: str) -> bool:
    """True when a canonical host ends in a top-level domain of the bundled list."""
    dot = host.rfind(".")
    return dot > 0 and host[dot + 1 :] in tlds()


def clean_email(value: str) -> str | None:
    """The address in ``value`` (``Name <a@b>``, ``mailto:a@b``, ``<a@b>``), lowercase, or None."""
    text = value[:1024].strip()
    if "<" in text:
        text = text[text.rfind("<") + 1 :].split(">", 1)[0]
    if text[:7].lower() == "mailto:":
        text = text[7:]
    text = text.strip().lower()
    if not _EMAIL.fullmatch(text):
        return None
    host = canonical_host(text[text.rfind("@") + 1 :])
    if host is None:
        return None
    return text[: text.rfind("@") + 1] + host


def add_email(collector: Collector, value: str, role: str | None, *, with_domain: bool) -> None:
    """Add an e-mail address, and its domain when asked (for senders, not recipients)."""
    email = clean_email(value)
    if email is None:
        return
    collector.add(ObservableType.EMAIL, email, role)
    if with_domain:
        host = email[email.rfind("@") + 1 :]
        if has_known_tld(host):
            collector.add(ObservableType.DOMAIN, host, role)


def add_hash(collector: Collector, value: str, role: str | None) -> None:
    """Add a hex digest, typed by its length (a SHA-256 in an ``md5`` field is a SHA-256)."""
    digest = value.strip().lower()
    type_ = _HASH_TYPES.get(len(digest))
    if type_ is not None and _HEX_DIGITS.issuperset(digest):
        collector.add(type_, digest, role)


def add_technique(collector: Collector, value: str, role: str | None) -> None:
    """Add an ATT&CK technique id given as ``T1059.001``, ``t1059`` or ``attack.t1059``."""
    match = _TECHNIQUE.match(value.strip().upper())
    if match is not None:
        collector.add(ObservableType.ATTACK_TECHNIQUE, match[1], role)


def add_cve(collector: Collector, value: str, role: str | None) -> None:
    """Add a CVE id, upper-case."""
    cve = value.strip().upper()
    if _CVE.fullmatch(cve):
        collector.add(ObservableType.CVE, cve, role)


def trim_url(url: str) -> str:
    """Drop the punctuation that ends the sentence around a URL, and unbalanced closers.

    ``(see http://a/b_(c))`` keeps ``b_(c)``; ``<http://a/b>.`` and ``"http://a/b",`` lose
    the trailing marks.
    """
    end = len(url)
    counts: dict[str, int] = {}  # brackets in url[:end], counted once: trimming stays linear
    while end:
        last = url[end - 1]
        if last in _OPENER and not counts:
            counts = {c: url.count(c, 0, end) for c in "()[]{}"}
        if last in _URL_TRAILING or (last in _OPENER and counts[last] > counts[_OPENER[last]]):
            if last in counts:
                counts[last] -= 1
            end -= 1
        else:
            break
    return url[:end]


def add_url(collector: Collector, scheme: str, rest: str, role: str | None) -> bool:
    """Add ``scheme://rest`` as a URL with its host as an IP or domain(s); False if malformed.

    The host becomes an observable of its own: an IP (with ``private``), or a domain plus its
    registered domain when the host ends in a known TLD. A URL's host counts even under a TLD
    that is also a file extension (``http://invoice.zip/``): the scheme says it is a host.
    An empty ``scheme`` stands for a URL written without one (``evil.example/login``), taken
    only when its host is an IP or ends in a known TLD, and kept without a scheme.
    """
    rest = rest[:MAX_URL_CHARS]
    # The same links recur across alerts (a rule's reference, a phishing kit's landing page),
    # so short ones are decomposed once; long ones are rare and would only bloat the cache.
    parts = _url_parts(scheme, rest) if len(rest) <= 256 else _url_parts.__wrapped__(scheme, rest)
    if parts is None:
        return False
    for type_, value, private in parts:
        collector.add(type_, value, role, private)
    return True


_UrlParts = tuple[tuple[ObservableType, str, bool | None], ...]


@lru_cache(maxsize=4096)
def _url_parts(scheme: str, rest: str) -> _UrlParts | None:
    rest = trim_url(rest)
    authority = _AUTHORITY.match(rest)
    if authority is None:
        return None
    tail = rest[authority.end() :]
    if tail and tail[0] not in "/?#":
        return None
    host = authority[1]
    ip = ip_info(host) if host[0] == "[" or host[-1].isdigit() else None
    canonical: str | None = None
    if ip is None:
        if host[0] == "[" or host.replace(".", "").isdigit():
            return None  # "[junk]" or 999.1.1.1: not a host
        canonical = canonical_host(host)
        if canonical is None or (not scheme and not has_known_tld(canonical)):
            return None
    start, end = authority.span(1)
    prefix = f"{scheme.lower()}://" if scheme else ""
    parts: list[tuple[ObservableType, str, bool | None]] = [
        (ObservableType.URL, f"{prefix}{rest[:start]}{host.lower()}{rest[end:]}", None)
    ]
    if ip is not None:
        if ip[1] not in _UNSPECIFIED:
            parts.append(ip)
    elif canonical is not None and has_known_tld(canonical):
        parts.append((ObservableType.DOMAIN, canonical, None))
        owner = registered_domain(canonical)
        if owner is not None and owner != canonical:
            parts.append((ObservableType.DOMAIN, owner, None))
    return tuple(parts)
