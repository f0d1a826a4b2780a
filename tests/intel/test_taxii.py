"""TAXII 2.1 feeds against a real server (medallion), on both storage backends: full and
incremental pulls, resuming an interrupted pull from its checkpoint, and clear errors."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from quell.clock import ManualClock
from quell.intel.feeds import FeedPull, FeedService
from quell.intel.store import IntelStore
from quell.runtime import Runtime
from quell.sdk.http import OutboundPolicy
from tests.intel.taxii_server import TaxiiServer, domains, indicator

pytestmark = pytest.mark.requires("medallion")

LOOPBACK = OutboundPolicy.parse(["127.0.0.1"])  # as the connector tests allow their peers


def _service(runtime: Runtime, outbound: OutboundPolicy = LOOPBACK) -> FeedService:
    return FeedService(runtime.db, runtime.clock, runtime.secret_box, outbound=outbound)


def _add(
    service: FeedService,
    server: TaxiiServer,
    collection: str,
    *,
    name: str = "taxii-feed",
    password: str | None = None,
    url: str | None = None,
    **settings: Any,
) -> None:
    service.add(
        name,
        kind="taxii",
        url=url or server.discovery_url,
        settings={"collection": collection, "page_size": 3, **settings},
        secret={"username": server.username, "password": password or server.password},
        interval="1h",
    )


def _pull(service: FeedService, name: str = "taxii-feed") -> FeedPull:
    return asyncio.run(service.pull(name))


def _counts(outcome: FeedPull) -> tuple[int, int, int, int, int]:
    report = outcome.report
    assert report is not None
    return report.added, report.updated, report.unchanged, report.expired, report.unsupported


def _stored(runtime: Runtime, source: str) -> dict[str, tuple[Any, ...]]:
    rows = IntelStore(runtime.db, runtime.clock).search(source=source, limit=1000)
    return {
        row["key"]: (row["value"], row["confidence"], row["tlp"], row["description"],
                     tuple(row["stix_ids"]), row["valid_until"], row["revoked"])
        for row in rows
    }  # fmt: skip


def test_first_pull_imports_everything_and_a_second_changes_nothing(
    runtime: Runtime, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    odd = indicator("evil.exe", "process", pattern="[process:name = 'evil.exe']")
    taxii_server.add_objects(taxii_collection, [*domains(0, 10), odd], batch=4)
    service = _service(runtime)
    _add(service, taxii_server, taxii_collection, tlp="amber")

    first = _pull(service)
    assert first.ok, first.error
    assert _counts(first) == (10, 0, 0, 0, 1)
    assert first.pages == 4
    assert not first.more
    stored = _stored(runtime, "taxii-feed")
    assert len(stored) == 10
    assert stored["dn:n7.bad.example"][1:3] == (80, "TLP:AMBER")
    feed = service.get("taxii-feed")
    assert feed.status == "ok"
    assert feed.last_error is None
    assert feed.last_success_at == runtime.clock.now()
    assert feed.next_pull_at == runtime.clock.now() + timedelta(hours=1)
    assert feed.claimed_until is None
    assert feed.last_report is not None
    assert feed.last_report["added"] == 10
    position = (feed.checkpoint or {})["taxii"]
    assert position["added_after"]
    assert "next" not in position

    # Every request carried the credentials, as basic auth; pages followed `next`.
    gets = taxii_server.object_requests(taxii_collection)
    assert [r.status for r in gets] == [200] * 4
    assert all(r.authorization == "Basic" for r in gets)
    assert gets[0].param("added_after") is None
    assert gets[0].param("next") is None
    assert all(r.param("next") for r in gets[1:])
    assert all(r.param("limit") == "3" for r in gets)

    second = _pull(service)
    assert second.ok, second.error
    assert _counts(second) == (0, 0, 0, 0, 0)
    assert second.pages == 1
    asked = taxii_server.object_requests(taxii_collection)[-1]
    assert asked.param("added_after") == position["added_after"]
    assert asked.param("next") is None
    assert _stored(runtime, "taxii-feed") == stored


def test_an_incremental_pull_reads_only_what_was_added(
    runtime: Runtime, clock: ManualClock, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    taxii_server.add_objects(taxii_collection, domains(0, 6), batch=6)
    service = _service(runtime)
    # Given the API root itself rather than the server's discovery.
    _add(service, taxii_server, taxii_collection, url=taxii_server.api_root_url, page_size=50)
    before = len(taxii_server.requests())
    assert _counts(_pull(service)) == (6, 0, 0, 0, 0)
    assert [r.path for r in taxii_server.requests()[before:]] == [
        "/api1/",
        f"/api1/collections/{taxii_collection}/",
        f"/api1/collections/{taxii_collection}/objects/",
    ]
    watermark = (service.get("taxii-feed").checkpoint or {})["taxii"]["added_after"]

    newer = [*domains(100, 5), indicator("n2.bad.example", revision=1, confidence=95)]
    taxii_server.add_objects(taxii_collection, newer, batch=3)
    clock.advance(timedelta(hours=1))
    outcome = _pull(service)
    assert outcome.ok, outcome.error
    assert _counts(outcome) == (5, 1, 0, 0, 0)  # only the new ones and the new revision
    asked = taxii_server.object_requests(taxii_collection)[-1]
    assert asked.param("added_after") == watermark
    stored = _stored(runtime, "taxii-feed")
    assert len(stored) == 11
    assert stored["dn:n2.bad.example"][1] == 95


def test_a_pull_stopped_after_some_pages_resumes_from_its_checkpoint(
    runtime: Runtime, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    taxii_server.add_objects(taxii_collection, domains(0, 20), batch=5)
    service = _service(runtime)
    _add(service, taxii_server, taxii_collection, max_pages=2)  # stop after page 2

    first = _pull(service)
    assert first.ok, first.error
    assert (first.pages, first.more) == (2, True)
    assert _counts(first) == (6, 0, 0, 0, 0)
    feed = service.get("taxii-feed")
    position = (feed.checkpoint or {})["taxii"]
    assert position["next"]
    assert not position.get("inflight")
    assert feed.next_pull_at == runtime.clock.now()  # more is waiting: due again at once
    seen = len(taxii_server.object_requests(taxii_collection))

    totals = [6, 0, 0]
    pulls = 1
    while True:
        outcome = _pull(service)
        assert outcome.ok, outcome.error
        pulls += 1
        report = outcome.report
        assert report is not None
        totals = [totals[0] + report.added, totals[1] + report.updated,
                  totals[2] + report.unchanged]  # fmt: skip
        if not outcome.more:
            break
    assert pulls == 4  # 7 pages: 2 + 2 + 2 + 1
    assert totals == [20, 0, 0]  # nothing read twice
    resumed = taxii_server.object_requests(taxii_collection)[seen:]
    assert resumed[0].param("next") == position["next"]  # carried on where it stopped
    assert all(r.param("next") for r in resumed)  # never from the start again
    assert len(resumed) == 5

    # The store is what one clean, uninterrupted pull makes.
    _add(service, taxii_server, taxii_collection, name="clean-pull", page_size=100)
    clean = _pull(service, "clean-pull")
    assert _counts(clean) == (20, 0, 0, 0, 0)
    assert _stored(runtime, "taxii-feed") == _stored(runtime, "clean-pull")


def test_a_pull_killed_between_pages_loses_nothing(
    runtime: Runtime, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    taxii_server.add_objects(taxii_collection, domains(0, 30), batch=5)
    service = _service(runtime)
    _add(service, taxii_server, taxii_collection)
    store = IntelStore(runtime.db, runtime.clock)

    async def killed_after_first_pages() -> None:
        task = asyncio.create_task(service.pull("taxii-feed"))
        for _ in range(10_000):  # a page or two: then kill it
            if len(store.search(source="taxii-feed")) >= 6 or task.done():
                break
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(killed_after_first_pages())
    kept = len(_stored(runtime, "taxii-feed"))
    assert 6 <= kept < 30
    feed = service.get("taxii-feed")
    assert feed.claimed_until is None  # the cancelled pull let go of the feed
    assert feed.last_success_at is None
    assert feed.last_error is None
    before = len(taxii_server.object_requests(taxii_collection))

    outcome = _pull(service)
    assert outcome.ok, outcome.error
    assert outcome.report is not None
    assert outcome.report.added == 30 - kept
    assert outcome.report.unchanged <= 5  # at most the objects of the instant it stopped at
    resumed = taxii_server.object_requests(taxii_collection)[before:]
    assert resumed[0].param("next") or resumed[0].param("added_after")  # not from the start

    _add(service, taxii_server, taxii_collection, name="clean-pull", page_size=100)
    assert _counts(_pull(service, "clean-pull")) == (30, 0, 0, 0, 0)
    assert _stored(runtime, "taxii-feed") == _stored(runtime, "clean-pull")


def test_a_wrong_password_is_a_clear_error_on_the_feed(
    runtime: Runtime, clock: ManualClock, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    service = _service(runtime)
    _add(service, taxii_server, taxii_collection, password="not-the-password")
    outcome = _pull(service)
    assert not outcome.ok
    assert outcome.error is not None
    assert "refused the credentials" in outcome.error
    assert "HTTP 401" in outcome.error
    assert "not-the-password" not in outcome.error
    feed = service.get("taxii-feed")
    assert feed.last_error == outcome.error
    assert feed.last_error_at == clock.now()
    assert feed.status == "failing"
    assert feed.failures == 1
    assert feed.next_pull_at == clock.now() + timedelta(minutes=1)  # backoff, not the hour
    assert feed.claimed_until is None

    clock.advance(timedelta(minutes=1))
    assert not asyncio.run(service.pull_due())[0].ok
    again = service.get("taxii-feed")
    assert again.failures == 2
    assert again.next_pull_at == clock.now() + timedelta(minutes=2)
    assert taxii_server.object_requests(taxii_collection) == []


def test_a_missing_or_unreadable_collection_is_a_clear_error(
    runtime: Runtime, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    service = _service(runtime)
    _add(service, taxii_server, "no-such-collection")
    outcome = _pull(service)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("TAXII collection 'no-such-collection' not found at ")
    # The collections there are, to pick from.
    assert f"its {len(taxii_server.collections) + 1} collections: " in outcome.error
    assert taxii_server.collections[0] in outcome.error
    assert service.get("taxii-feed").last_error == outcome.error

    _add(service, taxii_server, taxii_server.unreadable, name="write-only")
    refused = _pull(service, "write-only")
    assert refused.error is not None
    assert "cannot be read" in refused.error


def test_a_page_over_the_byte_limit_is_refused(
    runtime: Runtime, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    taxii_server.add_objects(taxii_collection, domains(0, 6))
    service = _service(runtime)
    _add(service, taxii_server, taxii_collection, max_bytes=1000)  # a page of 3 is ~1.3 kB
    outcome = _pull(service)
    assert not outcome.ok
    assert outcome.error is not None
    assert "is larger than 1000 bytes" in outcome.error
    assert _stored(runtime, "taxii-feed") == {}


def test_a_loopback_server_is_refused_unless_allowed(
    runtime: Runtime, taxii_server: TaxiiServer, taxii_collection: str
) -> None:
    service = _service(runtime, OutboundPolicy())
    _add(service, taxii_server, taxii_collection)
    outcome = _pull(service)
    assert outcome.error is not None
    assert "is blocked" in outcome.error
    assert "QUELL_OUTBOUND_ALLOW" in outcome.error


def test_a_restart_instant_at_the_start_of_time_is_unreadable_not_a_crash() -> None:
    """A server's ``X-TAXII-Date-Added-Last`` of the first instant there is has no instant
    before it: the pull restarts from its own start instead of raising OverflowError."""
    from quell.intel.taxii import _before

    assert _before("2026-01-01T00:00:00Z") == "2025-12-31T23:59:59.999999Z"
    assert _before("0001-01-01T00:00:00Z") is None
    assert _before("0001-01-01T00:30:00+01:00") is None
