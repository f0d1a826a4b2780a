"""The syslog listener: UDP, TCP and TCP with TLS, feeding an IntakeSink in batches.

Each received message becomes one record (its bytes as they came, without framing) submitted
for the listener's source; the source's parser (``syslog``, ``cef`` or ``leef``) reads it.

**Framing.** UDP: one datagram is one message (one trailing LF or CRLF is dropped). TCP
(RFC 6587), decided per message: a frame that starts with digits and a space is octet-counted
(``LEN SP MSG``); anything else runs to the next LF or NUL (a CR before the LF is dropped).
Empty frames are skipped. At the end of a connection an unterminated last line is a message;
an octet-counted frame cut short is counted as ``truncated`` and logged.

**Size.** ``max_frame_bytes`` (default 1 MiB) only protects memory; the pipeline has its own,
smaller record limit (64 KiB by default) and dead-letters larger records with the reason. A
frame over ``max_frame_bytes`` is cut there and the cut part is submitted (so that it is
dead-lettered, not lost), the rest of the frame is skipped up to its delimiter (or its
announced length), and ``too_large`` counts it. An octet count above ``max_octet_count``
(default 16 MiB) or longer than ten digits is not a syslog frame: the connection is closed
with a logged reason (``protocol_errors``).

**Backpressure.** Records wait in one bounded queue (``queue_records``, ``queue_bytes``,
counting the batch being submitted) for a single submitter, which sends batches of up to
``batch_size`` records, or what has come within ``batch_latency_ms`` of the first, and waits
for each ``submit`` (which returns only once the batch is durable). When the queue is full,
every TCP connection stops reading (the kernel buffers fill and the senders block: nothing is
lost); reading resumes once the queue is half empty. UDP cannot push back: a datagram that
finds the queue full is counted in ``dropped`` and logged (at most every few seconds, with the
count), never silently. A failing ``submit`` is logged and retried with backoff; the queue
holds meanwhile.

**Shutdown.** :meth:`SyslogListener.stop` stops accepting, closes the connections (submitting
their last unterminated lines), flushes the queue through the sink and returns. If the sink
does not take it within ``flush_timeout_s``, what is left is counted as dropped and logged.

Counters (:class:`ListenerCounters`): ``received == submitted + dropped + queued`` at all times,
where ``queued`` counts records waiting or in a submit.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quell.clock import SYSTEM_CLOCK, Clock
from quell.errors import ConfigurationError
from quell.ingest.intake import IntakeResult, IntakeSink

log = structlog.get_logger(__name__)
T = TypeVar("T")

MiB = 1 << 20
_DELIMITER = re.compile(rb"[\n\x00]")
_COUNT_PREFIX = re.compile(rb"[1-9][0-9]{0,9} ")
_MAX_COUNT_DIGITS = 10
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 5.0
_LOG_INTERVAL_S = 5.0


class SyslogListenerConfig(BaseModel):
    """How one syslog source listens; stored per source. A port of 0 picks a free port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 or :: for all")
    udp_port: int | None = Field(None, ge=0, le=65535)
    tcp_port: int | None = Field(None, ge=0, le=65535)
    tls_port: int | None = Field(None, ge=0, le=65535)
    tls_cert: Path | None = Field(None, description="PEM certificate chain for the TLS port")
    tls_key: Path | None = Field(None, description="PEM private key for the TLS port")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, TLS clients must present a certificate"
    )
    max_frame_bytes: int = Field(MiB, ge=64, le=64 * MiB)
    max_octet_count: int = Field(16 * MiB, ge=64, le=1 << 31)
    max_connections: int = Field(1024, ge=1, le=65536)
    batch_size: int = Field(500, ge=1, le=100_000)
    batch_latency_ms: int = Field(50, ge=0, le=60_000)
    queue_records: int = Field(10_000, ge=1, le=10_000_000)
    queue_bytes: int = Field(64 * MiB, ge=64, le=1 << 34)
    flush_timeout_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.udp_port is None and self.tcp_port is None and self.tls_port is None:
            raise ValueError("set at least one of udp_port, tcp_port, tls_port")
        if self.tls_port is not None and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("tls_port needs tls_cert and tls_key")
        if self.max_octet_count < self.max_frame_bytes:
            raise ValueError("max_octet_count must be at least max_frame_bytes")
        return self


