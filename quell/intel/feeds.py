"""Intel feeds pulled on a schedule: a URL (STIX bundle, MISP event, CSV or a list), a MISP
feed directory, or a TAXII 2.1 collection, each under a name that is its indicators' source.

``FeedService.add`` keeps a feed (its credentials sealed under the secret key, never shown
back), ``pull`` pulls one now, and ``pull_due`` pulls every feed whose time has come;
:func:`run_feed_loop` calls it until told to stop, in whichever processes run it.

Claims. A pull first claims its feed: one short transaction sets ``claimed_until`` (now plus
a lease) on a feed that is due (``next_pull_at <= now``, or any time for ``pull``) and not
claimed by anyone else (no claim, or an expired one). The conditional UPDATE takes the row or
finds it taken (PostgreSQL re-checks the condition on the locked row; SQLite writes one at a
time), so two workers never pull one feed at once. Every page a pull keeps renews the lease in
the page's own transaction, and a pull that lost its claim (it ran past its lease and someone
else took the feed) has its page rolled back and stops.

What is kept with what. A feed's position moves in the same transaction as the indicators it
covers (:meth:`~quell.intel.store.IntelStore.apply`'s ``also``): a URL feed's ``ETag`` and
``Last-Modified`` with its import, a MISP feed's event timestamp with each event, a TAXII
collection's ``added_after``/``next`` with each page. A pull interrupted anywhere resumes
where the store is. ``last_report`` is written with the import too (for a MISP feed or a
TAXII collection, the running sum of the pull's pages).

Every pull records ``last_attempt_at`` (with its claim). A success sets ``last_success_at``
and the next pull one interval later (at once while a TAXII collection or MISP feed has more
than one pull reads). A failure sets ``last_error`` (one line: never a secret, a URL's query or
user info), ``last_error_at``, and the next try after a backoff: one minute, doubled with each
failure in a row, never more than the interval. A success does not erase the last error (it
stays, with its time, for whoever looks into the feed later); the count of failures in a row
says whether the feed is failing now: it lives in the ``checkpoint`` JSON (``failures``) beside
the kind's position (``taxii`` or ``misp``), and a success sets it back to 0.
:attr:`Feed.status` is ``failing`` while it is not 0. A failing feed never stops the others.

Outbound requests go through the SSRF guard (the ``outbound_allow`` setting, as for
connectors). A body larger than the feed's ``max_bytes`` (default 64 MiB) is refused, by its
Content-Length or while it is read, and nothing is imported.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
import structlog
from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.durations import parse_duration
from quell.errors import Conflict, InvalidInput, NotFound, QuellError
from quell.governance.audit import AuditLog
from quell.governance.secrets import SecretBox
from quell.ids import new_id
from quell.intel import taxii
from quell.intel.formats import parse as parse_format
from quell.intel.model import ImportReport, IntelError, Parsed, Tlp, Unsupported
from quell.intel.store import IntelStore
from quell.intel.taxii import (
    DEFAULT_MAX_BYTES,
    FEED_TIMEOUT,
    Credentials,
    FeedError,
    add_report,
    describe_failure,
    display_url,
    read_limited,
    scrub,
    with_default_confidence,
)
from quell.sdk.http import OutboundPolicy, guard
from quell.sdk.secret import SecretValue
from quell.store.database import Backend, Database
from quell.store.schema import intel_feeds

if TYPE_CHECKING:
    from quell.runtime import Runtime

log = structlog.get_logger(__name__)

KINDS = ("url", "misp-feed", "taxii")
URL_FORMATS = ("stix", "misp", "csv", "list")
IMPLIED_FORMAT = {"misp-feed": "misp", "taxii": "stix"}
MIN_INTERVAL = timedelta(minutes=1)
DEFAULT_INTERVAL = timedelta(hours=1)
DEFAULT_LEASE = timedelta(minutes=15)
BACKOFF_BASE = timedelta(minutes=1)
DEFAULT_MAX_EVENTS = 1000  # MISP events one pull reads
MAX_ERROR_CHARS = 500

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Settings a feed may have, and which kinds use them.
SETTINGS: dict[str, tuple[str, ...]] = {
    "tlp": KINDS,
    "confidence": KINDS,
    "mapping": ("url",),  # CSV columns
    "type": ("url",),  # a list's indicator type
    "delimiter": ("url",),
    "header": ("url",),  # CSV: first, comment (abuse.ch) or none
    "collection": ("taxii",),
    "api_root": ("taxii",),
    "page_size": ("taxii",),
    "max_pages": ("taxii", "misp-feed"),  # pages (TAXII) or events (MISP) one pull reads
    "max_bytes": KINDS,
    "timeout_s": KINDS,
}


# -- what a feed is ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feed:
    """A configured feed as anyone may see it: never its credentials."""

    id: str
    name: str
    kind: str
    format: str
    url: str
    settings: dict[str, Any]
    auth: str | None  # "basic", "token" or None: the kind of credentials, not them
    interval_s: int
    enabled: bool
    etag: str | None
    last_modified: str | None
    checkpoint: dict[str, Any] | None
    next_pull_at: datetime | None
    claimed_until: datetime | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    last_report: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @property
    def status(self) -> str:
        """``new`` (never pulled), ``failing`` (the last pull failed: :attr:`failures` in a
        row) or ``ok``."""
        if self.failures:
            return "failing"
        if self.last_success_at is None and self.last_error_at is None:
            return "new"
        return "ok"

    @property
    def failures(self) -> int:
        """Failed pulls in a row."""
        return int((self.checkpoint or {}).get("failures") or 0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "format": self.format,
            "url": display_url(self.url),  # a query may hold a key: never shown back
            "settings": self.settings,
            "auth": self.auth,
            "interval_s": self.interval_s,
            "enabled": self.enabled,
            "status": self.status,
            "failures": self.failures,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "checkpoint": self.checkpoint,
            "next_pull_at": _iso(self.next_pull_at),
            "claimed_until": _iso(self.claimed_until),
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_success_at": _iso(self.last_success_at),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "last_report": self.last_report,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _feed(row: Any) -> Feed:
    return Feed(
        id=row.id,
        name=row.name,
        kind=row.kind,
        format=row.format,
        url=row.url,
        settings={k: v for k, v in (row.settings or {}).items() if not k.startswith("_")},
        auth=(row.settings or {}).get("_auth") if row.secret else None,
        interval_s=int(row.interval_s),
        enabled=bool(row.enabled),
        etag=row.etag,
        last_modified=row.last_modified,
        checkpoint=dict(row.checkpoint) if row.checkpoint else None,
        next_pull_at=row.next_pull_at,
        claimed_until=row.claimed_until,
        last_attempt_at=row.last_attempt_at,
        last_success_at=row.last_success_at,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        last_report=dict(row.last_report) if row.last_report else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@dataclass
class FeedPull:
    """What one pull of one feed did."""

    feed: str
    ok: bool
    report: ImportReport | None = None
    pages: int = 0  # TAXII pages, MISP events or 1 (a URL) read
    not_modified: bool = False
    more: bool = False  # the pull stopped at its page limit: the next one carries on
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The counts, JSON-ready (one line of ``quell intel feed pull``)."""
        report = self.report or ImportReport(self.feed)
        return {
            "feed": self.feed,
            "ok": self.ok,
            "added": report.added,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "expired": report.expired,
            "unsupported": report.unsupported,
            "sightings": report.sightings,
            "withdrawn": report.withdrawn,
            "pages": self.pages,
            "not_modified": self.not_modified,
            "more": self.more,
            "error": self.error,
        }


