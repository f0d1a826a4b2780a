"""The syslog listener over real sockets on 127.0.0.1: framing, limits, TLS, backpressure.

The sink is a recording stand-in for the pipeline. No test sleeps to wait for something: each
waits on an event, a future or the listener's ``wait_until``, under a timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import pty
import select
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from structlog.testing import capture_logs

from quell.errors import ConfigurationError
from quell.ingest.intake import IntakeResult
from quell.ingest.syslog import (
    FrameDecoder,
    FramingError,
    ListenerCounters,
    SyslogListener,
    SyslogListenerConfig,
    build_tls_context,
)

TIMEOUT = 10.0
SOURCE = "fw-syslog"


class RecordingSink:
    """An IntakeSink that keeps what it is given; it can hold submits or fail them."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.batches: list[tuple[str, list[bytes]]] = []
        self.gate: asyncio.Event | None = None  # when set, each submit waits for it to open
        self.submitting = asyncio.Event()
        self.failures = 0  # submits to fail before succeeding
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def hold(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        return self.gate

    async def submit(self, source: str, records: Sequence[bytes]) -> IntakeResult:
        self.submitting.set()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is down")
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append((source, list(records)))
        self.records.extend(records)
        for count, future in self._waiters:
            if len(self.records) >= count and not future.done():
                future.set_result(None)
        return IntakeResult(received=len(records), stored=len(records))

    async def wait_for(self, count: int) -> list[bytes]:
        if len(self.records) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((count, future))
            async with asyncio.timeout(TIMEOUT):
                await future
        return self.records


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await test()

    asyncio.run(bounded())


async def started(sink: RecordingSink, **settings: Any) -> SyslogListener:
    listener = SyslogListener(SOURCE, SyslogListenerConfig(**settings), sink)
    await listener.start()
    return listener


async def until(
    listener: SyslogListener, predicate: Callable[[ListenerCounters], bool]
) -> ListenerCounters:
    async with asyncio.timeout(TIMEOUT):
        return await listener.wait_until(predicate)


async def hung_up(reader: asyncio.StreamReader) -> bool:
    """Whether the listener closed the connection (an end of stream, or a reset)."""
    try:
        async with asyncio.timeout(TIMEOUT):
            return await reader.read() == b""
    except ConnectionResetError:
        return True


def octets(message: bytes) -> bytes:
    """An RFC 6587 octet-counted frame."""
    return str(len(message)).encode() + b" " + message


async def connect(address: tuple[str, int] | None) -> tuple[asyncio.StreamReader, Any]:
    assert address is not None
    return await asyncio.open_connection(*address)


# -- UDP ----------------------------------------------------------------------------------------


def test_each_udp_datagram_is_one_record() -> None:
    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, udp_port=0)
        try:
            assert listener.udp_address is not None
            assert listener.udp_address[0] == "127.0.0.1"
            assert listener.udp_address[1] > 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                for datagram in (
                    b"<13>Oct 11 22:14:15 h app: one\n",
                    b"<13>Oct 11 22:14:15 h app: two\r\n",
                    b"",
                    b"<13>Oct 11 22:14:15 h app: three\nstill three",
                ):
                    client.sendto(datagram, listener.udp_address)
                records = await sink.wait_for(3)
        finally:
            await listener.stop()
        assert records == [
            b"<13>Oct 11 22:14:15 h app: one",
            b"<13>Oct 11 22:14:15 h app: two",
            b"<13>Oct 11 22:14:15 h app: three\nstill three",
        ]
        assert {source for source, _ in sink.batches} == {SOURCE}
        counters = listener.counters
        assert (counters.received, counters.submitted, counters.empty) == (3, 3, 1)
        assert listener.intake == IntakeResult(received=3, stored=3)

    run(main)


def test_udp_drops_are_counted_and_logged_when_the_queue_is_full() -> None:
    async def main() -> None:
        sink = RecordingSink()
        gate = sink.hold()
        listener = await started(
            sink, udp_port=0, queue_records=5, batch_size=1, batch_latency_ms=0
        )
        with capture_logs() as logs:
            try:
                assert listener.udp_address is not None
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    for n in range(50):
                        client.sendto(b"<13>Oct 11 22:14:15 h app: %d" % n, listener.udp_address)
                counters = await until(listener, lambda c: c.received == 50)
                # No submit can finish while the sink holds: five fit, the rest are dropped.
                assert (counters.dropped, counters.queued) == (45, 5)
                gate.set()
                records = await sink.wait_for(5)
            finally:
                await listener.stop()
        assert records == [b"<13>Oct 11 22:14:15 h app: %d" % n for n in range(5)]
        counters = listener.counters
        assert counters.received == counters.submitted + counters.dropped + counters.queued
        drops = [event for event in logs if event["event"] == "syslog_udp_dropped"]
        assert drops  # never silent: the first drop at once, the rest summed up at stop
        assert sum(event["dropped"] for event in drops) == 45
        assert all(event["source"] == SOURCE for event in drops)

    run(main)


