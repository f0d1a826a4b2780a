"""The Elasticsearch/OpenSearch puller against a local server that speaks the search API.

``FakeElastic`` is a real HTTP server (uvicorn on 127.0.0.1, port 0) over an in-memory index.
It implements the documented parts the puller relies on: ``POST /<index>/_search`` and
``POST /_search`` with a query (bool/filter/must/must_not/should, range, term, match_all),
``sort`` with a tiebreaker, ``search_after``, ``size``, ``track_total_hits``; point in time
(``POST /<index>/_pit``, ``pit`` in the body, ``_shard_doc``, a new PIT id in every response,
``DELETE /_pit``); API-key and basic authentication; and answers it is told to give once
(429 with Retry-After, a shard failure, garbage). Its ``_shard_doc`` values are a fresh random
permutation in every PIT, as real ones are only meaningful inside one PIT, so a puller that
carried them across PITs would lose or repeat events here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import structlog

from quell.clock import ManualClock
from quell.errors import ConfigurationError, InvalidInput
from quell.ingest.checkpoints import DbCheckpointStore
from quell.ingest.elastic import ElasticConfig, ElasticPuller, load_elastic_config
from quell.ingest.intake import IntakeResult
from quell.ingest.siem import SiemAccessDenied, SiemError
from quell.store.database import Database
from tests.fixtures.servers import LiveServer, start_server
from tests.ingest.fake_elastic import API_KEY, FakeElastic, elastic_app

SOURCE = "siem-prod"


@pytest.fixture(scope="module")
def _elastic_server() -> Iterator[tuple[FakeElastic, LiveServer]]:
    # Client and server share one GIL; the default 5 ms switch interval would dominate every
    # loopback round trip of these many small pages.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    fake = FakeElastic()
    server = start_server(elastic_app(fake))  # type: ignore[arg-type]
    fake.url = server.url
    yield fake, server
    server.stop()
    sys.setswitchinterval(switch_interval)


@pytest.fixture
def es(_elastic_server: tuple[FakeElastic, LiveServer]) -> FakeElastic:
    """The fake cluster, emptied for this test."""
    fake, _server = _elastic_server
    with fake.lock:
        fake.reset()
    return fake


# -- the other side: sink, sleep, helpers ---------------------------------------------------


class RecordingSink:
    """An IntakeSink that keeps what it is given; it can be told to fail on given calls."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.batches: list[tuple[str, list[bytes]]] = []
        self.calls = 0
        self.fail_on = fail_on or set()

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("the pipeline is overloaded")
        self.batches.append((source, list(records)))
        return IntakeResult(received=len(records), stored=len(records))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(record) for _source, batch in self.batches for record in batch]

    @property
    def ids(self) -> list[str]:
        return [event["event"]["id"] for event in self.events]


class FakeSleep:
    """Records the waits and moves the clock instead of waiting."""

    def __init__(self, clock: ManualClock, then: Callable[[int], None] | None = None) -> None:
        self.clock = clock
        self.calls: list[float] = []
        self.then = then

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)
        if self.then is not None:
            self.then(len(self.calls))
        await asyncio.sleep(0)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_events(
    es: FakeElastic,
    count: int,
    *,
    start: datetime,
    per_ms: int = 1,
    prefix: str = "evt",
    index: str = "logs-a",
) -> list[str]:
    """Index ``count`` alerts, ``per_ms`` of them sharing each millisecond; returns their ids.

    Ids are shuffled against time so that, within one millisecond, id order is not index order.
    """
    ids = []
    for number in range(count):
        moment = start + timedelta(milliseconds=number // per_ms)
        doc_id = f"{prefix}-{(number * 7919) % 100_003:06d}-{number}"
        es.add(
            index if number % 3 else index.replace("-a", "-b"),
            f"_{doc_id}",
            {
                "@timestamp": iso(moment),
                "event": {"id": doc_id, "kind": "alert"},
                "rule": {"name": "Suspicious thing"},
                "source": {"ip": f"10.0.{number % 250}.{number % 200}"},
            },
        )
        ids.append(doc_id)
    return ids


def event_time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["@timestamp"])


@pytest.fixture(params=["pit", "tiebreaker"])
def paging(request: pytest.FixtureRequest) -> str:
    """Both paging modes."""
    return str(request.param)