@dataclass(slots=True)
class ListenerCounters:
    """What a listener has done since it started."""

    received: int = 0  # messages framed (UDP datagrams, TCP frames), cut ones included
    submitted: int = 0  # records a submit took
    dropped: int = 0  # UDP messages refused on a full queue; records lost at a failed stop
    queued: int = 0  # records waiting or in a submit now
    too_large: int = 0  # frames cut at max_frame_bytes (and submitted cut)
    truncated: int = 0  # octet-counted frames whose connection ended before their end
    empty: int = 0  # empty datagrams and lines, skipped
    connections: int = 0  # TCP and TLS connections accepted
    active_connections: int = 0
    refused_connections: int = 0  # over max_connections
    protocol_errors: int = 0  # connections closed for an impossible octet count
    submit_errors: int = 0  # failed submits (each retried)
    pauses: int = 0  # times TCP reading was paused for backpressure


def build_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or newer) from PEM files; ConfigurationError if unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL asks for an encrypted key's passphrase on the terminal,
        # which blocks the whole server (this runs on its event loop) until someone types.
        asked.append(True)
        return b""

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        if asked:
            raise ConfigurationError(
                f"the TLS key {str(key)!r} is encrypted with a passphrase; give a key without "
                "one (readable only by the user Quell runs as)",
                field="tls_key",
            ) from None
        raise ConfigurationError(
            f"cannot load the TLS certificate {str(cert)!r} and key: {exc}", field="tls_cert"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the TLS client CA {str(client_ca)!r}: {exc}", field="tls_client_ca"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class FramingError(Exception):
    """The byte stream is not syslog over TCP; the connection must close."""


class FrameDecoder:
    """Cuts a TCP byte stream into syslog messages (RFC 6587), within a memory bound.

    :meth:`feed` appends ``(record, cut)`` pairs to a list; ``cut`` marks a frame cut at
    ``max_frame_bytes``. It raises FramingError after appending what came before the fault.
    """

    def __init__(self, max_frame_bytes: int, max_octet_count: int) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._max_count = max_octet_count
        self._skip = 0  # bytes still to discard of an oversized octet-counted frame
        self._skip_line = False  # discarding the rest of an oversized line
        self._scanned = 0  # bytes of the pending line already searched for a delimiter

    def feed(self, data: bytes, out: list[tuple[bytes, bool]]) -> None:
        """Add ``data``; append each completed frame to ``out``."""
        view = memoryview(data)
        if self._skip:
            taken = min(self._skip, len(view))
            self._skip -= taken
            view = view[taken:]
        if self._skip_line and view:
            found = _DELIMITER.search(view)
            if found is None:
                return
            self._skip_line = False
            view = view[found.end() :]
        buffer = self._buffer
        buffer += view
        del buffer[: self._frames(buffer, out)]

    def _frames(self, buffer: bytearray, out: list[tuple[bytes, bool]]) -> int:
        """Frames from the start of ``buffer``; returns how many bytes they used."""
        pos = 0
        end = len(buffer)
        while pos < end:
            first = buffer[pos]
            if first in (0x0A, 0x00, 0x0D):  # stray delimiters between frames
                pos += 1
                continue
            if 0x31 <= first <= 0x39:  # 1-9: perhaps an octet count
                digits = pos
                while (
                    digits < end
                    and digits - pos <= _MAX_COUNT_DIGITS
                    and 0x30 <= buffer[digits] <= 0x39
                ):
                    digits += 1
                if digits == end:
                    return pos  # the count (or a line of digits) goes on: wait
                if buffer[digits] == 0x20:
                    if digits - pos > _MAX_COUNT_DIGITS:
                        raise FramingError(f"octet count longer than {_MAX_COUNT_DIGITS} digits")
                    advanced = self._counted(buffer, pos, digits, out)
                    if advanced is None:
                        return pos
                    pos = advanced
                    continue
            advanced = self._line(buffer, pos, out)
            if advanced is None:
                return pos
            pos = advanced
        return pos

    def _counted(
        self, buffer: bytearray, pos: int, space: int, out: list[tuple[bytes, bool]]
    ) -> int | None:
        length = int(buffer[pos:space])
        if length > self._max_count:
            raise FramingError(f"octet count {length} is above the limit {self._max_count}")
        start = space + 1
        available = len(buffer) - start
        if length <= self._max:
            if available < length:
                return None
            out.append((bytes(buffer[start : start + length]), False))
            return start + length
        if available < self._max:
            return None
        out.append((bytes(buffer[start : start + self._max]), True))
        rest = length - self._max
        after = start + self._max
        if len(buffer) - after >= rest:
            return after + rest
        self._skip = rest - (len(buffer) - after)
        return len(buffer)

    def _line(self, buffer: bytearray, pos: int, out: list[tuple[bytes, bool]]) -> int | None:
        found = _DELIMITER.search(buffer, pos + self._scanned)
        if found is None:
            if len(buffer) - pos > self._max:
                out.append((bytes(buffer[pos : pos + self._max]), True))
                self._skip_line = True
                self._scanned = 0
                return len(buffer)
            self._scanned = len(buffer) - pos
            return None
        self._scanned = 0
        stop = found.start()
        if stop - pos > self._max:
            out.append((bytes(buffer[pos : pos + self._max]), True))
        else:
            if stop > pos and buffer[stop - 1] == 0x0D:
                stop -= 1
            if stop > pos:
                out.append((bytes(buffer[pos:stop]), False))
        return found.end()

    def finish(self) -> tuple[bytes | None, int]:
        """At the end of the stream: the last unterminated line, and the bytes of a cut frame.

        Returns ``(line, 0)`` for a line without its delimiter (a message), ``(None, n)`` for
        an octet-counted frame that stopped ``n`` bytes into it, ``(None, 0)`` for nothing.
        """
        data = bytes(self._buffer).lstrip(b"\r\n\x00")
        self._buffer.clear()
        skipping = self._skip or self._skip_line
        self._skip, self._skip_line, self._scanned = 0, False, 0
        if not data or skipping:
            return None, 0
        if _COUNT_PREFIX.match(data):
            return None, len(data)
        return data.rstrip(b"\r"), 0


class _Throttle:
    """At most one log line per key every few seconds, with the count it stood for."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def allow(self, key: str) -> int:
        """How many events this log line stands for (0: stay quiet now)."""
        now = self._clock.monotonic()
        count = self._pending.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < _LOG_INTERVAL_S:
            self._pending[key] = count
            return 0
        self._last[key] = now
        self._pending[key] = 0
        return count

    def flush(self, key: str) -> int:
        """Events not yet logged under ``key``."""
        return self._pending.pop(key, 0)


class _Connection(asyncio.Protocol):
    """One TCP or TLS connection: frames its bytes into the listener's queue."""

    def __init__(self, listener: SyslogListener, kind: str) -> None:
        self._listener = listener
        self.kind = kind
        self._decoder = FrameDecoder(
            listener.config.max_frame_bytes, listener.config.max_octet_count
        )
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self._open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self._open = self._listener._attach(self)

    def data_received(self, data: bytes) -> None:
        if not self._open:
            return
        frames: list[tuple[bytes, bool]] = []
        try:
            self._decoder.feed(data, frames)
        except FramingError as exc:
            self._listener._accept_frames(frames, self)
            self._listener._protocol_error(self, str(exc))
            return
        self._listener._accept_frames(frames, self)

    def eof_received(self) -> bool | None:
        self.finish()
        return None  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()
        self._listener._detach(self)

    def finish(self) -> None:
        """Take the last unterminated line (or count a cut frame) and stop framing."""
        if not self._open:
            return
        self._open = False
        line, lost = self._decoder.finish()
        if line is not None:
            self._listener._accept_frames([(line, False)], self)
        elif lost:
            self._listener._truncated(self, lost)

    def close(self) -> None:
        """Take what is buffered and close (at listener shutdown)."""
        self.finish()
        if self.transport is not None:
            self.transport.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, listener: SyslogListener) -> None:
        self._listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._listener._accept_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.warning("syslog_udp_error", source=self._listener.source, error=str(exc))


