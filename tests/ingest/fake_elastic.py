"""A local Elasticsearch that speaks the search API, over an in-memory index.

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

import base64
import bisect
import functools
import itertools
import json
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
SOURCE = "siem-prod"
DATE_FIELDS = {"@timestamp", "event.ingested"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- the fake cluster -----------------------------------------------------------------------


@dataclass
class Doc:
    """One indexed document."""

    index: str
    id: str
    source: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)  # sort values by field, computed once


@dataclass
class Pit:
    """A point in time: a frozen copy of the documents and this PIT's own _shard_doc values."""

    docs: list[Doc]
    shard_doc: dict[tuple[str, str], int]
    latest_id: str
    renewals: int = 0
    ordered: dict[tuple[str, ...], list[tuple[Any, list[Any], Doc]]] = field(default_factory=dict)


@dataclass
class Fault:
    """An answer to give once, to the next request whose path ends with ``path_suffix``."""

    path_suffix: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


class BadRequest(Exception):
    """Becomes a 400 with an Elasticsearch-shaped error body."""


def dig(source: dict[str, Any], path: str) -> Any:
    """A field by dotted path, flattened (``"event.id"``) or nested."""
    if path in source:
        return source[path]
    current: Any = source
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def epoch_ms(value: Any) -> int | None:
    """A date value (ISO 8601 text or epoch ms) as epoch milliseconds, like a ``date`` field."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return _text_ms(value)
    return None


@functools.lru_cache(maxsize=100_000)
def _text_ms(value: str) -> int:
    if value.isdigit():
        return int(value)
    return (datetime.fromisoformat(value) - EPOCH) // timedelta(milliseconds=1)


class FakeElastic:
    """State and behaviour of the fake cluster; the HTTP app below calls into it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url = ""
        self.reset()

    def reset(self) -> None:
        """Empty index, API-key auth, no faults, no requests seen."""
        self.docs: list[Doc] = []
        self.auth: tuple[str, ...] | None = ("api_key", API_KEY)
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.pits: dict[str, Pit] = {}
        self.ordered: dict[tuple[str, ...], list[tuple[Any, list[Any], Doc]]] = {}
        self.pits_opened = 0
        self.pits_closed = 0
        self.rng = random.Random(7)
        self.counter = itertools.count(1)

    def add(self, index: str, doc_id: str, source: dict[str, Any]) -> None:
        """Index a document (visible to searches at once, to open PITs never)."""
        with self.lock:
            self.docs.append(Doc(index, doc_id, source))
            self.ordered.clear()

    def fail_once(self, path_suffix: str, status: int, **kwargs: Any) -> None:
        """Answer the next request to ``…path_suffix`` with ``status`` (and headers/body)."""
        with self.lock:
            self.faults.append(Fault(path_suffix, status, **kwargs))

    @property
    def open_pits(self) -> int:
        """PITs opened and not closed."""
        return len(self.pits)

    # -- request handling (under self.lock) --------------------------------------------------

    def authenticate(self, header: str | None) -> bool:
        if self.auth is None:
            return True
        if self.auth[0] == "api_key":
            return header == f"ApiKey {self.auth[1]}"
        pair = base64.b64encode(f"{self.auth[1]}:{self.auth[2]}".encode()).decode()
        return header == f"Basic {pair}"

    def take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if path.endswith(fault.path_suffix):
                self.faults.remove(fault)
                return fault
        return None

    def indices(self, pattern: str) -> list[Doc]:
        patterns = pattern.split(",")
        return [d for d in self.docs if any(fnmatchcase(d.index, p) for p in patterns)]

    def open_pit(self, index: str, keep_alive: str | None) -> dict[str, Any]:
        if not keep_alive:
            raise BadRequest("[keep_alive] is required")
        docs = list(self.indices(index))
        values = self.rng.sample(range(10 * len(docs) + 10), len(docs))
        pit_id = f"pit-{next(self.counter)}"
        self.pits[pit_id] = Pit(
            docs, {(d.index, d.id): v for d, v in zip(docs, values, strict=True)}, pit_id
        )
        self.pits_opened += 1
        return {"id": pit_id}

    def close_pit(self, body: dict[str, Any]) -> dict[str, Any]:
        pit = self.pits.pop(body.get("id", ""), None)
        if pit is None:
            return {"succeeded": True, "num_freed": 0}
        self.pits_closed += 1
        return {"succeeded": True, "num_freed": 1}

    def search(self, index: str | None, body: dict[str, Any]) -> dict[str, Any]:
        pit: Pit | None = None
        answer: dict[str, Any] = {}
        if "pit" in body:
            if index is not None:
                raise BadRequest("[indices] cannot be used with point in time")
            pit_id = body["pit"].get("id")
            pit = self.pits.get(pit_id)
            if pit is None:  # unknown, closed, or not the latest id: the puller must use the latest
                raise LookupError(pit_id)
            # Elasticsearch may hand out a new id with any response; this fake always does.
            del self.pits[pit_id]
            pit.renewals += 1
            pit.latest_id = f"{pit_id.split('.')[0]}.{pit.renewals}"
            self.pits[pit.latest_id] = pit
            answer["pit_id"] = pit.latest_id
            docs = pit.docs
        else:
            if index is None:
                raise BadRequest("this fake needs an index or a pit")
            docs = self.indices(index)
        size = body.get("size", 10)
        if not isinstance(size, int) or not 0 <= size <= 10_000:
            raise BadRequest("[size] must be between 0 and 10000")
        sort = [self.sort_key(entry) for entry in body.get("sort", [])]
        if not sort:
            raise BadRequest("this fake only serves sorted searches")
        query = body.get("query", {"match_all": {}})
        # Sorting is the expensive part; a PIT's documents never change, so sort them once.
        cache = pit.ordered if pit is not None else self.ordered
        cache_key = (index or "", *sort)
        if cache_key not in cache:
            keyed = [(_order(v), v, d) for d in docs for v in [self.sort_values(d, sort, pit)]]
            keyed.sort(key=lambda item: item[0])
            cache[cache_key] = keyed
        keyed = cache[cache_key]
        after = body.get("search_after")
        if after is not None:
            if len(after) != len(sort) or any(value is None for value in after):
                raise BadRequest("Failed to parse search_after value")
            start = bisect.bisect_right([item[0] for item in keyed], _order(after))
            keyed = keyed[start:]
        page: list[tuple[list[Any], Doc]] = []
        for _key, values, doc in keyed:  # the query is checked lazily, for speed
            if len(page) == size:
                break
            if self.matches(query, doc):
                page.append((values, doc))
        hits = {
            "max_score": None,
            "hits": [
                {"_index": d.index, "_id": d.id, "_score": None, "_source": d.source, "sort": v}
                for v, d in page
            ],
        }
        if body.get("track_total_hits", True) is not False:
            total = sum(1 for _key, _values, doc in keyed if self.matches(query, doc))
            hits["total"] = {"value": total, "relation": "eq"}
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        return {"took": 1, "timed_out": False, "_shards": shards, "hits": hits, **answer}

    @staticmethod
    def sort_key(entry: Any) -> str:
        if isinstance(entry, str):
            return entry
        (name, spec), *rest = entry.items()
        order = spec if isinstance(spec, str) else spec.get("order", "asc")
        if rest or order != "asc":
            raise BadRequest("this fake sorts ascending on one field per entry")
        return str(name)

    @staticmethod
    def sort_values(doc: Doc, sort: Sequence[str], pit: Pit | None) -> list[Any]:
        values: list[Any] = []
        for name in sort:
            if name == "_shard_doc":
                if pit is None:
                    raise BadRequest("[_shard_doc] sort is only supported with point in time")
                values.append(pit.shard_doc[(doc.index, doc.id)])
            else:
                if name not in doc.values:
                    value = dig(doc.source, name)
                    doc.values[name] = epoch_ms(value) if name in DATE_FIELDS else value
                values.append(doc.values[name])
        return values

    def matches(self, query: dict[str, Any], doc: Doc) -> bool:
        ((kind, spec),) = query.items()
        if kind == "match_all":
            return True
        if kind == "bool":
            filters = [*spec.get("filter", []), *spec.get("must", [])]
            if isinstance(spec.get("filter"), dict):
                filters = [spec["filter"], *spec.get("must", [])]
            if not all(self.matches(q, doc) for q in filters):
                return False
            if any(self.matches(q, doc) for q in spec.get("must_not", [])):
                return False
            should = spec.get("should", [])
            return not should or any(self.matches(q, doc) for q in should)
        if kind == "term":
            ((name, wanted),) = spec.items()
            if isinstance(wanted, dict):
                wanted = wanted["value"]
            return bool(dig(doc.source, name) == wanted)
        if kind == "range":
            ((name, bounds),) = spec.items()
            raw = dig(doc.source, name)
            value = epoch_ms(raw) if name in DATE_FIELDS else raw
            if value is None:
                return False
            for op, check in (
                ("gte", lambda v, b: v >= b),
                ("gt", lambda v, b: v > b),
                ("lte", lambda v, b: v <= b),
                ("lt", lambda v, b: v < b),
            ):
                if op in bounds:
                    bound = epoch_ms(bounds[op]) if name in DATE_FIELDS else bounds[op]
                    if not check(value, bound):
                        return False
            return True
        raise BadRequest(f"unknown query [{kind}]")


