"""The IMAP mailbox poller: users report phishing to a mailbox, each message becomes a record.

One poll selects the folder, fetches the messages whose UID is above the checkpoint (a bounded
batch), submits their verbatim bytes to the intake sink, and only after the sink has made them
durable saves the checkpoint and then marks the messages seen or moves them to the processed
folder. A crash anywhere before the checkpoint is saved means the next poll submits the same
messages again (the pipeline deduplicates); a crash after it means they are not submitted
twice, though they may still wait in the folder unmoved (that is logged).

The checkpoint, under ``imap:<source>:<folder>``, is ``{"uidvalidity": …, "last_uid": …}``.
UIDs only mean something together with the folder's UIDVALIDITY: when the server reports a
different one (the folder was recreated or restored), the poller starts over from the first
message and says so in the log.

``imapclient`` is synchronous: every call to it runs in a worker thread through
:func:`asyncio.to_thread`, one at a time per poller, so the event loop never blocks. The
password is a :class:`~quell.sdk.secret.SecretValue`, revealed only in the thread that hands
it to the server, and scrubbed from every error message that leaves this module.

Errors::

    QuellError
    ├── ImapUnavailable     the server cannot be reached or failed a command (retryable)
    └── ConfigurationError
        └── ImapLoginFailed the server refused the username or password
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import structlog
from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from quell.clock import SYSTEM_CLOCK, Clock
from quell.durations import parse_duration
from quell.errors import ConfigurationError, InvalidInput, QuellError, UpstreamUnavailable
from quell.ingest.intake import CheckpointStore, IntakeResult, IntakeSink
from quell.sdk.secret import REDACTED, SecretValue

log = structlog.get_logger(__name__)

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
# Errors that mean the connection (or the server) failed, as opposed to a bug or the sink.
_IMAP_ERRORS = (IMAPClientError, OSError, EOFError)


def _seconds(value: Any) -> Any:
    """``30``, ``2.5`` or ``"30s"`` / ``"5m"`` to seconds."""
    if isinstance(value, str) and not value.strip().replace(".", "", 1).isdigit():
        try:
            return parse_duration(value).total_seconds()
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=7 * 86400)]


class ImapSecurity(StrEnum):
    """How the connection is protected."""

    TLS = "tls"  # TLS from the first byte (IMAPS, port 993)
    STARTTLS = "starttls"  # plain connection upgraded before login (port 143)
    NONE = "none"  # plaintext: loopback test servers only, unless explicitly allowed


class ImapConfig(BaseModel):
    """Where the report mailbox is and how to poll it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)  # 993 for tls, else 143
    security: ImapSecurity = ImapSecurity.TLS
    allow_plaintext: bool = False  # permit security "none" to a host that is not loopback
    username: str = Field(min_length=1, max_length=320)
    password: SecretValue
    folder: str = Field(default="INBOX", min_length=1, max_length=200)
    processed_folder: str | None = Field(default=None, min_length=1, max_length=200)
    mark_seen: bool = True
    batch_size: int = Field(default=50, ge=1, le=1000)
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_message_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    poll_interval: Seconds = 60.0
    connect_timeout: Seconds = 30.0
    read_timeout: Seconds = 120.0
    backoff_initial: Seconds = 1.0
    backoff_max: Seconds = 300.0
    verify_tls: bool = True
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> ImapConfig:
        plaintext = self.security is ImapSecurity.NONE and not self.allow_plaintext
        if plaintext and not _is_loopback(self.host):
            raise ValueError(
                f"security 'none' sends the password in clear text; it is allowed only to a "
                f"loopback host, not {self.host!r} (set allow_plaintext to override)"
            )
        if self.processed_folder is not None and self.processed_folder == self.folder:
            raise ValueError("processed_folder must differ from folder")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must not be less than backoff_initial")
        return self

    @property
    def effective_port(self) -> int:
        """The configured port, or the standard one for the security mode."""
        if self.port is not None:
            return self.port
        return 993 if self.security is ImapSecurity.TLS else 143


def _is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ImapUnavailable(UpstreamUnavailable):
    """The IMAP server cannot be reached, or it failed a command. Retryable."""

    retryable = True