# -- TCP framing ----------------------------------------------------------------------------------


def test_newline_and_octet_counted_frames_mixed_in_one_connection() -> None:
    multi_line = b"<13>1 2003-10-11T22:14:15Z h app - - - line one\nline two"
    stream = (
        b"<13>Oct 11 22:14:15 h app: newline framed\n"
        + octets(multi_line)
        + b"<13>Oct 11 22:14:15 h app: crlf framed\r\n"
        + b"\n\n"  # empty lines are skipped
        + octets(b"<13>Oct 11 22:14:15 h app: counted")
        + b"<13>Oct 11 22:14:15 h app: nul framed\x00"
        + b"2024-01-18 starts with digits but is no count\n"
        + octets(b"x" * 9)
        + b"<13>Oct 11 22:14:15 h app: last line, closed without a newline"
    )

    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tcp_port=0)
        try:
            _, writer = await connect(listener.tcp_address)
            writer.write(stream)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            records = await sink.wait_for(8)
            await until(listener, lambda c: c.active_connections == 0)
        finally:
            await listener.stop()
        assert records == [
            b"<13>Oct 11 22:14:15 h app: newline framed",
            multi_line,
            b"<13>Oct 11 22:14:15 h app: crlf framed",
            b"<13>Oct 11 22:14:15 h app: counted",
            b"<13>Oct 11 22:14:15 h app: nul framed",
            b"2024-01-18 starts with digits but is no count",
            b"x" * 9,
            b"<13>Oct 11 22:14:15 h app: last line, closed without a newline",
        ]
        assert listener.counters.connections == 1

    run(main)


STREAM = (
    octets(b"<13>1 2003-10-11T22:14:15Z h app - - - first")
    + b"<13>Oct 11 22:14:15 h app: second\r\n"
    + octets(b"<13>Oct 11 22:14:15 h app: third\nwith a line break")
    + b"<13>Oct 11 22:14:15 h app: fourth\n"
)
STREAM_RECORDS = [
    b"<13>1 2003-10-11T22:14:15Z h app - - - first",
    b"<13>Oct 11 22:14:15 h app: second",
    b"<13>Oct 11 22:14:15 h app: third\nwith a line break",
    b"<13>Oct 11 22:14:15 h app: fourth",
]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64])
def test_frames_split_anywhere_decode_the_same(piece: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=1024, max_octet_count=4096)
    frames: list[tuple[bytes, bool]] = []
    for start in range(0, len(STREAM), piece):
        decoder.feed(STREAM[start : start + piece], frames)
    assert frames == [(record, False) for record in STREAM_RECORDS]
    assert decoder.finish() == (None, 0)


def test_messages_split_across_tcp_segments() -> None:
    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tcp_port=0)
        try:
            _, writer = await connect(listener.tcp_address)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Cut inside the octet count, inside messages, and between CR and LF.
            cr = STREAM.index(b"\r\n") + 1
            cuts = [0, 1, 10, 60, cr, cr + 1, cr + 5, len(STREAM)]
            for start, end in itertools.pairwise(cuts):
                piece = STREAM[start:end]
                writer.write(piece)
                await writer.drain()
            records = await sink.wait_for(4)
            writer.close()
            await writer.wait_closed()
        finally:
            await listener.stop()
        assert records == STREAM_RECORDS

    run(main)


def test_a_100_kb_line_reaches_the_sink_intact() -> None:
    line = b"<13>Oct 11 22:14:15 h app: " + b"A" * 100_000

    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tcp_port=0)
        try:
            _, writer = await connect(listener.tcp_address)
            writer.write(line + b"\n" + b"<13>Oct 11 22:14:15 h app: next\n")
            await writer.drain()
            records = await sink.wait_for(2)
            writer.close()
            await writer.wait_closed()
        finally:
            await listener.stop()
        # The pipeline, not the listener, refuses it (its record limit is 64 KiB by default).
        assert records == [line, b"<13>Oct 11 22:14:15 h app: next"]
        assert listener.counters.too_large == 0

    run(main)


