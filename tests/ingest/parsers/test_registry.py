"""Each JSON format of the registry builds through build_parser with default options."""

from __future__ import annotations

import pytest

from quell.errors import ErrorCode, InvalidInput
from quell.ingest.model import Alert, Severity
from quell.ingest.parsers import PARSERS, build_parser
from quell.ingest.parsers.base import RecordKind

JSON_FORMATS = ("suricata", "zeek", "wazuh", "splunk", "ecs", "ocsf")
GENERIC = {"fields": {"title": "name", "time": "ts"}}


@pytest.mark.parametrize("name", JSON_FORMATS)
def test_format_builds_without_options(name: str) -> None:
    parser = build_parser(name)
    module, _, cls = PARSERS[name].partition(":")
    assert type(parser).__module__ == module
    assert type(parser).__name__ == cls
    assert parser.format == name
    assert parser.record_kind is RecordKind.JSON


def test_generic_json_builds_with_a_mapping() -> None:
    parser = build_parser("json", GENERIC)
    assert type(parser).__name__ == "GenericJsonParser"
    assert parser.format == "json"
    assert parser.record_kind is RecordKind.JSON


def test_generic_json_without_a_mapping_reads_the_common_names() -> None:
    parser = build_parser("json")
    alert = parser.parse({"name": "beacon", "ts": "2026-03-01T12:00:00Z", "level": "critical"})
    assert isinstance(alert, Alert)
    assert (alert.title, alert.severity) == ("beacon", Severity.CRITICAL)
    with pytest.raises(InvalidInput) as caught:
        build_parser("json", {"fields": {}})  # a mapping that maps nothing is refused
    assert caught.value.code is ErrorCode.INVALID_INPUT
    assert caught.value.details["field"] == "options.fields"


@pytest.mark.parametrize("name", [n for n in JSON_FORMATS if n != "zeek"])
def test_formats_without_options_accept_and_ignore_empty_options(name: str) -> None:
    assert build_parser(name, {}).format == name