class ImapLoginFailed(ConfigurationError):
    """The IMAP server refused the configured username or password."""

    retryable = False


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll did.

    ``fetched`` messages were submitted (``intake`` says what became of them); ``too_large``
    ones were skipped and logged, and left in the folder for a person. ``more`` is set when
    the batch was full and further messages wait. ``restarted`` when UIDVALIDITY changed.
    """

    uidvalidity: int
    last_uid: int
    fetched: int = 0
    too_large: int = 0
    marked_seen: int = 0
    moved: int = 0
    more: bool = False
    restarted: bool = False
    intake: IntakeResult = field(default_factory=IntakeResult)


@dataclass
class _Batch:
    """What the IMAP side of a poll found."""

    uidvalidity: int
    start_uid: int  # the last handled UID this poll started from
    restarted: bool
    previous_uidvalidity: int | None
    messages: list[tuple[int, bytes]]
    too_large: list[tuple[int, int]]  # (uid, size)
    last_uid: int
    more: bool


Sleep = Callable[[float], Awaitable[None]]


class ImapPoller:
    """Polls one folder of one mailbox for a named source and submits what it finds.

    ``sleep`` (default :func:`asyncio.sleep`) is what :meth:`run` waits with, so tests drive
    the poll interval and the backoff without waiting; ``clock`` times the polls.
    """

    def __init__(
        self,
        source: str,
        config: ImapConfig,
        sink: IntakeSink,
        checkpoints: CheckpointStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.sink = sink
        self.checkpoints = checkpoints
        self.clock = clock
        self._sleep: Sleep = sleep or asyncio.sleep
        self.checkpoint_key = f"imap:{source}:{config.folder}"
        # While polls fail and are retried: how many in a row, and the last one's error.
        self.retrying: tuple[int, str] | None = None
        self._client: Any = None  # an IMAPClient, used from one worker thread at a time
        self._lock = asyncio.Lock()

    # -- the public surface ------------------------------------------------------------------

    async def poll_once(self) -> PollResult:
        """Fetch and submit one batch of new messages; see the module docstring for the order.

        Raises ImapLoginFailed, ImapUnavailable, or whatever the sink or the checkpoint store
        raised (the checkpoint is then unchanged, so the next poll submits the same messages).
        """
        async with self._lock:
            started = self.clock.monotonic()
            reused = self._client is not None
            try:
                batch = await self._fetch_batch()
            except ImapUnavailable:
                if not reused:
                    raise
                # An idle connection may have been dropped by the server: one fresh attempt.
                log.info("imap_reconnecting", source=self.source, host=self.config.host)
                batch = await self._fetch_batch()
            result = await self._hand_over(batch)
            log.info(
                "imap_polled",
                source=self.source,
                folder=self.config.folder,
                fetched=result.fetched,
                too_large=result.too_large,
                last_uid=result.last_uid,
                more=result.more,
                seconds=round(self.clock.monotonic() - started, 3),
            )
            return result

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set: at once while batches are full, else every interval.

        Failures are logged (without the password) and retried with exponential backoff, from
        ``backoff_initial`` doubling up to ``backoff_max``; a success resets it. A refused
        login ends the loop with ImapLoginFailed instead: retrying a wrong password only
        locks the account, and a new one comes with a restart of the source.
        """
        failures = 0
        try:
            while not stop.is_set():
                try:
                    result = await self.poll_once()
                except ImapLoginFailed as exc:
                    log.error(
                        "imap_login_failed",
                        source=self.source,
                        host=self.config.host,
                        error=self._describe(exc),
                    )
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing poll must not end the loop
                    failures += 1
                    self.retrying = (failures, self._describe(exc))
                    delay = self.backoff(failures)
                    log.warning(
                        "imap_poll_failed",
                        source=self.source,
                        host=self.config.host,
                        error=self._describe(exc),
                        failures=failures,
                        retry_in=delay,
                    )
                    await self._wait(stop, delay)
                    continue
                failures = 0
                self.retrying = None
                if result.more:
                    await asyncio.sleep(0)  # let others run between back-to-back batches
                    continue
                await self._wait(stop, self.config.poll_interval)
        finally:
            await self.close()

    def backoff(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row."""
        exponent = min(failures - 1, 32)
        return float(min(self.config.backoff_max, self.config.backoff_initial * 2**exponent))

    async def close(self) -> None:
        """Log out and close the connection, if there is one."""
        async with self._lock:
            await self._disconnect()

    # -- the IMAP side ---------------------------------------------------------------------

    async def _fetch_batch(self) -> _Batch:
        cursor = await asyncio.to_thread(self.checkpoints.load, self.checkpoint_key)
        try:
            if self._client is None:
                self._client = await asyncio.to_thread(self._connect)
            return await asyncio.to_thread(self._select_and_fetch, self._client, cursor)
        except ImapLoginFailed:
            await self._disconnect()
            raise
        except _IMAP_ERRORS as exc:
            await self._disconnect()
            raise ImapUnavailable(
                f"IMAP server {self._where()} failed: {self._describe(exc)}",
                host=self.config.host,
                port=self.config.effective_port,
            ) from None

    def _connect(self) -> Any:
        """A logged-in client (runs in a worker thread)."""
        config = self.config
        timeout = SocketTimeout(connect=config.connect_timeout, read=config.read_timeout)
        context = self._tls_context() if config.security is not ImapSecurity.NONE else None
        client = IMAPClient(
            config.host,
            port=config.effective_port,
            ssl=config.security is ImapSecurity.TLS,
            ssl_context=context,
            timeout=timeout,
        )
        try:
            if config.security is ImapSecurity.STARTTLS:
                client.starttls(context)
            try:
                client.login(config.username, config.password.reveal())
            except LoginError as exc:
                if "[UNAVAILABLE]" in str(exc):
                    # RFC 5530: the server's authentication backend is down, not our password.
                    raise ImapUnavailable(
                        f"IMAP server {self._where()} cannot authenticate now: "
                        f"{self._describe(exc)}",
                        host=config.host,
                        port=config.effective_port,
                    ) from None
                raise ImapLoginFailed(
                    f"IMAP login as {config.username!r} on {self._where()} failed: "
                    f"{self._describe(exc)}",
                    host=config.host,
                    username=config.username,
                ) from None
            processed = config.processed_folder
            if processed is not None and not client.folder_exists(processed):
                with contextlib.suppress(IMAPClientError):  # created meanwhile by someone else
                    client.create_folder(processed)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        log.info(
            "imap_connected",
            source=self.source,
            host=config.host,
            port=config.effective_port,
            security=config.security.value,
            username=config.username,
        )
        return client

    def _tls_context(self) -> ssl.SSLContext:
        config = self.config
        try:
            context = ssl.create_default_context(
                cafile=str(config.ca_file) if config.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the CA file {config.ca_file}: {exc}", field="ca_file"
            ) from None
        if not config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _select_and_fetch(self, client: Any, cursor: dict[str, Any] | None) -> _Batch:
        """Select the folder and download the next batch (runs in a worker thread)."""
        config = self.config
        readonly = not config.mark_seen and config.processed_folder is None
        status = client.select_folder(config.folder, readonly=readonly)
        uidvalidity = int(status[b"UIDVALIDITY"])
        uidnext = int(status.get(b"UIDNEXT", 0) or 0)
        previous = _int_or_none(cursor.get("uidvalidity")) if cursor else None
        start = (_int_or_none(cursor.get("last_uid")) or 0) if cursor else 0
        restarted = previous is not None and previous != uidvalidity
        if restarted or previous is None:
            start = 0
        batch = _Batch(uidvalidity, start, restarted, previous, [], [], start, False)
        if uidnext and uidnext <= start + 1:
            return batch  # nothing arrived since the last poll
        # "n:*" always matches the highest UID, even below n; hence the filter.
        found = client.search(["UID", f"{start + 1}:*", "NOT", "DELETED"])
        uids = sorted(int(uid) for uid in found if int(uid) > start)
        if not uids:
            return batch
        candidates = uids[: config.batch_size]
        sizes = client.fetch(candidates, ["RFC822.SIZE"])
        wanted: list[int] = []
        total = 0
        for uid in candidates:
            if uid not in sizes:
                batch.last_uid = uid  # expunged meanwhile: nothing to fetch
                continue
            size = int(sizes[uid].get(b"RFC822.SIZE", 0))
            if size > config.max_message_bytes:
                batch.too_large.append((uid, size))
                batch.last_uid = uid
                continue
            if wanted and total + size > config.max_batch_bytes:
                break
            wanted.append(uid)
            total += size
            batch.last_uid = uid
        if wanted:
            bodies = client.fetch(wanted, ["BODY.PEEK[]"])
            for uid in wanted:
                body = bodies.get(uid, {}).get(b"BODY[]")
                if isinstance(body, bytes):
                    batch.messages.append((uid, body))
        batch.more = len(uids) > len(candidates) or batch.last_uid < candidates[-1]
        return batch

    async def _hand_over(self, batch: _Batch) -> PollResult:
        """Submit, save the checkpoint, then mark or move: in this order."""
        if batch.restarted:
            log.warning(
                "imap_uidvalidity_changed",
                source=self.source,
                folder=self.config.folder,
                previous=batch.previous_uidvalidity,
                current=batch.uidvalidity,
                reason="the folder was recreated or restored; UIDs restart, so every message "
                "in it is submitted again (the pipeline deduplicates)",
            )
        for uid, size in batch.too_large:
            log.warning(
                "imap_message_too_large",
                source=self.source,
                folder=self.config.folder,
                uid=uid,
                size=size,
                limit=self.config.max_message_bytes,
                action="skipped and left in the folder",
            )
        intake = IntakeResult()
        if batch.messages:
            intake = await self.sink.submit(self.source, [raw for _, raw in batch.messages])
        cursor = {"uidvalidity": batch.uidvalidity, "last_uid": batch.last_uid}
        if (
            batch.restarted
            or batch.last_uid != batch.start_uid
            or batch.previous_uidvalidity is None
        ):
            await asyncio.to_thread(self.checkpoints.save, self.checkpoint_key, cursor)
        marked, moved = await self._finish([uid for uid, _ in batch.messages])
        return PollResult(
            uidvalidity=batch.uidvalidity,
            last_uid=batch.last_uid,
            fetched=len(batch.messages),
            too_large=len(batch.too_large),
            marked_seen=marked,
            moved=moved,
            more=batch.more,
            restarted=batch.restarted,
            intake=intake,
        )

    async def _finish(self, uids: Sequence[int]) -> tuple[int, int]:
        """Mark and move handled messages; a failure here is logged, not raised."""
        config = self.config
        if not uids or (not config.mark_seen and config.processed_folder is None):
            return 0, 0
        try:
            return await asyncio.to_thread(self._mark_and_move, self._client, list(uids))
        except _IMAP_ERRORS as exc:
            # The messages are durable and the checkpoint is past them: they will not be
            # submitted again, but a person may find them still unread in the folder.
            log.warning(
                "imap_finish_failed",
                source=self.source,
                folder=config.folder,
                uids=list(uids)[:100],
                error=self._describe(exc),
            )
            await self._disconnect()
            return 0, 0

    def _mark_and_move(self, client: Any, uids: list[int]) -> tuple[int, int]:
        config = self.config
        marked = moved = 0
        if config.mark_seen:
            client.add_flags(uids, [SEEN], silent=True)
            marked = len(uids)
        if config.processed_folder is not None:
            if client.has_capability("MOVE"):
                client.move(uids, config.processed_folder)
            else:
                client.copy(uids, config.processed_folder)
                client.add_flags(uids, [DELETED], silent=True)
                if client.has_capability("UIDPLUS"):
                    client.uid_expunge(uids)
                else:
                    client.expunge()
            moved = len(uids)
        return marked, moved

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(_logout, client)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        """``sleep(seconds)``, cut short when ``stop`` is set."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.effective_port}"

    def _describe(self, exc: BaseException) -> str:
        """One line about ``exc`` that never contains the password."""
        if isinstance(exc, QuellError):
            text = exc.message
        else:
            detail = str(exc).strip()
            if detail[:2] in ("b'", 'b"') and detail[-1:] == detail[1]:
                detail = detail[2:-1]  # imapclient wraps the server's bytes with str()
            text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        return scrub(text, self.config.password)


def scrub(text: str, secret: SecretValue) -> str:
    """``text`` with every occurrence of the secret replaced by the redaction marker."""
    value = secret.reveal()
    return text.replace(value, REDACTED) if value else text


def _logout(client: Any) -> None:
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection is being dropped anyway
        with contextlib.suppress(Exception):
            client.shutdown()


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
