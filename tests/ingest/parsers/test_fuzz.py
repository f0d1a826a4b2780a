"""Every parser, fed random input: only ParseError or a result may come out."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quell.ingest.model import Alert
from quell.ingest.parsers import FORMATS, build_parser
from quell.ingest.parsers.base import NotAnAlert, ParseError, RecordKind

GENERIC_OPTIONS = {"fields": {"title": "title", "time": "ts", "src.ip": "src", "user": "u"}}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)

# Keys the JSON formats look for, so that random values land where parsers read them.
FORMAT_KEYS = [
    "event_type",
    "alert",
    "timestamp",
    "src_ip",
    "dest_ip",
    "src_port",
    "proto",
    "ts",
    "note",
    "msg",
    "src",
    "dst",
    "p",
    "rule",
    "agent",
    "data",
    "syscheck",
    "id",
    "_time",
    "rule_name",
    "search_name",
    "severity",
    "urgency",
    "dest",
    "user",
    "@timestamp",
    "kibana.alert.rule.name",
    "kibana.alert.severity",
    "event",
    "source",
    "destination",
    "host",
    "class_uid",
    "time",
    "finding_info",
    "finding",
    "metadata",
    "severity_id",
    "observables",
    "title",
    "u",
]
shaped = st.dictionaries(st.sampled_from(FORMAT_KEYS), json_values, max_size=12)


def _parse(format_name: str, record: Any) -> None:
    options = GENERIC_OPTIONS if format_name == "json" else None
    parser = build_parser(format_name, options)
    try:
        result = parser.parse(record)
    except ParseError as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason.strip(), "a ParseError must say why"
        return
    assert isinstance(result, Alert | NotAnAlert)
    if isinstance(result, Alert):
        assert result.time.tzinfo is not None
        orjson.dumps(result.observables)


def _record_for(format_name: str, value: Any) -> Any:
    kind = build_parser(format_name, GENERIC_OPTIONS if format_name == "json" else None).record_kind
    if kind is RecordKind.JSON:
        return value
    # stdlib json, not orjson: hypothesis makes integers wider than 64 bits.
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if kind is RecordKind.TEXT else text.encode()


@pytest.mark.parametrize("format_name", FORMATS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | shaped)
def test_random_json_never_escapes_as_anything_but_parse_error(
    format_name: str, value: Any
) -> None:
    _parse(format_name, _record_for(format_name, value))


@pytest.mark.parametrize("format_name", FORMATS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_escape_as_anything_but_parse_error(
    format_name: str, data: bytes
) -> None:
    kind = build_parser(format_name, GENERIC_OPTIONS if format_name == "json" else None).record_kind
    if kind is RecordKind.JSON:
        try:
            record: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # the pipeline dead-letters undecodable JSON before any parser sees it
    elif kind is RecordKind.TEXT:
        record = data.decode("utf-8", errors="replace")
    else:
        record = data
    _parse(format_name, record)
