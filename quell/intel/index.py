"""The indicator store held in memory, for enrichment at ingest speed.

The database answers one lookup in a fraction of a millisecond; enrichment asks several for
every alert, tens of thousands a second, so every process that enriches keeps the live
indicators in memory and refreshes them from the database's ``updated_at`` index every few
seconds.

Layout (the keys of :mod:`quell.intel.model`):

- exact values (addresses, domains, ``dn*:`` parents, URLs, hashes, e-mail) in one dict from
  key to the entries of the sources that gave it;
- ranges in one dict per (IP version, prefix length), from the network's integer to entries,
  so an address is tried against only the prefix lengths some range has: an integer shift and
  a dict probe each.

An entry is ``(source, confidence, severity_id, tlp, valid_until as epoch seconds or None)``.
Equal entries are stored once (a feed's indicators mostly share their metadata), so a million
indicators cost about the size of their keys. Expiry is checked at lookup: an indicator that
expires between two refreshes stops matching on time.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from quell.intel.model import HASH_TYPES, Probe, ipv4_int, probe

Entry = tuple[str, int | None, int | None, int, float | None]

_HASH_LENGTHS = {str(kind): length for kind, length in HASH_TYPES.items()}
_HEX = frozenset("0123456789abcdef")


class IndexHit(NamedTuple):
    """A live indicator that matched: its key and its entry. (A named tuple: one is built per
    match, on the enrichment hot path.)"""

    key: str
    source: str
    confidence: int | None
    severity_id: int | None
    tlp: int
    valid_until: float | None


class IntelIndex:
    """Live indicators (and the allow-list) of the store, in memory. Thread-safe to read while
    a refresh runs: each change replaces a dict value in one step."""

    def __init__(self) -> None:
        self._exact: dict[str, tuple[Entry, ...]] = {}
        self._nets: dict[tuple[int, int], dict[int, tuple[Entry, ...]]] = {}
        self._lengths: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        # Per IP version, (prefix length, shift, table) longest first: what a lookup walks.
        self._ranges: dict[int, tuple[tuple[int, int, dict[int, tuple[Entry, ...]]], ...]] = {
            4: (),
            6: (),
        }
        self._allowed: dict[str, str] = {}  # key -> reason
        self._allowed_lengths: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        self._allowed_ranges: dict[int, tuple[tuple[int, dict[int, str]], ...]] = {4: (), 6: ()}
        self._interned: dict[Entry, Entry] = {}
        self._lock = threading.Lock()
        self.size = 0
        self.loaded_at: datetime | None = None
        self.refreshed_monotonic = 0.0

    # -- building -------------------------------------------------------------------------------

    def put(self, key: str, entry: Entry) -> None:
        """Add or replace ``entry``'s source's indicator at ``key``."""
        self._set(key, entry[0], self._interned.setdefault(entry, entry))

    def drop(self, key: str, source: str) -> None:
        """Remove ``source``'s indicator at ``key`` (expired, revoked or deleted)."""
        self._set(key, source, None)

    def _set(self, key: str, source: str, entry: Entry | None) -> None:
        table, slot = self._slot(key)
        old = table.get(slot, ())
        kept = tuple(e for e in old if e[0] != source)
        self.size += (entry is not None) - (len(old) - len(kept))
        new = (*kept, entry) if entry is not None else kept
        if new:
            table[slot] = new
        else:
            table.pop(slot, None)

    def _slot(self, key: str) -> tuple[dict[Any, tuple[Entry, ...]], Any]:
        if not key.startswith("net:"):
            return self._exact, key
        network, _, length_text = key[4:].rpartition("/")
        length = int(length_text)
        found = probe("ipv6" if ":" in network else "ipv4", network)
        if found is None or found.ip is None or found.version is None:
            raise ValueError(f"not a network key: {key!r}")
        bits = 32 if found.version == 4 else 128
        table = self._nets.get((found.version, length))
        if table is None:
            table = self._nets[(found.version, length)] = {}
            lengths = tuple(sorted({*self._lengths[found.version], length}, reverse=True))
            self._lengths[found.version] = lengths
            self._ranges[found.version] = tuple(
                (n, bits - n, self._nets[(found.version, n)]) for n in lengths
            )
        return table, found.ip >> (bits - length)

    def load(self, rows: Iterable[Sequence[Any]], *, now: datetime) -> int:
        """Apply rows of :meth:`quell.intel.store.IntelStore.iter_live` (a full load or the
        changes since the last refresh); returns how many were applied."""
        count = 0
        cutoff = now.timestamp()
        with self._lock:
            for key, source, confidence, severity_id, tlp, valid_until, revoked, _updated in rows:
                until = valid_until.timestamp() if valid_until is not None else None
                if revoked or (until is not None and until <= cutoff):
                    self.drop(key, source)
                else:
                    self.put(key, (source, confidence, severity_id, tlp, until))
                count += 1
        return count

    def set_allowlist(self, entries: Iterable[tuple[str, str]]) -> None:
        """Replace the allow-list with (key, reason) pairs. Ranges are kept as the indicators'
        are: per IP version, (shift, table of network integers) longest prefix first."""
        allowed = dict(entries)
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        tables: dict[tuple[int, int], dict[int, str]] = {}
        for key, reason in allowed.items():
            if key.startswith("net:"):
                network, _, length_text = key[4:].rpartition("/")
                found = probe("ipv6" if ":" in network else "ipv4", network)
                if found is None or found.ip is None or found.version is None:
                    continue
                length = int(length_text)
                bits = 32 if found.version == 4 else 128
                lengths[found.version].add(length)
                tables.setdefault((found.version, length), {})[found.ip >> (bits - length)] = reason
        self._allowed = allowed
        self._allowed_lengths = {v: tuple(sorted(n, reverse=True)) for v, n in lengths.items()}
        self._allowed_ranges = {
            version: tuple(
                ((32 if version == 4 else 128) - n, tables[(version, n)])
                for n in self._allowed_lengths[version]
            )
            for version in (4, 6)
        }

    @property
    def empty(self) -> bool:
        """Nothing to match and nothing allowed: enrichment can skip the lookups."""
        return not self.size and not self._allowed

    # -- lookups --------------------------------------------------------------------------------

    def lookup(self, type_: str, value: str, *, now: float | None = None) -> list[IndexHit]:
        """Live indicators matching the observable (exact, parent domain or range).

        Hashes and dotted IPv4 addresses, most of what alerts carry, take a short path that
        builds no :class:`~quell.intel.model.Probe`; the rest go through :func:`probe`."""
        length = _HASH_LENGTHS.get(type_)
        if length is not None:
            digest = value.strip().lower()
            if len(digest) != length or not _HEX.issuperset(digest):
                return []
            key = f"{type_}:{digest}"
            entries = self._exact.get(key)
            hits: list[IndexHit] = []
            if entries:
                _collect(hits, key, entries, time.time() if now is None else now)
            return hits
        if type_ == "ipv4":
            text = value.strip()
            number = ipv4_int(text)
            if number is not None:
                return self._ip(4, number, "ip:" + text, time.time() if now is None else now)
        found = probe(type_, value)
        return [] if found is None else self.lookup_probe(found, now=now)

    def lookup_probe(self, found: Probe, *, now: float | None = None) -> list[IndexHit]:
        cutoff = time.time() if now is None else now
        if found.ip is not None and found.version is not None:
            return self._ip(found.version, found.ip, found.key, cutoff)
        hits: list[IndexHit] = []
        exact = self._exact
        entries = exact.get(found.key)
        if entries:
            _collect(hits, found.key, entries, cutoff)
        for parent in found.parents:
            entries = exact.get(parent)
            if entries:
                _collect(hits, parent, entries, cutoff)
        return hits

    def _ip(self, version: int, number: int, key: str, cutoff: float) -> list[IndexHit]:
        hits: list[IndexHit] = []
        entries = self._exact.get(key)
        if entries:
            _collect(hits, key, entries, cutoff)
        for length, shift, table in self._ranges[version]:
            entries = table.get(number >> shift)
            if entries:
                _collect(hits, _net_key(version, number >> shift << shift, length), entries, cutoff)
        return hits

    @property
    def has_allowlist(self) -> bool:
        return bool(self._allowed)

    def match(self, type_: str, value: str, now: float) -> tuple[str | None, list[IndexHit]]:
        """The allow-list's reason for the observable (and then no hits: it settles it), or the
        live indicators it matches. The value is normalized once for both; hashes and dotted
        IPv4 addresses take the short path."""
        allowed = self._allowed
        length = _HASH_LENGTHS.get(type_)
        if length is not None:
            digest = value.strip().lower()
            if len(digest) != length or not _HEX.issuperset(digest):
                return None, []
            key = f"{type_}:{digest}"
            if allowed:
                reason = allowed.get(key)
                if reason is not None:
                    return reason, []
            hits: list[IndexHit] = []
            entries = self._exact.get(key)
            if entries:
                _collect(hits, key, entries, now)
            return None, hits
        if type_ == "ipv4":
            text = value.strip()
            number = ipv4_int(text)
            if number is not None:
                key = "ip:" + text
                if allowed:
                    reason = allowed.get(key) or self._allowed_range(4, number)
                    if reason is not None:
                        return reason, []
                return None, self._ip(4, number, key, now)
        found = probe(type_, value)
        if found is None:
            return None, []
        if allowed:
            reason = self.allowed(found)
            if reason is not None:
                return reason, []
        return None, self.lookup_probe(found, now=now)

    def _allowed_range(self, version: int, number: int) -> str | None:
        for shift, table in self._allowed_ranges[version]:
            reason = table.get(number >> shift)
            if reason is not None:
                return reason
        return None

    def allowed(self, found: Probe) -> str | None:
        """The reason the observable is allow-listed, or None."""
        allowed = self._allowed
        if not allowed:
            return None
        reason = allowed.get(found.key)
        if reason is not None:
            return reason
        for parent in found.parents:
            reason = allowed.get(parent)
            if reason is not None:
                return reason
        if found.ip is not None and found.version is not None:
            return self._allowed_range(found.version, found.ip)
        return None


def _collect(hits: list[IndexHit], key: str, entries: tuple[Entry, ...], cutoff: float) -> None:
    for source, confidence, severity_id, tlp, until in entries:
        if until is None or until > cutoff:
            hits.append(IndexHit(key, source, confidence, severity_id, tlp, until))


def _net_key(version: int, network: int, length: int) -> str:
    if version == 4:
        text = f"{network >> 24}.{(network >> 16) & 255}.{(network >> 8) & 255}.{network & 255}"
    else:
        text = str(ipaddress.IPv6Address(network))
    return f"net:{text}/{length}"