def _order(values: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    # Missing values sort last, as with Elasticsearch's default "missing": "_last".
    return tuple((1, 0) if value is None else (0, value) for value in values)


def _error(status: int, kind: str, reason: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind}}
    body["error"]["reason"] = reason
    return JSONResponse({**body, "status": status}, status_code=status, headers=headers)


def elastic_app(fake: FakeElastic) -> Starlette:
    """The HTTP face of ``fake``."""

    async def handle(request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        path = request.url.path
        index = request.path_params.get("index")
        with fake.lock:
            fake.requests.append(
                {
                    "method": request.method,
                    "path": path,
                    "params": dict(request.query_params),
                    "body": body,
                }
            )
            fault = fake.take_fault(path)
            if fault is not None:
                return Response(
                    fault.body or b"{}", fault.status, fault.headers, media_type="application/json"
                )
            if not fake.authenticate(request.headers.get("authorization")):
                return _error(
                    401,
                    "security_exception",
                    "unable to authenticate with provided credentials and anonymous access "
                    "is not allowed for this request",
                    {"WWW-Authenticate": 'ApiKey, Basic realm="security" charset="UTF-8"'},
                )
            try:
                if path.endswith("/_pit") and request.method == "POST":
                    return JSONResponse(
                        fake.open_pit(index, request.query_params.get("keep_alive"))
                    )
                if path == "/_pit" and request.method == "DELETE":
                    return JSONResponse(fake.close_pit(body))
                return JSONResponse(fake.search(index, body))
            except BadRequest as exc:
                return _error(400, "illegal_argument_exception", str(exc))
            except LookupError:
                return _error(404, "search_context_missing_exception", "No search context found")

    return Starlette(
        routes=[
            Route("/_search", handle, methods=["POST"]),
            Route("/_pit", handle, methods=["DELETE"]),
            Route("/{index}/_search", handle, methods=["POST"]),
            Route("/{index}/_pit", handle, methods=["POST"]),
        ]
    )