def test_frames_over_the_hard_cap_are_cut_submitted_and_skipped() -> None:
    long_line = b"L" * 5000
    long_counted = b"C" * 3000

    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tcp_port=0, udp_port=0, max_frame_bytes=1024)
        try:
            _, writer = await connect(listener.tcp_address)
            writer.write(long_line[:2500])
            await writer.drain()
            writer.write(long_line[2500:] + b"\n<13>after the line\n")
            writer.write(octets(long_counted) + b"<13>after the count\n")
            await writer.drain()
            records = await sink.wait_for(4)
            assert listener.udp_address is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"U" * 2000, listener.udp_address)
            records = await sink.wait_for(5)
            writer.close()
            await writer.wait_closed()
        finally:
            await listener.stop()
        assert records == [
            long_line[:1024],
            b"<13>after the line",
            long_counted[:1024],
            b"<13>after the count",
            b"U" * 1024,
        ]
        assert listener.counters.too_large == 3

    run(main)


@pytest.mark.parametrize("count", [b"99999999999", b"17000000"])
def test_an_absurd_octet_count_closes_the_connection(count: bytes) -> None:
    async def main() -> None:
        sink = RecordingSink()
        with capture_logs() as logs:
            listener = await started(sink, tcp_port=0)
            try:
                reader, writer = await connect(listener.tcp_address)
                writer.write(b"<13>Oct 11 22:14:15 h app: fine\n" + count + b" <13>x" * 10)
                await writer.drain()
                assert await hung_up(reader)
                records = await sink.wait_for(1)
                writer.close()
            finally:
                await listener.stop()
        assert records == [b"<13>Oct 11 22:14:15 h app: fine"]
        assert listener.counters.protocol_errors == 1
        closed = [event for event in logs if event["event"] == "syslog_connection_closed"]
        assert len(closed) == 1
        assert "octet count" in closed[0]["reason"]

    run(main)


def test_a_connection_that_ends_inside_an_octet_counted_frame_is_counted() -> None:
    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tcp_port=0)
        try:
            _, writer = await connect(listener.tcp_address)
            writer.write(octets(b"<13>whole") + b"100 <13>only the start")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            counters = await until(listener, lambda c: c.truncated == 1)
            records = await sink.wait_for(1)
        finally:
            await listener.stop()
        assert records == [b"<13>whole"]
        assert counters.received == 1

    run(main)


def test_decoder_edge_cases() -> None:
    decoder = FrameDecoder(max_frame_bytes=8, max_octet_count=64)
    frames: list[tuple[bytes, bool]] = []
    decoder.feed(b"\r\n\x0012345\n", frames)  # stray delimiters; digits without a space
    decoder.feed(b"abcdefghij", frames)  # over the cap, no delimiter yet: cut now
    decoder.feed(b"klmn", frames)  # still the same line: skipped
    decoder.feed(b"op\nqr\n", frames)
    decoder.feed(b"20 0123456789", frames)  # counted, over the cap
    decoder.feed(b"0123456789ok\n", frames)
    assert frames == [
        (b"12345", False),
        (b"abcdefgh", True),
        (b"qr", False),
        (b"01234567", True),
        (b"ok", False),
    ]
    with pytest.raises(FramingError):
        decoder.feed(b"65 x", frames)
    assert FrameDecoder(8, 64).finish() == (None, 0)


# -- TLS ------------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_connections_are_framed_like_tcp(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)

    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tls_port=0, tls_cert=cert, tls_key=key)
        client = ssl.create_default_context(cafile=str(cert))
        try:
            assert listener.tls_address is not None
            _, writer = await asyncio.open_connection(
                *listener.tls_address, ssl=client, server_hostname="localhost"
            )
            assert writer.get_extra_info("ssl_object").version() in {"TLSv1.2", "TLSv1.3"}
            writer.write(STREAM)
            await writer.drain()
            records = await sink.wait_for(4)
            writer.close()
            await writer.wait_closed()
        finally:
            await listener.stop()
        assert records == STREAM_RECORDS
        assert listener.counters.connections == 1

    run(main)


