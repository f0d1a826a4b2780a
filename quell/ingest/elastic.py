"""Pulling events from Elasticsearch or OpenSearch with the ``_search`` API and ``search_after``.

Each pull reads the window ``[cursor, now - delay]`` of the configured index pattern, sorted
ascending on the time field, page by page with ``search_after``. The query sent is::

    {"size": page_size, "track_total_hits": false,
     "query": {"bool": {"filter": [<the configured query>,
                                   {"range": {<time_field>: {"gte": <ms>, "lte": <ms>,
                                                             "format": "epoch_millis"}}}]}},
     "sort": [{<time_field>: {"order": "asc", "numeric_type": "date"}}, <tiebreaker>],
     "search_after": <the previous page's last "sort" values>}

``numeric_type: date`` makes the time sort value epoch milliseconds for ``date`` and
``date_nanos`` fields alike, so the cursor has one unit.

Two paging modes, because ``search_after`` needs a sort that is unique per document:

``pit`` (default; Elasticsearch 7.10 and later)
    Each pull opens a point in time (``POST /<index>/_pit?keep_alive=…``), searches
    ``POST /_search`` with ``"pit": {"id": …}`` and the tiebreaker ``{"_shard_doc": "asc"}``,
    always sending the PIT id of the latest response (Elasticsearch may change it between
    responses), and closes it (``DELETE /_pit``) at the end. Pages of one pull see one frozen
    view of the index, so none shifts under the paging.

``tiebreaker`` (portable; OpenSearch, older Elasticsearch, or where PIT is not allowed)
    No PIT: ``POST /<index>/_search`` sorted on the time field and then on ``tiebreaker``, a
    field that is present and unique in every document (``event.id``, a keyword copy of the
    id). On OpenSearch ``_id`` works as well (it costs heap for fielddata); Elasticsearch 8
    refuses to sort on ``_id``. OpenSearch's own PIT API differs (``_search/point_in_time``) and
    it has no ``_shard_doc``, so it is not used.

The cursor (the checkpoint, under ``"elastic:<source>"``) is::

    {"v": 1, "time": <epoch ms of the last submitted event>, "at": "<the same, ISO 8601>",
     "seen": [[<_index>, <_id>], …],   # the submitted events that have exactly that time
     "sort": [<the last event's sort values>], "paging": "pit" | "tiebreaker"}

A pull resumes with ``gte: time`` and skips the ``seen`` events. It does not resume with
``search_after: sort``, because ``_shard_doc`` values belong to one PIT and mean nothing in the
next one; ``sort`` is kept for people reading the checkpoint. ``seen`` holds only the events
of one millisecond, usually one. The first pull starts at ``now - lookback``.

``delay`` keeps the window's end behind ``now``: an event that becomes searchable later than
``delay`` after its own time (shipper lag, the refresh interval) and behind the cursor is not
read. Where shippers lag, sort on ``event.ingested`` (set when Elasticsearch receives the
event) instead of ``@timestamp``.

Records (``record: source``, the default): each hit's ``_source`` becomes one record,
``orjson.dumps(_source)``. Unless ``metadata_key`` is None, the hit's origin is added as
``{"@metadata": {"_index": …, "_id": …}}`` so an analyst can find the document in the SIEM
again. ``@metadata`` is the Logstash convention for data about an event that is not part of it:
no ECS field lives there, so a parser does not take it for event content, and a generic JSON
mapping written against the documents still finds every field where it was. A ``_source`` that
has the key already is left untouched. With ``record: hit`` a record is
``{"_index", "_id", "_source"}``, the shape of a search hit, which the ``ecs`` parser unwraps
(taking ``_id`` as the alert's uid when the document has no ``kibana.alert.uuid``);
``metadata_key`` is then not used.

Outbound target: the URL is configuration, set only by a token allowed to manage sources (the
``admin`` role), so it is trusted the way a connector's base URL is; it is not a value an alert
or a playbook can steer. It may carry no credentials, a query or a fragment, and redirects are
not followed (one could hand the key to another host). The SSRF guard that applies to HTTP
made on behalf of playbook actions is a separate layer and does not restrict this URL.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ssl
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quell.clock import SYSTEM_CLOCK, Clock
from quell.durations import parse_duration
from quell.errors import ConfigurationError, InvalidInput
from quell.ingest.intake import CheckpointStore, IntakeResult, IntakeSink
from quell.ingest.siem import Backoff, PullResult, SiemAccessDenied, SiemError, SiemPuller, Sleep
from quell.sdk.secret import SecretValue

log = structlog.get_logger(__name__)

CURSOR_VERSION = 1
_ERROR_TEXT_LIMIT = 300


class PagingMode(StrEnum):
    """How pages are kept consistent: an Elasticsearch point in time, or a tiebreaker field."""

    PIT = "pit"
    TIEBREAKER = "tiebreaker"


class RecordShape(StrEnum):
    """What one record is: the hit's ``_source`` (plus ``@metadata``), or the hit itself."""

    SOURCE = "source"
    HIT = "hit"  # {"_index", "_id", "_source"}: the shape of a search hit, for format "ecs"


