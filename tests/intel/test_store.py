"""The indicator store on both backends: keys, idempotent imports, matching and expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from quell.clock import ManualClock
from quell.intel.model import (
    IndicatorRecord,
    IndicatorType,
    IntelError,
    MatchKind,
    Parsed,
    Tlp,
    Unsupported,
    indicator_key,
    probe,
)
from quell.intel.store import IntelStore
from quell.store.database import Database


def _records(clock: ManualClock) -> Parsed:
    return Parsed(
        records=[
            IndicatorRecord(IndicatorType.IPV4, "203.0.113.7", confidence=90, severity_id=4),
            IndicatorRecord(IndicatorType.IPV4, "198.51.100.0/24", tlp=Tlp.AMBER),
            IndicatorRecord(IndicatorType.IPV6, "2001:db8::/32"),
            IndicatorRecord(IndicatorType.DOMAIN, "evil[.]example", match=MatchKind.SUBDOMAIN),
            IndicatorRecord(IndicatorType.DOMAIN, "exact.example"),
            IndicatorRecord(IndicatorType.URL, "hxxp://Bad.Example:80/login#frag"),
            IndicatorRecord(IndicatorType.SHA256, "AB" * 32, tags=("emotet",)),
            IndicatorRecord(IndicatorType.EMAIL, "Phisher@Mail.Example"),
            IndicatorRecord(
                IndicatorType.MD5, "0" * 32, valid_until=clock.now() - timedelta(days=1)
            ),
            IndicatorRecord(IndicatorType.MD5, "not-a-hash", origin="line 9"),
        ],
        unsupported=[Unsupported("object 3", "a pattern with a qualifier", "[x] WITHIN 5")],
    )


def test_keys_are_canonical_and_bad_values_are_named() -> None:
    assert indicator_key(IndicatorType.IPV4, "10.1.2.3/8")[0] == "net:10.0.0.0/8"
    assert indicator_key(IndicatorType.IPV4, "10.1.2.3/32")[0] == "ip:10.1.2.3"
    assert indicator_key(IndicatorType.IPV6, "2001:DB8:0::1")[0] == "ip:2001:db8::1"
    assert indicator_key(IndicatorType.DOMAIN, "*.Evil.Example.")[0] == "dn*:evil.example"
    assert (
        indicator_key(IndicatorType.URL, "HTTPS://Evil.Example:443")[0]
        == "url:https://evil.example/"
    )
    with pytest.raises(IntelError, match="is an ipv6 value, not ipv4"):
        indicator_key(IndicatorType.IPV4, "::1")
    with pytest.raises(IntelError, match="not a sha1 digest"):
        indicator_key(IndicatorType.SHA1, "abc")
    assert probe("ipv4", "10.9.8.7") is not None
    assert "dn*:evil.example" in probe("domain", "a.b.evil.example").candidates()  # type: ignore[union-attr]
    assert probe("user", "alice") is None


def test_import_counts_and_is_idempotent(database: Database, clock: ManualClock) -> None:
    store = IntelStore(database, clock)
    first = store.apply("feed-a", _records(clock))
    assert (first.added, first.updated, first.unchanged, first.expired, first.unsupported) == (
        8,
        0,
        0,
        1,
        2,
    )
    assert "not a md5 digest" in first.unsupported_items[0].reason
    clock.advance(timedelta(minutes=5))
    again = store.apply("feed-a", _records(clock))
    assert (again.added, again.updated, again.unchanged, again.expired) == (0, 0, 8, 1)

    changed = _records(clock)
    changed.records[0].confidence = 40
    third = store.apply("feed-a", changed)
    assert (third.added, third.updated, third.unchanged) == (0, 1, 7)
    # The same value from another source is its own row: each source is a reason.
    store.apply("feed-b", Parsed([IndicatorRecord(IndicatorType.IPV4, "203.0.113.7")]))
    assert sorted(h.source for h in store.lookup("ipv4", "203.0.113.7")) == ["feed-a", "feed-b"]


def test_lookups_match_ranges_subdomains_and_normalized_urls(
    database: Database, clock: ManualClock
) -> None:
    store = IntelStore(database, clock)
    store.apply("feed-a", _records(clock))
    assert [h.value for h in store.lookup("ipv4", "198.51.100.200")] == ["198.51.100.0/24"]
    assert store.lookup("ipv4", "198.51.101.1") == []
    assert [h.value for h in store.lookup("ipv6", "2001:db8:ffff::9")] == ["2001:db8::/32"]
    assert [h.match for h in store.lookup("domain", "x.y.evil.example")] == ["subdomain"]
    assert store.lookup("domain", "sub.exact.example") == []
    assert len(store.lookup("domain", "exact.example")) == 1
    assert len(store.lookup("url", "http://bad.example/login")) == 1
    assert len(store.lookup("email", "phisher@mail.example")) == 1
    assert store.lookup("md5", "0" * 32) == []  # expired: kept, never matches
    assert len(store.lookup("md5", "0" * 32, include_expired=True)) == 1


def test_an_internationalized_domain_is_the_name_dns_resolves(
    database: Database, clock: ManualClock
) -> None:
    # IDNA 2008 (UTS #46, non-transitional), as registries and browsers have it: straße is
    # xn--strae-oqa, and strasse.example is somebody else's domain (IDNA 2003 folded ß to ss).
    assert indicator_key(IndicatorType.DOMAIN, "Straße.example")[0] == "dn:xn--strae-oqa.example"
    assert indicator_key(IndicatorType.DOMAIN, "bücher.example")[0] == "dn:xn--bcher-kva.example"
    store = IntelStore(database, clock)
    store.apply("feed-a", Parsed(records=[IndicatorRecord(IndicatorType.DOMAIN, "straße.example")]))
    assert len(store.lookup("domain", "xn--strae-oqa.example")) == 1
    assert len(store.lookup("domain", "straße.example")) == 1
    assert store.lookup("domain", "strasse.example") == []


def test_a_failed_import_leaves_the_store_unchanged(database: Database, clock: ManualClock) -> None:
    store = IntelStore(database, clock)
    store.apply("feed-a", _records(clock))
    before = store.counts()
    bad = _records(clock)
    bad.records.append(IndicatorRecord(IndicatorType.URL, "http://ok.example/x"))
    bad.sightings.append(("url:http://ok.example/x", "not a time", None))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        store.apply("feed-a", bad)
    assert store.counts() == before
    assert store.lookup("url", "http://ok.example/x") == []


def test_allow_list_covers_subdomains_and_ranges(database: Database, clock: ManualClock) -> None:
    store = IntelStore(database, clock)
    entry = store.allow("domain", "Google.com", "corporate mail", by="alice")
    store.allow("ipv4", "10.0.0.0/8", "internal", by="alice")
    assert store.allowed(probe("domain", "mail.google.com")) == entry  # type: ignore[arg-type]
    assert store.allowed(probe("ipv4", "10.20.30.40")) is not None  # type: ignore[arg-type]
    assert store.allowed(probe("domain", "google.com.evil.example")) is None  # type: ignore[arg-type]
    with pytest.raises(IntelError, match="needs a reason"):
        store.allow("domain", "x.example", "  ", by="alice")
    store.disallow("google.com")
    assert [a.value for a in store.allowlist()] == ["10.0.0.0/8"]
