"""``urlhaus``: whether abuse.ch's URLhaus lists a URL, a host or a payload as malware
distribution, through its API v1 (an enrichment connector: one ``lookup`` action, see
:mod:`quell.sdk.intel`).

- Requests are form-encoded POSTs with ``Auth-Key: <api_key>`` (the instance's secret
  ``api_key``): ``/v1/url/`` (field ``url``), ``/v1/host/`` (field ``host``: domains and IPv4
  addresses), ``/v1/payload/`` (field ``md5_hash`` or ``sha256_hash``).
- URLhaus answers in ``query_status``: ``ok`` is a listing, ``no_results`` an unknown value
  (found false, ``info``, score 0), anything else (``invalid_url``, ``invalid_host``,
  ``http_post_expected``, ...) a :class:`PermanentError` naming it.
- The verdict: a URL that is ``online`` is ``malicious`` (score 90); one listed but offline (or
  of unknown status) ``suspicious`` (60). A host with any of its URLs online is ``malicious``
  (90), else ``suspicious`` (60). A payload URLhaus has seen served is ``malicious`` (90).

HTTP errors: 401 and 403 are :class:`AuthError`; 429 :class:`RateLimited` (after
``Retry-After`` when sent); 5xx :class:`TransientError`; any other 4xx :class:`PermanentError`.
The key is never logged nor put in an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import aiohttp
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
from quell.sdk.intel import EnrichmentPolicy

VENDOR = "urlhaus"
BROWSE = "https://urlhaus.abuse.ch/browse.php"  # where people search the database
MAX_BODY = 2 * 1024 * 1024  # bytes of an answer read at most
ONLINE_SCORE = 90  # a URL serving malware now, a host with one, a known payload
LISTED_SCORE = 60  # listed, but not serving now
SAMPLE = 10  # a host's or payload's URLs kept in details

# type -> (endpoint, form field)
_QUERY = {
    "url": ("/v1/url/", "url"),
    "domain": ("/v1/host/", "host"),
    "ipv4": ("/v1/host/", "host"),
    "md5": ("/v1/payload/", "md5_hash"),
    "sha256": ("/v1/payload/", "sha256_hash"),
}
_URL_FIELDS = ("id", "url_status", "threat", "tags", "host", "date_added", "last_online",
               "blacklists", "larted", "takedown_time_seconds")  # fmt: skip
_HOST_FIELDS = ("url_count", "firstseen", "blacklists")
_PAYLOAD_FIELDS = ("md5_hash", "sha256_hash", "file_type", "file_size", "signature",
                   "firstseen", "lastseen", "url_count")  # fmt: skip
_SAMPLE_FIELDS = ("url", "url_status", "threat", "date_added", "firstseen", "lastseen")


class UrlhausConfig(EnrichmentPolicy):
    """Where the API is."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_url": "https://urlhaus-api.abuse.ch"}]},
    )

    base_url: str = Field("https://urlhaus-api.abuse.ch", description="The API's host.")
    timeout: float = Field(30.0, gt=0, le=300, description="Seconds per request.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return rest.http_url(value)


def _kept(body: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: body[name] for name in names if name in body}


def _urls(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = body.get("urls")
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _reference(body: Mapping[str, Any]) -> str | None:
    """URLhaus's own page for the entry, if it gives one."""
    link = body.get("urlhaus_reference")
    return link if isinstance(link, str) and link.startswith(("https://", "http://")) else None


def _url_count(body: Mapping[str, Any], urls: list[dict[str, Any]]) -> int:
    """``url_count`` (a string in URLhaus's answers), else the URLs listed."""
    count = str(body.get("url_count") or "")
    return int(count) if count.isdigit() else len(urls)


class Urlhaus(Enrichment):
    """URLhaus (abuse.ch): URLs, hosts and payloads seen distributing malware."""

    name = "urlhaus"
    title = "URLhaus"
    Config = UrlhausConfig
    secrets = ("api_key",)
    lookup_types: ClassVar[frozenset[str]] = frozenset(_QUERY)

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, UrlhausConfig) else UrlhausConfig()
        self._timeout = aiohttp.ClientTimeout(total=self.settings.timeout)

    def _url(self, params: LookupIn, body: Mapping[str, Any]) -> LookupOut:
        status = str(body.get("url_status") or "unknown")
        online = status == "online"
        threat = str(body.get("threat") or "malware")
        return self.answer(
            params,
            verdict="malicious" if online else "suspicious",
            score=ONLINE_SCORE if online else LISTED_SCORE,
            summary=f"URLhaus: listed ({threat}), {status}",
            details=_kept(body, _URL_FIELDS),
            link=_reference(body),
        )

    def _host(self, params: LookupIn, body: Mapping[str, Any]) -> LookupOut:
        urls = _urls(body)
        online = sum(1 for item in urls if item.get("url_status") == "online")
        count = _url_count(body, urls)
        details = {
            **_kept(body, _HOST_FIELDS),
            "online_urls": online,
            "urls": [_kept(item, _SAMPLE_FIELDS) for item in urls[:SAMPLE]],
        }
        return self.answer(
            params,
            verdict="malicious" if online else "suspicious",
            score=ONLINE_SCORE if online else LISTED_SCORE,
            summary=f"URLhaus: a host of {count} malware URLs, {online} online",
            details=details,
            link=_reference(body),
        )

    def _payload(self, params: LookupIn, body: Mapping[str, Any]) -> LookupOut:
        urls = _urls(body)
        signature = str(body.get("signature") or "no signature")
        kind = str(body.get("file_type") or "unknown type")
        sha256 = str(body.get("sha256_hash") or params.value)
        details = {
            **_kept(body, _PAYLOAD_FIELDS),
            "urls": [_kept(item, _SAMPLE_FIELDS) for item in urls[:SAMPLE]],
        }
        return self.answer(
            params,
            verdict="malicious",
            score=ONLINE_SCORE,
            summary=(
                f"URLhaus: a known payload ({signature}, {kind}), "
                f"served from {_url_count(body, urls)} URLs"
            ),
            details=details,
            link=f"{BROWSE}?search={sha256}",
        )

    @action("lookup", risk=RiskLevel.READ, idempotent=True, title="Look up a value")
    async def lookup(self, ctx: ActionContext, params: LookupIn) -> LookupOut:
        """Whether URLhaus lists a URL, a host (domain or IPv4) or a payload (md5, sha256)."""
        self.require_type(params)
        path, field = _QUERY[params.type]
        key = ctx.secret("api_key")
        where = f"{VENDOR}: POST {path}"
        reply = await rest.request(
            ctx,
            "POST",
            self.settings.base_url + path,
            where=where,
            headers={"Auth-Key": key.reveal(), "Accept": "application/json"},
            form={field: params.value},
            client_timeout=self._timeout,
            max_body=MAX_BODY,
        )
        body = reply.mapping()
        if not reply.ok:
            said = rest.scrub(str(body.get("query_status") or reply.text.strip()[:200]), (key,))
            text = f"{where}: HTTP {reply.status}: {said or 'no message'}"
            rest.raise_for(reply, text, unauthorized=f"{text}; check the instance's api_key")
        status = body.get("query_status")
        if status == "no_results":
            return self.not_found(params, "URLhaus: not listed")
        if status != "ok":
            raise PermanentError(
                f"{where}: URLhaus answered query_status {str(status)[:100]!r}",
                details={"query_status": str(status)[:100]},
            )
        if field == "url":
            return self._url(params, body)
        if field == "host":
            return self._host(params, body)
        return self._payload(params, body)


__all__ = ["Urlhaus", "UrlhausConfig"]
