"""Scheduled intel feeds on both backends, against a local HTTP server: conditional GETs, the
byte limit, errors on the feed, claims shared by two workers, MISP feeds pulled by timestamp,
and the ``quell intel feed`` commands."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from click.testing import CliRunner
from sqlalchemy import select

from quell.cli import cli
from quell.clock import ManualClock
from quell.errors import Conflict, InvalidInput
from quell.intel.feeds import FeedPull, FeedService, run_feed_loop
from quell.intel.misp import events_of
from quell.intel.store import IntelStore
from quell.runtime import Runtime
from quell.sdk.http import OutboundPolicy
from quell.store.database import Database
from quell.store.schema import intel_feeds
from tests.fixtures.requirements import corpus_path
from tests.fixtures.webapp import serving

LOOPBACK = OutboundPolicy.parse(["127.0.0.1"])  # as the connector tests allow their peers
MIB = 1024 * 1024


class FeedSite:
    """Documents served with ETag and Last-Modified (304 on a matching validator), every
    request's headers recorded, and ``/big``: ~100 MB streamed without a length."""

    def __init__(self) -> None:
        self.documents: dict[str, tuple[bytes, str, str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.delay = 0.0
        self.big_sent = 0
        self.big_done = False
        self.users: dict[str, str] = {}
        self.versions = 0

    def put(self, path: str, body: bytes | str | dict[str, Any]) -> None:
        data = orjson.dumps(body) if isinstance(body, dict) else body
        data = data.encode() if isinstance(data, str) else data
        self.versions += 1
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        modified = f"Wed, 01 Jul 2026 10:{self.versions % 60:02d}:00 GMT"
        self.documents[path] = (data, etag, modified)

    def seen(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.requests if p == path]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/big", self._big)
        app.router.add_get("/{path:.*}", self._document)
        return app

    async def _document(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.users and request.headers.get("Authorization") not in self.users.values():
            return web.Response(status=401)
        found = self.documents.get(request.path)
        if found is None:
            return web.Response(status=404, text="no such feed")
        data, etag, modified = found
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=data, headers={"ETag": etag, "Last-Modified": modified})

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        response = web.StreamResponse()  # chunked: no Content-Length to refuse it by
        await response.prepare(request)
        chunk = b"# filler line of a very long list\n" * (MIB // 34)
        try:
            while self.big_sent < 100 * MIB:
                await response.write(chunk)
                self.big_sent += len(chunk)
        except ConnectionError:
            return response
        self.big_done = True
        await response.write_eof()
        return response


@contextmanager
def running(site: FeedSite) -> Iterator[str]:
    """Serve ``site`` (tests/fixtures/webapp.py) from a thread of its own, so that both
    ``asyncio.run`` in the test and the CLI can reach it."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = asyncio.Event()
        async with serving(site.app()) as url:
            state["url"] = url
            ready.set()
            await state["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the feed server did not start"
    try:
        yield state["url"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


@pytest.fixture
def site() -> Iterator[tuple[FeedSite, str]]:
    served = FeedSite()
    with running(served) as url:
        yield served, url


def _service(runtime: Runtime, db: Database | None = None) -> FeedService:
    return FeedService(db or runtime.db, runtime.clock, runtime.secret_box, outbound=LOOPBACK)


def _pull(service: FeedService, name: str) -> FeedPull:
    return asyncio.run(service.pull(name))


def _counts(outcome: FeedPull) -> tuple[int, int, int, int, int]:
    assert outcome.report is not None, outcome.error
    r = outcome.report
    return r.added, r.updated, r.unchanged, r.expired, r.unsupported


def _keys(runtime: Runtime, source: str) -> set[str]:
    rows = IntelStore(runtime.db, runtime.clock).search(source=source, limit=1000)
    return {row["key"] for row in rows}


CSV_V1 = "address,why\n203.0.113.7,scanner\n198.51.100.9,c2\n192.0.2.66,phishing\n"


def _bundle(*values: str) -> dict[str, Any]:
    return {
        "type": "bundle",
        "id": "bundle--6c1e7c3e-0f0a-4a4b-9d67-0a3f1d2c9b11",
        "objects": [
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": f"indicator--{hashlib.md5(v.encode()).hexdigest()[:8]}-0000-4000-8000-"  # noqa: S324
                f"{hashlib.md5(v.encode()).hexdigest()[:12]}",  # noqa: S324
                "created": "2026-01-01T00:00:00.000Z",
                "modified": "2026-01-01T00:00:00.000Z",
                "pattern": f"[domain-name:value = '{v}']",
                "pattern_type": "stix",
                "valid_from": "2026-01-01T00:00:00.000Z",
            }
            for v in values
        ],
    }


# -- url feeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("format_", ["csv", "stix"])
def test_a_url_feed_sends_its_validators_and_imports_only_changes(
    runtime: Runtime, clock: ManualClock, site: tuple[FeedSite, str], format_: str
) -> None:
    server, url = site
    if format_ == "csv":
        first, changed = CSV_V1, CSV_V1 + "203.0.113.99,new\n"
        settings = {"mapping": "address=ip-dst,why=description", "confidence": 70}
    else:
        first = orjson.dumps(_bundle("a.bad.example", "b.bad.example", "c.bad.example")).decode()
        changed = orjson.dumps(
            _bundle("a.bad.example", "b.bad.example", "c.bad.example", "d.bad.example")
        ).decode()
        settings = {"confidence": 70}
    server.put("/feed", first)
    service = _service(runtime)
    service.add("f", kind="url", url=f"{url}/feed", format=format_, settings=settings)

    one = _pull(service, "f")
    assert one.ok, one.error
    assert _counts(one) == (3, 0, 0, 0, 0)
    assert "If-None-Match" not in server.seen("/feed")[0]
    feed = service.get("f")
    _, etag, modified = server.documents["/feed"]
    assert (feed.etag, feed.last_modified) == (etag, modified)
    assert feed.last_report is not None
    assert feed.last_report["added"] == 3
    hits = IntelStore(runtime.db, clock).search(source="f")
    assert {hit["confidence"] for hit in hits} == {70}

    clock.advance(timedelta(hours=1))
    two = _pull(service, "f")
    assert two.ok
    assert two.not_modified
    assert _counts(two) == (0, 0, 0, 0, 0)
    asked = server.seen("/feed")[-1]
    assert asked["If-None-Match"] == etag
    assert asked["If-Modified-Since"] == modified
    feed = service.get("f")
    assert feed.last_success_at == clock.now()
    assert feed.last_report is not None
    assert feed.last_report["not_modified"] is True
    assert feed.etag == etag

    server.put("/feed", changed)
    clock.advance(timedelta(hours=1))
    three = _pull(service, "f")
    assert three.ok
    assert not three.not_modified
    assert _counts(three) == (1, 0, 3, 0, 0)
    assert service.get("f").etag == server.documents["/feed"][1] != etag
    assert len(_keys(runtime, "f")) == 4


def test_a_body_over_the_limit_is_refused_and_nothing_is_imported(
    runtime: Runtime, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    server.put("/list", "203.0.113.1\n203.0.113.2\n")
    service = _service(runtime)
    service.add("small", kind="url", url=f"{url}/list", format="list",
                settings={"max_bytes": 100})  # fmt: skip
    assert _counts(_pull(service, "small")) == (2, 0, 0, 0, 0)
    kept_etag = service.get("small").etag

    larger = "".join(f"203.0.113.{i}\n" for i in range(3, 40))
    server.put("/list", larger)
    outcome = _pull(service, "small")
    assert not outcome.ok
    assert outcome.error == f"feed small is larger than 100 bytes (Content-Length {len(larger)})"
    feed = service.get("small")
    assert feed.last_error == outcome.error
    assert feed.status == "failing"
    assert feed.etag == kept_etag  # the position did not move
    assert _keys(runtime, "small") == {"ip:203.0.113.1", "ip:203.0.113.2"}

    # Without a Content-Length, the bytes are counted as they come.
    service.add("stream", kind="url", url=f"{url}/big", format="list",
                settings={"max_bytes": 100_000})  # fmt: skip
    streamed = _pull(service, "stream")
    assert streamed.error == "feed stream is larger than 100000 bytes"
    assert _keys(runtime, "stream") == set()


def test_a_100_mb_stream_is_refused_early_without_holding_it(
    runtime: Runtime, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    service = _service(runtime)
    service.add("huge", kind="url", url=f"{url}/big", format="list")  # the default 64 MiB
    tracemalloc.start()
    started = time.monotonic()
    try:
        outcome = _pull(service, "huge")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    assert outcome.error == f"feed huge is larger than {64 * MIB} bytes"
    assert elapsed < 30
    assert peak < 90 * MIB  # the limit's worth, not the 100 MB sent
    time.sleep(0.2)
    assert not server.big_done  # the client hung up before the end
    assert _keys(runtime, "huge") == set()


def test_a_failing_feed_shows_in_feed_list_and_stops_no_other(
    runtime: Runtime, clock: ManualClock, database_url: str, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    server.put("/good", "203.0.113.5\n")
    service = _service(runtime)
    service.add("broken", kind="url", url=f"{url}/gone?key=s3cr3t-key", format="list")
    service.add("good", kind="url", url=f"{url}/good", format="list")

    outcomes = {o.feed: o for o in asyncio.run(service.pull_due())}
    assert outcomes["good"].ok
    assert _counts(outcomes["good"])[0] == 1
    assert not outcomes["broken"].ok
    error = outcomes["broken"].error
    assert error == f"{url}/gone answered HTTP 404"  # no query: it may hold a key
    broken = service.get("broken")
    assert (broken.status, broken.failures, broken.last_error_at) == ("failing", 1, clock.now())
    assert broken.next_pull_at == clock.now() + timedelta(minutes=1)
    assert asyncio.run(service.pull_due()) == []  # nothing is due yet

    env = {"QUELL_DATABASE_URL": database_url, "QUELL_OUTBOUND_ALLOW": "127.0.0.1"}
    shown = CliRunner().invoke(cli, ["intel", "feed", "list"], env=env, catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line for line in shown.output.splitlines()[1:]}
    assert "failing" in lines["broken"]
    assert "answered HTTP 404" in lines["broken"]
    assert "ok" in lines["good"]
    assert "HTTP" not in lines["good"]
    listed = CliRunner().invoke(cli, ["intel", "feed", "list", "--json"], env=env)
    by_name = {item["name"]: item for item in orjson.loads(listed.output)}
    assert by_name["broken"]["last_error"] == error
    assert by_name["good"]["last_error"] is None

    # A later success keeps the error, older now: the feed is ok again.
    server.put("/gone", "203.0.113.6\n")
    clock.advance(timedelta(minutes=1))
    assert _pull(service, "broken").ok
    again = service.get("broken")
    assert again.status == "ok"
    assert again.failures == 0
    assert again.last_error == error
    assert again.last_success_at > again.last_error_at


def test_two_workers_never_pull_one_feed_twice(
    runtime: Runtime, clock: ManualClock, database_url: str, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    server.delay = 0.05  # pulls overlap
    for i in range(8):
        server.put(f"/f{i}", f"203.0.113.{i + 10}\n")
    first = _service(runtime)
    for i in range(8):
        first.add(f"feed-{i}", kind="url", url=f"{url}/f{i}", format="list")
    other_db = Database(database_url)
    second = _service(runtime, other_db)
    results: dict[str, list[FeedPull]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def worker(name: str, service: FeedService) -> None:
        async def drain() -> None:
            start.wait(5)
            idle = 0
            while idle < 20:  # bounded: until nothing has been due for a while
                found = await service.pull_due(limit=1)  # one claim at a time: interleave
                results[name].extend(found)
                idle = 0 if found else idle + 1
                if not found:
                    await asyncio.sleep(0.01)

        asyncio.run(drain())

    try:
        threads = [
            threading.Thread(target=worker, args=("a", first)),
            threading.Thread(target=worker, args=("b", second)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        pulled = [o.feed for found in results.values() for o in found]
        assert sorted(pulled) == [f"feed-{i}" for i in range(8)]  # each once, by one worker
        assert all(o.ok for found in results.values() for o in found)
        assert sorted(p for p, _ in server.requests) == sorted(f"/f{i}" for i in range(8))

        # A pull by hand waits for no one but refuses a feed another worker holds.
        server.delay = 0.5
        clock.advance(timedelta(hours=1))

        async def race() -> None:
            held = asyncio.create_task(first.pull("feed-0"))
            for _ in range(2000):
                if service_claimed(runtime, "feed-0") is not None:
                    break
                await asyncio.sleep(0.005)
            with pytest.raises(Conflict, match="is being pulled by another worker"):
                await second.pull("feed-0")
            assert (await held).ok

        asyncio.run(race())
    finally:
        other_db.dispose()


def test_a_pull_that_outlives_its_claim_keeps_nothing(
    runtime: Runtime, clock: ManualClock, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    server.put("/slow", "203.0.113.20\n203.0.113.21\n")
    server.delay = 0.3
    slow = _service(runtime)
    slow.add("slow", kind="url", url=f"{url}/slow", format="list")
    other = _service(runtime)

    async def scenario() -> tuple[FeedPull, FeedPull]:
        late = asyncio.create_task(slow.pull("slow"))
        for _ in range(2000):
            if server.seen("/slow"):
                break
            await asyncio.sleep(0.005)
        clock.advance(timedelta(minutes=16))  # past the 15-minute lease: the claim is free
        taken = await other.pull("slow")
        return await late, taken

    late, taken = asyncio.run(scenario())
    assert taken.ok
    assert _counts(taken) == (2, 0, 0, 0, 0)
    assert not late.ok
    assert late.error == "feed 'slow' ran past its claim and another worker took it"
    feed = slow.get("slow")  # the late pull wrote nothing: neither indicators nor an error
    assert feed.last_error is None
    assert feed.status == "ok"
    assert feed.claimed_until is None
    assert _keys(runtime, "slow") == {"ip:203.0.113.20", "ip:203.0.113.21"}


def service_claimed(runtime: Runtime, name: str) -> Any:
    with runtime.db.read() as conn:
        return conn.execute(
            select(intel_feeds.c.claimed_until).where(intel_feeds.c.name == name)
        ).scalar()


def test_the_feed_loop_pulls_what_is_due_until_stopped(
    runtime: Runtime, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    server.put("/loop", "203.0.113.77\n")
    service = _service(runtime)
    service.add("looped", kind="url", url=f"{url}/loop", format="list")

    async def scenario() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(run_feed_loop(service, stop, poll_s=0.05))
        for _ in range(200):
            if service.get("looped").last_success_at is not None:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(loop, 5)

    asyncio.run(scenario())
    assert _keys(runtime, "looped") == {"ip:203.0.113.77"}
    assert len(server.seen("/loop")) == 1  # once: the next pull is an hour away


# -- misp feeds ------------------------------------------------------------------------------------


def _corpus_event(
    name: str, uuid: str | None = None, timestamp: int | None = None
) -> dict[str, Any]:
    document = orjson.loads((corpus_path() / "misp" / name).read_bytes())
    event = dict(events_of(document)[0])
    if uuid is not None:
        event["uuid"] = uuid
    if timestamp is not None:
        event["timestamp"] = str(timestamp)
    return event


def _serve_misp(server: FeedSite, events: list[dict[str, Any]]) -> None:
    manifest = {
        e["uuid"]: {"info": e.get("info", ""), "timestamp": int(e["timestamp"])} for e in events
    }
    server.put("/misp/manifest.json", manifest)
    for event in events:
        server.put(f"/misp/{event['uuid']}.json", {"Event": event})


def _fetched(server: FeedSite, since: int) -> list[str]:
    return [path.rsplit("/", 1)[1] for path, _ in server.requests[since:]]


@pytest.mark.requires("corpus")
def test_a_misp_feed_reads_only_events_changed_since_its_checkpoint(
    runtime: Runtime, clock: ManualClock, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    malware = _corpus_event("malware_exist.json")  # 3 indicators, 2 unsupported
    sighted = _corpus_event("sighting_1.json")  # 5 indicators, 2 sightings
    same_second = _corpus_event(  # 1 indicator, at the very second of `sighted`
        "event_obj_attr_tag.json", "c0c0c0c0-0000-4000-8000-000000000001", int(sighted["timestamp"])
    )
    assert malware["uuid"] < sighted["uuid"] < same_second["uuid"]
    _serve_misp(server, [malware, sighted, same_second])
    service = _service(runtime)
    service.add("misp", kind="misp-feed", url=f"{url}/misp/", settings={"max_pages": 2})

    one = _pull(service, "misp")
    assert one.ok, one.error
    assert (one.pages, one.more) == (2, True)
    assert _counts(one) == (7, 0, 0, 1, 2)  # one has an expiration sighting in 2019
    assert one.report is not None
    assert one.report.sightings == 2
    position = (service.get("misp").checkpoint or {})["misp"]
    assert position == {"timestamp": int(sighted["timestamp"]), "uuids": [sighted["uuid"]]}

    seen = len(server.requests)
    two = _pull(service, "misp")  # the rest of that second, and nothing before it
    assert _counts(two) == (1, 0, 0, 0, 1)
    assert _fetched(server, seen) == ["manifest.json", f"{same_second['uuid']}.json"]
    assert not two.more

    # An event changes (a new attribute, a new timestamp) and a new one appears.
    changed = dict(sighted, timestamp="1600000000")
    changed["Attribute"] = [
        *sighted.get("Attribute", []),
        {"type": "domain", "category": "Network activity", "to_ids": True,
         "value": "fresh.bad.example", "uuid": "5b646415-0000-4000-8000-00000000f001",
         "timestamp": "1600000000"},
    ]  # fmt: skip
    fresh = _corpus_event("misp_event.json", timestamp=1600000001)  # nothing Quell matches
    _serve_misp(server, [malware, changed, same_second, fresh])
    clock.advance(timedelta(hours=1))
    seen = len(server.requests)
    three = _pull(service, "misp")
    assert three.ok, three.error
    assert _fetched(server, seen) == [
        "manifest.json", f"{sighted['uuid']}.json", f"{fresh['uuid']}.json",
    ]  # fmt: skip
    assert _counts(three) == (1, 0, 4, 1, 2)
    assert "dn:fresh.bad.example" in _keys(runtime, "misp")

    seen = len(server.requests)
    four = _pull(service, "misp")
    assert _counts(four) == (0, 0, 0, 0, 0)
    assert _fetched(server, seen) == ["manifest.json"]


# -- configuration and the CLI ---------------------------------------------------------------------


def test_a_feed_is_checked_when_added(runtime: Runtime) -> None:
    service = _service(runtime)
    with pytest.raises(InvalidInput, match="not in the URL"):
        service.add("x", kind="url", url="https://user:pw@feeds.example/list", format="list")
    with pytest.raises(InvalidInput, match="needs a format"):
        service.add("x", kind="url", url="https://feeds.example/list")
    with pytest.raises(InvalidInput, match="a taxii feed is stix"):
        service.add("x", kind="taxii", url="https://taxii.example/taxii2/", format="csv")
    with pytest.raises(InvalidInput, match="no setting 'colection'"):
        service.add("x", kind="taxii", url="https://t.example/taxii2/", settings={"colection": "c"})
    with pytest.raises(InvalidInput, match="does not use 'collection'"):
        service.add("x", kind="url", url="https://f.example/a.csv", format="csv",
                    settings={"collection": "c"})  # fmt: skip
    with pytest.raises(InvalidInput, match="mapping item"):
        service.add("x", kind="url", url="https://f.example/a.csv", format="csv",
                    settings={"mapping": "nonsense"})  # fmt: skip
    with pytest.raises(InvalidInput, match="at least one minute"):
        service.add("x", kind="url", url="https://f.example/l", format="list", interval="10s")
    with pytest.raises(InvalidInput, match="unknown TLP"):
        service.add("x", kind="url", url="https://f.example/l", format="list",
                    settings={"tlp": "purple"})  # fmt: skip
    with pytest.raises(InvalidInput, match="not both"):
        service.add("x", kind="taxii", url="https://t.example/taxii2/",
                    secret={"token": "t", "username": "u", "password": "p"})  # fmt: skip
    assert service.list() == []
    service.add("x", kind="taxii", url="https://t.example/taxii2/", settings={"tlp": "amber"})
    with pytest.raises(Conflict):
        service.add("x", kind="taxii", url="https://t.example/taxii2/")


def test_the_feed_commands_keep_credentials_sealed(
    runtime: Runtime, database_url: str, site: tuple[FeedSite, str]
) -> None:
    server, url = site
    password = "hunter2-canary-pw"
    server.users = {"feeds": "Basic " + base64.b64encode(f"feeds:{password}".encode()).decode()}
    server.put("/auth.csv", CSV_V1)
    env = {"QUELL_DATABASE_URL": database_url, "QUELL_OUTBOUND_ALLOW": "127.0.0.1"}
    runner = CliRunner()

    def quell(*args: str, input: str | None = None) -> Any:
        return runner.invoke(cli, ["intel", "feed", *args], env=env, input=input)

    added = quell("add", "authed", "--url", f"{url}/auth.csv", "--format", "csv",
                  "--map", "address=ip-dst,why=description", "--tlp", "amber", "--interval", "6h",
                  "--username", "feeds", "--password-stdin", input=password + "\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "added feed authed (url, csv, every 6h)" in added.output

    pulled = quell("pull", "authed")
    assert pulled.exit_code == 0, pulled.output
    last = orjson.loads(pulled.output.strip().splitlines()[-1])
    assert (last["feed"], last["ok"], last["added"], last["unsupported"]) == ("authed", True, 3, 0)

    shown = quell("show", "authed")
    assert shown.exit_code == 0, shown.output
    assert "credentials" in shown.output
    assert "basic" in shown.output
    as_json = quell("show", "authed", "--json")
    for output in (added.output, pulled.output, shown.output, as_json.output):
        assert password not in output
    with runtime.db.read() as conn:
        sealed = conn.execute(
            select(intel_feeds.c.secret).where(intel_feeds.c.name == "authed")
        ).scalar()
    assert sealed
    assert password.encode() not in bytes(sealed)
    assert orjson.loads(as_json.output)["settings"]["tlp"] == "TLP:AMBER"

    server.users = {"feeds": "Basic d3Jvbmc6d3Jvbmc="}  # the server changed the password
    failed = quell("pull", "authed")
    assert failed.exit_code == 1
    assert orjson.loads(failed.output.strip().splitlines()[-1])["error"].endswith("HTTP 401")

    assert quell("remove", "authed").exit_code == 0
    gone = quell("show", "authed")
    assert gone.exit_code == 1
    assert "no intel feed named 'authed'" in gone.output
    assert _keys(runtime, "authed")  # its indicators stay
