"""Records as the pipeline hands them to a JSON parser: one decoded JSON value each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.fixtures.requirements import corpus_path

DATA = Path(__file__).parent / "data"


def decode(raw: bytes) -> list[Any]:
    """A JSON document (an array gives its elements) or NDJSON lines, as records."""
    text = raw.strip()
    if text.startswith((b"[", b"{")):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # several objects, one per line
        else:
            return value if isinstance(value, list) else [value]
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def corpus_records(*parts: str) -> list[Any]:
    """The records of a file in the shared corpus (``$QUELL_CORPUS``)."""
    return decode(corpus_path().joinpath(*parts).read_bytes())


def fixture(name: str) -> Any:
    """A JSON fixture from ``data/`` beside these tests."""
    return orjson.loads((DATA / name).read_bytes())
