"""A stand-in firewall API for the engine benchmark and the crash test: answers at once.

``POST /block`` (any body) counts a call and remembers its ``Idempotency-Key`` header, in order,
including repeats; ``GET /count`` gives ``{"count": N}``; ``GET /calls`` gives every key received,
with how many times; ``GET /calls?key=K`` gives ``{"key": K, "count": n}`` (a reconcile read);
``POST /reset`` forgets everything. It never deduplicates: a key that arrives twice is counted
twice, which is how a test sees a repeated containment. Loopback only.

Run as ``python -m bench.fwstub PORT [LOG]``; with LOG, each key is also appended to that file
(one per line) and flushed, so a test can read what landed even after killing the stub.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

import orjson


class _Stub(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough of it: requests with Content-Length bodies."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length :]
            method, target, _ = ([*lines[0].split(" "), "", ""])[:3]
            self.respond(self.state.handle(method, target, headers))

    def respond(self, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )


class _State:
    def __init__(self, log: TextIO | None) -> None:
        self.count = 0
        self.keys: Counter[str] = Counter()
        self.log = log

    def handle(self, method: str, target: str, headers: dict[str, str]) -> bytes:
        parts = urlsplit(target)
        if method == "POST" and parts.path == "/block":
            self.count += 1
            key = headers.get("idempotency-key", "")
            self.keys[key] += 1
            if self.log is not None:
                self.log.write(key + "\n")
                self.log.flush()
            return b'{"status":"blocked"}'
        if parts.path == "/count":
            return orjson.dumps({"count": self.count})
        if parts.path == "/calls":
            wanted = parse_qs(parts.query).get("key")
            if wanted:
                return orjson.dumps({"key": wanted[0], "count": self.keys.get(wanted[0], 0)})
            return orjson.dumps(dict(self.keys))
        if method == "POST" and parts.path == "/reset":
            self.count = 0
            self.keys.clear()
            return b"{}"
        return b'{"error":"not found"}'


async def serve(port: int, log_path: Path | None) -> None:
    """Serve on 127.0.0.1:``port`` until killed."""
    log = log_path.open("a", encoding="utf-8") if log_path else None
    state = _State(log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Stub(state), "127.0.0.1", port)
    print(f"fwstub listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    log_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    asyncio.run(serve(port, log_file))
