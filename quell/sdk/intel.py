"""Threat-intel enrichment: one question, asked of many sources, answered in one shape.

An enrichment connector subclasses :class:`Enrichment`, lists the value types it can look up in
``lookup_types``, and declares exactly one action, ``lookup`` (risk ``read``, idempotent), taking
:class:`LookupIn` and returning :class:`LookupOut`::

    class Intel(Enrichment):
        name = "intel"
        lookup_types = frozenset({"ipv4", "domain"})

        @action("lookup", risk=RiskLevel.READ, idempotent=True, title="Look up a value")
        async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
            self.require_type(params)
            ...
            return self.answer(params, verdict="malicious", score=90, summary="...")

Every source answers alike, so a playbook can ask several and compare:

- ``found``: the source knows the value at all. A value it does not know is an answer
  (:meth:`Enrichment.not_found`: ``found`` false, verdict ``info``, score 0), never an error.
- ``verdict``: ``malicious``, ``suspicious``, ``safe`` (the source vouches for the value) or
  ``info`` (nothing either way); ``score``: 0 to 100, how bad.
- ``summary``: one line for a person; ``details``: a small subset of the source's answer,
  bounded (:func:`bounded`) whatever the connector puts there; ``link``: the source's own page
  about the value; ``observed_at``: when the answer was read (UTC).

Inputs are checked and normalized for their type before any connector sees them (addresses in
their canonical form, domains and hashes in lower case), so a value can go into a vendor's URL
path as it is. A type the connector cannot look up is a :class:`PermanentError` naming the type
(code ``unsupported_type``). :func:`check_enrichment` says what a connector breaks of this
convention.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from quell.sdk.actions import (
    ActionInput,
    ActionOutput,
    Connector,
    RiskLevel,
    action_meta,
    signature_models,
)
from quell.sdk.errors import PermanentError

IntelType = Literal["ipv4", "ipv6", "domain", "url", "md5", "sha1", "sha256"]
Verdict = Literal["info", "safe", "suspicious", "malicious"]
INTEL_TYPES: frozenset[str] = frozenset(get_args(IntelType))

MAX_VALUE = 2048  # characters of a looked-up value
MAX_TEXT = 500  # characters of a string in details (and of the summary)
MAX_ITEMS = 20  # items of a list in details
MAX_KEYS = 40  # keys of a mapping in details
MAX_DEPTH = 4  # nesting of details; deeper values are left out

_HASH_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64}
_HEX = re.compile(r"^[0-9a-f]+$")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s/?#]+\S*$", re.IGNORECASE)


def _normal(kind: str, value: str) -> str:
    """``value`` in its canonical form for ``kind``; ValueError saying why it is not one."""
    text = value.strip()
    if kind in ("ipv4", "ipv6"):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"not an {kind} address") from None
        if f"ipv{address.version}" != kind or getattr(address, "scope_id", None):
            raise ValueError(f"not an {kind} address")
        return address.compressed
    if kind == "domain":
        domain = text.lower().removesuffix(".")
        if not _DOMAIN.match(domain):
            raise ValueError("not a domain name (IDNs in their xn-- form)")
        return domain
    if kind == "url":
        if not (_URL.match(text) and text.isprintable()):
            raise ValueError("not a URL (scheme://host..., without spaces)")
        return text
    digest = text.lower()
    if len(digest) != _HASH_LENGTH[kind] or not _HEX.match(digest):
        raise ValueError(f"not an {kind} hash ({_HASH_LENGTH[kind]} hexadecimal digits)")
    return digest


class LookupIn(ActionInput):
    """A value to look up, and its type."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"type": "ipv4", "value": "203.0.113.7"},
                {"type": "domain", "value": "evil.example"},
                {"type": "url", "value": "http://evil.example/payload.exe"},
                {"type": "sha256", "value": "a" * 64},
            ]
        },
    )

    type: IntelType
    value: str = Field(min_length=1, max_length=MAX_VALUE)

    @field_validator("value")
    @classmethod
    def _normalized(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")
        return _normal(kind, value) if kind is not None else value


def bounded(value: Any, depth: int = 0) -> Any:
    """``value`` cut to size: strings to ``MAX_TEXT`` characters, lists to ``MAX_ITEMS`` items,
    mappings to ``MAX_KEYS`` keys and ``MAX_DEPTH`` levels (deeper ones become None); anything
    but JSON's scalars becomes its (cut) text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_KEYS]
        return {str(key)[:MAX_TEXT]: bounded(item, depth + 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [bounded(item, depth + 1) for item in value[:MAX_ITEMS]]
    return str(value)[:MAX_TEXT]


class LookupOut(ActionOutput):
    """What one source knows about a value."""

    source: str = Field(description="The connector that answered, e.g. virustotal.")
    type: IntelType
    value: str
    found: bool = Field(description="The source knows the value at all.")
    verdict: Verdict
    score: int = Field(ge=0, le=100, description="How bad, 0 to 100.")
    summary: str = Field(description="One line for a person.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="A small, bounded subset of the source's answer."
    )
    link: str | None = Field(None, description="The source's own page about the value.")
    observed_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC), description="When the answer was read (UTC)."
    )

    @field_validator("summary")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())[:MAX_TEXT]

    @field_validator("details")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        cut: dict[str, Any] = bounded(value)
        return cut


def verdict_for_score(score: int, *, suspicious: int, malicious: int) -> Verdict:
    """``malicious`` from ``malicious`` up, ``suspicious`` from ``suspicious`` up, else
    ``info``: a low score from a source that only tracks abuse vouches for nothing."""
    if score >= malicious:
        return "malicious"
    if score >= suspicious:
        return "suspicious"
    return "info"


def clamp_score(value: float) -> int:
    """``value`` rounded into 0..100."""
    return min(100, max(0, round(value)))


class EnrichmentPolicy(BaseModel):
    """How Quell may use an enrichment service: every enrichment connector's config has these
    fields besides its own (``quell.intel.enrich`` reads them)."""

    model_config = ConfigDict(extra="forbid")

    cache_ttl: str = Field(
        "1d",
        pattern=r"^\s*\d+\s*[smhdw]\s*$",
        description="How long an answer is reused (30m, 1d).",
    )
    quota_per_day: int | None = Field(
        None, ge=1, le=100_000_000, description="Lookups allowed per UTC day, all workers together."
    )
    rate: str | None = Field(
        None,
        pattern=r"^\s*(?:0*[1-9]\d*(?:\.\d+)?|0*\.\d*[1-9]\d*)\s*/\s*[smh]\s*$",
        description="Lookups per second, minute or hour (4/m; more than 0), all workers together.",
    )
    tlp_ceiling: Literal["clear", "green", "amber", "amber+strict", "red"] = Field(
        "amber",
        description="Values at this TLP or above are never sent (TLP:RED never is, whatever this "
        "says).",
    )


class Enrichment(Connector):
    """Base of threat-intel enrichment connectors: the types they look up, and the answer's
    shape (see the module's docs)."""

    lookup_types: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def require_type(cls, params: LookupIn) -> None:
        """PermanentError (code ``unsupported_type``) unless the connector looks up the type."""
        if params.type not in cls.lookup_types:
            types = ", ".join(sorted(cls.lookup_types))
            raise PermanentError(
                f"{cls.name}: cannot look up {params.type} values (it looks up {types})",
                code="unsupported_type",
                details={"type": params.type},
            )

    def answer(
        self,
        params: LookupIn,
        *,
        verdict: Verdict,
        score: int,
        summary: str,
        details: dict[str, Any] | None = None,
        link: str | None = None,
    ) -> LookupOut:
        """What the source knows about ``params.value``."""
        return LookupOut(
            source=self.name,
            type=params.type,
            value=params.value,
            found=True,
            verdict=verdict,
            score=score,
            summary=summary,
            details=details or {},
            link=link,
        )

    def not_found(
        self,
        params: LookupIn,
        summary: str,
        *,
        details: dict[str, Any] | None = None,
        link: str | None = None,
    ) -> LookupOut:
        """The source does not know ``params.value``: found false, ``info``, score 0."""
        return LookupOut(
            source=self.name,
            type=params.type,
            value=params.value,
            found=False,
            verdict="info",
            score=0,
            summary=summary,
            details=details or {},
            link=link,
        )


def check_enrichment(connector: type[Connector]) -> list[str]:
    """What an enrichment connector breaks of the convention (an empty list: nothing)."""
    name = getattr(connector, "name", "?")
    if not issubclass(connector, Enrichment):
        return [f"{name}: not an Enrichment connector"]
    problems: list[str] = []
    if not connector.lookup_types:
        problems.append(f"{name}: lookup_types is empty")
    if unknown := connector.lookup_types - INTEL_TYPES:
        problems.append(f"{name}: lookup_types names unknown types {sorted(unknown)}")
    found = [
        (attribute, meta)
        for attribute in dir(connector)
        if (meta := action_meta(getattr(connector, attribute, None))) is not None
    ]
    if [meta.name for _attribute, meta in found] != ["lookup"]:
        problems.append(f"{name}: has actions {[m.name for _a, m in found]}, not just lookup")
    for attribute, meta in found:
        if meta.risk is not RiskLevel.READ or not meta.idempotent:
            problems.append(f"{name}.{meta.name}: not an idempotent read")
        inputs, outputs = signature_models(getattr(connector, attribute))
        if inputs is not LookupIn or outputs is not LookupOut:
            problems.append(f"{name}.{meta.name}: does not take LookupIn and return LookupOut")
    return problems


__all__ = [
    "INTEL_TYPES",
    "MAX_VALUE",
    "Enrichment",
    "EnrichmentPolicy",
    "IntelType",
    "LookupIn",
    "LookupOut",
    "Verdict",
    "bounded",
    "check_enrichment",
    "clamp_score",
    "verdict_for_score",
]