def make_puller(
    es: FakeElastic,
    database: Database,
    clock: ManualClock,
    sink: RecordingSink,
    *,
    paging: str = "pit",
    sleep: FakeSleep | None = None,
    **settings: Any,
) -> ElasticPuller:
    config: dict[str, Any] = {
        "url": es.url,
        "index": "logs-*",
        "query": {"term": {"event.kind": "alert"}},
        "paging": paging,
        "auth": "api_key",
        "api_key": API_KEY,
        "page_size": 50,
    }
    if paging == "tiebreaker":
        config["tiebreaker"] = "event.id"
    config.update(settings)
    return ElasticPuller(
        SOURCE,
        ElasticConfig.model_validate(config),
        sink,
        DbCheckpointStore(database, clock),
        clock=clock,
        sleep=sleep or FakeSleep(clock),
    )


def searches(es: FakeElastic) -> list[dict[str, Any]]:
    return [r for r in es.requests if r["path"].endswith("/_search")]


# -- behaviour --------------------------------------------------------------------------------


def test_pages_through_thousands_of_events_in_order_and_submits_each_once(
    es: FakeElastic, database: Database, clock: ManualClock, paging: str
) -> None:
    start = clock.now() - timedelta(minutes=50)
    ids = add_events(es, 3000, start=start, per_ms=3)
    # Not to be read: outside the index pattern, not matching the query, older than lookback.
    es.add("other-index", "x1", {"@timestamp": iso(start), "event": {"id": "x1", "kind": "alert"}})
    es.add("logs-a", "x2", {"@timestamp": iso(start), "event": {"id": "x2", "kind": "event"}})
    es.add("logs-a", "x3", {"@timestamp": iso(start - timedelta(hours=2)), "event": {"id": "x3"}})
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, paging=paging) as puller:
            result = await puller.pull_once()
            assert result.caught_up
            assert result.events == 3000
            assert result.submitted.received == 3000
            assert result.pages == 60
            again = await puller.pull_once()
            assert again.events == 0

    asyncio.run(scenario())

    assert sorted(sink.ids) == sorted(ids)
    assert len(sink.ids) == len(set(sink.ids))
    times = [event_time(event) for event in sink.events]
    assert times == sorted(times)
    assert all(source == SOURCE for source, _batch in sink.batches)
    assert all(len(batch) <= 50 for _source, batch in sink.batches)
    first = sink.events[0]
    assert first["@metadata"] == {
        "_index": first["@metadata"]["_index"],
        "_id": f"_{first['event']['id']}",
    }
    assert first["@metadata"]["_index"] in {"logs-a", "logs-b"}
    for request in searches(es):
        body = request["body"]
        assert body["track_total_hits"] is False
        assert body["size"] == 50
        assert body["query"]["bool"]["filter"][0] == {"term": {"event.kind": "alert"}}
        assert request["params"]["allow_partial_search_results"] == "false"
        if paging == "pit":
            assert request["path"] == "/_search"
            assert body["sort"][1] == {"_shard_doc": "asc"}
        else:
            assert request["path"] == "/logs-*/_search"
            assert "pit" not in body
    assert es.open_pits == 0
    assert es.pits_opened == (2 if paging == "pit" else 0)


def test_a_restart_resumes_after_the_last_submitted_event(
    es: FakeElastic, database: Database, clock: ManualClock, paging: str
) -> None:
    ids = add_events(es, 300, start=clock.now() - timedelta(minutes=30), per_ms=4)
    first_sink, second_sink = RecordingSink(), RecordingSink()

    async def scenario() -> None:
        # The first puller stops after 3 pages of 9 (mid-millisecond, as 9 is not a multiple
        # of 4); a new instance, as after a restart, takes over from the same database.
        async with make_puller(
            es, database, clock, first_sink, paging=paging, page_size=9, max_pages=3
        ) as puller:
            result = await puller.pull_once()
            assert (result.pages, result.events, result.caught_up) == (3, 27, False)
        async with make_puller(
            es, database, clock, second_sink, paging=paging, page_size=9
        ) as puller:
            assert puller.checkpoint_key == f"elastic:{SOURCE}"
            result = await puller.pull_once()
            assert result.caught_up

    asyncio.run(scenario())

    assert len(first_sink.ids) == 27
    together = first_sink.ids + second_sink.ids
    assert len(together) == len(set(together)) == len(ids)
    assert set(together) == set(ids)
    checkpoint = DbCheckpointStore(database, clock).load(f"elastic:{SOURCE}")
    assert checkpoint is not None
    last = second_sink.events[-1]
    assert checkpoint["at"] == last["@timestamp"]
    assert [last["@metadata"]["_index"], last["@metadata"]["_id"]] in checkpoint["seen"]