@dataclass
class _Claim:
    """A feed this worker holds until ``until`` (renewed with each page kept)."""

    feed: Feed
    secret: bytes | None
    until: datetime
    running: ImportReport = field(init=False)  # the sum of what this pull committed
    imported: bool = False  # whether anything was committed (and last_report written)

    def __post_init__(self) -> None:
        self.running = ImportReport(self.feed.name)


class LostClaim(QuellError):
    """The pull ran past its lease and another worker took the feed."""


# -- the service ---------------------------------------------------------------------------------


class FeedService:
    """Configure feeds and pull them."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        box: SecretBox,
        *,
        outbound: OutboundPolicy | None = None,
        store: IntelStore | None = None,
        lease: timedelta = DEFAULT_LEASE,
        concurrency: int = 4,
        audit: AuditLog | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.audit = audit  # configuration changes and every pull's outcome
        self.max_bytes = max_bytes  # a feed's own max_bytes setting wins
        self.db = db
        self.clock = clock
        self.box = box
        self.outbound = outbound or OutboundPolicy()
        self.store = store or IntelStore(db, clock)
        self.lease = lease
        self.concurrency = max(1, concurrency)

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> FeedService:
        """The service on a runtime's database, clock, secret key and outbound policy."""
        return cls(
            runtime.db,
            runtime.clock,
            runtime.secret_box,
            outbound=OutboundPolicy.parse(runtime.settings.outbound_allow),
            audit=runtime.audit,
            max_bytes=runtime.settings.intel_max_bytes,
        )

    # -- configuration -----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        kind: str,
        url: str,
        format: str | None = None,
        settings: Mapping[str, Any] | None = None,
        secret: Mapping[str, str | SecretValue] | None = None,
        interval: timedelta | int | str = DEFAULT_INTERVAL,
        enabled: bool = True,
        by: str = "unknown",
    ) -> Feed:
        """Keep a new feed, due at once. ``secret``: ``{"username", "password"}`` or
        ``{"token"}``, sealed; ``interval``: a timedelta, seconds or ``15m``/``24h``."""
        if not _NAME.match(name):
            raise InvalidInput(
                "a feed name is 1-64 lowercase letters, digits, '.', '_' or '-'",
                field="name",
                value=name,
            )
        if kind not in KINDS:
            raise InvalidInput(
                f"unknown feed kind {kind!r}: use {', '.join(KINDS)}", field="kind", value=kind
            )
        check_url(url)
        fmt = _check_format(kind, format)
        checked = check_settings(kind, fmt, settings or {})
        sealed, auth = self._seal(name, secret)
        if auth:
            checked["_auth"] = auth
        seconds = _interval_seconds(interval)
        now = self.clock.now()
        row = {
            "id": new_id("ifd"),
            "name": name,
            "kind": kind,
            "format": fmt,
            "url": url.strip(),
            "settings": checked,
            "secret": sealed,
            "interval_s": seconds,
            "enabled": enabled,
            "next_pull_at": now,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.db.write() as conn:
                conn.execute(insert(intel_feeds).values(**row))
        except IntegrityError:
            raise Conflict(f"a feed named {name!r} exists", field="name", value=name) from None
        self._audit(by, "intel.feed_add", name, {"kind": kind, "format": fmt,
                    "url": display_url(url), "settings": checked})  # fmt: skip
        return self.get(name)

    def list(self) -> builtins.list[Feed]:
        """Every feed, by name."""
        with self.db.read() as conn:
            rows = conn.execute(select(intel_feeds).order_by(intel_feeds.c.name)).all()
        return [_feed(row) for row in rows]

    def get(self, name: str) -> Feed:
        """The feed called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(select(intel_feeds).where(intel_feeds.c.name == name)).first()
        if row is None:
            raise NotFound(f"no intel feed named {name!r}", field="name", value=name)
        return _feed(row)

    def remove(self, name: str, *, by: str = "unknown") -> None:
        """Forget a feed and its credentials (its indicators stay in the store)."""
        with self.db.write() as conn:
            gone = conn.execute(delete(intel_feeds).where(intel_feeds.c.name == name)).rowcount
        if not gone:
            raise NotFound(f"no intel feed named {name!r}", field="name", value=name)
        self._audit(by, "intel.feed_remove", name, {})

    def set_enabled(self, name: str, enabled: bool, *, by: str = "unknown") -> Feed:
        """Turn scheduled pulls of a feed on or off."""
        with self.db.write() as conn:
            done = conn.execute(
                update(intel_feeds)
                .where(intel_feeds.c.name == name)
                .values(enabled=enabled, updated_at=self.clock.now())
            ).rowcount
        if not done:
            raise NotFound(f"no intel feed named {name!r}", field="name", value=name)
        self._audit(by, "intel.feed_enable" if enabled else "intel.feed_disable", name, {})
        return self.get(name)

    def _seal(
        self, name: str, secret: Mapping[str, str | SecretValue] | None
    ) -> tuple[bytes | None, str | None]:
        if not secret:
            return None, None
        plain = {
            k: (v.reveal() if isinstance(v, SecretValue) else str(v)) for k, v in secret.items()
        }
        unknown = set(plain) - {"username", "password", "token"}
        if unknown:
            raise InvalidInput(
                f"a feed's secret holds username and password, or token; not {sorted(unknown)}",
                field="secret",
            )
        if plain.get("token") and (plain.get("username") or plain.get("password")):
            raise InvalidInput("give a token or a username and password, not both", field="secret")
        if not plain.get("token") and not plain.get("username"):
            raise InvalidInput("a password needs a username", field="secret")
        if not plain.get("token") and not plain.get("password"):
            raise InvalidInput("a username needs a password", field="secret")
        auth = "token" if plain.get("token") else "basic"
        value = SecretValue(orjson.dumps(plain).decode())
        return self.box.seal(value, purpose=_purpose(name)), auth

    def _credentials(self, claim: _Claim) -> Credentials | None:
        if not claim.secret:
            return None
        opened = self.box.open(bytes(claim.secret), purpose=_purpose(claim.feed.name))
        return Credentials.from_mapping(orjson.loads(opened.reveal()))

    # -- claiming --------------------------------------------------------------------------------

    def _claim_due(self, limit: int) -> builtins.list[_Claim]:
        now = self.clock.now()
        until = now + self.lease
        free = or_(intel_feeds.c.claimed_until.is_(None), intel_feeds.c.claimed_until <= now)
        due = or_(intel_feeds.c.next_pull_at.is_(None), intel_feeds.c.next_pull_at <= now)
        claims: builtins.list[_Claim] = []
        query = (
            select(intel_feeds.c.id)
            .where(intel_feeds.c.enabled.is_(True), due, free)
            .order_by(intel_feeds.c.next_pull_at, intel_feeds.c.name)
            .limit(limit)
        )
        if self.db.backend is Backend.POSTGRESQL:
            # Workers claiming at once each take different feeds instead of queueing on one.
            query = query.with_for_update(skip_locked=True)
        with self.db.write() as conn:
            candidates = conn.execute(query).scalars().all()
            for feed_id in candidates:
                taken = conn.execute(
                    update(intel_feeds)
                    .where(intel_feeds.c.id == feed_id, intel_feeds.c.enabled.is_(True), due, free)
                    .values(claimed_until=until, last_attempt_at=now)
                ).rowcount
                if taken == 1:
                    claims.append(self._claimed(conn, feed_id, until))
        return claims

    def _claim_one(self, name: str) -> _Claim:
        now = self.clock.now()
        until = now + self.lease
        free = or_(intel_feeds.c.claimed_until.is_(None), intel_feeds.c.claimed_until <= now)
        with self.db.write() as conn:
            row = conn.execute(select(intel_feeds.c.id).where(intel_feeds.c.name == name)).first()
            if row is None:
                raise NotFound(f"no intel feed named {name!r}", field="name", value=name)
            taken = conn.execute(
                update(intel_feeds)
                .where(intel_feeds.c.id == row.id, free)
                .values(claimed_until=until, last_attempt_at=now)
            ).rowcount
            if taken != 1:
                raise Conflict(
                    f"feed {name!r} is being pulled by another worker; try again later",
                    field="name",
                    value=name,
                )
            return self._claimed(conn, row.id, until)

    @staticmethod
    def _claimed(conn: Connection, feed_id: str, until: datetime) -> _Claim:
        row = conn.execute(select(intel_feeds).where(intel_feeds.c.id == feed_id)).one()
        return _Claim(_feed(row), row.secret, until)

    def _renew(self, conn: Connection, claim: _Claim, **values: Any) -> None:
        """In a page's transaction: check the claim is still ours, renew it, write ``values``."""
        until = self.clock.now() + self.lease
        kept = conn.execute(
            update(intel_feeds)
            .where(intel_feeds.c.id == claim.feed.id, intel_feeds.c.claimed_until == claim.until)
            .values(claimed_until=until, **values)
        ).rowcount
        if kept != 1:
            raise LostClaim(
                f"feed {claim.feed.name!r} ran past its claim and another worker took it"
            )
        claim.until = until

    def _finish(self, claim: _Claim, values: dict[str, Any], *, failed: bool = False) -> bool:
        """Release the claim with the pull's outcome, and count the failures in a row (reset
        by a success); False when the claim was lost (the outcome is then not written)."""
        now = self.clock.now()
        with self.db.write() as conn:
            current = conn.execute(
                select(intel_feeds.c.checkpoint).where(intel_feeds.c.id == claim.feed.id)
            ).scalar()
            checkpoint = dict(current or {})
            failures = int(checkpoint.get("failures") or 0) + 1 if failed else 0
            checkpoint["failures"] = failures
            values = {**values, "checkpoint": checkpoint, "claimed_until": None, "updated_at": now}
            if failed:
                interval = timedelta(seconds=claim.feed.interval_s)
                values["next_pull_at"] = now + min(
                    interval, BACKOFF_BASE * 2 ** min(failures - 1, 30)
                )
            done = conn.execute(
                update(intel_feeds)
                .where(
                    intel_feeds.c.id == claim.feed.id, intel_feeds.c.claimed_until == claim.until
                )
                .values(**values)
            ).rowcount
        if done != 1:
            log.warning("intel feed claim lost before the pull finished", feed=claim.feed.name)
        return done == 1

    def _release(self, claim: _Claim) -> None:
        """Give the claim back without an outcome (the pull was cancelled)."""
        with self.db.write() as conn:
            conn.execute(
                update(intel_feeds)
                .where(
                    intel_feeds.c.id == claim.feed.id, intel_feeds.c.claimed_until == claim.until
                )
                .values(claimed_until=None)
            )

    # -- pulling ---------------------------------------------------------------------------------

    async def pull(self, name: str, *, by: str = "feeds") -> FeedPull:
        """Pull ``name`` now (due or not; Conflict while another worker pulls it)."""
        claim = await asyncio.to_thread(self._claim_one, name)
        async with guard(self.outbound) as session:
            return await self._run(session, claim, by=by)

    async def pull_due(self, *, limit: int = 50) -> builtins.list[FeedPull]:
        """Claim the feeds that are due (up to ``limit``) and pull them, a few at a time."""
        claims = await asyncio.to_thread(self._claim_due, limit)
        if not claims:
            return []
        gate = asyncio.Semaphore(self.concurrency)

        async def one(claim: _Claim) -> FeedPull:
            async with gate:
                return await self._run(session, claim)

        async with guard(self.outbound) as session:
            done = await asyncio.gather(*(one(claim) for claim in claims), return_exceptions=True)
        pulled: builtins.list[FeedPull] = []
        for claim, outcome in zip(claims, done, strict=True):
            if isinstance(outcome, FeedPull):
                pulled.append(outcome)
            elif isinstance(outcome, Exception):  # recording the outcome failed (the database)
                log.error("intel feed pull not recorded", feed=claim.feed.name, error=str(outcome))
            else:
                raise outcome  # cancelled: let it through
        return pulled

    async def _run(
        self, session: aiohttp.ClientSession, claim: _Claim, *, by: str = "feeds"
    ) -> FeedPull:
        feed = claim.feed
        try:
            if feed.kind == "url":
                outcome = await self._pull_url(session, claim)
            elif feed.kind == "misp-feed":
                outcome = await self._pull_misp(session, claim)
            else:
                outcome = await self._pull_taxii(session, claim)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self._release, claim))
            raise
        except Exception as exc:
            message = self._message(exc, claim)
            if isinstance(exc, QuellError | aiohttp.ClientError | TimeoutError):
                log.warning("intel feed pull failed", feed=feed.name, error=message)
            else:
                log.exception("intel feed pull failed", feed=feed.name, error=message)
            failure = {"last_error": message, "last_error_at": self.clock.now()}
            await asyncio.to_thread(self._finish, claim, failure, failed=True)
            await asyncio.to_thread(
                self._audit, by, "intel.feed_pull", feed.name, {"ok": False, "error": message}
            )
            return FeedPull(feed.name, False, claim.running, error=message)
        now = self.clock.now()
        values: dict[str, Any] = {
            "last_success_at": now,
            "next_pull_at": now if outcome.more else now + timedelta(seconds=feed.interval_s),
        }
        if not claim.imported:  # nothing new: say so, rather than keep an older pull's report
            values["last_report"] = {
                **_report_dict(ImportReport(feed.name)),
                "not_modified": outcome.not_modified,
            }
        await asyncio.to_thread(self._finish, claim, values)
        await asyncio.to_thread(
            self._audit, by, "intel.feed_pull", feed.name,
            {"ok": True, **{k: v for k, v in _report_dict(claim.running).items()
                            if isinstance(v, int)}},
        )  # fmt: skip
        return outcome

    def _audit(self, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.record(actor, action, subject, detail)

    def _message(self, exc: BaseException, claim: _Claim) -> str:
        secrets: tuple[str, ...] = ()
        try:
            credentials = self._credentials(claim)
        except QuellError:
            credentials = None
        if credentials is not None:
            secrets = tuple(credentials.values())
        if isinstance(exc, QuellError):
            text = exc.message
        elif isinstance(exc, aiohttp.ClientError | TimeoutError):
            text = describe_failure(exc, claim.feed.url)
        else:
            text = f"{type(exc).__name__}: {exc}"
        return scrub(text, urls=(claim.feed.url,), secrets=secrets)[:MAX_ERROR_CHARS]

    def _options(self, feed: Feed) -> dict[str, Any]:
        return {k: v for k, v in feed.settings.items() if not k.startswith("_")}

    def _save_import(
        self,
        claim: _Claim,
        kind: str | None,
        position: dict[str, Any],
        report: ImportReport,
        conn: Connection,
        **values: Any,
    ) -> None:
        """The ``also`` of an import: the feed's position, the pull's running report and the
        renewed claim, in the import's transaction."""
        running = replace(claim.running, unsupported_items=list(claim.running.unsupported_items))
        add_report(running, report)
        checkpoint: dict[str, Any] = {"failures": claim.feed.failures}
        if kind is not None:
            checkpoint[kind] = position
        self._renew(conn, claim, checkpoint=checkpoint, last_report=_report_dict(running), **values)
        claim.running = running
        claim.imported = True

    def _mark(self, claim: _Claim, kind: str, position: dict[str, Any]) -> None:
        """Write the position alone (a TAXII ``next`` token about to be used)."""
        with self.db.write() as conn:
            self._renew(conn, claim, checkpoint={"failures": claim.feed.failures, kind: position})

    # -- url ---------------------------------------------------------------------------------------

    async def _pull_url(self, session: aiohttp.ClientSession, claim: _Claim) -> FeedPull:
        feed = claim.feed
        options = self._options(feed)
        limit = int(options.get("max_bytes") or self.max_bytes)
        headers = {"Accept": "*/*"}
        if feed.etag:
            headers["If-None-Match"] = feed.etag
        if feed.last_modified:
            headers["If-Modified-Since"] = feed.last_modified
        credentials = self._credentials(claim)
        if credentials is not None:
            headers.update(credentials.headers())
        where = display_url(feed.url)
        async with session.get(feed.url, headers=headers, timeout=_timeout(options)) as response:
            if response.status == 304:
                return FeedPull(feed.name, True, ImportReport(feed.name), 1, not_modified=True)
            if response.status != 200:
                raise FeedError(f"{where} answered HTTP {response.status}", status=response.status)
            body = await read_limited(response, limit, f"feed {feed.name}")
            etag = _fits(response.headers.get("ETag"), 512)
            modified = _fits(response.headers.get("Last-Modified"), 64)
        options.pop("max_bytes", None)
        options.pop("timeout_s", None)

        def apply() -> ImportReport:
            confidence = _confidence(options)
            if feed.format == "misp" and confidence is not None:  # MISP's own default is 50
                from quell.intel.misp import parse_event

                tlp = Tlp.parse(options.get("tlp"), Tlp.CLEAR)
                parsed = parse_event(
                    body, default_tlp=tlp, default_confidence=confidence, origin=feed.name
                )
            else:
                parsed = parse_format(feed.format, body, options=options, origin=feed.name)
                with_default_confidence(parsed, confidence)
            return self.store.apply(
                feed.name,
                parsed,
                also=lambda conn, report: self._save_import(
                    claim, None, {}, report, conn, etag=etag, last_modified=modified
                ),
            )

        report = await asyncio.to_thread(apply)
        return FeedPull(feed.name, True, report, 1)

    # -- misp feed ---------------------------------------------------------------------------------

    async def _pull_misp(self, session: aiohttp.ClientSession, claim: _Claim) -> FeedPull:
        from quell.intel.misp import DEFAULT_CONFIDENCE, parse_feed_event

        feed = claim.feed
        options = self._options(feed)
        tlp = Tlp.parse(options.get("tlp"), Tlp.CLEAR)
        confidence = _confidence(options)
        base = feed.url if feed.url.endswith("/") else feed.url + "/"
        fetch = _Fetcher(
            session,
            self._credentials(claim),
            int(options.get("max_bytes") or self.max_bytes),
            _timeout(options),
        )
        manifest_url = urljoin(base, "manifest.json")
        raw_manifest = await fetch.get(manifest_url, f"the manifest.json of feed {feed.name}")
        if raw_manifest is None:
            raise FeedError(f"{display_url(manifest_url)} does not exist (HTTP 404)", status=404)
        try:
            manifest = await asyncio.to_thread(orjson.loads, raw_manifest)
        except orjson.JSONDecodeError:
            raise FeedError(f"the manifest.json of feed {feed.name} is not valid JSON") from None
        position: dict[str, Any] = dict((feed.checkpoint or {}).get("misp") or {})
        todo = events_after(manifest, position)
        budget = int(options.get("max_pages") or DEFAULT_MAX_EVENTS)
        result = FeedPull(feed.name, True, claim.running, more=len(todo) > budget)
        for stamp, uuid in todo[:budget]:
            raw = await fetch.get(
                urljoin(base, f"{uuid}.json"), f"event {uuid} of feed {feed.name}"
            )
            after = dict(position)
            if stamp is not None:
                same = stamp == position.get("timestamp")
                after = {
                    "timestamp": stamp,
                    "uuids": [*position.get("uuids", []), uuid] if same else [uuid],
                }

            def apply(
                raw: bytes | None = raw, uuid: str = uuid, after: dict[str, Any] = after
            ) -> None:
                if raw is None:
                    parsed = Parsed(
                        unsupported=[
                            Unsupported(
                                f"event {uuid}", "listed in manifest.json but not served (HTTP 404)"
                            )
                        ]
                    )
                else:
                    parsed = parse_feed_event(
                        uuid,
                        raw,
                        default_tlp=tlp,
                        default_confidence=DEFAULT_CONFIDENCE if confidence is None else confidence,
                    )
                self.store.apply(
                    feed.name,
                    parsed,
                    also=lambda conn, report: self._save_import(claim, "misp", after, report, conn),
                )

            await asyncio.to_thread(apply)
            position = after
            result.pages += 1
        result.report = claim.running
        return result

    # -- taxii -------------------------------------------------------------------------------------

    async def _pull_taxii(self, session: aiohttp.ClientSession, claim: _Claim) -> FeedPull:
        feed = claim.feed
        options = self._options(feed)
        client = taxii.TaxiiClient(
            session,
            credentials=self._credentials(claim),
            max_bytes=int(options.get("max_bytes") or self.max_bytes),
            timeout=_timeout(options),
        )
        pulled = await taxii.pull(
            client,
            self.store,
            source=feed.name,
            url=feed.url,
            collection=options.get("collection"),
            api_root=options.get("api_root"),
            checkpoint=(feed.checkpoint or {}).get("taxii"),
            save=lambda conn, position, report: self._save_import(
                claim, "taxii", position, report, conn
            ),
            mark=lambda position: self._mark(claim, "taxii", position),
            tlp=Tlp.parse(options.get("tlp"), Tlp.CLEAR),
            confidence=_confidence(options),
            page_size=int(options.get("page_size") or taxii.DEFAULT_PAGE_SIZE),
            max_pages=int(options.get("max_pages") or taxii.DEFAULT_MAX_PAGES),
        )
        return FeedPull(feed.name, True, pulled.report, pulled.pages, more=pulled.more)


class _Fetcher:
    """GETs of one feed: credentials, the byte limit, and errors that name no secret."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials | None,
        limit: int,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.session = session
        self.headers = {"Accept": "application/json, */*;q=0.5"}
        if credentials is not None:
            self.headers.update(credentials.headers())
        self.limit = limit
        self.timeout = timeout

    async def get(self, url: str, what: str) -> bytes | None:
        """The body; None on HTTP 404."""
        async with self.session.get(url, headers=self.headers, timeout=self.timeout) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise FeedError(
                    f"{display_url(url)} answered HTTP {response.status}", status=response.status
                )
            return await read_limited(response, self.limit, what)


def events_after(
    manifest: Mapping[str, Any], position: Mapping[str, Any]
) -> builtins.list[tuple[int | None, str]]:
    """The (timestamp, uuid) of a MISP feed manifest's events not read yet, oldest first:
    changed after the checkpoint's timestamp, or at that very second and not among the uuids
    already read at it (MISP timestamps are seconds; several events can share one). Events
    without a timestamp are always read (:func:`quell.intel.misp.events_to_fetch`)."""
    from quell.intel.misp import events_to_fetch, parse_manifest

    entries = parse_manifest(manifest)
    since = position.get("timestamp")
    done = set(position.get("uuids") or ())
    # events_to_fetch keeps what changed strictly after its timestamp: ask from the second
    # before, and tell the events of the checkpoint's own second apart by their uuids.
    wanted = events_to_fetch(entries, since_timestamp=None if since is None else int(since) - 1)
    found: builtins.list[tuple[int | None, str]] = []
    for uuid in wanted:
        stamp = _stamp(entries[uuid].get("timestamp"))
        if since is not None and stamp == int(since) and uuid in done:
            continue
        found.append((stamp, uuid))
    return found


def _stamp(value: Any) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


# -- checks ------------------------------------------------------------------------------------


def check_url(url: str) -> None:
    """An http(s) URL with a host and no user info (credentials go in the feed's secret)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidInput("the feed URL is not a valid URL", field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(text) > 2048:
        raise InvalidInput("a feed URL is http:// or https:// with a host", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "put credentials in the feed's secret (--username/--password-stdin or "
            "--token-stdin), not in the URL",
            field="url",
        )


def _check_format(kind: str, format_: str | None) -> str:
    implied = IMPLIED_FORMAT.get(kind)
    if implied is not None:
        if format_ not in (None, "", implied):
            raise InvalidInput(
                f"a {kind} feed is {implied}, not {format_!r}", field="format", value=format_
            )
        return implied
    if not format_:
        raise InvalidInput(f"a url feed needs a format: {', '.join(URL_FORMATS)}", field="format")
    if format_ not in URL_FORMATS:
        raise InvalidInput(
            f"unknown feed format {format_!r}: use {', '.join(URL_FORMATS)}",
            field="format",
            value=format_,
        )
    return format_


def check_settings(kind: str, format_: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as kept: known keys only, each checked; InvalidInput names the bad one."""
    checked: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None or value == "":
            continue
        if key not in SETTINGS:
            raise InvalidInput(
                f"settings.{key}: feeds have no setting {key!r} "
                f"(settings: {', '.join(sorted(SETTINGS))})",
                field=f"settings.{key}",
            )
        if kind not in SETTINGS[key]:
            raise InvalidInput(
                f"settings.{key}: a {kind} feed does not use {key!r}", field=f"settings.{key}"
            )
        checked[key] = _check_setting(key, value)
    if "mapping" in checked and format_ != "csv":
        raise InvalidInput(
            "settings.mapping: only a csv feed has a column mapping", field="mapping"
        )
    if format_ == "csv" and "mapping" in checked:
        from quell.intel.csvlist import parse_mapping

        parse_mapping(checked["mapping"])  # IntelError (an InvalidInput) when it is wrong
    if "header" in checked:
        if format_ != "csv":
            raise InvalidInput("settings.header: only a csv feed has a header option")
        if checked["header"] not in ("first", "comment", "none"):
            raise InvalidInput("settings.header: first, comment or none", field="settings.header")
    if "type" in checked:
        if format_ != "list":
            raise InvalidInput("settings.type: only a list feed has one indicator type")
        from quell.intel.csvlist import check_type

        check_type(checked["type"])
    return checked


_LIMITS = {
    "confidence": (0, 100),
    "page_size": (1, 10_000),
    "max_pages": (1, 100_000),
    "max_bytes": (1, 1024 * 1024 * 1024),
    "timeout_s": (1, 3600),
}


def _check_setting(key: str, value: Any) -> Any:
    if key == "tlp":
        return Tlp.parse(str(value)).label
    if key in _LIMITS:
        low, high = _LIMITS[key]
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"settings.{key}: {value!r} is not a whole number") from None
        if not low <= number <= high:
            raise InvalidInput(f"settings.{key}: {number} is not within {low}-{high}")
        return number
    if key == "delimiter" and len(str(value)) != 1:
        raise InvalidInput("settings.delimiter: one character")
    if not isinstance(value, str):
        raise InvalidInput(f"settings.{key}: a string")
    return value.strip()


def _interval_seconds(interval: timedelta | int | str) -> int:
    if isinstance(interval, str):
        interval = parse_duration(interval, field="interval")
    elif isinstance(interval, int):
        interval = timedelta(seconds=interval)
    if interval < MIN_INTERVAL:
        raise InvalidInput("interval: at least one minute", field="interval")
    return int(interval.total_seconds())


def _confidence(options: Mapping[str, Any]) -> int | None:
    value = options.get("confidence")
    return int(value) if value is not None else None


def _timeout(options: Mapping[str, Any]) -> aiohttp.ClientTimeout:
    seconds = options.get("timeout_s")
    if not seconds:
        return FEED_TIMEOUT
    return aiohttp.ClientTimeout(total=float(seconds), connect=10, sock_read=min(60, seconds))


def _fits(value: str | None, limit: int) -> str | None:
    return value if value is not None and len(value) <= limit else None


def _purpose(name: str) -> str:
    return f"intel-feed:{name}"


def _report_dict(report: ImportReport) -> dict[str, Any]:
    return report.as_dict(items=20)


# -- the loop --------------------------------------------------------------------------------------


async def run_feed_loop(service: FeedService, stop: asyncio.Event, poll_s: float = 30.0) -> None:
    """Pull due feeds every ``poll_s`` seconds until ``stop`` is set. A failing feed is
    recorded on the feed; an error of the loop itself (the database away) is logged and the
    loop carries on."""
    while not stop.is_set():
        try:
            await service.pull_due()
        except Exception:
            log.exception("intel feed loop: pulling due feeds failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_s)


__all__ = [
    "KINDS",
    "URL_FORMATS",
    "Feed",
    "FeedError",
    "FeedPull",
    "FeedService",
    "IntelError",
    "LostClaim",
    "check_settings",
    "check_url",
    "events_after",
    "run_feed_loop",
]
