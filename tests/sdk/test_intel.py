"""The enrichment convention: its input checked and normalized per type, its answer bounded,
and every registered enrichment connector keeping it (one idempotent ``lookup`` read, taking
LookupIn and returning LookupOut, for types it names)."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from quell.connectors.registry import Registry
from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Enrichment,
    LookupIn,
    LookupOut,
    PermanentError,
    RiskLevel,
    action,
    verdict_for_score,
)
from quell.sdk.intel import MAX_VALUE, bounded, check_enrichment, clamp_score
from quell.sdk.testing import Harness

ENRICHMENT = sorted(
    name
    for name, connector in Registry.discover().connectors.items()
    if issubclass(connector, Enrichment)
)


@pytest.mark.parametrize(
    ("kind", "given", "kept"),
    [
        ("ipv4", " 203.0.113.7 ", "203.0.113.7"),
        ("ipv6", "2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("domain", "Evil.Example.", "evil.example"),
        ("domain", "xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("url", " ftp://files.evil.example/x ", "ftp://files.evil.example/x"),
        ("url", "http://evil.example/a%20b?q=1#f", "http://evil.example/a%20b?q=1#f"),
        ("md5", "D41D8CD98F00B204E9800998ECF8427E", "d41d8cd98f00b204e9800998ecf8427e"),
        ("sha1", "a" * 40, "a" * 40),
        ("sha256", "B" * 64, "b" * 64),
    ],
)
def test_values_are_normalized_for_their_type(kind: str, given: str, kept: str) -> None:
    assert LookupIn.model_validate({"type": kind, "value": given}).value == kept


@pytest.mark.parametrize(
    ("kind", "given"),
    [
        ("ipv4", "2001:db8::1"),
        ("ipv4", "203.0.113.7/32"),
        ("ipv6", "203.0.113.7"),
        ("ipv6", "fe80::1%eth0"),
        ("domain", "localhost"),
        ("domain", "evil.example/../../users"),
        ("domain", "-evil.example"),
        ("url", "evil.example/path"),
        ("url", "http://evil.example/a b"),
        ("url", "http://evil.example/\x00"),
        ("md5", "a" * 31),
        ("sha1", "g" * 40),
        ("sha256", "a" * 40),
        ("email", "a@b.example"),
        ("url", "http://x.example/" + "a" * MAX_VALUE),
    ],
)
def test_values_that_are_not_of_their_type_are_refused(kind: str, given: str) -> None:
    with pytest.raises(ValidationError):
        LookupIn.model_validate({"type": kind, "value": given})


def test_the_answer_is_bounded_and_one_line() -> None:
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    out = LookupOut(
        source="x",
        type="ipv4",
        value="203.0.113.7",
        found=True,
        verdict="malicious",
        score=90,
        summary="two\nlines   and\tspaces",
        details={
            "text": "x" * 10_000,
            "items": list(range(100)),
            "deep": deep,
            "keys": {str(n): n for n in range(100)},
        },
    )
    assert out.summary == "two lines and spaces"
    assert len(out.details["text"]) == 500
    assert out.details["items"] == list(range(20))
    assert out.details["deep"] == {"a": {"b": {"c": None}}}
    assert len(out.details["keys"]) == 40
    assert out.observed_at.tzinfo is UTC
    with pytest.raises(ValidationError):
        out.model_validate({**out.model_dump(), "score": 101})
    assert bounded({"when": out.observed_at})["when"] == str(out.observed_at)


def test_scores_and_verdicts() -> None:
    assert [verdict_for_score(s, suspicious=25, malicious=75) for s in (0, 24, 25, 74, 75)] == [
        "info", "info", "suspicious", "suspicious", "malicious",
    ]  # fmt: skip
    assert [clamp_score(v) for v in (-3, 0.4, 49.5, 100.2, 250)] == [0, 0, 50, 100, 100]


class Toy(Enrichment):
    """Knows one address."""

    name = "toy"
    lookup_types: ClassVar[frozenset[str]] = frozenset({"ipv4"})

    @action("lookup", risk=RiskLevel.READ, idempotent=True)
    async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
        """Answers for 203.0.113.7 only."""
        self.require_type(params)
        if params.value != "203.0.113.7":
            return self.not_found(params, "Toy: never heard of it")
        return self.answer(params, verdict="suspicious", score=50, summary="Toy: that one")


class Loose(Enrichment):
    """Breaks the convention."""

    name = "loose"
    lookup_types: ClassVar[frozenset[str]] = frozenset({"ipv4", "mac"})

    @action("lookup", risk=RiskLevel.LOW)
    async def lookup(self, ctx: ActionContext, params: ActionInput) -> ActionOutput:
        """Not a LookupIn."""
        return ActionOutput()

    @action("block", risk=RiskLevel.HIGH)
    async def block(self, ctx: ActionContext, params: ActionInput) -> ActionOutput:
        """A write."""
        return ActionOutput()


def test_the_base_answers_and_refuses_types() -> None:
    async def calls() -> tuple[dict[str, Any], dict[str, Any], PermanentError]:
        async with Harness(Toy) as harness:
            known = await harness.call("lookup", {"type": "ipv4", "value": "203.0.113.7"})
            unknown = await harness.call("lookup", {"type": "ipv4", "value": "203.0.113.8"})
            with pytest.raises(PermanentError, match="toy: cannot look up url values") as refused:
                await harness.call("lookup", {"type": "url", "value": "http://a.example/"})
        return known, unknown, refused.value

    known, unknown, refused = asyncio.run(calls())
    assert (known["source"], known["found"], known["verdict"], known["score"]) == (
        "toy", True, "suspicious", 50,
    )  # fmt: skip
    assert (unknown["found"], unknown["verdict"], unknown["score"]) == (False, "info", 0)
    assert refused.code == "unsupported_type"
    assert refused.details == {"type": "url"}


def test_check_enrichment_names_what_is_broken() -> None:
    assert check_enrichment(Toy) == []
    problems = check_enrichment(Loose)
    assert "loose: lookup_types names unknown types ['mac']" in problems
    assert "loose: has actions ['block', 'lookup'], not just lookup" in problems
    assert "loose.lookup: not an idempotent read" in problems
    assert "loose.lookup: does not take LookupIn and return LookupOut" in problems
    assert check_enrichment(Harness) == ["?: not an Enrichment connector"]  # type: ignore[arg-type]


def test_the_built_in_enrichment_connectors_are_registered() -> None:
    assert {"virustotal", "abuseipdb", "urlhaus", "greynoise"} <= set(ENRICHMENT)


@pytest.mark.parametrize("name", ENRICHMENT)
def test_every_enrichment_connector_keeps_the_convention(name: str) -> None:
    assert check_enrichment(Registry.discover().connectors[name]) == []