class AuthKind(StrEnum):
    """How the puller authenticates to the cluster."""

    NONE = "none"
    API_KEY = "api_key"  # Authorization: ApiKey <the encoded key Elasticsearch returns>
    BASIC = "basic"


_DURATION_FIELDS = ("lookback", "delay", "poll_interval", "pit_keep_alive", "max_retry_after")


class ElasticConfig(BaseModel):
    """Configuration of one Elasticsearch/OpenSearch source.

    Durations accept ``30s``/``15m``/``1h`` text, seconds, or ISO 8601. ``api_key`` is the
    encoded key (base64 of ``id:api_key``, the ``encoded`` field Elasticsearch returns).
    Validation errors never echo the values given (``hide_input_in_errors``), so a password put
    in the wrong place does not end up in a message.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str = Field(description="Base URL of the cluster, http:// or https://")
    index: str = Field(min_length=1, description="Index pattern, e.g. logs-*,.alerts-security*")
    query: dict[str, Any] | None = Field(
        default=None, description="A query object (ANDed with the time range), e.g. a term query"
    )
    time_field: str = Field(default="@timestamp", min_length=1)
    paging: PagingMode = PagingMode.PIT
    tiebreaker: str | None = Field(default=None, min_length=1)
    page_size: int = Field(default=500, ge=1, le=10_000)
    max_pages: int = Field(
        default=100, ge=1, description="Pages with new events per pull before yielding"
    )
    lookback: timedelta = timedelta(hours=1)
    delay: timedelta = timedelta(seconds=30)
    poll_interval: timedelta = timedelta(seconds=30)
    pit_keep_alive: timedelta = timedelta(minutes=1)
    auth: AuthKind = AuthKind.NONE
    api_key: SecretValue | None = None
    username: str | None = None
    password: SecretValue | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)
    max_retries: int = Field(default=5, ge=0, le=50, description="Retries of a 429/503 answer")
    max_retry_after: timedelta = timedelta(seconds=60)
    record: RecordShape = RecordShape.SOURCE
    metadata_key: str | None = Field(default="@metadata", min_length=1)

    @field_validator(*_DURATION_FIELDS, mode="before")
    @classmethod
    def _human_duration(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().upper().startswith("P"):
            try:
                return parse_duration(value)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "must not carry credentials; set auth with api_key, or username and password"
            )
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or a fragment")
        return value.strip().rstrip("/")

    @field_validator("index")
    @classmethod
    def _index_pattern(cls, value: str) -> str:
        if any(char.isspace() or char in "/?#\\" for char in value):
            raise ValueError("must not contain spaces, '/', '?', '#' or '\\'")
        return value

    @field_validator("query")
    @classmethod
    def _query_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not value:
            raise ValueError("must be a query object such as {'term': {'event.kind': 'alert'}}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ElasticConfig:
        if self.paging is PagingMode.TIEBREAKER and self.tiebreaker is None:
            raise ValueError(
                "paging 'tiebreaker' needs a tiebreaker field present and unique in every "
                "document, e.g. event.id"
            )
        if self.paging is PagingMode.PIT and self.tiebreaker is not None:
            raise ValueError(
                "tiebreaker applies only to paging 'tiebreaker'; PIT paging breaks ties itself"
            )
        if self.auth is AuthKind.API_KEY and not self.api_key:
            raise ValueError("auth 'api_key' needs api_key")
        if self.auth is AuthKind.BASIC and (not self.username or not self.password):
            raise ValueError("auth 'basic' needs username and password")
        if self.auth is not AuthKind.API_KEY and self.api_key is not None:
            raise ValueError(f"api_key is set but auth is {self.auth.value!r}")
        if self.auth is not AuthKind.BASIC and (self.username or self.password):
            raise ValueError(f"username/password are set but auth is {self.auth.value!r}")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is set but verify_tls is off")
        if self.lookback <= timedelta(0) or self.poll_interval <= timedelta(0):
            raise ValueError("lookback and poll_interval must be longer than zero")
        if self.delay < timedelta(0) or self.max_retry_after < timedelta(0):
            raise ValueError("delay and max_retry_after must not be negative")
        if self.pit_keep_alive < timedelta(seconds=1):
            raise ValueError("pit_keep_alive must be at least 1s")
        return self


def load_elastic_config(data: Mapping[str, Any]) -> ElasticConfig:
    """Validate a source's settings; InvalidInput names the first wrong field (never its value)."""
    try:
        return ElasticConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        location = ".".join(str(part) for part in first["loc"]) or "config"
        raise InvalidInput(f"{location}: {first['msg']}", field=location) from None