def test_tls_context_and_certificate_errors(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = build_tls_context(cert, key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    mutual = build_tls_context(cert, key, client_ca=cert)
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigurationError) as caught:
        build_tls_context(tmp_path / "missing.pem", key)
    assert caught.value.details["field"] == "tls_cert"

    async def main() -> None:
        listener = SyslogListener(
            SOURCE,
            SyslogListenerConfig(tcp_port=0, tls_port=0, tls_cert=key, tls_key=key),
            RecordingSink(),
        )
        with pytest.raises(ConfigurationError):
            await listener.start()
        assert listener.tcp_address is not None  # it was bound, then closed again
        await listener.stop()

    run(main)


def test_an_encrypted_tls_key_is_a_clear_error_and_never_a_passphrase_prompt(
    tmp_path: Path,
) -> None:
    """OpenSSL prompts on the terminal for an encrypted key's passphrase unless told not to;
    in ``quell serve`` that would block the event loop (the API, every source) for good."""
    cert, plain_key = _self_signed(tmp_path)
    key = serialization.load_pem_private_key(plain_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"canary-passphrase"),
        )
    )
    with pytest.raises(ConfigurationError) as caught:
        build_tls_context(cert, encrypted)
    assert caught.value.details["field"] == "tls_key"
    assert "passphrase" in caught.value.message

    # The same from a process with a terminal, as an operator starting quell serve has.
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from quell.ingest.syslog import build_tls_context\n"
        f"try:\n    build_tls_context(Path({str(cert)!r}), Path({str(encrypted)!r}))\n"
        "except Exception as exc:\n    print('refused:', type(exc).__name__)\n"
    )
    pid, terminal = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, "-c", script])  # noqa: S606 - no shell
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:  # until the child has exited (EOF or EIO)
            ready, _, _ = select.select([terminal], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(terminal, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(terminal)
    assert b"pass phrase" not in output.lower()
    assert b"refused: ConfigurationError" in output


# -- backpressure and shutdown ------------------------------------------------------------------


async def _writable(sock: socket.socket, stop: Awaitable[Any]) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock.fileno(), wake)
    try:
        await asyncio.wait(
            {ready, asyncio.ensure_future(stop)}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        loop.remove_writer(sock.fileno())


def test_a_slow_sink_stops_tcp_reading_and_loses_nothing() -> None:
    # 2 MB: far more than the kernel buffers hold (about 130 KB here once the listener stops).
    messages = [b"<13>Oct 11 22:14:15 h app: message %06d " % n + b"." * 170 for n in range(10_000)]
    data = memoryview(b"".join(message + b"\n" for message in messages))

    async def main() -> None:
        sink = RecordingSink()
        gate = sink.hold()
        listener = await started(
            sink, tcp_port=0, queue_records=100, batch_size=50, batch_latency_ms=0
        )
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            assert listener.tcp_address is not None
            client.connect(listener.tcp_address)
            client.setblocking(False)
            paused = asyncio.ensure_future(listener.wait_until(lambda c: c.pauses >= 1))
            sent = 0
            while True:
                try:
                    sent += client.send(data[sent : sent + 65536])
                except BlockingIOError:
                    if listener.reading_paused:
                        break  # the buffers are full and the listener does not read
                    await _writable(client, paused)
                    continue
                assert sent < len(data), "all data fit in the buffers: nothing was proven"
                await asyncio.sleep(0)  # a yield, not a wait: let the listener read

            counters = listener.counters
            assert listener.reading_paused
            assert counters.submitted == 0  # the first submit is still held
            per_read = 256 * 1024 // len(messages[0]) + 1  # one read may overshoot the bound
            assert counters.received <= 100 + per_read
            assert counters.received < len(messages) // 4

            gate.set()
            await loop.sock_sendall(client, data[sent:])
            client.shutdown(socket.SHUT_WR)
            records = await sink.wait_for(len(messages))
        finally:
            client.close()
            await listener.stop()
        assert records == messages
        counters = listener.counters
        assert (counters.received, counters.submitted, counters.dropped) == (10_000, 10_000, 0)
        assert not listener.reading_paused

    run(main)


def test_stop_flushes_what_is_queued_and_closes_connections() -> None:
    async def main() -> None:
        sink = RecordingSink()
        listener = await started(
            sink, tcp_port=0, udp_port=0, batch_size=1000, batch_latency_ms=60_000
        )
        reader, writer = await connect(listener.tcp_address)
        writer.write(b"<13>one\n<13>two\n" + octets(b"<13>three") + b"<13>unterminated")
        await writer.drain()
        assert listener.udp_address is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"<13>datagram", listener.udp_address)
        await until(listener, lambda c: c.received == 4)
        assert sink.records == []  # waiting for a fuller batch
        async with asyncio.timeout(TIMEOUT):
            await listener.stop()  # does not wait out the minute
        assert await hung_up(reader)
        writer.close()
        assert sorted(sink.records) == sorted(
            [b"<13>one", b"<13>two", b"<13>three", b"<13>datagram", b"<13>unterminated"]
        )
        counters = listener.counters
        assert (counters.received, counters.submitted, counters.queued) == (5, 5, 0)
        with pytest.raises(ConnectionError):
            await connect(listener.tcp_address)

    run(main)


def test_stop_waits_for_a_slow_sink() -> None:
    async def main() -> None:
        sink = RecordingSink()
        gate = sink.hold()
        listener = await started(sink, tcp_port=0, batch_latency_ms=0)
        _, writer = await connect(listener.tcp_address)
        writer.write(b"".join(b"<13>m%d\n" % n for n in range(20)))
        await writer.drain()
        await until(listener, lambda c: c.received == 20)
        stopping = asyncio.create_task(listener.stop())
        also_stopping = asyncio.create_task(listener.stop())
        async with asyncio.timeout(TIMEOUT):
            await sink.submitting.wait()
        assert not stopping.done()
        assert not also_stopping.done()  # a second stop waits for the first
        gate.set()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(stopping, also_stopping)
        writer.close()
        assert sink.records == [b"<13>m%d" % n for n in range(20)]

    run(main)


def test_a_failing_sink_is_retried_without_losing_the_batch() -> None:
    async def main() -> None:
        sink = RecordingSink()
        sink.failures = 2
        with capture_logs() as logs:
            listener = await started(sink, udp_port=0, batch_latency_ms=0)
            try:
                assert listener.udp_address is not None
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.sendto(b"<13>kept", listener.udp_address)
                records = await sink.wait_for(1)
            finally:
                await listener.stop()
        assert records == [b"<13>kept"]
        assert listener.counters.submit_errors == 2
        failures = [event for event in logs if event["event"] == "syslog_submit_failed"]
        assert [event["error"] for event in failures] == ["database is down"] * 2

    run(main)


def test_connections_over_the_limit_are_refused() -> None:
    async def main() -> None:
        sink = RecordingSink()
        listener = await started(sink, tcp_port=0, max_connections=1)
        try:
            _, first = await connect(listener.tcp_address)
            await until(listener, lambda c: c.active_connections == 1)
            second_reader, second = await connect(listener.tcp_address)
            assert await hung_up(second_reader)
            first.write(b"<13>still served\n")
            await first.drain()
            assert await sink.wait_for(1) == [b"<13>still served"]
            first.close()
            second.close()
        finally:
            await listener.stop()
        assert listener.counters.refused_connections == 1

    run(main)


# -- configuration --------------------------------------------------------------------------------


def test_configuration_is_validated() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        SyslogListenerConfig()
    with pytest.raises(ValidationError, match="tls_cert"):
        SyslogListenerConfig(tls_port=6514)
    with pytest.raises(ValidationError):
        SyslogListenerConfig(udp_port=70000)
    with pytest.raises(ValidationError):
        SyslogListenerConfig(udp_port=514, max_frame_bytes=2 * 1024 * 1024, max_octet_count=1024)
    with pytest.raises(ValidationError):
        SyslogListenerConfig(udp_port=514, unknown=1)  # type: ignore[call-arg]
    config = SyslogListenerConfig(udp_port=514)
    assert SyslogListenerConfig.model_validate_json(config.model_dump_json()) == config
    assert config.max_frame_bytes == 1024 * 1024


def test_a_port_in_use_is_a_configuration_error() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            listener = SyslogListener(SOURCE, SyslogListenerConfig(tcp_port=port), RecordingSink())
            with pytest.raises(ConfigurationError) as caught:
                await listener.start()
        assert caught.value.details["field"] == "tcp_port"
        with pytest.raises(RuntimeError):
            await listener.start()

    run(main)


def test_a_sink_that_never_answers_cannot_hold_stop_forever() -> None:
    async def main() -> None:
        sink = RecordingSink()
        sink.hold()  # never opened
        with capture_logs() as logs:
            listener = await started(sink, tcp_port=0, batch_latency_ms=0, flush_timeout_s=0.2)
            _, writer = await connect(listener.tcp_address)
            writer.write(b"<13>a\n<13>b\n<13>c\n")
            await writer.drain()
            await until(listener, lambda c: c.received == 3)
            async with asyncio.timeout(TIMEOUT):
                await listener.stop()
            writer.close()
        counters = listener.counters
        assert (counters.received, counters.submitted, counters.dropped, counters.queued) == (
            3,
            0,
            3,
            0,
        )
        timeouts = [event for event in logs if event["event"] == "syslog_flush_timeout"]
        assert [event["lost_records"] for event in timeouts] == [3]

    run(main)