def test_events_sharing_one_timestamp_survive_page_boundaries_and_restarts(
    es: FakeElastic, database: Database, clock: ManualClock, paging: str
) -> None:
    ids = add_events(es, 100, start=clock.now() - timedelta(minutes=5), per_ms=100)
    sinks: list[RecordingSink] = []

    async def scenario() -> None:
        # A restart after every pull, each in the middle of the same millisecond; in PIT mode
        # every pull sees that millisecond in a different _shard_doc order.
        for _ in range(40):
            sink = RecordingSink()
            sinks.append(sink)
            async with make_puller(
                es, database, clock, sink, paging=paging, page_size=7, max_pages=4
            ) as puller:
                if (await puller.pull_once()).caught_up:
                    return

    asyncio.run(scenario())

    together = [event_id for sink in sinks for event_id in sink.ids]
    assert sorted(together) == sorted(ids)
    assert len(sinks) >= 4
    # Every pull made progress (the last may only find out that nothing is left).
    assert all(sink.ids for sink in sinks[:-1])
    if paging == "tiebreaker":  # a total order: each pull gets exactly 4 pages of 7 new events
        assert [len(sink.ids) for sink in sinks] == [28, 28, 28, 16]


def test_new_events_indexed_after_a_pull_are_picked_up_by_the_next(
    es: FakeElastic, database: Database, clock: ManualClock, paging: str
) -> None:
    start = clock.now() - timedelta(minutes=10)
    add_events(es, 100, start=start)
    sink = RecordingSink()
    last_time = start + timedelta(milliseconds=99)

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, paging=paging) as puller:
            assert (await puller.pull_once()).events == 100
            # Late arrivals: two at the very millisecond of the last event read, one of them
            # with an id that sorts before the last one's (a search_after on the tiebreaker
            # would skip it), and more after it.
            for name in ("aaa-late", "zzz-late"):
                es.add(
                    "logs-a",
                    name,
                    {"@timestamp": iso(last_time), "event": {"id": name, "kind": "alert"}},
                )
            add_events(es, 20, start=clock.now(), prefix="new")
            clock.advance(timedelta(minutes=1))
            result = await puller.pull_once()
            assert result.events == 22
            assert (await puller.pull_once()).events == 0

    asyncio.run(scenario())

    assert len(sink.ids) == len(set(sink.ids)) == 122
    assert {"aaa-late", "zzz-late"} <= set(sink.ids[100:])


def test_the_window_stops_short_of_now_by_the_delay(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    es.add(
        "logs-a",
        "fresh",
        {
            "@timestamp": iso(clock.now() - timedelta(seconds=5)),
            "event": {"id": "fresh", "kind": "alert"},
        },
    )
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, delay="30s") as puller:
            assert (await puller.pull_once()).events == 0  # may still have company on its way
            clock.advance(30)
            assert (await puller.pull_once()).events == 1

    asyncio.run(scenario())
    assert sink.ids == ["fresh"]


def test_a_429_is_retried_after_retry_after_without_waiting(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    ids = add_events(es, 120, start=clock.now() - timedelta(minutes=5))
    es.fail_once("/_search", 429, headers={"Retry-After": "7"}, body=b'{"error":"too many"}')
    sink = RecordingSink()
    sleep = FakeSleep(clock)
    before = clock.now()

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, sleep=sleep) as puller:
            assert (await puller.pull_once()).events == 120

    asyncio.run(scenario())

    assert sleep.calls == [7.0]
    assert clock.now() - before == timedelta(seconds=7)
    assert sorted(sink.ids) == sorted(ids)
    assert es.open_pits == 0


def test_a_503_asking_for_longer_than_allowed_ends_the_pull_with_the_hint(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    add_events(es, 10, start=clock.now() - timedelta(minutes=5))
    es.fail_once("/_search", 503, headers={"Retry-After": "3600"})
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, paging="tiebreaker") as puller:
            with pytest.raises(SiemError) as caught:
                await puller.pull_once()
            assert caught.value.retryable
            assert caught.value.retry_after == 3600.0
            assert "HTTP 503" in str(caught.value)

    asyncio.run(scenario())
    assert sink.batches == []