class _SecretAuth(httpx.Auth):
    """Reveals the secret into the Authorization header of each request, and nowhere else."""

    def __init__(self, config: ElasticConfig) -> None:
        self._config = config

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add the header and send."""
        config = self._config
        if config.auth is AuthKind.API_KEY and config.api_key is not None:
            request.headers["Authorization"] = f"ApiKey {config.api_key.reveal()}"
        elif config.auth is AuthKind.BASIC and config.password is not None:
            pair = f"{config.username}:{config.password.reveal()}".encode()
            request.headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        yield request


@dataclass(frozen=True, slots=True)
class _Hit:
    """One search hit, checked."""

    index: str
    id: str
    source: dict[str, Any]
    sort: list[Any]

    @property
    def time(self) -> int:
        value: int = self.sort[0]
        return value

    @property
    def key(self) -> tuple[str, str]:
        return (self.index, self.id)


@dataclass(slots=True)
class _Position:
    """Where reading resumes: the time of the last submitted event and those submitted at it."""

    time: int
    seen: set[tuple[str, str]]


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _iso(epoch_ms: int) -> str:
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(epoch_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _keep_alive(value: timedelta) -> str:
    return f"{max(1, int(value.total_seconds()))}s"


def _retry_after(header: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if header is None or not header.strip():
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _peer_reason(response: httpx.Response) -> str:
    """Elasticsearch's own ``error.type: error.reason``, or the start of the body; short."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text.strip().replace("\n", " ")
        return text[:_ERROR_TEXT_LIMIT] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        root = error.get("root_cause")
        if isinstance(root, list) and root and isinstance(root[0], dict):
            error = root[0]
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip(": ")
    elif isinstance(error, str):
        text = error
    else:
        text = response.reason_phrase
    return text[:_ERROR_TEXT_LIMIT]


