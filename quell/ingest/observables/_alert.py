"""Observables of a whole alert: its structured fields first, then its title and description."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain, islice
from typing import TypeVar

from quell.ingest.model import Alert, EmailInfo, Endpoint, FileInfo, Observable, ObservableType
from quell.ingest.observables._fang import refang
from quell.ingest.observables._text import bounded, scan
from quell.ingest.observables._values import (
    MAX_OBSERVABLES,
    MAX_URL_CHARS,
    Collector,
    add_cve,
    add_email,
    add_hash,
    add_technique,
    add_url,
    canonical_host,
    is_absent,
)

_Item = TypeVar("_Item")
_IP_TYPES = (ObservableType.IPV4, ObservableType.IPV6)
_HASH_TYPES = (ObservableType.MD5, ObservableType.SHA1, ObservableType.SHA256)
# A user or file name longer than this is junk or an attack on the index, not a name.
_MAX_NAME_CHARS = 1024


def observables_of(alert: Alert) -> list[Observable]:
    """Every observable of ``alert``, de-duplicated, structured ones first, at most 256.

    Fields are read in this order, and for a ``(type, value)`` seen twice the first role is
    kept, so a structured role (``src``, ``sender``…) always beats ``text``: the src, dst and
    host endpoints (IP with ``private``, host name), the user, the file (name, hashes), the
    URL (with its host as IP or domain and registered domain), the e-mail (sender, reply-to
    and return-path with their domains; recipients; relays; URLs; attachments), ATT&CK
    techniques, the observables the parser already added (normalized the same way; invalid
    IPs and hashes dropped), then :func:`extract_text` over the title, the description and
    the e-mail subject.
    Past :data:`MAX_OBSERVABLES` the rest is dropped, text-derived ones first by that order.

    Endpoint host names stay host names (no domain is derived: most are internal assets);
    user and file names are kept as given, trimmed; placeholders such as ``-`` or ``N/A``
    and the unspecified address ``0.0.0.0`` are skipped.
    """
    found = Collector(MAX_OBSERVABLES)
    if alert.src is not None:
        _add_endpoint(found, alert.src, "src")
    if alert.dst is not None:
        _add_endpoint(found, alert.dst, "dst")
    if alert.host is not None:
        _add_endpoint(found, alert.host, "host")
    if alert.user:
        _add_user(found, alert.user, "user")
    if alert.file is not None:
        _add_file(found, alert.file, "file")
    if alert.url:
        _add_url_value(found, alert.url, "url")
    if alert.email is not None:
        _add_email_info(found, alert.email)
    for technique in _head(alert.techniques):
        add_technique(found, technique, "technique")
    for observable in _head(alert.observables):
        _add_given(found, observable)
    if alert.title and not found.full:
        scan(bounded(alert.title), "text", found)
    if alert.description and not found.full:
        scan(bounded(alert.description), "text", found)
    if alert.email is not None and alert.email.subject and not found.full:
        scan(bounded(alert.email.subject), "text", found)
    return list(found.found.values())


def _head(items: Iterable[_Item]) -> Iterator[_Item]:
    # A list field from a hostile producer may hold a million entries; no more than the bound
    # can ever be kept, so no more are read.
    return islice(items, MAX_OBSERVABLES)


def _add_endpoint(found: Collector, endpoint: Endpoint, role: str) -> None:
    if endpoint.ip:
        found.add_ip(endpoint.ip, role)
    if endpoint.hostname:
        _add_hostname(found, endpoint.hostname, role)


def _add_hostname(found: Collector, value: str, role: str | None) -> None:
    name = value.strip()
    if is_absent(name) or found.add_ip(name, role):
        return  # a producer that puts the address in the host-name field
    host = canonical_host(name)
    if host is None:
        # Not a DNS name ("John's MacBook Pro", a NetBIOS name with odd characters): still the
        # name the source correlates on, so kept, lowercase, if it is a plausible one.
        host = name.rstrip(".").lower()
        if not host or len(host) > 253 or not host.isprintable():
            return  # nothing left ("."), or not a name
    found.add(ObservableType.HOSTNAME, host, role)


def _add_relay(found: Collector, value: str) -> None:
    # A relay is an address, a host name, or a whole "from mx.example.net ([203.0.113.5])".
    relay = value[:_MAX_NAME_CHARS].strip()
    if is_absent(relay) or found.add_ip(relay, "received_from"):
        return
    host = canonical_host(relay)
    if host is not None:
        found.add(ObservableType.HOSTNAME, host, "received_from")
    else:
        scan(relay, "received_from", found)


def _add_user(found: Collector, value: str, role: str | None) -> None:
    # Kept as given (trimmed): "CORP\\alice", "alice", "alice@corp.example" are different
    # accounts to a directory. A UPN is an e-mail address too, which links the user to mail.
    user = value.strip()
    if is_absent(user) or len(user) > _MAX_NAME_CHARS:
        return
    found.add(ObservableType.USER, user, role)
    if "@" in user:
        add_email(found, user, role, with_domain=False)


def _add_file(found: Collector, file: FileInfo, role: str) -> None:
    name = (file.name or "").strip()
    if not name and file.path:
        # No name: the last component of the path, for either separator.
        path = file.path.strip()
        name = path[max(path.rfind("/"), path.rfind("\\")) + 1 :]
    if name and not is_absent(name) and len(name) <= _MAX_NAME_CHARS:
        found.add(ObservableType.FILE_NAME, name, role)
    for digest in (file.md5, file.sha1, file.sha256):
        if digest:
            add_hash(found, digest, role)


def _add_url_value(found: Collector, value: str, role: str | None) -> None:
    # A structured URL may still be defanged (a reported phish quoted by a user), or lack its
    # scheme ("evil.example/login"): then it is kept as written if its host is a real one.
    url = refang(value[: 2 * MAX_URL_CHARS].strip())
    scheme, sep, rest = url.partition("://")
    if not sep:
        add_url(found, "", url, role)
    elif scheme.isascii() and scheme.isalpha():
        add_url(found, scheme, rest, role)


def _add_email_info(found: Collector, email: EmailInfo) -> None:
    if email.sender:
        add_email(found, email.sender, "sender", with_domain=True)
    if email.reply_to:
        add_email(found, email.reply_to, "reply_to", with_domain=True)
    if email.return_path:
        add_email(found, email.return_path, "return_path", with_domain=True)
    for recipient in _head(chain(email.to, email.cc)):
        add_email(found, recipient, "recipient", with_domain=False)
    for relay in _head(email.received_from):
        _add_relay(found, relay)
    for url in _head(email.urls):
        _add_url_value(found, url, "url")
    for attachment in _head(email.attachments):
        _add_file(found, attachment, "attachment")


def _add_given(found: Collector, observable: Observable) -> None:
    """A parser's own observable, normalized like the rest; unusable values are dropped."""
    type_, role = observable.type, observable.role
    value = observable.value[: 2 * MAX_URL_CHARS].strip()
    if not value:
        return
    if type_ in _IP_TYPES:
        found.add_ip(value, role)
    elif type_ in _HASH_TYPES:
        add_hash(found, value, role)
    elif type_ is ObservableType.DOMAIN:
        host = canonical_host(refang(value))
        if host is not None:
            found.add(type_, host, role)
    elif type_ is ObservableType.HOSTNAME:
        _add_hostname(found, value, role)
    elif type_ is ObservableType.EMAIL:
        add_email(found, refang(value), role, with_domain=False)
    elif type_ is ObservableType.URL:
        _add_url_value(found, value, role)
    elif type_ is ObservableType.CVE:
        add_cve(found, value, role)
    elif type_ is ObservableType.ATTACK_TECHNIQUE:
        add_technique(found, value, role)
    elif len(value) <= _MAX_NAME_CHARS:  # user and file names: as given
        found.add(type_, value, role)
