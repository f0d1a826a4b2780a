"""The typed readers every JSON parser shares."""

from __future__ import annotations

from typing import Any

import pytest

from quell.ingest.model import Severity
from quell.ingest.parsers import coerce
from quell.ingest.parsers.base import ParseError


@pytest.mark.parametrize(
    ("document", "path", "expected"),
    [
        ({"a.b.c": 1}, "a.b.c", 1),
        ({"a": {"b": {"c": 2}}}, "a.b.c", 2),
        ({"a": {"b.c": 3}}, "a.b.c", 3),
        ({"a.b": 4, "a": {"b": 5}}, "a.b", 4),
        ({"a": {"b": [1]}}, "a.b.c", None),
        ({"a": 1}, "a.b", None),
        ([1], "a", None),
    ],
)
def test_get_reads_flat_nested_and_mixed_keys(document: Any, path: str, expected: Any) -> None:
    assert coerce.get(document, path) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" x ", "x"),
        ("", None),
        ("  ", None),
        (None, None),
        (12, "12"),
        (2024833.0, "2024833"),
        (1.5, "1.5"),
    ],
)
def test_text(value: Any, expected: str | None) -> None:
    assert coerce.text(value, "f") == expected


@pytest.mark.parametrize("value", [True, {"a": 1}, [1], 10**50])
def test_text_refuses_other_types_naming_the_field(value: Any) -> None:
    with pytest.raises(ParseError) as caught:
        coerce.text(value, "alert.signature")
    assert caught.value.field == "alert.signature"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("42", 42), (" -7 ", -7), (3.0, 3), ("", None), (None, None)],
)
def test_integer(value: Any, expected: int | None) -> None:
    assert coerce.integer(value, "f") == expected


@pytest.mark.parametrize("value", ["--5", "²", "9" * 50, "1e3", 2.5, True, [], float("nan")])
def test_integer_refuses_what_is_not_an_integer(value: Any) -> None:
    with pytest.raises(ParseError):
        coerce.integer(value, "f")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(443, 443), ("8080", 8080), ("unknown", None), (70000, None), (-1, None), (1e30, None)],
)
def test_port(value: Any, expected: int | None) -> None:
    assert coerce.port(value, "f") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.168.1.1", "192.168.1.1"),
        (" 10.0.0.1 ", "10.0.0.1"),
        ("FE80:0000:0000:0000:0000:0000:0000:0001", "fe80::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("xxx.xxx.x.x", None),
        ("", None),
        (["-", "10.0.0.2"], "10.0.0.2"),
        (3232235777, None),
    ],
)
def test_ip(value: Any, expected: str | None) -> None:
    assert coerce.ip(value, "f") == expected


def test_file_hash_and_kind() -> None:
    assert coerce.file_hash("D41D8CD98F00B204E9800998ECF8427E", "f", 32) == (
        "d41d8cd98f00b204e9800998ecf8427e"
    )
    assert coerce.file_hash("not-a-hash", "f", 32) is None
    assert coerce.hash_kind("a" * 40) == "sha1"
    assert coerce.hash_kind("g" * 64) is None


def test_techniques_accept_ids_and_sigma_tags_once() -> None:
    found: list[str] = []
    coerce.techniques(["t1059.001", "attack.t1558", "T1059.001", "TA0002", "x"], "f", found)
    assert found == ["T1059.001", "T1558"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("High", Severity.HIGH),
        ("info", Severity.INFORMATIONAL),
        ("?", None),
        (["low"], Severity.LOW),
    ],
)
def test_severity_label(value: Any, expected: Severity | None) -> None:
    assert coerce.severity_label(value, "f") is expected


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0, Severity.LOW),
        (21, Severity.LOW),
        (47, Severity.MEDIUM),
        (73, Severity.HIGH),
        (99, Severity.CRITICAL),
    ],
)
def test_score_bands(score: int, expected: Severity) -> None:
    assert coerce.score_severity(score) is expected


def test_hostname_and_domain() -> None:
    assert coerce.hostname("p33-btmmdns.icloud.com.", "f") == "p33-btmmdns.icloud.com"
    assert coerce.hostname("10.0.0.1", "f") is None
    assert coerce.hostname("two words", "f") is None
    assert coerce.domain("WS-01", "f") is None
    assert coerce.domain("Mail.Example.COM", "f") == "mail.example.com"
