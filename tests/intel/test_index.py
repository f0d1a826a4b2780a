"""The in-memory index answers exactly as the database does (both backends), and keeps up with
changes: updates, expiry, revocation and the allow-list."""

from __future__ import annotations

import random
from datetime import timedelta

from quell.clock import ManualClock
from quell.intel.enrich import AlertEnricher
from quell.intel.model import IndicatorRecord, IndicatorType, MatchKind, Parsed, probe
from quell.intel.store import IntelStore
from quell.store.database import Database


def _indicators(rng: random.Random) -> list[IndicatorRecord]:
    found: list[IndicatorRecord] = []
    for n in range(300):
        length = rng.choice([8, 12, 16, 20, 24, 28, 31])
        found.append(IndicatorRecord(IndicatorType.IPV4, f"10.{n % 256}.{n % 7}.0/{length}"))
        found.append(IndicatorRecord(IndicatorType.IPV4, f"192.0.2.{n % 250}"))
        found.append(IndicatorRecord(IndicatorType.IPV6, f"2001:db8:{n:x}::/48"))
        if n % 50 == 0:  # low IPv6 ranges: their networks are integers below 2**32
            found.append(IndicatorRecord(IndicatorType.IPV6, f"::{n:x}00:0/{104 + n % 8}"))
            found.append(IndicatorRecord(IndicatorType.IPV4, f"0.0.0.0/{1 + n % 7}"))
        found.append(
            IndicatorRecord(
                IndicatorType.DOMAIN,
                f"d{n}.example.org",
                match=MatchKind.SUBDOMAIN if n % 2 else MatchKind.EXACT,
            )
        )
        found.append(IndicatorRecord(IndicatorType.SHA256, f"{n:064x}"))
        found.append(IndicatorRecord(IndicatorType.URL, f"http://u{n}.example.net/p?q={n}"))
    return found


def _observables(rng: random.Random) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for _ in range(400):
        n = rng.randrange(330)
        seen += [
            ("ipv4", f"10.{rng.randrange(256)}.{rng.randrange(8)}.{rng.randrange(256)}"),
            ("ipv4", f"192.0.2.{n % 256}"),
            ("ipv6", f"2001:db8:{n:x}:{rng.randrange(9999):x}::1"),
            ("ipv6", f"::{rng.randrange(330):x}00:{rng.randrange(65535):x}"),
            ("domain", rng.choice([f"d{n}.example.org", f"www.d{n}.example.org", "example.org"])),
            ("hostname", f"a.b.d{n}.example.org"),
            ("sha256", f"{n:064X}"),
            ("url", f"HTTP://U{n}.example.net:80/p?q={n}#frag"),
        ]
    return seen


def test_the_index_answers_as_the_database(database: Database, clock: ManualClock) -> None:
    rng = random.Random(5)
    store = IntelStore(database, clock)
    store.apply("feed", Parsed(_indicators(rng)))
    enricher = AlertEnricher(store)
    enricher.refresh()
    now = clock.now().timestamp()
    matched = 0
    for type_, value in _observables(rng):
        from_db = sorted(hit.key for hit in store.lookup(type_, value))
        from_index = sorted(hit.key for hit in enricher.index.lookup(type_, value, now=now))
        assert from_index == from_db, (type_, value)
        matched += bool(from_db)
    assert 400 < matched < 3200  # both hits and misses were tried


def test_the_index_follows_changes(database: Database, clock: ManualClock) -> None:
    store = IntelStore(database, clock)
    enricher = AlertEnricher(store)
    until = clock.now() + timedelta(hours=1)
    store.apply("feed", Parsed([IndicatorRecord(IndicatorType.IPV4, "198.51.100.0/24")]))
    store.apply(
        "other",
        Parsed([IndicatorRecord(IndicatorType.IPV4, "198.51.100.7", valid_until=until)]),
    )
    enricher.refresh()
    index = enricher.index
    assert len(index.lookup("ipv4", "198.51.100.7", now=clock.now().timestamp())) == 2
    later = (until + timedelta(seconds=1)).timestamp()
    assert [h.source for h in index.lookup("ipv4", "198.51.100.7", now=later)] == ["feed"]

    clock.advance(timedelta(minutes=1))
    store.apply(
        "feed", Parsed([IndicatorRecord(IndicatorType.IPV4, "198.51.100.0/24", revoked=True)])
    )
    enricher.refresh()
    now = clock.now().timestamp()
    assert [h.source for h in index.lookup("ipv4", "198.51.100.7", now=now)] == ["other"]
    assert index.size == 1

    store.allow("ipv4", "198.51.100.7", "a test box", by="alice")
    enricher.refresh()
    address = probe("ipv4", "198.51.100.7")
    assert address is not None
    assert index.allowed(address) == "a test box"


def test_a_long_import_committed_after_a_refresh_is_still_loaded(
    database: Database, clock: ManualClock
) -> None:
    """The index loads by revision, not by time: an import whose rows commit long after they
    were stamped (a big feed) is seen by the next refresh."""
    store = IntelStore(database, clock)
    enricher = AlertEnricher(store)
    seen_during: list[int] = []

    def meanwhile(conn: object, report: object) -> None:
        clock.advance(timedelta(minutes=10))  # the import takes its time...
        enricher.refresh()  # ...and an ingest batch refreshes while it runs
        seen_during.append(enricher.index.size)

    store.apply(
        "slow-feed",
        Parsed([IndicatorRecord(IndicatorType.IPV4, "203.0.113.50")]),
        also=meanwhile,
    )
    assert seen_during == [0]
    enricher.refresh()
    assert [h.source for h in enricher.index.lookup("ipv4", "203.0.113.50", now=0)] == ["slow-feed"]
