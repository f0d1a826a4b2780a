"""A TAXII 2.1 client: pull a collection's STIX objects into the indicator store, page by page.

Every request goes through Quell's SSRF-guarded aiohttp session (:func:`quell.sdk.http.guard`,
the outbound policy connectors use: a private or loopback server must be allowed by
``QUELL_OUTBOUND_ALLOW``), asks for ``application/taxii+json;version=2.1``, and carries HTTP
basic credentials or a bearer token when the feed has them. Credentials are never logged and
never part of an error: errors name the server and the path, never a query or a secret.

What is read is bounded: a response larger than ``max_bytes`` is refused (by its
Content-Length before reading, or counted while reading), and one pull reads at most
``max_pages`` pages.

:func:`pull` resolves the API root (the server's discovery, or the one configured) and the
collection, then reads ``GET {api_root}collections/{id}/objects/?added_after=…&limit=N``,
following ``next`` (or, for a server that pages without it, ``added_after`` set to the page's
``X-TAXII-Date-Added-Last``). Each page is parsed (:func:`quell.intel.stix.parse_objects`) and
applied to the store in one transaction together with the checkpoint that comes after it, so
a pull stopped anywhere (a crash, a cancelled task, the page limit) has either kept a page and
moved past it, or neither. The next pull resumes from the checkpoint: pages already kept are
not fetched again.

The checkpoint (JSON)::

    {"collection": "<api root URL>collections/<id>/",
     "added_after": "<X-TAXII-Date-Added-Last of the last page kept>",
     "next": "<the server's next token, while paging>",
     "query_added_after": "<the added_after the paged query started with>",
     "inflight": true}

A ``next`` token can be a cursor that the server moves as it answers (medallion's is): asked
twice, it gives two different pages. So a request with a token is first noted (``inflight``)
in the checkpoint, and the page's own commit clears the note. A pull that stopped between
pages (the page limit, or a crash after a commit) resumes with the token: nothing is read
twice. A pull that finds the note, or a token the server no longer knows (HTTP 400/404), was
stopped while a page was on its way, which the server may count as read: it starts again just
before ``added_after`` instead, so the objects added at that very instant are read again (the
store counts them unchanged) rather than lost.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import aiohttp
import orjson
from sqlalchemy import Connection

from quell.errors import UpstreamUnavailable
from quell.intel.model import ImportReport, Parsed, Tlp
from quell.intel.store import IntelStore
from quell.sdk.http import OutboundBlocked
from quell.sdk.secret import REDACTED, SecretValue

MEDIA_TYPE = "application/taxii+json;version=2.1"
DEFAULT_PAGE_SIZE = 500
DEFAULT_MAX_PAGES = 100
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
FEED_TIMEOUT = aiohttp.ClientTimeout(total=600, connect=10, sock_read=60)
_CHUNK = 256 * 1024
_ITEMS_KEPT = 50  # unsupported items a summed report keeps


class FeedError(UpstreamUnavailable):
    """A feed or TAXII server could not be pulled; the message is one line, without secrets."""

    def __init__(self, message: str, /, *, status: int | None = None, **details: Any) -> None:
        super().__init__(message, status=status, **details)
        self.status = status


# -- credentials and safe display ----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (username and password) or a bearer token."""

    username: str | None = None
    password: SecretValue | None = None
    token: SecretValue | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Credentials | None:
        """From ``{"username", "password"}`` or ``{"token"}`` (as a feed's secret holds)."""
        if not values:
            return None
        token = values.get("token")
        if token:
            return cls(token=SecretValue(token))
        username = values.get("username")
        password = values.get("password")
        if username is None and password is None:
            return None
        return cls(
            username=str(username or ""),
            password=SecretValue(password) if password is not None else SecretValue(""),
        )

    @property
    def scheme(self) -> str:
        return "bearer" if self.token is not None else "basic"

    def headers(self) -> dict[str, str]:
        """The Authorization header."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token.reveal()}"}
        password = self.password.reveal() if self.password is not None else ""
        pair = f"{self.username or ''}:{password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    def values(self) -> list[str]:
        """The secret strings, to scrub from any message."""
        found = [s.reveal() for s in (self.password, self.token) if s is not None]
        return [value for value in found if len(value) >= 3]


def display_url(url: str) -> str:
    """``scheme://host[:port]/path``: never user info, a query or a fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


def scrub(message: str, *, urls: tuple[str, ...] = (), secrets: tuple[str, ...] = ()) -> str:
    """``message`` on one line, each URL shown by :func:`display_url` and no secret in it."""
    text = " ".join(str(message).split())
    for url in urls:
        if url:
            text = text.replace(url, display_url(url))
    for value in secrets:
        if value:
            text = text.replace(value, REDACTED)
    return text[:500]


