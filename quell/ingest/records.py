"""Cutting input into records: one JSON document, a JSON array, NDJSON, or lines of text.

Each record keeps its verbatim bytes (what the alert's ``raw`` holds), except the elements of
a JSON array, which have no bytes of their own: they are re-serialized (compact, same
values). A body that cannot be cut is one record, so that it is dead-lettered whole with the
parse error rather than in confusing pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import orjson

from quell.errors import InvalidInput, TooLarge
from quell.ingest.parsers.base import RecordKind

MAX_WHOLE_DOCUMENT = 256 * 1024 * 1024  # a JSON array or single document read at once
MAX_RECORDS = 50_000  # records in one HTTP body (a file is fed in batches instead)


class Readable(Protocol):
    """What records are read from: a binary file, stdin, or a wrapper counting bytes."""

    def readline(self, size: int = -1, /) -> bytes:
        """One line, with its end."""
        ...

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all when -1)."""
        ...

    def __iter__(self) -> Iterator[bytes]:
        """The remaining lines."""
        ...


def split_body(
    body: bytes, kind: RecordKind, *, max_records: int | None = MAX_RECORDS
) -> list[bytes]:
    """The records in ``body``, for a parser that reads ``kind``; TooLarge beyond
    ``max_records`` (None for no limit, as for a file, which is fed in batches)."""
    if kind is RecordKind.BYTES:
        return [body] if body.strip() else []
    if kind is RecordKind.TEXT:
        return _lines(body)
    stripped = body.strip()
    if not stripped:
        return []
    if stripped[:1] == b"[":
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return [stripped]
        if isinstance(value, list):
            _check_count(len(value), max_records)
            # Copies: the bytes orjson returns keep a ~4 KiB buffer each, which for a large
            # array of small elements is gigabytes.
            return [bytes(memoryview(orjson.dumps(item))) for item in value]
        return [stripped]
    lines = _lines(body)  # from the body itself: a line's bytes stay exactly as sent
    if len(lines) == 1:
        return [stripped]
    try:  # a pretty-printed single document spans lines but is one record
        orjson.loads(stripped)
    except orjson.JSONDecodeError:
        pass
    else:
        return [stripped]
    if not _line_based(lines):
        return [stripped]
    _check_count(len(lines), max_records)
    return lines


_PROBE_LINES = 8


def _line_based(lines: list[bytes]) -> bool:
    """NDJSON when any of the first lines is a document on its own (one bad line is one dead
    letter, not the whole body); a broken pretty-printed document has no such line."""
    for line in lines[:_PROBE_LINES]:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        return True
    return False


def _check_count(count: int, max_records: int | None) -> None:
    if max_records is not None and count > max_records:
        raise TooLarge(
            f"{count} records in one body; at most {max_records} (send several requests)",
            field="body",
        )


def _lines(body: bytes) -> list[bytes]:
    return [line.rstrip(b"\r") for line in body.split(b"\n") if line.strip()]


def iter_file_records(
    stream: Readable, kind: RecordKind, *, batch: int = 2000
) -> Iterator[list[bytes]]:
    """Batches of records from a file or stdin, streamed when the input is line-based.

    NDJSON (EVE logs, Zeek JSON logs) and text are read line by line, so a file of any size
    uses bounded memory; a JSON array, a single document and an e-mail are read whole (up to
    MAX_WHOLE_DOCUMENT bytes).
    """
    if kind is RecordKind.BYTES:
        yield split_body(_read_whole(stream), kind)
        return
    head: list[bytes] = []
    while len(head) < _PROBE_LINES:
        line = stream.readline()
        if not line:
            break
        if line.strip():
            head.append(line)
    if not head:
        return
    line_based = kind is RecordKind.TEXT or (
        head[0].lstrip()[:1] == b"{" and _line_based([line.rstrip(b"\r\n") for line in head])
    )
    if not line_based:
        already = sum(len(line) for line in head)
        records = split_body(b"".join(head) + _read_whole(stream, already=already), kind,
                             max_records=None)  # fmt: skip
        for start in range(0, len(records), batch):
            yield records[start : start + batch]
        return
    pending = [line.rstrip(b"\r\n") for line in head]
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line.strip():
            pending.append(line)
            if len(pending) >= batch:
                yield pending
                pending = []
    if pending:
        yield pending


def _read_whole(stream: Readable, *, already: int = 0) -> bytes:
    data = stream.read(MAX_WHOLE_DOCUMENT - already + 1)
    if len(data) + already > MAX_WHOLE_DOCUMENT:
        raise InvalidInput(
            f"a single JSON document or array over {MAX_WHOLE_DOCUMENT // (1024 * 1024)} MiB; "
            "split it, or send NDJSON (one document per line)",
            field="input",
        )
    return data
