"""``abuseipdb``: how much abuse AbuseIPDB's reporters have seen from an address, through its
API v2 (an enrichment connector: one ``lookup`` action, see :mod:`quell.sdk.intel`).

- ``GET /api/v2/check?ipAddress={ip}&maxAgeInDays={max_age_days}`` (90 by default), with
  ``Key: <api_key>`` (the instance's secret ``api_key``) and ``Accept: application/json``;
  ipv4 and ipv6 only.
- The verdict reads ``data``: an address on AbuseIPDB's whitelist is ``safe``; else one nobody
  reported within ``max_age_days`` (``totalReports`` 0) is not known (found false, ``info``,
  score 0); else ``abuseConfidenceScore`` (the score, 0-100) makes it ``malicious`` from
  ``malicious_score`` (75) up and ``suspicious`` from ``suspicious_score`` (25) up. Below that
  it stays ``info``: a few old or doubtful reports vouch for nothing either way, and AbuseIPDB
  tracks abuse only, so it never calls an address safe but through its whitelist.

Errors carry AbuseIPDB's ``{"errors": [{"detail", "status"}]}``: 401 and 403 are
:class:`AuthError`; 429 is :class:`RateLimited` after ``Retry-After`` (else until
``X-RateLimit-Reset``, epoch seconds); 5xx :class:`TransientError`; any other 4xx (422, an
address AbuseIPDB will not check) :class:`PermanentError`. The key is never logged nor put in
an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quell.connectors import rest
from quell.sdk import (
    ActionContext,
    Enrichment,
    LookupIn,
    LookupOut,
    PermanentError,
    RiskLevel,
    action,
    verdict_for_score,
)
from quell.sdk.intel import EnrichmentPolicy

VENDOR = "abuseipdb"
SITE = "https://www.abuseipdb.com/check"  # where people read an address's reports
MAX_BODY = 1024 * 1024  # bytes of an answer read at most
PATH = "/api/v2/check"
_KEPT = (
    "abuseConfidenceScore",
    "totalReports",
    "numDistinctUsers",
    "lastReportedAt",
    "isWhitelisted",
    "isPublic",
    "isTor",
    "countryCode",
    "usageType",
    "isp",
    "domain",
)


class AbuseIpdbConfig(EnrichmentPolicy):
    """Where the API is, how far back reports count, and the verdict's thresholds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_url": "https://api.abuseipdb.com"}]},
    )

    base_url: str = Field("https://api.abuseipdb.com", description="The API's host.")
    max_age_days: int = Field(90, ge=1, le=365, description="Reports of these last days count.")
    suspicious_score: int = Field(25, ge=1, le=100, description="Confidence that is suspicious.")
    malicious_score: int = Field(75, ge=1, le=100, description="Confidence that is malicious.")
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return rest.http_url(value)

    @model_validator(mode="after")
    def _ordered(self) -> AbuseIpdbConfig:
        if self.suspicious_score > self.malicious_score:
            raise ValueError("suspicious_score must not exceed malicious_score")
        return self


def _message(reply: rest.Reply) -> str:
    """AbuseIPDB's first error detail, trimmed."""
    errors = reply.mapping().get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("detail") or "")[:300]
    return reply.text.strip()[:200]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class AbuseIpdb(Enrichment):
    """AbuseIPDB: the abuse reported from an IP address, and how sure its reporters are."""

    name = "abuseipdb"
    title = "AbuseIPDB"
    Config = AbuseIpdbConfig
    secrets = ("api_key",)
    lookup_types: ClassVar[frozenset[str]] = frozenset({"ipv4", "ipv6"})

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, AbuseIpdbConfig) else AbuseIpdbConfig()
        self._site = rest.Site(VENDOR, self.settings.base_url, self.settings.timeout, MAX_BODY)

    def _judged(self, params: LookupIn, data: Mapping[str, Any]) -> LookupOut:
        """The answer for AbuseIPDB's ``data`` (see the module's docs)."""
        score = min(100, _count(data.get("abuseConfidenceScore")))
        reports, users = _count(data.get("totalReports")), _count(data.get("numDistinctUsers"))
        details = {name: data[name] for name in _KEPT if name in data}
        link = f"{SITE}/{params.value}"
        days = self.settings.max_age_days
        if data.get("isWhitelisted") is True:
            summary = f"AbuseIPDB: whitelisted ({reports} reports in {days} days)"
            return self.answer(
                params, verdict="safe", score=score, summary=summary, details=details, link=link
            )
        if reports == 0:
            return self.not_found(
                params, f"AbuseIPDB: no reports in {days} days", details=details, link=link
            )
        verdict = verdict_for_score(
            score,
            suspicious=self.settings.suspicious_score,
            malicious=self.settings.malicious_score,
        )
        summary = (
            f"AbuseIPDB: abuse confidence {score}% from {reports} reports by {users} users "
            f"in {days} days"
        )
        return self.answer(
            params, verdict=verdict, score=score, summary=summary, details=details, link=link
        )

    @action("lookup", risk=RiskLevel.READ, idempotent=True, title="Look up an IP address")
    async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
        """The abuse reported from an IP address (``GET /api/v2/check``)."""
        self.require_type(params)
        key = ctx.secret("api_key")
        query = {"ipAddress": params.value, "maxAgeInDays": str(self.settings.max_age_days)}
        reply = await self._site.request(
            ctx,
            "GET",
            PATH,
            headers={"Key": key.reveal(), "Accept": "application/json"},
            params=query,
        )
        if not reply.ok:
            said = rest.scrub(_message(reply), (key,)) or "no message"
            text = f"{VENDOR}: GET {PATH}: HTTP {reply.status}: {said}"
            rest.raise_for(
                reply,
                text,
                unauthorized=f"{text}; check the instance's api_key",
                reset_header="X-RateLimit-Reset",
                reset_floor=1.0,
            )
        data = reply.mapping().get("data")
        if not isinstance(data, dict):
            raise PermanentError(f"{VENDOR}: GET {PATH}: the answer has no data object")
        return self._judged(params, data)


__all__ = ["AbuseIpdb", "AbuseIpdbConfig"]
