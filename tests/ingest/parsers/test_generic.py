"""Generic JSON: a per-source JMESPath mapping, checked when the parser is built."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from quell.errors import InvalidInput
from quell.ingest.model import EmailInfo, Endpoint, FileInfo, Severity
from quell.ingest.parsers import build_parser
from quell.ingest.parsers.base import NotAnAlert, ParseError
from quell.ingest.parsers.generic import GenericJsonParser, compile_expression

OPTIONS: dict[str, Any] = {
    "fields": {
        "title": "detection.name",
        "time": '"@timestamp"',
        "severity": "detection.level",
        "uid": "id",
        "rule_uid": "detection.id",
        "rule_name": "detection.name",
        "category": "detection.tags[0]",
        "description": "detection.summary",
        "src.ip": "network.client || network.src_ip",
        "src.port": "network.client_port",
        "dst.hostname": "network.server_name",
        "host.hostname": "device.name",
        "host.ip": "device.ips",
        "user": "actor.login",
        "file.name": "artifacts[?kind=='file'].name | [0]",
        "file.sha256": "artifacts[?kind=='file'].sha256 | [0]",
        "url": "artifacts[?kind=='url'].value | [0]",
        "email.sender": "mail.from",
        "email.to": "mail.rcpt",
        "techniques": "detection.attack[].id",
        "extra.tenant": "tenant",
    },
    "severity_map": {"crit": 5, "warn": "medium"},
    "defaults": {"product": "Acme EDR", "vendor": "Acme"},
}

RECORD: dict[str, Any] = {
    "id": "det-000912",
    "@timestamp": "2024-12-03T17:20:00+01:00",
    "tenant": {"id": "t-7", "name": "ACME EU"},
    "detection": {
        "id": "ACME-R-88",
        "name": "Beacon to newly registered domain",
        "level": "crit",
        "summary": "Periodic HTTPS to a domain registered 2 days ago",
        "tags": ["command_and_control", "network"],
        "attack": [{"id": "T1071.001"}, {"id": "not-a-technique"}, {"id": "T1568"}],
    },
    "network": {"src_ip": "10.11.12.13", "client_port": "61001", "server_name": "new.example"},
    "device": {"name": "ws-77", "ips": ["10.11.12.13"]},
    "actor": {"login": "p.jones"},
    "artifacts": [
        {"kind": "url", "value": "https://new.example/gate.php"},
        {
            "kind": "file",
            "name": "upd.dll",
            "sha256": "A9B8C7D6E5F4A3B2C1D0E9F8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3D2E1F0A9B8",
        },
    ],
    "mail": {"from": "x@phish.example", "rcpt": ["p.jones@corp.example"]},
}


def test_mapping_fills_every_target() -> None:
    alert = GenericJsonParser(OPTIONS).parse(RECORD)
    assert not isinstance(alert, NotAnAlert)
    assert alert.title == alert.rule_name == "Beacon to newly registered domain"
    assert alert.time == datetime(2024, 12, 3, 16, 20, tzinfo=UTC)
    assert alert.severity is Severity.CRITICAL
    assert alert.uid == "det-000912"
    assert alert.rule_uid == "ACME-R-88"
    assert alert.category == "command_and_control"
    assert alert.description == "Periodic HTTPS to a domain registered 2 days ago"
    assert alert.src == Endpoint(ip="10.11.12.13", port=61001)
    assert alert.dst == Endpoint(hostname="new.example")
    assert alert.host == Endpoint(ip="10.11.12.13", hostname="ws-77")
    assert alert.user == "p.jones"
    assert alert.url == "https://new.example/gate.php"
    assert alert.file == FileInfo(
        name="upd.dll", sha256="a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8"
    )
    assert alert.email == EmailInfo(sender="x@phish.example", to=["p.jones@corp.example"])
    assert alert.techniques == ["T1071.001", "T1568"]
    assert (alert.product, alert.vendor) == ("Acme EDR", "Acme")
    assert alert.extra == {"tenant": {"id": "t-7", "name": "ACME EU"}}


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("crit", Severity.CRITICAL),
        ("WARN", Severity.MEDIUM),
        ("High", Severity.HIGH),
        (2, Severity.LOW),
        ("4", Severity.HIGH),
        (None, Severity.UNKNOWN),
    ],
)
def test_severity_lookup_order(level: object, expected: Severity) -> None:
    record = {**RECORD, "detection": {**RECORD["detection"], "level": level}}
    alert = GenericJsonParser(OPTIONS).parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.severity is expected


def test_unmapped_severity_is_an_error_without_a_default() -> None:
    record = {**RECORD, "detection": {**RECORD["detection"], "level": "severe"}}
    with pytest.raises(ParseError) as caught:
        GenericJsonParser(OPTIONS).parse(record)
    assert caught.value.field == "severity"
    with_default = GenericJsonParser({**OPTIONS, "defaults": {"severity": "low"}})
    alert = with_default.parse(record)
    assert not isinstance(alert, NotAnAlert)
    assert alert.severity is Severity.LOW


def test_missing_title_or_time_name_the_field() -> None:
    parser = GenericJsonParser(OPTIONS)
    with pytest.raises(ParseError) as caught:
        parser.parse({"@timestamp": "2024-01-01T00:00:00Z"})
    assert caught.value.field == "title"
    with pytest.raises(ParseError) as caught:
        parser.parse({"detection": {"name": "x"}})
    assert caught.value.field == "time"


def test_time_defaults_to_now_only_when_configured() -> None:
    parser = GenericJsonParser({"fields": {"title": "name"}, "defaults": {"time": "now"}})
    before = datetime.now(UTC)
    alert = parser.parse({"name": "heartbeat missed"})
    assert not isinstance(alert, NotAnAlert)
    assert before <= alert.time <= datetime.now(UTC)


def test_match_expression_filters_records() -> None:
    parser = GenericJsonParser({**OPTIONS, "match": "kind == 'detection'"})
    assert parser.parse({**RECORD, "kind": "heartbeat"}) == NotAnAlert(
        "record does not satisfy the source's 'match' expression"
    )
    assert not isinstance(parser.parse({**RECORD, "kind": "detection"}), NotAnAlert)


def test_runtime_function_errors_are_parse_errors() -> None:
    parser = GenericJsonParser({"fields": {"title": "to_string(length(name))", "time": "ts"}})
    with pytest.raises(ParseError) as caught:
        parser.parse({"name": 5, "ts": 1})
    assert caught.value.field == "title"


@pytest.mark.parametrize(
    "expression",
    [
        "a",
        "a.b.c",
        '"@timestamp"',
        'a."x.y"',
        "a[0]",
        "a[-1].b",
        "a || b",
        "a.b || `7`",
        "`[1, 2]`",
    ],
)
def test_direct_walk_agrees_with_jmespath(expression: str) -> None:
    import jmespath  # type: ignore[import-untyped,unused-ignore]

    documents: list[Any] = [
        {"a": {"b": {"c": 1}, "x.y": 2}, "b": 0, "@timestamp": "t"},
        {"a": [{"b": 1}, {"b": []}], "b": ""},
        {"a": "", "b": {"c": None}},
        {"a": [], "b": False},
        {"a": None},
        [1, 2],
        "text",
        None,
    ]
    getter = compile_expression(expression, "fields.test")
    for document in documents:
        assert getter(document) == jmespath.search(expression, document), document


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"fields": {"title": "a."}}, "options.fields.title", "invalid JMESPath"),
        (  # says where it broke; it used to end in a dangling "Incomplete expression:"
            {"fields": {"title": "detection.[name", "time": "t"}},
            "options.fields.title",
            "Incomplete expression at character 16 of 'detection.[name'",
        ),
        (
            {"fields": {"title": "a", "time": "b", "src.ipp": "c"}},
            "options.fields.src.ipp",
            "src.ipp",
        ),
        ({"fields": {"title": "nofunc(@)", "time": "t"}}, "options.fields.title", "nofunc"),
        ({"fields": {"title": "length(@, @)", "time": "t"}}, "options.fields.title", "length"),
        ({"fields": {"title": "a"}}, "options.fields.time", "'time'"),
        ({"fields": {"time": "a"}}, "options.fields.title", "'title'"),
        ({"fields": {"title": 5, "time": "t"}}, "options.fields.title", "non-empty"),
        ({"fields": "title"}, "options.fields", "'fields'"),
        ({"fields": {}}, "options.fields", "'fields'"),
        ({"fields": {"title": "a", "time": "b"}, "mapping": {}}, "options.mapping", "mapping"),
        (
            {"fields": {"title": "a", "time": "b"}, "severity_map": {"x": 9}},
            "options.severity_map.x",
            "severity_map.x",
        ),
        (
            {"fields": {"title": "a", "time": "b"}, "defaults": {"src.port": "http"}},
            "options.defaults.src.port",
            "defaults.src.port",
        ),
        (
            {"fields": {"title": "a"}, "defaults": {"time": "yesterday"}},
            "options.defaults.time",
            "defaults.time",
        ),
        ({"fields": {"title": "a", "time": "b"}, "match": "[["}, "options.match", "match"),
    ],
)
def test_bad_options_are_invalid_input_naming_the_option(
    options: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_parser("json", options)
    assert caught.value.details["field"] == field
    assert words in caught.value.message
    assert caught.value.message.startswith("invalid options for format 'json'")
