"""Cutting bodies and files into records."""

from __future__ import annotations

import io
import tracemalloc

import orjson
import pytest

from quell.errors import TooLarge
from quell.ingest.parsers.base import RecordKind
from quell.ingest.records import MAX_RECORDS, iter_file_records, split_body


def test_one_document_an_array_and_ndjson() -> None:
    assert split_body(b' {"a": 1} ', RecordKind.JSON) == [b'{"a": 1}']
    assert split_body(b'[{"a":1}, {"b":2}]', RecordKind.JSON) == [b'{"a":1}', b'{"b":2}']
    assert split_body(b'{"a":1}\n{"b":2}\n', RecordKind.JSON) == [b'{"a":1}', b'{"b":2}']
    assert split_body(b'{\n  "pretty": true\n}\n', RecordKind.JSON) == [b'{\n  "pretty": true\n}']


def test_a_broken_first_line_does_not_swallow_the_ndjson_body() -> None:
    body = b'{"truncated": \n{"a":1}\n{"b":2}\n'
    assert split_body(body, RecordKind.JSON) == [b'{"truncated": ', b'{"a":1}', b'{"b":2}']
    stream = io.BytesIO(body)
    assert [r for batch in iter_file_records(stream, RecordKind.JSON) for r in batch] == [
        b'{"truncated": ',
        b'{"a":1}',
        b'{"b":2}',
    ]


def test_a_broken_pretty_document_stays_one_record() -> None:
    body = b'{\n  "a": 1,\n  "b": \n'
    assert split_body(body, RecordKind.JSON) == [body.strip()]


def test_too_many_records_in_one_body_is_refused() -> None:
    body = b"[" + b",".join([b"{}"] * (MAX_RECORDS + 1)) + b"]"
    with pytest.raises(TooLarge, match="at most"):
        split_body(body, RecordKind.JSON)


def test_a_file_that_is_one_big_array_is_fed_in_batches() -> None:
    body = orjson.dumps([{"n": n} for n in range(5_000)])
    batches = list(iter_file_records(io.BytesIO(body), RecordKind.JSON, batch=2_000))
    assert [len(batch) for batch in batches] == [2_000, 2_000, 1_000]


def test_array_elements_do_not_hold_large_buffers() -> None:
    """Each element of a split array is an exact copy (orjson's own result keeps ~4 KiB)."""
    body = b"[" + b",".join([b"{}"] * MAX_RECORDS) + b"]"
    tracemalloc.start()
    try:
        records = split_body(body, RecordKind.JSON)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == MAX_RECORDS
    assert held < 20 * 1024 * 1024  # 50,000 x 4 KiB would be 200 MB