class SyslogListener:
    """Receives syslog over UDP, TCP and TLS and submits the messages for one source."""

    def __init__(
        self,
        source: str,
        config: SyslogListenerConfig,
        sink: IntakeSink,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.source = source
        self.config = config
        self._sink = sink
        self._clock = clock
        self._counters = ListenerCounters()
        self._intake = IntakeResult()
        self._throttle = _Throttle(clock)
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._inflight_records = 0
        self._inflight_bytes = 0
        self._has_data = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._stopped = asyncio.Event()
        self._closing = False
        self._paused = False
        self._state = "new"
        self._connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._submitter: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Callable[[ListenerCounters], bool], asyncio.Future[None]]] = []
        self.udp_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None
        self.tls_address: tuple[str, int] | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def counters(self) -> ListenerCounters:
        """A snapshot of the counters."""
        return replace(self._counters)

    @property
    def intake(self) -> IntakeResult:
        """What the sink made of everything submitted so far."""
        return self._intake

    @property
    def reading_paused(self) -> bool:
        """Whether TCP reading is paused because the queue is full."""
        return self._paused

    async def start(self) -> None:
        """Bind the configured ports and start receiving; ConfigurationError if one fails."""
        if self._state != "new":
            raise RuntimeError("a SyslogListener starts once")
        self._state = "running"
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            if config.udp_port is not None:
                transport, _ = await self._bind(
                    "udp_port",
                    loop.create_datagram_endpoint(
                        lambda: _Datagrams(self), local_addr=(config.host, config.udp_port)
                    ),
                )
                self._udp = transport
                self.udp_address = transport.get_extra_info("sockname")[:2]
            if config.tcp_port is not None:
                server = await self._bind(
                    "tcp_port",
                    loop.create_server(
                        lambda: _Connection(self, "tcp"), config.host, config.tcp_port
                    ),
                )
                self._servers.append(server)
                self.tcp_address = server.sockets[0].getsockname()[:2]
            if config.tls_port is not None:
                if config.tls_cert is None or config.tls_key is None:  # the config refuses this
                    raise ConfigurationError(
                        "tls_port needs tls_cert and tls_key", field="tls_port"
                    )
                context = build_tls_context(config.tls_cert, config.tls_key, config.tls_client_ca)
                server = await self._bind(
                    "tls_port",
                    loop.create_server(
                        lambda: _Connection(self, "tls"),
                        config.host,
                        config.tls_port,
                        ssl=context,
                    ),
                )
                self._servers.append(server)
                self.tls_address = server.sockets[0].getsockname()[:2]
        except BaseException:
            await self._close_endpoints()
            self._state = "stopped"
            raise
        self._submitter = asyncio.create_task(self._submit_loop(), name=f"syslog-{self.source}")
        log.info(
            "syslog_listening",
            source=self.source,
            udp=self.udp_address,
            tcp=self.tcp_address,
            tls=self.tls_address,
        )

    async def stop(self) -> None:
        """Stop accepting, close connections, flush the queue to the sink, and return."""
        if self._state == "stopping":
            await self._stopped.wait()  # a second caller returns when the first is done
            return
        if self._state != "running":
            return
        self._state = "stopping"
        await self._close_endpoints()
        self._closing = True
        self._has_data.set()
        self._batch_full.set()
        if self._submitter is not None:
            done, _ = await asyncio.wait({self._submitter}, timeout=self.config.flush_timeout_s)
            if not done:
                self._submitter.cancel()
                await asyncio.gather(self._submitter, return_exceptions=True)
                lost = len(self._queue) + self._inflight_records
                self._queue.clear()
                self._queued_bytes = self._inflight_records = self._inflight_bytes = 0
                self._counters.queued = 0
                self._counters.dropped += lost
                log.error(
                    "syslog_flush_timeout",
                    source=self.source,
                    lost_records=lost,
                    timeout_s=self.config.flush_timeout_s,
                )
        self._log_drops(final=True)
        self._state = "stopped"
        self._stopped.set()
        self._changed()
        log.info("syslog_stopped", source=self.source, **asdict(self._counters))

    async def wait_until(self, predicate: Callable[[ListenerCounters], bool]) -> ListenerCounters:
        """Resolve once the counters satisfy ``predicate`` (for supervisors and tests).

        Bound the wait with ``asyncio.timeout``.
        """
        if not predicate(self.counters):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (predicate, future)
            self._waiters.append(entry)
            try:
                await future
            finally:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return self.counters

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- endpoints ------------------------------------------------------------------------

    async def _bind(self, name: str, opening: Awaitable[T]) -> T:
        try:
            return await opening
        except OSError as exc:
            port = getattr(self.config, name)
            raise ConfigurationError(
                f"cannot listen on {self.config.host}:{port} for {name.removesuffix('_port')}: "
                f"{exc.strerror or exc}",
                field=name,
            ) from None

    async def _close_endpoints(self) -> None:
        for server in self._servers:
            server.close()
        if self._udp is not None:
            self._udp.close()
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            await server.wait_closed()

    # -- receiving (called from the protocols) ---------------------------------------------

    def _attach(self, connection: _Connection) -> bool:
        counters = self._counters
        if self._state != "running" or len(self._connections) >= self.config.max_connections:
            counters.refused_connections += 1
            if count := self._throttle.allow("refused"):
                log.warning(
                    "syslog_connection_refused",
                    source=self.source,
                    peer=connection.peer,
                    reason="listener stopping" if self._state != "running" else "too many",
                    max_connections=self.config.max_connections,
                    refused=count,
                )
            if connection.transport is not None:
                connection.transport.abort()
            return False
        self._connections.add(connection)
        counters.connections += 1
        counters.active_connections = len(self._connections)
        if self._paused and connection.transport is not None:
            connection.transport.pause_reading()
        self._changed()
        return True

    def _detach(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._counters.active_connections = len(self._connections)
            self._changed()

    def _accept_frames(self, frames: list[tuple[bytes, bool]], connection: _Connection) -> None:
        if not frames:
            return
        counters = self._counters
        for record, cut in frames:
            counters.received += 1
            if cut:
                self._too_large(connection.peer, len(record))
            self._enqueue(record)
        if not self._paused and self._backlog_full():
            self._pause()
        self._changed()

    def _accept_datagram(self, data: bytes, addr: Any) -> None:
        if data.endswith(b"\n"):
            data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
        counters = self._counters
        if not data:
            counters.empty += 1
            return
        counters.received += 1
        if len(data) > self.config.max_frame_bytes:
            data = data[: self.config.max_frame_bytes]
            self._too_large(addr, len(data))
        if self._backlog_full():
            counters.dropped += 1
            self._log_drops()
        else:
            self._enqueue(data)
        self._changed()

    def _too_large(self, peer: Any, kept: int) -> None:
        self._counters.too_large += 1
        if count := self._throttle.allow("too_large"):
            log.warning(
                "syslog_frame_too_large",
                source=self.source,
                peer=peer,
                kept_bytes=kept,
                max_frame_bytes=self.config.max_frame_bytes,
                frames=count,
            )

    def _truncated(self, connection: _Connection, lost: int) -> None:
        self._counters.truncated += 1
        log.warning(
            "syslog_frame_truncated",
            source=self.source,
            transport=connection.kind,
            peer=connection.peer,
            reason="the connection ended inside an octet-counted frame",
            buffered_bytes=lost,
        )
        self._changed()

    def _protocol_error(self, connection: _Connection, reason: str) -> None:
        self._counters.protocol_errors += 1
        log.warning(
            "syslog_connection_closed",
            source=self.source,
            transport=connection.kind,
            peer=connection.peer,
            reason=reason,
        )
        connection._open = False
        if connection.transport is not None:
            connection.transport.abort()
        self._changed()

    def _log_drops(self, *, final: bool = False) -> None:
        count = self._throttle.flush("dropped") if final else self._throttle.allow("dropped")
        if count:
            log.warning(
                "syslog_udp_dropped",
                source=self.source,
                reason="the queue is full",
                dropped=count,
                dropped_total=self._counters.dropped,
                queue_records=self.config.queue_records,
            )

    # -- queue and backpressure -----------------------------------------------------------

    def _enqueue(self, record: bytes) -> None:
        queue = self._queue
        queue.append(record)
        self._queued_bytes += len(record)
        self._counters.queued += 1
        if len(queue) == 1:
            self._has_data.set()
        if len(queue) >= self.config.batch_size:
            self._batch_full.set()

    def _backlog_full(self) -> bool:
        return (
            len(self._queue) + self._inflight_records >= self.config.queue_records
            or self._queued_bytes + self._inflight_bytes >= self.config.queue_bytes
        )

    def _pause(self) -> None:
        self._paused = True
        self._counters.pauses += 1
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.pause_reading()

    def _maybe_resume(self) -> None:
        records = len(self._queue) + self._inflight_records
        size = self._queued_bytes + self._inflight_bytes
        if records <= self.config.queue_records // 2 and size <= self.config.queue_bytes // 2:
            self._paused = False
            for connection in self._connections:
                if connection.transport is not None and not connection.transport.is_closing():
                    connection.transport.resume_reading()

    # -- submitting -----------------------------------------------------------------------

    async def _submit_loop(self) -> None:
        config = self.config
        latency = config.batch_latency_ms / 1000
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._has_data.clear()
                await self._has_data.wait()
                continue
            if not self._closing and latency > 0 and len(queue) < config.batch_size:
                self._batch_full.clear()
                try:
                    async with asyncio.timeout(latency):
                        await self._batch_full.wait()
                except TimeoutError:
                    pass
            count = min(len(queue), config.batch_size)
            batch = [queue.popleft() for _ in range(count)]
            size = sum(map(len, batch))
            self._queued_bytes -= size
            self._inflight_records, self._inflight_bytes = count, size
            await self._submit(batch)
            self._inflight_records = self._inflight_bytes = 0
            self._counters.queued -= count
            self._counters.submitted += count
            if self._paused:
                self._maybe_resume()
            self._changed()

    async def _submit(self, batch: list[bytes]) -> None:
        delay = _RETRY_FIRST_S
        while True:
            try:
                result = await self._sink.submit(self.source, batch)
            except Exception as exc:  # noqa: BLE001 - any sink failure is logged and retried
                self._counters.submit_errors += 1
                log.error(
                    "syslog_submit_failed",
                    source=self.source,
                    records=len(batch),
                    error_type=type(exc).__name__,
                    error=str(exc)[:500],
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                continue
            self._intake = self._intake + result
            return

    # -- observers ------------------------------------------------------------------------

    def _changed(self) -> None:
        if not self._waiters:
            return
        snapshot = self.counters
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(snapshot):
                future.set_result(None)