def test_run_backs_off_on_failures_then_polls_until_stopped(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    ids = add_events(es, 30, start=clock.now() - timedelta(minutes=5))
    es.fail_once("/_search", 502)
    es.fail_once("/_search", 500)
    sink = RecordingSink()

    async def scenario() -> None:
        stop = asyncio.Event()
        sleep = FakeSleep(clock, then=lambda calls: stop.set() if calls == 3 else None)
        async with make_puller(
            es, database, clock, sink, sleep=sleep, paging="tiebreaker"
        ) as puller:
            await asyncio.wait_for(puller.run(stop), timeout=30)
        # Backoff 1 s, then 2 s; then a successful pull and the 30 s poll interval.
        assert sleep.calls == [1.0, 2.0, 30.0]

    asyncio.run(scenario())
    assert sorted(sink.ids) == sorted(ids)


def test_a_wrong_api_key_is_a_clear_error_that_never_shows_the_key(
    es: FakeElastic, database: Database, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    add_events(es, 5, start=clock.now() - timedelta(minutes=5))
    wrong = "d3Jvbmcta2V5LWlkOndyb25nLWtleS1zZWNyZXQ="
    sink = RecordingSink()
    caplog.set_level(logging.DEBUG)

    async def scenario() -> SiemAccessDenied:
        async with make_puller(es, database, clock, sink, api_key=wrong) as puller:
            with pytest.raises(SiemAccessDenied) as caught:
                await puller.pull_once()
            # run() does not retry a refused credential: it logs and raises.
            with pytest.raises(SiemAccessDenied):
                await asyncio.wait_for(puller.run(asyncio.Event()), timeout=30)
            return caught.value

    with structlog.testing.capture_logs() as events:
        error = asyncio.run(scenario())

    assert isinstance(error, ConfigurationError)
    assert not error.retryable
    message = str(error)
    assert SOURCE in message
    assert "HTTP 401" in message
    assert "API key" in message
    rendered = [message, repr(error), json.dumps(error.to_dict()), caplog.text, repr(events)]
    for text in rendered:
        assert wrong not in text
        assert API_KEY not in text
    assert any(event["event"] == "siem.pull_stopped" for event in events)
    assert sink.batches == []
    assert DbCheckpointStore(database, clock).load(f"elastic:{SOURCE}") is None


def test_basic_auth_and_no_auth(es: FakeElastic, database: Database, clock: ManualClock) -> None:
    add_events(es, 5, start=clock.now() - timedelta(minutes=5))
    es.auth = ("basic", "quell-reader", "s3cret-passw0rd")
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(
            es,
            database,
            clock,
            sink,
            auth="basic",
            api_key=None,
            username="quell-reader",
            password="s3cret-passw0rd",
        ) as puller:
            assert (await puller.pull_once()).events == 5
        async with make_puller(es, database, clock, sink, auth="none", api_key=None) as puller:
            with pytest.raises(SiemAccessDenied, match="requires credentials"):
                await puller.pull_once()

    asyncio.run(scenario())


def test_a_sink_failure_leaves_the_checkpoint_unchanged(
    es: FakeElastic, database: Database, clock: ManualClock, paging: str
) -> None:
    ids = add_events(es, 200, start=clock.now() - timedelta(minutes=5), per_ms=2)
    failing, healthy = RecordingSink(fail_on={2}), RecordingSink()
    store = DbCheckpointStore(database, clock)
    key = f"elastic:{SOURCE}"

    async def scenario() -> None:
        async with make_puller(es, database, clock, failing, paging=paging) as puller:
            with pytest.raises(RuntimeError, match="overloaded"):
                await puller.pull_once()
        after_first_page = store.load(key)
        assert after_first_page is not None
        assert after_first_page["at"] == failing.events[-1]["@timestamp"]
        assert es.open_pits == 0  # closed even though the pull failed
        async with make_puller(es, database, clock, healthy, paging=paging) as puller:
            await puller.pull_once()

    asyncio.run(scenario())

    assert len(failing.ids) == 50
    together = failing.ids + healthy.ids
    assert sorted(together) == sorted(ids)


def test_a_crash_between_submit_and_checkpoint_resubmits_only_that_page(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    ids = add_events(es, 100, start=clock.now() - timedelta(minutes=5))
    sink = RecordingSink()

    class CrashingStore(DbCheckpointStore):
        saves = 0

        def save(self, key: str, cursor: dict[str, Any]) -> None:
            CrashingStore.saves += 1
            if CrashingStore.saves == 2:
                raise OSError("power cut")
            super().save(key, cursor)

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink) as puller:
            puller.checkpoints = CrashingStore(database, clock)
            with pytest.raises(OSError, match="power cut"):
                await puller.pull_once()
            await puller.pull_once()

    asyncio.run(scenario())

    # The second page was submitted, not checkpointed, and submitted again: the pipeline's
    # dedup absorbs the repeat. Nothing is missing.
    assert set(sink.ids) == set(ids)
    assert len(sink.ids) == 150
    assert sink.ids[50:100] == sink.ids[100:150]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            200,
            b'{"timed_out":false,"_shards":{"total":2,"successful":1,"failed":1,"failures":'
            b'[{"reason":{"type":"node_disconnected_exception","reason":"node left"}}]},'
            b'"hits":{"hits":[]}}',
            "1 shard(s) failed the search: node_disconnected_exception: node left",
        ),
        (200, b"<html>gateway</html>", "malformed answer"),
        (200, b'{"hits":{"total":3}}', "no hits.hits list"),
        (
            400,
            b'{"error":{"type":"parsing_exception","reason":"unknown query [tem]"}}',
            "HTTP 400: parsing_exception: unknown query [tem]",
        ),
    ],
)
def test_bad_answers_are_clear_retryable_errors_and_submit_nothing(
    es: FakeElastic, database: Database, clock: ManualClock, status: int, body: bytes, expected: str
) -> None:
    add_events(es, 10, start=clock.now() - timedelta(minutes=5))
    es.fail_once("/_search", status, body=body)
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, paging="tiebreaker") as puller:
            with pytest.raises(SiemError) as caught:
                await puller.pull_once()
            assert expected in str(caught.value)
            assert SOURCE in str(caught.value)
            assert caught.value.retryable
            assert (await puller.pull_once()).events == 10  # and the next pull recovers

    asyncio.run(scenario())
    assert len(sink.ids) == 10


