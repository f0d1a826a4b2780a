"""``virustotal``: what VirusTotal's engines say about an address, a domain, a URL or a file,
through its API v3 (an enrichment connector: one ``lookup`` action, see :mod:`quell.sdk.intel`).

- Requests carry ``x-apikey: <api_key>`` (the instance's secret ``api_key``).
- ``GET /api/v3/ip_addresses/{ip}`` (ipv4, ipv6), ``GET /api/v3/domains/{domain}``,
  ``GET /api/v3/files/{hash}`` (md5, sha1, sha256) and ``GET /api/v3/urls/{id}``, where ``id``
  is the URL in base64url without padding, as VirusTotal documents.
- The verdict reads ``data.attributes.last_analysis_stats``: ``malicious`` when at least
  ``malicious_engines`` engines (3 by default) say malicious; else ``suspicious`` when any says
  malicious or suspicious; else ``safe`` when any says harmless; else ``info``. The score is
  ``100 * (malicious + suspicious / 2) / engines``, rounded, every engine in the stats counted.
- A 404 ``NotFoundError`` is an answer, not an error: VirusTotal has never seen the value
  (found false, ``info``, score 0).

Errors carry VirusTotal's ``{"error": {"code", "message"}}``: 401 and 403 are
:class:`AuthError`; 429 (``QuotaExceededError``) is :class:`RateLimited` after ``Retry-After``
or, without one, a minute (the public API's quota window); 5xx :class:`TransientError`; any
other 4xx :class:`PermanentError`. The key is never logged nor put in an error.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quell.connectors import rest
from quell.sdk import (
    ActionContext,
    Enrichment,
    LookupIn,
    LookupOut,
    PermanentError,
    RateLimited,
    RiskLevel,
    SecretValue,
    action,
)
from quell.sdk.intel import EnrichmentPolicy, Verdict, clamp_score

VENDOR = "virustotal"
GUI = "https://www.virustotal.com/gui"  # where people read a report
MAX_BODY = 2 * 1024 * 1024  # bytes of an answer read at most
QUOTA_WAIT = 60.0  # seconds to wait after a 429 that names no wait

_COLLECTION = {
    "ipv4": "ip_addresses",
    "ipv6": "ip_addresses",
    "domain": "domains",
    "url": "urls",
    "md5": "files",
    "sha1": "files",
    "sha256": "files",
}
_GUI_KIND = {"ip_addresses": "ip-address", "domains": "domain", "urls": "url", "files": "file"}
# attributes kept in details, besides the stats: those of every object, then each kind's own
_COMMON = ("reputation", "tags", "last_analysis_date")
_FIELDS = {
    "ip_addresses": ("country", "asn", "as_owner", "network"),
    "domains": ("registrar", "tld", "categories"),
    "files": ("meaningful_name", "type_description", "size", "sha256"),
    "urls": ("last_final_url", "title", "last_http_response_code"),
}


class VirusTotalConfig(EnrichmentPolicy):
    """Where the API is and when enough engines agree."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_url": "https://www.virustotal.com"}]},
    )

    base_url: str = Field("https://www.virustotal.com", description="The API's host.")
    malicious_engines: int = Field(
        3, ge=1, le=1000, description="Engines saying malicious that make the verdict malicious."
    )
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return rest.http_url(value)


def url_id(url: str) -> str:
    """VirusTotal's identifier of a URL: the URL in base64url, without padding."""
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _error(reply: rest.Reply) -> tuple[str, str]:
    """VirusTotal's error code and message (``{"error": {"code", "message"}}``)."""
    error = reply.mapping().get("error")
    if isinstance(error, dict):
        return str(error.get("code") or ""), str(error.get("message") or "")[:300]
    return "", reply.text.strip()[:200]


def _stats(attributes: Mapping[str, Any]) -> dict[str, int]:
    """``last_analysis_stats``: engines per category (non-negative counts only)."""
    found = attributes.get("last_analysis_stats")
    if not isinstance(found, dict):
        return {}
    return {
        str(name): count
        for name, count in found.items()
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0
    }