class ElasticPuller(SiemPuller):
    """Pulls new events from Elasticsearch or OpenSearch into the pipeline.

    See the module docstring for the requests, the paging modes and the cursor. ``transport``
    replaces the network for tests; ``sleep`` and ``clock`` replace waiting and time.
    """

    kind: ClassVar[str] = "elastic"

    def __init__(
        self,
        source: str,
        config: ElasticConfig,
        sink: IntakeSink,
        checkpoints: CheckpointStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            source,
            sink,
            checkpoints,
            clock=clock,
            sleep=sleep,
            poll_interval=config.poll_interval,
            backoff=backoff,
        )
        self.config = config
        if not config.verify_tls:
            log.warning("siem.elastic.tls_unverified", source=source, url=config.url)
        self._client = httpx.AsyncClient(
            base_url=config.url,
            auth=_SecretAuth(config),
            verify=self._tls(),
            timeout=httpx.Timeout(config.timeout),
            transport=transport,
            headers={"Accept": "application/json"},
            # A redirect is a misconfigured URL; following it could hand the key to another host.
            follow_redirects=False,
        )
        self._index_path = quote(config.index, safe=",*:")

    def _tls(self) -> ssl.SSLContext | bool:
        if not self.config.verify_tls:
            return False
        if self.config.ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.config.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"elastic source {self.source!r}: cannot load the CA file "
                f"{self.config.ca_file}: {getattr(exc, 'strerror', None) or exc}",
                source=self.source,
                field="ca_file",
            ) from None

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    # -- pulling -----------------------------------------------------------------------------

    async def pull_once(self) -> PullResult:
        """Read the events after the cursor, up to ``max_pages`` pages, and submit them in order."""
        config = self.config
        cursor = await self.load_checkpoint()
        position = self._position(cursor) if cursor is not None else None
        now = self.clock.now()
        upper = _epoch_ms(now - config.delay)
        lower = position.time if position is not None else _epoch_ms(now - config.lookback)
        if lower > upper:
            return PullResult(checkpoint=cursor)

        query = self._query(lower, upper)
        run_time = position.time if position is not None else None
        run_seen = set(position.seen) if position is not None else set()
        pages = productive = events = 0
        submitted = IntakeResult()
        saved = cursor
        caught_up = False
        search_after: list[Any] | None = None
        pit_id = await self._open_pit() if config.paging is PagingMode.PIT else None
        try:
            # Only pages that bring something new count against max_pages: re-reading the
            # events already seen at the cursor's millisecond must never use up a pull.
            while productive < config.max_pages:
                answer = await self._search(self._body(query, search_after, pit_id), pit_id)
                if pit_id is not None:
                    pit_id = self._latest_pit_id(answer, pit_id)
                hits = self._hits(answer)
                if not hits:
                    caught_up = True
                    break
                pages += 1
                records: list[bytes] = []
                for hit in hits:
                    if hit.time == run_time and hit.key in run_seen:
                        continue  # submitted before the last checkpoint
                    records.append(self._record(hit))
                    if hit.time != run_time:
                        run_time, run_seen = hit.time, set()
                    run_seen.add(hit.key)
                last = hits[-1]
                if records and run_time is not None:
                    new_cursor = self._cursor(run_time, run_seen, last.sort)
                    submitted += await self.commit_page(records, new_cursor)
                    saved = new_cursor
                    events += len(records)
                    productive += 1
                if len(hits) < config.page_size:
                    caught_up = True
                    break
                search_after = self._search_after(last)
        finally:
            if pit_id is not None:
                await self._close_pit(pit_id)
        return PullResult(
            pages=pages, events=events, submitted=submitted, checkpoint=saved, caught_up=caught_up
        )

    def _query(self, lower: int, upper: int) -> dict[str, Any]:
        time_range = {
            "range": {
                self.config.time_field: {"gte": lower, "lte": upper, "format": "epoch_millis"}
            }
        }
        filters: list[dict[str, Any]] = [time_range]
        if self.config.query is not None:
            filters.insert(0, self.config.query)
        return {"bool": {"filter": filters}}

    def _sort(self) -> list[dict[str, Any]]:
        by_time = {self.config.time_field: {"order": "asc", "numeric_type": "date"}}
        if self.config.paging is PagingMode.PIT or self.config.tiebreaker is None:
            return [by_time, {"_shard_doc": "asc"}]
        return [by_time, {self.config.tiebreaker: "asc"}]

    def _body(
        self, query: dict[str, Any], search_after: list[Any] | None, pit_id: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "size": self.config.page_size,
            "query": query,
            "sort": self._sort(),
            "track_total_hits": False,
        }
        if search_after is not None:
            body["search_after"] = search_after
        if pit_id is not None:
            body["pit"] = {"id": pit_id, "keep_alive": _keep_alive(self.config.pit_keep_alive)}
        return body

    def _search_after(self, last: _Hit) -> list[Any]:
        if any(value is None for value in last.sort):
            # search_after cannot express "after a missing value"; paging would stall or skip.
            raise SiemError(
                f"elastic source {self.source!r}: document {last.index}/{last.id} has no value "
                f"in the tiebreaker field {self.config.tiebreaker!r}; choose a field present "
                "in every document",
                retryable=False,
                source=self.source,
                field="tiebreaker",
            )
        return list(last.sort)

    def _record(self, hit: _Hit) -> bytes:
        if self.config.record is RecordShape.HIT:
            return _exact(orjson.dumps({"_index": hit.index, "_id": hit.id, "_source": hit.source}))
        key = self.config.metadata_key
        if key is None or key in hit.source:
            return _exact(orjson.dumps(hit.source))
        return _exact(orjson.dumps({**hit.source, key: {"_index": hit.index, "_id": hit.id}}))

    def _cursor(self, time: int, seen: set[tuple[str, str]], sort: Sequence[Any]) -> dict[str, Any]:
        return {
            "v": CURSOR_VERSION,
            "time": time,
            "at": _iso(time),
            "seen": [list(key) for key in sorted(seen)],
            "sort": list(sort),
            "paging": self.config.paging.value,
        }

    def _position(self, cursor: Mapping[str, Any]) -> _Position:
        time = cursor.get("time")
        seen = cursor.get("seen", [])
        if (
            cursor.get("v") == CURSOR_VERSION
            and isinstance(time, int)
            and not isinstance(time, bool)
            and isinstance(seen, list)
            and all(
                isinstance(item, list | tuple)
                and len(item) == 2
                and all(isinstance(part, str) for part in item)
                for item in seen
            )
        ):
            return _Position(time=time, seen={(str(item[0]), str(item[1])) for item in seen})
        # A person has to look: guessing a position could skip events or replay a day of them.
        raise SiemError(
            f"elastic source {self.source!r}: the checkpoint {self.checkpoint_key!r} is not "
            "a cursor this version understands; delete it to start from the lookback",
            retryable=False,
            source=self.source,
            checkpoint=self.checkpoint_key,
        )

    # -- the wire ----------------------------------------------------------------------------

    async def _open_pit(self) -> str:
        answer = await self._request(
            "POST",
            f"{self._index_path}/_pit",
            what="open a point in time",
            params={"keep_alive": _keep_alive(self.config.pit_keep_alive)},
        )
        pit_id = answer.get("id")
        if not isinstance(pit_id, str) or not pit_id:
            raise self._malformed("the point-in-time answer has no id")
        return pit_id

    async def _close_pit(self, pit_id: str) -> None:
        # The PIT expires by itself after keep_alive; a failed close must not hide the outcome
        # of the pull, so it is logged, not raised.
        try:
            await self._request("DELETE", "_pit", what="close a point in time", body={"id": pit_id})
        except (SiemError, httpx.HTTPError) as exc:
            log.warning("siem.elastic.pit_close_failed", source=self.source, error=str(exc))

    async def _search(self, body: dict[str, Any], pit_id: str | None) -> dict[str, Any]:
        # With a PIT the index comes from the PIT and must not be in the path.
        path = "_search" if pit_id is not None else f"{self._index_path}/_search"
        answer = await self._request(
            "POST",
            path,
            what="search",
            body=body,
            # Partial results would let the cursor pass events on the shards that failed.
            params={"allow_partial_search_results": "false"},
        )
        if answer.get("timed_out") is True:
            raise SiemError(
                f"elastic source {self.source!r}: the search timed out in the cluster",
                source=self.source,
            )
        shards = answer.get("_shards")
        if isinstance(shards, dict) and isinstance(shards.get("failed"), int) and shards["failed"]:
            failures = shards.get("failures")
            reason = ""
            if isinstance(failures, list) and failures and isinstance(failures[0], dict):
                cause = failures[0].get("reason")
                if isinstance(cause, dict):
                    reason = f": {cause.get('type', '')}: {cause.get('reason', '')}"
            raise SiemError(
                f"elastic source {self.source!r}: {shards['failed']} shard(s) failed the "
                f"search{reason[:_ERROR_TEXT_LIMIT]}",
                source=self.source,
            )
        return answer

    def _latest_pit_id(self, answer: dict[str, Any], current: str) -> str:
        latest = answer.get("pit_id")
        if latest is None:
            return current
        if not isinstance(latest, str) or not latest:
            raise self._malformed("pit_id is not a string")
        return latest

    def _hits(self, answer: dict[str, Any]) -> list[_Hit]:
        outer = answer.get("hits")
        raw = outer.get("hits") if isinstance(outer, dict) else None
        if not isinstance(raw, list):
            raise self._malformed("the search answer has no hits.hits list")
        hits: list[_Hit] = []
        previous: int | None = None
        for number, item in enumerate(raw):
            if not isinstance(item, dict):
                raise self._malformed(f"hit {number} is not an object")
            index, doc_id, source, sort = (
                item.get("_index"),
                item.get("_id"),
                item.get("_source"),
                item.get("sort"),
            )
            if not isinstance(index, str) or not isinstance(doc_id, str):
                raise self._malformed(f"hit {number} has no _index or _id")
            where = f"hit {number} ({index}/{doc_id})"
            if not isinstance(source, dict):
                raise self._malformed(f"{where} has no _source object (is _source disabled?)")
            if not isinstance(sort, list) or len(sort) != 2:
                raise self._malformed(f"{where} has no sort values for the 2 sort keys")
            time = sort[0]
            if not isinstance(time, int) or isinstance(time, bool):
                raise self._malformed(
                    f"{where}: the sort value of {self.config.time_field!r} is not epoch "
                    "milliseconds; is it a date field?"
                )
            if previous is not None and time < previous:
                raise self._malformed(f"{where} is out of time order")
            previous = time
            hits.append(_Hit(index=index, id=doc_id, source=source, sort=sort))
        if len(hits) > self.config.page_size:
            raise self._malformed(f"{len(hits)} hits for a page of {self.config.page_size}")
        return hits

    def _malformed(self, what: str) -> SiemError:
        return SiemError(
            f"elastic source {self.source!r}: malformed answer from {self._host}: {what}",
            source=self.source,
        )

    @property
    def _host(self) -> str:
        return self._client.base_url.host or self.config.url

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One API call; 429/503 are retried after Retry-After (bounded), the rest raise."""
        retries = 0
        while True:
            response = await self._send(method, path, what=what, body=body, params=params)
            status = response.status_code
            if status in (429, 503):
                hint = _retry_after(response.headers.get("Retry-After"), self.clock.now())
                wait = hint if hint is not None else self.backoff.delay(retries + 1)
                cap = self.config.max_retry_after.total_seconds()
                if retries >= self.config.max_retries or wait > cap:
                    # Give up here; run() waits (stop-aware) for at least the asked delay.
                    raise SiemError(
                        f"elastic source {self.source!r}: {self._host} is busy (HTTP {status}) "
                        f"and asked to retry in {wait:.0f}s",
                        retry_after=wait,
                        source=self.source,
                        status=status,
                    )
                retries += 1
                log.warning(
                    "siem.elastic.throttled",
                    source=self.source,
                    status=status,
                    retry_in_s=wait,
                    retry=retries,
                )
                await self.sleep(wait)
                continue
            if status in (401, 403):
                raise self._denied(status, what)
            if not response.is_success:
                raise SiemError(
                    f"elastic source {self.source!r}: {what} at {self._host} failed with HTTP "
                    f"{status}: {_peer_reason(response)}",
                    source=self.source,
                    status=status,
                )
            try:
                answer = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise self._malformed(f"the {what} answer is not JSON") from None
            if not isinstance(answer, dict):
                raise self._malformed(f"the {what} answer is not a JSON object")
            return answer

    async def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: dict[str, Any] | None,
        params: dict[str, str] | None,
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            return await self._client.request(
                method,
                path,
                params=params,
                content=orjson.dumps(body) if body is not None else None,
                headers=headers,
            )
        except httpx.TimeoutException:
            raise SiemError(
                f"elastic source {self.source!r}: {self._host} did not answer the {what} "
                f"request within {self.config.timeout:g}s",
                source=self.source,
            ) from None
        except httpx.HTTPError as exc:
            raise SiemError(
                f"elastic source {self.source!r}: cannot {what} at {self._host}: "
                f"{type(exc).__name__}: {exc}",
                source=self.source,
            ) from None

    def _denied(self, status: int, what: str) -> SiemAccessDenied:
        if status == 401:
            if self.config.auth is AuthKind.NONE:
                hint = "it requires credentials; set auth to api_key or basic"
            else:
                hint = f"check the {self._credential_name()} of this source"
            message = (
                f"elastic source {self.source!r}: {self._host} refused the credentials "
                f"(HTTP 401); {hint}"
            )
        else:
            message = (
                f"elastic source {self.source!r}: the credentials may not {what} on "
                f"{self.config.index!r} (HTTP 403); grant them the read privilege on it"
            )
        return SiemAccessDenied(
            message, source=self.source, status=status, auth=self.config.auth.value
        )

    def _credential_name(self) -> str:
        return "API key" if self.config.auth is AuthKind.API_KEY else "user name and password"


__all__ = [
    "AuthKind",
    "ElasticConfig",
    "ElasticPuller",
    "PagingMode",
    "RecordShape",
    "load_elastic_config",
]


def _exact(data: bytes) -> bytes:
    """A copy of orjson's result, which keeps a ~4 KiB buffer per object while it is held."""
    return bytes(memoryview(data))