def test_a_document_without_the_tiebreaker_field_stops_paging_with_a_clear_error(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    moment = clock.now() - timedelta(minutes=5)
    for number in range(3):
        es.add("logs-a", f"n{number}", {"@timestamp": iso(moment), "event": {"kind": "alert"}})
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(
            es, database, clock, sink, paging="tiebreaker", page_size=2
        ) as puller:
            with pytest.raises(
                SiemError, match=r"no value in the tiebreaker field 'event\.id'"
            ) as caught:
                await puller.pull_once()
            assert not caught.value.retryable

    asyncio.run(scenario())


def test_records_can_be_whole_hits_for_the_ecs_parser(
    es: FakeElastic, database: Database, clock: ManualClock
) -> None:
    add_events(es, 3, start=clock.now() - timedelta(minutes=5))
    sink = RecordingSink()

    async def scenario() -> None:
        async with make_puller(es, database, clock, sink, record="hit") as puller:
            await puller.pull_once()

    asyncio.run(scenario())
    first = orjson.loads(sink.batches[0][1][0])
    assert set(first) == {"_index", "_id", "_source"}
    assert first["_id"] == "_" + first["_source"]["event"]["id"]
    assert "@metadata" not in first["_source"]


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://siem.example:9200", "file:///etc/passwd", "siem.example:9200", "https://"]
)
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_elastic_config({"url": url, "index": "logs-*"})
    assert caught.value.details["field"] == "url"


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_elastic_config({"url": "https://elastic:hunter2@siem.example", "index": "logs-*"})
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="must not carry credentials") as direct:
        ElasticConfig.model_validate({"url": "https://elastic:hunter2@siem.example", "index": "x"})
    assert "hunter2" not in str(direct.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth": "api_key"}, "auth 'api_key' needs api_key"),
        ({"auth": "basic", "username": "u"}, "needs username and password"),
        ({"api_key": "k"}, "api_key is set but auth is 'none'"),
        ({"paging": "tiebreaker"}, "needs a tiebreaker field"),
        ({"tiebreaker": "event.id"}, "tiebreaker applies only to paging 'tiebreaker'"),
        ({"page_size": 20_000}, "page_size"),
        ({"lookback": "forever"}, "not a duration"),
        ({"verify_tls": False, "ca_file": "/etc/ssl/ca.pem"}, "verify_tls is off"),
        ({"index": "logs/x"}, "must not contain"),
        ({"query": {}}, "must be a query object"),
    ],
)
def test_inconsistent_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_elastic_config({"url": "https://siem.example:9200", "index": "logs-*", **settings})


def test_settings_take_human_durations_and_keep_secrets_secret() -> None:
    config = load_elastic_config(
        {
            "url": "https://siem.example:9200/",
            "index": "logs-*",
            "auth": "api_key",
            "api_key": API_KEY,
            "lookback": "2h",
            "poll_interval": 15,
        }
    )
    assert config.url == "https://siem.example:9200"
    assert config.lookback == timedelta(hours=2)
    assert config.poll_interval == timedelta(seconds=15)
    assert API_KEY not in repr(config)
    assert API_KEY not in config.model_dump_json()