def judge(stats: Mapping[str, int], malicious_engines: int) -> tuple[Verdict, int]:
    """The verdict and score of analysis stats (see the module's docs)."""
    malicious, suspicious = stats.get("malicious", 0), stats.get("suspicious", 0)
    engines = sum(stats.values())
    score = clamp_score(100 * (malicious + suspicious / 2) / engines) if engines else 0
    verdict: Verdict = "info"
    if malicious >= malicious_engines:
        verdict = "malicious"
    elif malicious + suspicious >= 1:
        verdict = "suspicious"
    elif stats.get("harmless", 0) > 0:
        verdict = "safe"
    return verdict, score


def _summary(stats: Mapping[str, int]) -> str:
    engines = sum(stats.values())
    if not engines:
        return "VirusTotal: known, but no engine has analysed it yet"
    text = f"VirusTotal: {stats.get('malicious', 0)} of {engines} engines flag it malicious"
    suspicious = stats.get("suspicious", 0)
    return f"{text}, {suspicious} suspicious" if suspicious else text


def _details(
    collection: str, attributes: Mapping[str, Any], stats: dict[str, int]
) -> dict[str, Any]:
    kept = {
        name: attributes[name] for name in (*_COMMON, *_FIELDS[collection]) if name in attributes
    }
    return {"last_analysis_stats": stats, **kept}


class VirusTotal(Enrichment):
    """VirusTotal: what its engines say about an address, a domain, a URL or a file hash."""

    name = "virustotal"
    title = "VirusTotal"
    Config = VirusTotalConfig
    secrets = ("api_key",)
    lookup_types: ClassVar[frozenset[str]] = frozenset(_COLLECTION)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, VirusTotalConfig) else VirusTotalConfig()
        self._site = rest.Site(VENDOR, self.settings.base_url, self.settings.timeout, MAX_BODY)

    @staticmethod
    def _check(reply: rest.Reply, path: str, key: SecretValue) -> None:
        """Nothing for a 2xx reply; else the error for its status (see the module's docs)."""
        if reply.ok:
            return
        code, message = _error(reply)
        said = rest.scrub(f"{code}: {message}" if code else message, (key,))
        text = f"{VENDOR}: GET {path}: HTTP {reply.status}: {said or 'no message'}"
        if reply.status == 429:
            wait = rest.rate_limit_wait(reply.headers)
            raise RateLimited(text, retry_after=QUOTA_WAIT if wait is None else wait)
        rest.raise_for(reply, text, unauthorized=f"{text}; check the instance's api_key")

    @action("lookup", risk=RiskLevel.READ, idempotent=True, title="Look up a value")
    async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
        """What VirusTotal's engines say about an address, a domain, a URL or a file hash."""
        self.require_type(params)
        collection = _COLLECTION[params.type]
        ident = url_id(params.value) if params.type == "url" else params.value
        path = f"/api/v3/{collection}/{ident}"
        key = ctx.secret("api_key")
        reply = await self._site.request(
            ctx, "GET", path, headers={"x-apikey": key.reveal(), "Accept": "application/json"}
        )
        if reply.status == 404 and _error(reply)[0] == "NotFoundError":
            return self.not_found(params, "VirusTotal: never seen")
        self._check(reply, path, key)
        data = reply.mapping().get("data")
        if not isinstance(data, dict):
            raise PermanentError(f"{VENDOR}: GET {path}: the answer has no data object")
        found = data.get("attributes")
        attributes: dict[str, Any] = found if isinstance(found, dict) else {}
        stats = _stats(attributes)
        verdict, score = judge(stats, self.settings.malicious_engines)
        page = quote(str(data.get("id") or ident), safe=":.")
        return self.answer(
            params,
            verdict=verdict,
            score=score,
            summary=_summary(stats),
            details=_details(collection, attributes, stats),
            link=f"{GUI}/{_GUI_KIND[collection]}/{page}",
        )


__all__ = ["VirusTotal", "VirusTotalConfig", "judge", "url_id"]
