"""``greynoise``: whether an IPv4 address is internet background noise or a known business
service, through GreyNoise's Community API v3 (an enrichment connector: one ``lookup`` action,
see :mod:`quell.sdk.intel`).

- ``GET /v3/community/{ip}`` with ``key: <api_key>`` (the instance's secret ``api_key``). The
  Community API also answers without a key, on a smaller quota: an instance without the secret
  sends no ``key`` header.
- The answer's ``noise`` (seen scanning the internet), ``riot`` (a common business service),
  ``classification`` (``malicious``, ``benign``, ``unknown``), ``name``, ``last_seen`` and
  ``link`` (its page on GreyNoise's visualizer).
- The verdict, in this order: classified ``malicious`` is ``malicious`` (score 80), even in
  RIOT, since that classification is evidence about this very address; in RIOT or classified
  ``benign`` is ``safe`` (0); seen scanning with unknown intent is ``suspicious`` (40): mass
  scanning is hostile reconnaissance but not proof of an attack; anything else GreyNoise
  knows is ``info`` (0).
- A 404 saying ``IP not observed scanning the internet or contained in RIOT data set.`` is an
  answer: found false, ``info``, score 0.

Errors carry GreyNoise's ``{"message"}``: 401 and 403 are :class:`AuthError`; 429 (a daily
quota) :class:`RateLimited`, after ``Retry-After`` when sent; 5xx :class:`TransientError`; any
other 4xx (400: not a routable IPv4 address) :class:`PermanentError`. The key is never logged
nor put in an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quell.connectors import rest
from quell.sdk import (
    ActionContext,
    Enrichment,
    LookupIn,
    LookupOut,
    PermanentError,
    RiskLevel,
    action,
)
from quell.sdk.intel import EnrichmentPolicy, Verdict

VENDOR = "greynoise"
VIZ = "https://viz.greynoise.io/ip"  # where people read an address's page
MAX_BODY = 256 * 1024  # bytes of an answer read at most
NOT_OBSERVED = "IP not observed"  # how the 404 of an unknown address begins
MALICIOUS_SCORE = 80
NOISE_SCORE = 40
_KEPT = ("noise", "riot", "classification", "name", "last_seen")


class GreyNoiseConfig(EnrichmentPolicy):
    """Where the API is."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_url": "https://api.greynoise.io"}]},
    )

    base_url: str = Field("https://api.greynoise.io", description="The API's host.")
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return rest.http_url(value)


def _message(reply: rest.Reply) -> str:
    """GreyNoise's ``message``, trimmed."""
    message = reply.mapping().get("message")
    return str(message)[:300] if message else reply.text.strip()[:200]


def _seen(body: Mapping[str, Any]) -> str:
    last = body.get("last_seen")
    return f", last seen {last}" if last else ""


def judge(body: Mapping[str, Any]) -> tuple[Verdict, int, str]:
    """The verdict, score and summary of GreyNoise's answer (see the module's docs)."""
    classification, name = body.get("classification"), body.get("name") or "unknown"
    if classification == "malicious":
        return (
            "malicious",
            MALICIOUS_SCORE,
            f"GreyNoise: classified malicious ({name}){_seen(body)}",
        )
    if body.get("riot") is True:
        return "safe", 0, f"GreyNoise: a common business service ({name})"
    if classification == "benign":
        return "safe", 0, f"GreyNoise: a benign scanner ({name}){_seen(body)}"
    if body.get("noise") is True:
        return (
            "suspicious",
            NOISE_SCORE,
            f"GreyNoise: scanning the internet, intent unknown{_seen(body)}",
        )
    return "info", 0, "GreyNoise: known, neither noise nor a business service"


class GreyNoise(Enrichment):
    """GreyNoise Community: internet scanners and common business services, by IPv4 address."""

    name = "greynoise"
    title = "GreyNoise Community"
    Config = GreyNoiseConfig
    secrets = ("api_key",)
    lookup_types: ClassVar[frozenset[str]] = frozenset({"ipv4"})

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, GreyNoiseConfig) else GreyNoiseConfig()
        self._site = rest.Site(VENDOR, self.settings.base_url, self.settings.timeout, MAX_BODY)

    @action("lookup", risk=RiskLevel.READ, idempotent=True, title="Look up an IPv4 address")
    async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
        """Whether an IPv4 address scans the internet or belongs to a common business service
        (``GET /v3/community/{ip}``)."""
        self.require_type(params)
        key = ctx.secrets.get("api_key")
        headers = {"Accept": "application/json"}
        if key:
            headers["key"] = key.reveal()
        path = f"/v3/community/{params.value}"
        reply = await self._site.request(ctx, "GET", path, headers=headers)
        message = rest.scrub(_message(reply), (key,) if key else ())
        if reply.status == 404 and message.startswith(NOT_OBSERVED):
            return self.not_found(params, "GreyNoise: not observed scanning, not in RIOT")
        if not reply.ok:
            text = f"{VENDOR}: GET {path}: HTTP {reply.status}: {message or 'no message'}"
            rest.raise_for(reply, text, unauthorized=f"{text}; check the instance's api_key")
        body = reply.mapping()
        if not body:
            raise PermanentError(f"{VENDOR}: GET {path}: the answer is not a JSON object")
        verdict, score, summary = judge(body)
        link = body.get("link")
        return self.answer(
            params,
            verdict=verdict,
            score=score,
            summary=summary,
            details={field: body[field] for field in _KEPT if field in body},
            link=link
            if isinstance(link, str) and link.startswith("https://")
            else VIZ + "/" + params.value,
        )


__all__ = ["GreyNoise", "GreyNoiseConfig", "judge"]