async def read_limited(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body, refused with :class:`FeedError` as soon as it is larger than ``limit`` bytes
    (by its Content-Length, or counted while reading: never more than the limit is held)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise FeedError(f"{what} is larger than {limit} bytes (Content-Length {declared})")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            response.close()
            raise FeedError(f"{what} is larger than {limit} bytes")
    return bytes(body)


def describe_failure(exc: BaseException, url: str) -> str:
    """A network failure as one line naming the server, never the query or credentials."""
    where = display_url(url)
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time"
    for refusal in (exc, exc.__cause__):
        if isinstance(refusal, OutboundBlocked):  # names the host and how to allow it
            return scrub(str(refusal), urls=(url,))
    reason = str(exc) or type(exc).__name__
    return scrub(f"cannot reach {where}: {reason}", urls=(url,))


# -- the client ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a collection's objects."""

    objects: list[dict[str, Any]]
    more: bool
    next: str | None
    added_first: str | None
    added_last: str | None
    size: int


class TaxiiClient:
    """TAXII 2.1 requests over a (guarded) aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        credentials: Credentials | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: aiohttp.ClientTimeout = FEED_TIMEOUT,
    ) -> None:
        self.session = session
        self.credentials = credentials
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def get(
        self, url: str, params: Mapping[str, str] | None = None
    ) -> tuple[Any, Mapping[str, str], int]:
        """GET a TAXII resource: (its JSON, the response headers, its size in bytes)."""
        headers = {"Accept": MEDIA_TYPE}
        if self.credentials is not None:
            headers.update(self.credentials.headers())
        where = display_url(url)
        try:
            async with self.session.get(
                url, params=dict(params or {}), headers=headers, timeout=self.timeout
            ) as response:
                if response.status >= 400:
                    raise self._refused(response, await _error_text(response), where)
                body = await read_limited(
                    response, self.max_bytes, f"the TAXII response from {where}"
                )
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                answer_headers = dict(response.headers)
        except FeedError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FeedError(describe_failure(exc, url)) from None
        if kind and "json" not in kind:
            raise FeedError(f"{where} answered {kind}, not TAXII JSON")
        try:  # up to max_bytes of JSON: parsed off the event loop (the API shares it)
            document = (
                orjson.loads(body)
                if len(body) < 65536
                else await asyncio.to_thread(orjson.loads, body)
            )
        except orjson.JSONDecodeError:
            raise FeedError(f"{where} answered with invalid JSON") from None
        return document, answer_headers, len(body)

    def _refused(self, response: aiohttp.ClientResponse, text: str, where: str) -> FeedError:
        status = response.status
        host = display_url(str(response.url)).split("/")[2]
        if status == 401:
            if self.credentials is None:
                return FeedError(
                    f"TAXII server {host} needs credentials (HTTP 401): give the feed a "
                    "username and password or a token",
                    status=status,
                )
            return FeedError(
                f"TAXII server {host} refused the credentials ({self.credentials.scheme}, "
                "HTTP 401): check the username and password or the token",
                status=status,
            )
        if status == 403:
            return FeedError(f"TAXII server {host} forbids {where} (HTTP 403){text}", status=status)
        if status in (406, 415):
            return FeedError(
                f"{where} does not serve TAXII 2.1 (HTTP {status}){text}", status=status
            )
        return FeedError(f"{where} answered HTTP {status}{text}", status=status)

    async def discovery(self, url: str) -> dict[str, Any]:
        document, _, _ = await self.get(url)
        return _object(document, url)

    async def collections(self, api_root: str) -> list[dict[str, Any]]:
        document, _, _ = await self.get(urljoin(api_root, "collections/"))
        found = _object(document, api_root).get("collections") or []
        return [item for item in found if isinstance(item, dict)]

    async def collection(self, api_root: str, collection_id: str) -> dict[str, Any]:
        url = urljoin(api_root, f"collections/{quote(collection_id, safe='')}/")
        try:
            document, _, _ = await self.get(url)
        except FeedError as exc:
            if exc.status != 404:
                raise
            raise await self._no_collection(api_root, collection_id) from None
        return _object(document, url)

    async def _no_collection(self, api_root: str, collection_id: str) -> FeedError:
        try:
            known = [str(c.get("id")) for c in await self.collections(api_root)]
        except FeedError:
            known = []
        listed = ", ".join(known[:5]) + (", …" if len(known) > 5 else "")
        there = f"its {len(known)} collections: {listed}" if known else "it lists none"
        return FeedError(
            f"TAXII collection {collection_id!r} not found at {display_url(api_root)} ({there})",
            status=404,
        )

    async def objects(
        self,
        collection_url: str,
        *,
        added_after: str | None = None,
        next_: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page:
        """One page of ``GET {collection}objects/``."""
        params = {"limit": str(limit)}
        if added_after:
            params["added_after"] = added_after
        if next_:
            params["next"] = next_
        document, headers, size = await self.get(urljoin(collection_url, "objects/"), params)
        envelope = _object(document, collection_url)
        objects = [item for item in envelope.get("objects") or [] if isinstance(item, dict)]
        token = envelope.get("next")
        return Page(
            objects=objects,
            more=bool(envelope.get("more")),
            next=str(token) if token else None,
            added_first=_header(headers, "X-TAXII-Date-Added-First"),
            added_last=_header(headers, "X-TAXII-Date-Added-Last"),
            size=size,
        )

    async def resolve(
        self, url: str, *, api_root: str | None = None, collection: str | None = None
    ) -> str:
        """The URL of the collection to read (``…/collections/{id}/``), checked readable.

        ``url`` is the server's discovery URL or an API root's; ``api_root`` (a URL or a path
        relative to ``url``) picks one; ``collection`` is an id (or, when the API root has
        only one readable collection, may be left out)."""
        root = await self._api_root(url, api_root)
        if collection:
            found = await self.collection(root, collection)
        else:
            readable = [c for c in await self.collections(root) if c.get("can_read", True)]
            if len(readable) != 1:
                listed = ", ".join(str(c.get("id")) for c in readable[:10]) or "none"
                raise FeedError(
                    f"say which TAXII collection of {display_url(root)} to read "
                    f"(readable: {listed})"
                )
            found = readable[0]
        if found.get("can_read") is False:
            raise FeedError(
                f"TAXII collection {found.get('id')!r} at {display_url(root)} cannot be read "
                "with these credentials"
            )
        return urljoin(root, f"collections/{quote(str(found.get('id')), safe='')}/")

    async def _api_root(self, url: str, api_root: str | None) -> str:
        if api_root:
            return _slash(urljoin(_slash(url), api_root))
        document = await self.discovery(url)
        if "api_roots" in document or "default" in document:
            default = document.get("default")
            roots = [str(r) for r in document.get("api_roots") or []]
            chosen = default or (roots[0] if len(roots) == 1 else None)
            if not chosen:
                raise FeedError(
                    f"TAXII server {display_url(url)} has {len(roots)} API roots and no default: "
                    "say which one to read (api_root)"
                )
            return _slash(urljoin(url, str(chosen)))
        if "versions" in document or "max_content_length" in document:
            return _slash(url)
        raise FeedError(f"{display_url(url)} is neither a TAXII 2.1 discovery nor an API root")


async def _error_text(response: aiohttp.ClientResponse) -> str:
    """``: <the error resource's title and description>`` (short), or ``""``."""
    try:
        raw = await response.content.read(4096)
        document = orjson.loads(raw)
    except (aiohttp.ClientError, orjson.JSONDecodeError, ValueError):
        return ""
    if not isinstance(document, dict):
        return ""
    text = " ".join(str(document.get(k) or "") for k in ("title", "description")).strip()
    return f": {' '.join(text.split())[:200]}" if text else ""


def _object(document: Any, url: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise FeedError(f"{display_url(url)} answered JSON that is not a TAXII resource")
    return document


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value.strip() or None
    return None


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


# -- pulling ---------------------------------------------------------------------------------------

SaveCheckpoint = Callable[[Connection, dict[str, Any], ImportReport], None]
MarkCheckpoint = Callable[[dict[str, Any]], None]


@dataclass
class TaxiiPull:
    """What a pull did: the summed import report, pages read, and whether more is waiting."""

    report: ImportReport
    pages: int = 0
    objects: int = 0
    more: bool = False
    checkpoint: dict[str, Any] = field(default_factory=dict)


def add_report(total: ImportReport, page: ImportReport) -> None:
    """Add ``page``'s counts into ``total``."""
    total.added += page.added
    total.updated += page.updated
    total.unchanged += page.unchanged
    total.expired += page.expired
    total.unsupported += page.unsupported
    total.sightings += page.sightings
    total.withdrawn += page.withdrawn
    room = _ITEMS_KEPT - len(total.unsupported_items)
    if room > 0:
        total.unsupported_items.extend(page.unsupported_items[:room])


def _before(timestamp: str) -> str | None:
    """The instant one microsecond before an RFC 3339 timestamp (None if unreadable)."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        earlier = (moment - timedelta(microseconds=1)).astimezone(UTC)
    except OverflowError:  # the first instant there is (0001-01-01T00:00:00Z), or out of range
        return None
    return earlier.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _restart(state: Mapping[str, Any]) -> dict[str, Any]:
    """Where to read from when a paged query cannot be resumed by its ``next`` token: just
    before the last instant kept (objects added at it are read again, never lost), or the
    paged query's own start when no page gave an instant."""
    kept = state.get("added_after")
    since = _before(kept) if kept else state.get("query_added_after")
    return {"collection": state.get("collection"), "added_after": since}


async def pull(
    client: TaxiiClient,
    store: IntelStore,
    *,
    source: str,
    url: str,
    collection: str | None = None,
    api_root: str | None = None,
    checkpoint: Mapping[str, Any] | None = None,
    save: SaveCheckpoint | None = None,
    mark: MarkCheckpoint | None = None,
    tlp: Tlp = Tlp.CLEAR,
    confidence: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> TaxiiPull:
    """Read the collection from ``checkpoint`` on, page by page, into ``store`` as ``source``.

    Each page and the checkpoint after it commit together (``save`` writes the checkpoint in
    the import's transaction). A ``next`` token may be a cursor the server moves when it
    answers (medallion's is), so before a request with one, ``mark`` durably notes it as in
    flight: a pull that finds its token in flight (the answer may have been lost) restarts
    just before the last instant kept instead. Stops when the server has nothing more, or
    after ``max_pages`` (``more`` is then true: the next pull carries on)."""
    from quell.intel.stix import parse_objects

    target = await client.resolve(url, api_root=api_root, collection=collection)
    state = dict(checkpoint or {})
    if state.get("collection") != target:
        state = {"collection": target}  # another collection: start from its beginning
    elif state.get("next") and state.get("inflight"):
        state = _restart(state)
    result = TaxiiPull(ImportReport(source), checkpoint=dict(state))
    while result.pages < max_pages:
        token = state.get("next")
        asked_after = state.get("query_added_after") if token else state.get("added_after")
        if token and mark is not None:
            await asyncio.to_thread(mark, {**state, "inflight": True})
        try:
            page = await client.objects(
                target, added_after=asked_after, next_=token, limit=page_size
            )
        except FeedError as exc:
            if not token or exc.status not in (400, 404, 410):
                raise
            state = _restart(state)  # the server no longer knows the token
            continue
        after = {"collection": target, "added_after": page.added_last or state.get("added_after")}
        if page.more and page.next:
            after["next"] = page.next
            after["query_added_after"] = asked_after
        elif page.more and not page.added_last:
            raise FeedError(
                f"{display_url(target)} says there is more but gives neither next nor "
                "X-TAXII-Date-Added-Last"
            )
        origin = f"{source} page {result.pages + 1}"
        report = await asyncio.to_thread(
            _apply_page, store, source, page.objects, after, save, tlp, confidence, origin,
            parse_objects,
        )  # fmt: skip
        add_report(result.report, report)
        result.pages += 1
        result.objects += len(page.objects)
        result.checkpoint = after
        stalled = not page.objects or (not page.next and after["added_after"] == asked_after)
        result.more = page.more and not stalled
        if not result.more:
            return result
        state = after
    return result


def _apply_page(
    store: IntelStore,
    source: str,
    objects: list[dict[str, Any]],
    checkpoint: dict[str, Any],
    save: SaveCheckpoint | None,
    tlp: Tlp,
    confidence: int | None,
    origin: str,
    parse_objects: Callable[..., Parsed],
) -> ImportReport:
    parsed = parse_objects(objects, default_tlp=tlp, origin=origin)
    with_default_confidence(parsed, confidence)

    def also(conn: Connection, report: ImportReport) -> None:
        if save is not None:
            save(conn, checkpoint, report)

    return store.apply(source, parsed, also=also)


def with_default_confidence(parsed: Parsed, confidence: int | None) -> None:
    """Give ``confidence`` to every record that has none of its own."""
    if confidence is None:
        return
    for record in parsed.records:
        if record.confidence is None:
            record.confidence = confidence


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PAGES",
    "DEFAULT_PAGE_SIZE",
    "MEDIA_TYPE",
    "Credentials",
    "FeedError",
    "Page",
    "TaxiiClient",
    "TaxiiPull",
    "add_report",
    "display_url",
    "pull",
    "read_limited",
    "scrub",
]
