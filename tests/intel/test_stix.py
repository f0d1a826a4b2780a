"""STIX 2.1: bundles in (patterns, markings, relationships, sightings), the shape cache against
the OASIS parser, and bundles out, round trip through the store on both backends."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stix2patterns.v21.pattern import Pattern
from stix2patterns.validator import run_validator

from quell.clock import ManualClock
from quell.intel.model import (
    ImportReport,
    IndicatorRecord,
    IndicatorType,
    IntelError,
    MatchKind,
    Parsed,
    Tlp,
)
from quell.intel.stix import (
    PatternSyntaxError,
    indicated,
    parse_bundle,
    parse_objects,
    parse_pattern,
    parse_pattern_uncached,
    pattern_indicators,
)
from quell.intel.stix_export import (
    export_bundle,
    iter_bundle_json,
    stix_pattern,
)
from quell.intel.store import IntelStore
from quell.store.database import Database
from tests.fixtures.requirements import corpus_path

T = IndicatorType
SHA256 = "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"
WHITE = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"
GREEN = "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"
AMBER = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
RED = "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"
AMBER_STRICT_2 = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"


def _id(kind: str, n: int) -> str:
    return f"{kind}--{uuid.UUID(int=n)}"


def _indicator(pattern: str, n: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": _id("indicator", n),
        "created": "2025-06-01T00:00:00.000Z",
        "modified": "2025-06-01T00:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2025-06-01T00:00:00Z",
        **fields,
    }


def _bundle(*objects: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "bundle", "id": _id("bundle", 1), "objects": list(objects)})


def _counts(report: ImportReport) -> tuple[int, int, int, int, int]:
    return report.added, report.updated, report.unchanged, report.expired, report.unsupported


def _rows(store: IntelStore, source: str) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in store.search(source=source, limit=1000)}


# -- the corpus --------------------------------------------------------------------------------

# file: (added, keys, unsupported reasons)
CORPUS = {
    "indicator-for-c2-ip-address.json": (1, {"ip:10.0.0.0"}, []),
    "indicator-to-campaign-relationship.json": (1, {"ip:10.0.0.0"}, []),
    "indicators-for-C2-with-COA.json": (2, {"ip:10.0.0.0", f"sha256:{SHA256}"}, []),
    "infrastructure.json": (0, set(), []),
    "malicious-email-indicator-with-attachment.json": (
        0,
        set(),
        [
            "comparator MATCHES on email-message:subject",
            "comparator MATCHES on email-message:body_multipart[*].body_raw_ref.name",
        ],
    ),
}
LONE_OBJECT = "interop-objectmarking-test.json"  # a campaign object, not a bundle


@pytest.mark.requires("corpus")
def test_every_corpus_bundle_imports_with_its_counts(
    database: Database, clock: ManualClock
) -> None:
    folder = corpus_path() / "stix"
    assert {p.name for p in folder.glob("*.json")} == {*CORPUS, LONE_OBJECT}
    store = IntelStore(database, clock)
    for name, (added, keys, reasons) in CORPUS.items():
        data = (folder / name).read_bytes()
        report = store.apply(name, parse_bundle(data, origin=name))
        assert _counts(report) == (added, 0, 0, 0, len(reasons)), name
        assert [u.reason for u in report.unsupported_items] == reasons, name
        assert set(_rows(store, name)) == keys, name
        again = store.apply(name, parse_bundle(data, origin=name))
        assert _counts(again) == (0, 0, added, 0, len(reasons)), name

    # Relationships give the ids an indicator indicates; the indicator's own id comes first.
    (row,) = _rows(store, "indicator-to-campaign-relationship.json").values()
    assert row["stix_ids"] == [
        "indicator--c43a0a05-e8d2-4f64-ae37-3f3fb153f8d9",
        "campaign--b549a58c-afd9-4847-85c3-5be13d56d3cc",
    ]
    assert row["first_seen"] == datetime(2014, 9, 9, 19, 58, 39, 609000, tzinfo=UTC)
    assert row["description"] == "Test description."
    assert row["tlp"] == "TLP:CLEAR"
    sha = _rows(store, "indicators-for-C2-with-COA.json")[f"sha256:{SHA256}"]
    assert sha["stix_ids"] == [
        "indicator--a932fcc6-e032-476c-826f-cb970a5a1ade",
        "malware--fdd60b30-b67c-41e3-b0b9-f01faf20d111",
    ]
    email = parse_bundle((folder / "malicious-email-indicator-with-attachment.json").read_bytes())
    assert [u.where for u in email.unsupported] == [
        "indicator--8cf9236f-1b96-493d-98be-0c1c1e8b62d7",
        "indicator--2e17f6fe-3a4d-438a-911a-e509ba1b9933",
    ]

    # The lone campaign object imports as a bundle of one: no indicator, nothing unsupported.
    lone = (folder / LONE_OBJECT).read_bytes()
    report = store.apply(LONE_OBJECT, parse_bundle(lone, origin=LONE_OBJECT))
    assert _counts(report) == (0, 0, 0, 0, 0)
    parsed = parse_objects([orjson.loads(lone)])
    assert (parsed.records, parsed.unsupported) == ([], [])
    with pytest.raises(IntelError, match=r"not a STIX bundle: it has type 'campaign', not"):
        parse_bundle(b'{"type": "campaign", "name": "no id"}', origin="x")


@pytest.mark.requires("corpus")
def test_the_shape_cache_gives_the_parsers_answer_on_the_corpus_patterns() -> None:
    patterns = [
        obj["pattern"]
        for path in sorted((corpus_path() / "stix").glob("*.json"))
        for obj in (orjson.loads(path.read_bytes()).get("objects") or [])
        if obj.get("type") == "indicator"
    ]
    assert len(patterns) == 6
    for pattern in patterns:
        _assert_same_answer(pattern)


# -- the shape cache -----------------------------------------------------------------------------

HAND_PATTERNS = [
    "[ipv4-addr:value = '198.51.100.1']",
    "[ ipv4-addr:value = '198.51.100.1' ]",
    "[domain-name:value = 'it\\'s.example']",
    "[url:value = 'http://x.example/a\\\\b\\'c']",
    "[url:value = '\\\\']",
    "[url:value = '\\'']",
    "[url:value = '']",
    "[url:value = ']' OR url:value = '[x:y = \\'z\\']']",
    "[file:hashes.'SHA-256' = 'aa' AND file:name = 'b\\'c']",
    "[file:hashes.'SHA\\'1' = 'aa']",
    "[file:hashes. 'SHA-256' = 'aa']",
    "[file:'hashes'.MD5 = 'aa']",
    "[file:hashes.MD5 = 'aa'] OR [file:hashes.sha1 = 'bb'] OR [file:hashes.SHA256 = 'cc']",
    "([ipv4-addr:value = 'a'] OR ([domain-name:value = 'b'] FOLLOWEDBY [url:value = 'c']))",
    "[ipv4-addr:value ISSUBSET '10.0.0.0/8'] WITHIN 300 SECONDS",
    "[ipv4-addr:value = 'a'] REPEATS 5 TIMES",
    "[ipv4-addr:value = 'a'] START t'2016-06-01T00:00:00Z' STOP t'2016-07-01T00:00:00Z'",
    "[file:contents_ref.payload_bin = b'dGVzdA=='] AND [x-thing:h = h'ab0f']",
    "[x-thing:t = t'2016-06-01T00:00:00Z' AND x-thing:u = 'tx']",
    "[domain-name:value IN ('a.example', 'b\\'.example', 5, true)]",
    "[ipv4-addr:value NOT = 'a' AND NOT ipv4-addr:value EXISTS]",
    "[email-message:body_multipart[*].body_raw_ref.name MATCHES '^Final.+\\\\.exe$']",
    "[x-list:items[0].b[-1] LIKE 'a%' OR x-list:n <= 5 OR x-list:f > -1.5]",
    "[xb:yb = 'b'] OR [x-b:c = 'h']",
    # Not patterns: the same error from both.
    "[ipv4-addr:value = 'unterminated]",
    "[ipv4-addr:value = 'bad \\escape']",
    "[ipv4-addr:value = 'a'b'c']",
    "[ipv4-addr:value = 'a' AND]",
    "ipv4-addr:value = 'a'",
    "[ipv4-addr:value = 1b'dGVzdA==']",
    "[ipv4-addr:value = 'a\x00b']",
    "",
]


def _outcome(parse: Any, pattern: str) -> tuple[str, Any]:
    try:
        return "tree", parse(pattern)
    except PatternSyntaxError as exc:
        return "error", str(exc)


def _assert_same_answer(pattern: str) -> None:
    direct = _outcome(parse_pattern_uncached, pattern)
    for _ in range(2):  # the second time from the cache
        assert _outcome(parse_pattern, pattern) == direct, pattern
        if direct[0] == "tree":
            assert pattern_indicators(pattern) == indicated(direct[1]), pattern
        else:
            with pytest.raises(PatternSyntaxError):
                pattern_indicators(pattern)


@pytest.mark.parametrize("pattern", HAND_PATTERNS)
def test_the_shape_cache_gives_the_parsers_answer(pattern: str) -> None:
    _assert_same_answer(pattern)


def test_the_shape_tree_keeps_and_apart_from_or_and_decodes_literals() -> None:
    found, reasons = pattern_indicators(
        "[domain-name:value = 'it\\'s.example' OR url:value = 'http://x.example/a\\\\b']"
    )
    assert found == [
        (T.DOMAIN, "it's.example", MatchKind.EXACT),
        (T.URL, "http://x.example/a\\b", MatchKind.EXACT),
    ]
    assert reasons == ()
    assert pattern_indicators("[ipv4-addr:value = 'a' AND domain-name:value = 'b']")[1] == (
        "AND of 2 comparisons (domain-name:value, ipv4-addr:value)",
    )


_LITERAL_CHARS = st.sampled_from([*"ab.'\\ []()=:-0bht", "OR", "AND", "\x00", "é"])
_literal = st.lists(_LITERAL_CHARS, max_size=6).map(
    lambda parts: "'" + "".join(parts).replace("\\", "\\\\").replace("'", "\\'") + "'"
)
_property = st.sampled_from(
    [
        "ipv4-addr:value",
        "domain-name:value",
        "file:hashes.'SHA-256'",
        "file:hashes.MD5",
        "file:name",
        "x-b:a[*].b",
        "file:hashes.'a\\'b'",
        "file:'hashes'.MD5",
    ]
)
_operator = st.sampled_from([" = ", " != ", " MATCHES ", " ISSUBSET ", " LIKE ", " NOT = ", "="])
_comparison = st.one_of(
    st.builds(lambda p, o, v: p + o + v, _property, _operator, _literal),
    st.builds(lambda p, vs: f"{p} IN ({', '.join(vs)})", _property, st.lists(_literal, min_size=1)),
    st.builds(lambda p, v: f"{p} = {v}", _property, st.sampled_from(["5", "b'dGVzdA=='", "h'ab'"])),
)


def _joined(inner: st.SearchStrategy[str], operators: list[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, op, b: a + op + b, inner, st.sampled_from(operators), inner)


def _more_comparisons(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(_joined(inner, [" AND ", " OR "]), inner.map(lambda c: f"({c})"))


def _more_observations(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        _joined(inner, [" AND ", " OR ", " FOLLOWEDBY "]),
        inner.map(lambda o: f"({o})"),
        inner.map(lambda o: f"{o} WITHIN 5 SECONDS"),
    )


# Named functions, not lambdas: hypothesis reads a lambda's source to check that it recurses,
# and cannot when the lambda spans several lines.
_comparisons = st.recursive(_comparison, _more_comparisons, max_leaves=4)
_observations = st.recursive(_comparisons.map(lambda c: f"[{c}]"), _more_observations, max_leaves=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _observations,
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(["", "", "'", "\\", "b", "t", ".", "]", " ", "x'"]),
)
def test_the_shape_cache_gives_the_parsers_answer_on_generated_patterns(
    pattern: str, where: int, insert: str
) -> None:
    """Valid patterns with awkward literals, and the same with a character slipped in."""
    at = where % (len(pattern) + 1)
    _assert_same_answer(pattern[:at] + insert + pattern[at:])


# -- what a pattern gives -------------------------------------------------------------------------


def test_or_patterns_give_a_record_per_comparison() -> None:
    pattern = (
        "[ipv4-addr:value = '203.0.113.1' OR domain-name:value = 'evil.example'] "
        "OR [url:value = 'http://evil.example/x'] "
        "OR [email-addr:value IN ('a@evil.example', 'b@evil.example')]"
    )
    parsed = parse_bundle(_bundle(_indicator(pattern)))
    assert [(r.type, r.value) for r in parsed.records] == [
        (T.IPV4, "203.0.113.1"),
        (T.DOMAIN, "evil.example"),
        (T.URL, "http://evil.example/x"),
        (T.EMAIL, "a@evil.example"),
        (T.EMAIL, "b@evil.example"),
    ]
    assert {r.origin for r in parsed.records} == {_id("indicator", 1)}
    assert parsed.unsupported == []

    # An OR keeps its supported branches and lists the rest.
    partial = parse_bundle(
        _bundle(_indicator("[ipv4-addr:value = '1.2.3.4'] OR [email-message:subject = 'x']"))
    )
    assert [r.value for r in partial.records] == ["1.2.3.4"]
    (item,) = partial.unsupported
    assert item.where == _id("indicator", 1)
    assert item.reason == (
        "email-message:subject is not a kind of indicator Quell matches "
        "(the rest of the pattern was imported)"
    )


def test_a_file_hash_with_other_file_conditions_gives_the_hash() -> None:
    parsed = parse_bundle(
        _bundle(
            _indicator(f"[file:hashes.'SHA-256' = '{SHA256}' AND file:name = 'y.exe']", 1),
            _indicator(f"[file:hashes.md5 = '{'a' * 32}' AND file:hashes.SHA1 = '{'b' * 40}']", 2),
            _indicator(f"[file:hashes.'sha-256' = '{SHA256}' AND ipv4-addr:value = '1.2.3.4']", 3),
        )
    )
    assert [(r.type, r.origin) for r in parsed.records] == [
        (T.SHA256, _id("indicator", 1)),
        (T.MD5, _id("indicator", 2)),
        (T.SHA1, _id("indicator", 2)),
    ]
    (item,) = parsed.unsupported  # an AND across objects is a correlation, not a value
    assert item.where == _id("indicator", 3)
    assert item.reason.startswith("AND of 2 comparisons")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (
            "[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '1.2.3.5']",
            "AND of 2 comparisons (ipv4-addr:value)",
        ),
        (
            "[ipv4-addr:value = '1.2.3.4'] AND [domain-name:value = 'a.example']",
            "AND of 2 observations",
        ),
        ("[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [url:value = 'x']", "FOLLOWEDBY of 2"),
        ("[ipv4-addr:value = '1.2.3.4'] WITHIN 300 SECONDS", "qualifier WITHIN 300 SECONDS"),
        ("[ipv4-addr:value = '1.2.3.4'] REPEATS 5 TIMES", "qualifier REPEATS 5 TIMES"),
        (
            "[ipv4-addr:value = '1.2.3.4'] START t'2016-01-01T00:00:00Z' "
            "STOP t'2016-02-01T00:00:00Z'",
            "qualifier START t'2016-01-01T00:00:00Z' STOP",
        ),
        ("[ipv4-addr:value != '1.2.3.4']", "comparator != on ipv4-addr:value"),
        ("[ipv4-addr:value NOT = '1.2.3.4']", "NOT = on ipv4-addr:value"),
        ("[domain-name:value LIKE '%.evil.example']", "comparator LIKE on domain-name:value"),
        ("[domain-name:value ISSUBSET 'evil.example']", "comparator ISSUBSET on domain-name"),
        ("[ipv4-addr:value ISSUPERSET '10.0.0.1']", "comparator ISSUPERSET on ipv4-addr:value"),
        ("[email-message:subject MATCHES '^Hi']", "comparator MATCHES on email-message:subject"),
        ("[file:name = 'evil.exe']", "file:name is not a kind of indicator Quell matches"),
        ("[file:hashes.'SHA-512' = 'ab']", "file:hashes.'SHA-512' is not a kind"),
        ("[ipv4-addr:value = 5]", "a value that is not a string for ipv4-addr:value"),
        ("[EXISTS ipv4-addr:value]", "comparator EXISTS on ipv4-addr:value"),
    ],
)
def test_what_cannot_be_matched_is_listed_with_the_reason(pattern: str, reason: str) -> None:
    parsed = parse_bundle(_bundle(_indicator(pattern, 7)))
    assert parsed.records == []
    (item,) = parsed.unsupported
    assert item.where == _id("indicator", 7)
    assert reason in item.reason
    assert item.text == pattern


def test_other_pattern_languages_and_other_objects() -> None:
    yara = _indicator("rule x { condition: true }", 1, pattern_type="yara")
    scos = [
        {"type": "ipv4-addr", "id": _id("ipv4-addr", 2), "value": "198.51.100.3"},
        {"type": "domain-name", "id": _id("domain-name", 3), "value": "example.com"},
        {"type": "malware", "id": _id("malware", 4), "name": "x", "is_family": False},
    ]
    parsed = parse_bundle(_bundle(yara, *scos))
    assert parsed.records == []
    (item,) = parsed.unsupported
    assert (item.where, item.reason) == (
        _id("indicator", 1),
        "pattern_type 'yara': only STIX patterns are read",
    )


# -- malformed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"type": "bundle", "objects": [}', r"feed\.json is not JSON: .* line 1 column 32"),
        (b'"text"', r"not a STIX bundle: the JSON is a string, not an object"),
        (b'{"type": "campaign", "id": "x--1"}', r"type 'campaign', not 'bundle', and no STIX id"),
        (b"[1]", r"objects\[0\] is a number, not a STIX object"),
        (b'{"id": "bundle--1"}', r"it has no type"),
        (b'{"type": "bundle", "objects": {}}', r"objects are an object, not a list"),
        (b'{"type": "bundle", "objects": [1]}', r"objects\[0\] is a number, not a STIX object"),
        (
            b'{"type": "bundle", "objects": [{"type": "campaign", "id": "campaign--1"}, '
            b'{"id": "x--1"}]}',
            r"feed\.json: objects\[1\] has no type",
        ),
        (b'{"type": "bundle", "objects": [{"type": "indicator"}]}', r"\(indicator\) has no id"),
    ],
)
def test_a_malformed_bundle_is_refused_with_what_and_where(data: bytes, message: str) -> None:
    with pytest.raises(IntelError, match=message):
        parse_bundle(data, origin="feed.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pattern": None}, "an indicator without a pattern$"),
        ({"pattern_type": None}, "an indicator without a pattern_type"),
        ({"valid_from": "yesterday"}, "valid_from 'yesterday' is not a timestamp"),
        ({"valid_until": 5}, "valid_until 5 is not a timestamp"),
        # Valid text, but outside what a time can be once in UTC: refused, not a crash.
        (
            {"valid_until": "9999-12-31T23:59:59-01:00"},
            "valid_until '9999-12-31T23:59:59-01:00' is not a timestamp",
        ),
        ({"valid_from": "0001-01-01T00:00:00+01:00"}, "valid_from '0001-01-01T00:00:00\\+01:00'"),
        ({"confidence": 101}, "confidence 101 is not an integer from 0 to 100"),
        ({"confidence": "high"}, "confidence 'high' is not an integer"),
    ],
)
def test_a_malformed_indicator_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    good = _indicator("[ipv4-addr:value = '1.2.3.4']", 1)
    merged = {**good, **change, "id": _id("indicator", 2)}
    bad = {key: value for key, value in merged.items() if value is not None}
    with pytest.raises(IntelError, match=message) as caught:
        parse_bundle(_bundle(good, bad), origin="feed.json")
    assert f"feed.json: objects[1] ({_id('indicator', 2)})" in caught.value.message


def test_a_broken_pattern_refuses_the_bundle_and_leaves_the_store(
    database: Database, clock: ManualClock
) -> None:
    store = IntelStore(database, clock)
    first = _indicator("[ipv4-addr:value = '198.51.100.1']", 1)
    store.apply("feed", parse_bundle(_bundle(first)))
    before = store.counts()
    broken = _indicator("[ipv4-addr:value = '198.51.100.2' AND]", 2)
    fresh = _indicator("[domain-name:value = 'new.example']", 3)
    with pytest.raises(IntelError) as caught:
        store.apply("feed", parse_bundle(_bundle(fresh, broken, first)))
    assert caught.value.message.startswith(
        f"bundle: objects[1] ({_id('indicator', 2)}): the pattern does not parse (1:"
    )
    assert "no viable alternative at input ']'" in caught.value.message
    assert caught.value.details["indicator"] == _id("indicator", 2)
    assert store.counts() == before
    assert store.lookup("domain", "new.example") == []


# -- the fields of a record ----------------------------------------------------------------------


def test_tlp_markings_of_both_versions_and_the_highest_wins() -> None:
    custom2 = _id("marking-definition", 90)
    custom1 = _id("marking-definition", 91)
    statement = _id("marking-definition", 92)
    markings = [
        {
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": custom2,
            "created": "2022-10-01T00:00:00.000Z",
            "name": "TLP:RED",
            "extensions": {
                TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": "red"}
            },
        },
        {
            "type": "marking-definition",
            "id": custom1,
            "definition_type": "tlp",
            "definition": {"tlp": "amber"},
        },
        {
            "type": "marking-definition",
            "id": statement,
            "definition_type": "statement",
            "definition": {"statement": "Copyright"},
        },
    ]
    cases = {
        1: ([WHITE], Tlp.CLEAR),
        2: ([GREEN], Tlp.GREEN),
        3: ([AMBER], Tlp.AMBER),
        4: ([RED], Tlp.RED),
        5: ([AMBER_STRICT_2], Tlp.AMBER_STRICT),
        6: ([custom2], Tlp.RED),
        7: ([custom1], Tlp.AMBER),
        8: ([GREEN, statement, AMBER_STRICT_2, WHITE], Tlp.AMBER_STRICT),
        9: ([statement], Tlp.GREEN),  # not a TLP marking: the default
        10: ([], Tlp.GREEN),
    }
    indicators = [
        _indicator(f"[ipv4-addr:value = '192.0.2.{n}']", n, object_marking_refs=refs)
        for n, (refs, _) in cases.items()
    ]
    parsed = parse_bundle(_bundle(*indicators, *markings), default_tlp=Tlp.GREEN)
    assert [r.tlp for r in parsed.records] == [tlp for _, tlp in cases.values()]


def test_indicator_fields_relationships_versions_and_sightings(
    database: Database, clock: ManualClock
) -> None:
    malware = _id("malware", 50)
    indicator = _indicator(
        "[domain-name:value = 'c2.evil.example']",
        1,
        name="C2 domain",
        confidence=85,
        labels=["c2", "emotet", "c2"],
        kill_chain_phases=[
            {"kill_chain_name": "mitre-attack", "phase_name": "command-and-control"},
            {"kill_chain_name": "lockheed-martin-cyber-kill-chain", "phase_name": "c2"},
        ],
        valid_from="2025-06-02T10:00:00.5Z",
        valid_until="2026-06-01T00:00:00Z",
        modified="2025-07-01T00:00:00.000Z",
    )
    older = {**indicator, "modified": "2025-06-01T00:00:00.000Z", "confidence": 10}
    relationship = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": _id("relationship", 60),
        "relationship_type": "indicates",
        "source_ref": indicator["id"],
        "target_ref": malware,
    }
    related = {**relationship, "id": _id("relationship", 61), "relationship_type": "related-to"}
    sightings = [
        {
            "type": "sighting",
            "spec_version": "2.1",
            "id": _id("sighting", 70),
            "created": "2025-08-01T00:00:00.000Z",
            "sighting_of_ref": indicator["id"],
            "first_seen": "2025-08-01T00:00:00Z",
            "last_seen": "2025-08-03T00:00:00Z",
            "where_sighted_refs": [_id("identity", 80), _id("identity", 81)],
        },
        {
            "type": "sighting",
            "id": _id("sighting", 71),
            "created": "2025-08-05T00:00:00.000Z",
            "sighting_of_ref": indicator["id"],
        },
        {  # of an indicator not in the bundle: nothing to attach it to
            "type": "sighting",
            "id": _id("sighting", 72),
            "created": "2025-08-05T00:00:00.000Z",
            "sighting_of_ref": _id("indicator", 99),
        },
    ]
    data = _bundle(indicator, relationship, related, *sightings, older)
    (record,) = parse_bundle(data).records
    assert record == IndicatorRecord(
        T.DOMAIN,
        "c2.evil.example",
        MatchKind.EXACT,
        confidence=85,
        severity_id=None,
        tlp=Tlp.CLEAR,
        first_seen=datetime(2025, 6, 2, 10, 0, 0, 500000, tzinfo=UTC),
        last_seen=datetime(2025, 8, 5, tzinfo=UTC),
        valid_until=datetime(2026, 6, 1, tzinfo=UTC),
        revoked=False,
        tags=("c2", "emotet"),
        kill_chain=("mitre-attack:command-and-control", "lockheed-martin-cyber-kill-chain:c2"),
        stix_ids=(indicator["id"], malware),
        description="C2 domain",
        origin=indicator["id"],
    )
    assert parse_bundle(data).sightings == [
        (
            "dn:c2.evil.example",
            datetime(2025, 8, 3, tzinfo=UTC),
            f"{_id('identity', 80)},{_id('identity', 81)}",
        ),
        ("dn:c2.evil.example", datetime(2025, 8, 5, tzinfo=UTC), None),
    ]

    store = IntelStore(database, clock)
    report = store.apply("feed", parse_bundle(data))
    assert (report.added, report.sightings) == (1, 2)
    again = store.apply("feed", parse_bundle(data))
    assert (again.unchanged, again.sightings) == (1, 0)
    (row,) = store.search(source="feed")
    assert [s["reported_by"] for s in store.sightings_of(row["id"])] == [
        "feed",
        f"{_id('identity', 80)},{_id('identity', 81)}",
    ]


def test_revoked_and_expired_indicators_are_kept_and_never_match(
    database: Database, clock: ManualClock
) -> None:
    store = IntelStore(database, clock)
    data = _bundle(
        _indicator("[ipv4-addr:value = '192.0.2.1']", 1, revoked=True),
        _indicator("[ipv4-addr:value = '192.0.2.2']", 2, valid_until="2025-12-31T00:00:00Z"),
        _indicator("[ipv4-addr:value = '192.0.2.3']", 3, valid_until="2026-12-31T00:00:00Z"),
    )
    assert _counts(store.apply("feed", parse_bundle(data))) == (1, 0, 0, 2, 0)
    assert store.lookup("ipv4", "192.0.2.1") == []
    assert store.lookup("ipv4", "192.0.2.2") == []
    assert len(store.lookup("ipv4", "192.0.2.2", include_expired=True)) == 1
    assert len(store.lookup("ipv4", "192.0.2.3")) == 1


def test_an_older_version_imported_after_the_revoked_one_does_not_revive_it(
    database: Database, clock: ManualClock
) -> None:
    # STIX 2.1 3.6: a revoked object has no later version, so one that is not revoked is
    # older: an old bundle imported again (or a feed replaying history) leaves it revoked.
    store = IntelStore(database, clock)
    pattern = "[ipv4-addr:value = '192.0.2.9']"
    revoked = _indicator(pattern, 1, modified="2025-07-01T00:00:00.000Z", revoked=True)
    older = _indicator(pattern, 1, confidence=90)
    assert _counts(store.apply("feed", parse_bundle(_bundle(revoked)))) == (0, 0, 0, 1, 0)
    assert _counts(store.apply("feed", parse_bundle(_bundle(older)))) == (0, 0, 0, 1, 0)
    assert store.lookup("ipv4", "192.0.2.9") == []
    assert _rows(store, "feed")["ip:192.0.2.9"]["revoked"] is True
    # Another object (another id) saying the same value is a new word on it.
    other = _indicator(pattern, 2, confidence=90)
    assert _counts(store.apply("feed", parse_bundle(_bundle(other)))) == (0, 1, 0, 0, 0)
    assert len(store.lookup("ipv4", "192.0.2.9")) == 1


def test_issubset_ranges_match_the_addresses_inside(database: Database, clock: ManualClock) -> None:
    store = IntelStore(database, clock)
    data = _bundle(
        _indicator("[ipv4-addr:value ISSUBSET '198.51.100.0/24']", 1),
        _indicator(
            "[ipv6-addr:value ISSUBSET '2001:db8::/32'] OR [ipv4-addr:value = '10.1.2.3/32']", 2
        ),
    )
    report = store.apply("feed", parse_bundle(data))
    assert report.added == 3
    assert set(_rows(store, "feed")) == {"net:198.51.100.0/24", "net:2001:db8::/32", "ip:10.1.2.3"}
    assert [h.value for h in store.lookup("ipv4", "198.51.100.77")] == ["198.51.100.0/24"]
    assert store.lookup("ipv4", "198.51.101.1") == []
    assert [h.match for h in store.lookup("ipv6", "2001:db8:1::5")] == ["cidr"]
    assert len(store.lookup("ipv4", "10.1.2.3")) == 1


def test_a_domain_marked_subdomain_matches_below_it() -> None:
    (record,) = parse_bundle(
        _bundle(_indicator("[domain-name:value = 'evil.example']", 1, x_quell_match="subdomain"))
    ).records
    assert record.match is MatchKind.SUBDOMAIN


# -- export --------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_STIX_ID = re.compile(
    r"([a-z0-9-]+)--[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)
_REQUIRED = {  # STIX 2.1 required properties, beyond type and id
    "identity": {"spec_version", "created", "modified", "name"},
    "indicator": {"spec_version", "created", "modified", "pattern", "pattern_type", "valid_from"},
    "relationship": {
        "spec_version",
        "created",
        "modified",
        "relationship_type",
        "source_ref",
        "target_ref",
    },
    "sighting": {"spec_version", "created", "modified", "sighting_of_ref"},
    "marking-definition": {"spec_version", "created"},
}
_PREDEFINED = {WHITE, GREEN, AMBER, RED}


def _check_stix(bundle: dict[str, Any]) -> None:
    """What the STIX 2.1 specification requires of the objects the exporter writes."""
    assert bundle["type"] == "bundle"
    assert _STIX_ID.fullmatch(bundle["id"])
    objects = bundle["objects"]
    ids = {obj["id"] for obj in objects}
    assert len(ids) == len(objects)
    for obj in objects:
        match = _STIX_ID.fullmatch(obj["id"])
        assert match is not None, obj["id"]
        assert match.group(1) == obj["type"], obj["id"]
        assert _REQUIRED[obj["type"]] <= obj.keys(), obj
        assert obj["spec_version"] == "2.1"
        for name in ("created", "modified"):
            if name in obj:  # exactly milliseconds
                assert re.fullmatch(r".*T\d\d:\d\d:\d\d\.\d{3}Z", obj[name]), obj[name]
        if "modified" in obj:
            assert obj["modified"] >= obj["created"]
        for name in ("valid_from", "valid_until", "first_seen", "last_seen"):
            if name in obj:
                assert _TIMESTAMP.fullmatch(obj[name]), obj[name]
        # What an object is about is in the bundle; target_ref and where_sighted_refs may not be.
        refs = [obj.get("created_by_ref"), *obj.get("object_marking_refs", [])]
        refs += [obj.get("sighting_of_ref"), obj.get("source_ref")]
        for ref in filter(None, refs):
            assert ref in ids or ref in _PREDEFINED, ref
        if obj["type"] == "indicator":
            assert obj["pattern_type"] == "stix"
            Pattern(obj["pattern"])  # parses
            assert run_validator(obj["pattern"], stix_version="2.1") == [], obj["pattern"]
            if "valid_until" in obj:
                assert _parse_time(obj["valid_until"]) > _parse_time(obj["valid_from"])
            assert 0 <= obj.get("confidence", 0) <= 100
        if obj["type"] == "sighting":
            assert obj["last_seen"] >= obj["first_seen"]
            assert obj["count"] >= 0


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _store_for_export(store: IntelStore, clock: ManualClock) -> None:
    now = clock.now()
    records = [
        IndicatorRecord(T.IPV4, "203.0.113.7", confidence=90, tlp=Tlp.RED, tags=("c2",)),
        IndicatorRecord(T.IPV4, "198.51.100.0/24", tlp=Tlp.AMBER_STRICT),
        IndicatorRecord(T.IPV6, "2001:db8::/32", tlp=Tlp.GREEN),
        IndicatorRecord(T.IPV6, "2001:db8::1", tlp=Tlp.AMBER),
        IndicatorRecord(T.DOMAIN, "evil.example", match=MatchKind.SUBDOMAIN),
        IndicatorRecord(T.DOMAIN, "exact.example", description="it's a \\ test"),
        IndicatorRecord(T.URL, "http://bad.example/it's\\x?q='1'"),
        IndicatorRecord(T.EMAIL, "phisher@mail.example", revoked=True),
        IndicatorRecord(T.MD5, "0" * 32, valid_until=now - timedelta(days=1)),
        IndicatorRecord(T.SHA1, "1" * 40, first_seen=now - timedelta(days=3)),
        IndicatorRecord(
            T.SHA256,
            SHA256,
            first_seen=now - timedelta(days=10),
            valid_until=now + timedelta(days=10),
            kill_chain=("mitre-attack:execution", "lockheed:delivery"),
            stix_ids=(_id("indicator", 1), _id("malware", 2), _id("campaign", 3)),
        ),
    ]
    parsed = Parsed(records=records)
    parsed.sightings.append(("dn:exact.example", now - timedelta(hours=5), _id("identity", 9)))
    parsed.sightings.append(("ip:203.0.113.7", now - timedelta(hours=4), None))
    report = store.apply("feed-a", parsed)
    assert report.added + report.expired == len(records)
    rows = _rows(store, "feed-a")
    clock.advance(timedelta(minutes=1))
    store.record_sightings([(rows[f"sha256:{SHA256}"]["id"], SHA256, "alert-1")])


def test_export_is_valid_stix_and_round_trips_through_the_store(
    database: Database, clock: ManualClock
) -> None:
    store = IntelStore(database, clock)
    _store_for_export(store, clock)
    bundle = export_bundle(store, source="feed-a")
    _check_stix(bundle)
    kinds = [obj["type"] for obj in bundle["objects"]]
    assert kinds.count("indicator") == 11
    assert kinds.count("relationship") == 2  # to the malware and the campaign
    assert kinds.count("sighting") == 3
    assert kinds.count("marking-definition") == 1  # TLP 2.0 amber+strict
    patterns = {obj["pattern"] for obj in bundle["objects"] if obj["type"] == "indicator"}
    assert "[ipv4-addr:value ISSUBSET '198.51.100.0/24']" in patterns
    assert "[url:value = 'http://bad.example/it\\'s\\\\x?q=\\'1\\'']" in patterns
    assert "[file:hashes.'SHA-256' = '" + SHA256 + "']" in patterns
    (subdomain,) = [o for o in bundle["objects"] if o.get("x_quell_match") == "subdomain"]
    assert subdomain["pattern"] == "[domain-name:value = 'evil.example']"

    # Back in, under another source: the same indicators, the same way.
    report = store.apply("feed-b", parse_bundle(orjson.dumps(bundle)))
    assert (report.added, report.expired, report.unsupported) == (9, 2, 0)
    assert report.sightings == 3
    a, b = _rows(store, "feed-a"), _rows(store, "feed-b")
    assert set(a) == set(b)
    fields = ("type", "match", "value", "confidence", "tlp", "revoked", "tags", "valid_until")
    for key in a:
        assert [a[key][f] for f in fields] == [b[key][f] for f in fields], key
    sha = b[f"sha256:{SHA256}"]
    assert sha["kill_chain"] == ["mitre-attack:execution", "lockheed:delivery"]
    assert sha["stix_ids"][1:] == sorted([_id("malware", 2), _id("campaign", 3)])
    assert sha["first_seen"] == a[f"sha256:{SHA256}"]["first_seen"]
    assert b["dn:exact.example"]["description"] == "it's a \\ test"

    # Exporting again gives the same objects (only the bundle's own id is new).
    again = export_bundle(store, source="feed-a")
    assert again["objects"] == bundle["objects"]
    assert again["id"] != bundle["id"]
    streamed = orjson.loads(b"".join(iter_bundle_json(store, source="feed-a")))
    assert streamed["objects"] == bundle["objects"]

    everything = export_bundle(store, include_sightings=False, identity_name="SOC")
    _check_stix(everything)
    indicators = [o for o in everything["objects"] if o["type"] == "indicator"]
    assert len(indicators) == 22
    assert {o["x_quell_source"] for o in indicators} == {"feed-a", "feed-b"}
    assert not [o for o in everything["objects"] if o["type"] == "sighting"]
    (identity,) = [o for o in everything["objects"] if o["type"] == "identity"]
    assert identity["name"] == "SOC"


@pytest.mark.parametrize(
    ("kind", "match", "value", "pattern"),
    [
        (T.IPV4, MatchKind.EXACT, "1.2.3.4", "[ipv4-addr:value = '1.2.3.4']"),
        (T.IPV6, MatchKind.CIDR, "2001:db8::/32", "[ipv6-addr:value ISSUBSET '2001:db8::/32']"),
        (T.DOMAIN, MatchKind.SUBDOMAIN, "a.example", "[domain-name:value = 'a.example']"),
        (T.URL, MatchKind.EXACT, "http://x/'\\", "[url:value = 'http://x/\\'\\\\']"),
        (T.MD5, MatchKind.EXACT, "a" * 32, f"[file:hashes.'MD5' = '{'a' * 32}']"),
        (T.SHA1, MatchKind.EXACT, "b" * 40, f"[file:hashes.'SHA-1' = '{'b' * 40}']"),
    ],
)
def test_export_patterns_parse_back_to_their_value(
    kind: IndicatorType, match: MatchKind, value: str, pattern: str
) -> None:
    assert stix_pattern(kind, match, value) == pattern
    found, reasons = indicated(parse_pattern_uncached(pattern))
    expected = MatchKind.EXACT if match is MatchKind.SUBDOMAIN else match
    assert (found, reasons) == ([(kind, value, expected)], ())
