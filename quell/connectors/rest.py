"""What an HTTP-API connector shares: sending a request, reading the answer, naming its errors.

Every vendor connector that speaks a REST API (CrowdStrike, Defender, Graph, Okta, Jira,
ServiceNow, TheHive, Slack) goes through these pieces, so they all behave alike:

- :func:`request` sends one request through the SSRF-guarded session (``ctx.client``), never
  following redirects, reading at most ``max_body`` bytes, and returns a :class:`Reply` whatever
  its status. A destination the outbound policy refuses is a ``PermanentError`` with code
  ``outbound_blocked``; a timeout or a dropped connection is a ``TransientError`` (whose text
  names the request, never its URL query, which may hold keys).
- :func:`raise_for` maps a non-2xx reply to the SDK's errors: 401/403 ``AuthError``, 404
  ``TargetNotFound``, 429 ``RateLimited`` (waiting :func:`rate_limit_wait`), 5xx
  ``TransientError``, anything else ``PermanentError``; :func:`raise_for_call` words them the way
  the ticketing connectors do (``"vendor: METHOD /path: HTTP 409 (vendor's message)"``).
- :class:`Site` is an API at a base URL whose errors name the request (``METHOD /path``).
- :class:`Vendor` holds one vendor's conventions (its error-message shape, its rate-limit
  header) for the connectors that word errors ``"vendor: what: HTTP 409: message"``;
  :class:`ClientCredentials` gets and caches an OAuth2 client-credentials token and retries a
  call once with a fresh one when the API answers 401; :class:`MicrosoftApi` is that with Entra
  ID, for Defender and Graph.
- :func:`follow_links` reads a listing page by page along next links, bounded, and never
  follows one to another origin (the token would go with it).
- :func:`retry_after`, :func:`scrub`, :func:`idempotency_tag`, :func:`next_link`,
  :func:`same_origin`, :func:`http_url`: the small parts.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from quell.sdk import (
    REDACTED,
    ActionContext,
    AuthError,
    PermanentError,
    RateLimited,
    SecretValue,
    TargetNotFound,
    TransientError,
)
from quell.sdk.http import OutboundBlocked

MAX_BODY = 4 * 1024 * 1024  # bytes of an answer read at most
TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
MAX_PAGES = 50  # pages a listing follows at most
EARLY = 60.0  # a token is fetched again this many seconds before it expires

Params = Mapping[str, str] | Sequence[tuple[str, str]]

# How a transport failure is worded: ``{where}`` names the request, ``{error}`` the exception.
TIMED_OUT = "{where}: timed out"
FAILED = "{where}: {error}"

_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


# -- small parts ----------------------------------------------------------------------------------


MAX_RETRY_AFTER = 3600.0  # seconds: a peer asking for longer waits an hour, then is asked again


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), never negative;
    None when there is none or it cannot be read."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):  # "inf" or "nan" from a peer: not a wait
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def rate_limit_wait(
    headers: Mapping[str, str], reset_header: str | None = None, floor: float = 0.0
) -> float | None:
    """Seconds to wait after a 429: ``Retry-After``, else a vendor header holding the epoch
    second the limit resets (``floor`` at least)."""
    wait = retry_after(headers.get("Retry-After"))
    if wait is not None or reset_header is None:
        return wait
    epoch = headers.get(reset_header, "").strip()
    if epoch.isdigit():
        return max(floor, float(epoch) - time.time())
    return None


def scrub(text: str, secrets: Iterable[SecretValue | str]) -> str:
    """``text`` with every secret's plain value replaced by ``**********``."""
    for secret in secrets:
        plain = secret.reveal() if isinstance(secret, SecretValue) else secret
        if plain and plain in text:
            text = text.replace(plain, REDACTED)
    return text


def idempotency_tag(key: str, length: int = 32) -> str:
    """A short, stable digest of a step's idempotency key (hex, safe in labels and tags)."""
    return hashlib.sha256(key.encode()).hexdigest()[:length]


def http_url(value: str) -> str:
    """A configured base URL: http(s) only, without a trailing slash (a pydantic validator)."""
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def same_origin(link: str, base: str) -> bool:
    """Whether ``link`` points at ``base``'s scheme, host and port."""
    there, here = URL(link), URL(base)
    return (there.scheme, there.host, there.port) == (here.scheme, here.host, here.port)


def next_link(headers: CIMultiDictProxy[str]) -> str | None:
    """The target of a ``Link: <...>; rel="next"`` header, if any."""
    for value in headers.getall("Link", []):
        found = _NEXT.search(value)
        if found:
            return found.group(1)
    return None


# -- one request ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """An answer: its status and headers, the body parsed as JSON (None when empty or not
    JSON) and as text."""

    status: int
    headers: CIMultiDictProxy[str]
    body: Any
    text: str

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def mapping(self) -> dict[str, Any]:
        """The body when it is a JSON object, else an empty one."""
        return self.body if isinstance(self.body, dict) else {}


async def request(
    ctx: ActionContext,
    method: str,
    url: str,
    *,
    where: str,
    headers: Mapping[str, str],
    params: Params | None = None,
    json: Any = None,
    form: Mapping[str, str] | None = None,
    client_timeout: aiohttp.ClientTimeout = TIMEOUT,
    max_body: int = MAX_BODY,
    timed_out: str = TIMED_OUT,
    failed: str = FAILED,
) -> Reply:
    """Send one request through ``ctx.client``; the reply, whatever its status.

    ``json`` (unless None) is sent as JSON (``Content-Type: application/json`` unless
    ``headers`` name another), else ``form`` as a form. Transport failures raise: the outbound
    policy's refusal ``PermanentError("...", code="outbound_blocked")``; a timeout
    ``TransientError(timed_out)``, any other failure ``TransientError(failed)``, both formatted
    with ``where`` (and ``error``, the exception's type name)."""
    sent = dict(headers)
    data: Any = None
    if json is not None:
        data = orjson.dumps(json)
        sent.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = aiohttp.FormData(dict(form))
    try:
        async with ctx.client.request(
            method,
            url,
            headers=sent,
            params=params,
            data=data,
            allow_redirects=False,
            timeout=client_timeout,
        ) as response:
            content = await response.content.read(max_body)
            status, reply_headers = response.status, response.headers
    except OutboundBlocked as exc:
        raise PermanentError(str(exc), code="outbound_blocked") from None
    except aiohttp.ConnectionTimeoutError:  # nothing was sent: an ordinary retry
        raise TransientError(f"{where}: could not connect in time") from None
    except TimeoutError:  # sent, and no answer came: it may have landed (reconciled first)
        raise TransientError(timed_out.format(where=where), code="timeout") from None
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        if isinstance(exc.__cause__, OutboundBlocked):
            raise PermanentError(str(exc.__cause__), code="outbound_blocked") from None
        raise TransientError(failed.format(where=where, error=type(exc).__name__)) from None
    body: Any = None
    if content.strip():
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
    return Reply(status, reply_headers, body, content.decode("utf-8", "replace"))


@dataclass(frozen=True)
class Site:
    """An API at ``base`` whose requests name themselves ``"{vendor}: {METHOD} {path}"`` in
    errors (Jira, ServiceNow, TheHive, Slack): :func:`request` with the site's timeout (seconds)
    and answer size limit."""

    vendor: str
    base: str
    timeout: float
    max_body: int = MAX_BODY

    async def request(
        self,
        ctx: ActionContext,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        params: Params | None = None,
        json: Any = None,
        where: str | None = None,
    ) -> Reply:
        """Send ``method`` to ``base + path``; ``where`` names it (by default
        ``"{vendor}: {method} {path}"``)."""
        return await request(
            ctx,
            method,
            self.base + path,
            where=where or f"{self.vendor}: {method} {path}",
            headers=headers,
            params=params,
            json=json,
            client_timeout=_timeout(self.timeout),
            max_body=self.max_body,
        )


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # The connect's own share: one that timed out sent nothing (see request()).
    return aiohttp.ClientTimeout(total=seconds, connect=min(10.0, seconds * 0.8))


# -- statuses to errors ---------------------------------------------------------------------------


def raise_for(
    reply: Reply,
    text: str,
    *,
    unauthorized: str | None = None,
    forbidden: str | None = None,
    not_found: str | None = None,
    rate_limited: str | None = None,
    reset_header: str | None = None,
    reset_floor: float = 0.0,
    auth_details: bool = True,
) -> None:
    """Nothing for a 2xx reply; else the SDK's error for its status, saying ``text`` (or the
    status's own text, when given). A 429 waits :func:`rate_limit_wait`; ``auth_details``
    says whether an AuthError carries the status in its details (every other error does, but
    a 5xx)."""
    status = reply.status
    if 200 <= status < 300:
        return
    details = {"status": status}
    if status == 429:
        wait = rate_limit_wait(reply.headers, reset_header, reset_floor)
        raise RateLimited(rate_limited or text, retry_after=wait)
    if status >= 500:
        raise TransientError(text)
    if status in (401, 403):
        own = unauthorized if status == 401 else forbidden
        raise AuthError(own or text, details=details if auth_details else None)
    if status == 404:
        raise TargetNotFound(not_found or text, details=details)
    raise PermanentError(text, details=details)


def raise_for_call(
    reply: Reply,
    *,
    vendor: str,
    where: str,
    what: str,
    message: str,
    unauthorized: str,
    forbidden: str = "the account may not do this{detail}",
) -> None:
    """:func:`raise_for` worded ``"{where}: HTTP 409 (message)"``, ``"{vendor}: {what} not
    found (message)"``, ``"{where}: rate limited"``; ``unauthorized`` and ``forbidden`` follow
    ``"{where}: HTTP 401: "`` and may place ``{detail}`` (`` (message)``)."""
    if reply.ok:
        return
    detail = f" ({message})" if message else ""
    raise_for(
        reply,
        f"{where}: HTTP {reply.status}{detail}",
        unauthorized=f"{where}: HTTP 401: " + unauthorized.format(detail=detail),
        forbidden=f"{where}: HTTP 403: " + forbidden.format(detail=detail),
        not_found=f"{vendor}: {what} not found{detail}",
        rate_limited=f"{where}: rate limited",
        auth_details=False,
    )


@dataclass(frozen=True)
class Vendor:
    """One vendor's API conventions, for connectors that word errors
    ``"{name}: {what}: HTTP {status}: {message}"``: how its error bodies read (``message``),
    which header says when a rate limit resets (epoch seconds; ``Retry-After`` comes first),
    and what a 401 should add."""

    name: str
    message: Callable[[Reply], str]
    reset_header: str | None = None
    reset_floor: float = 0.0
    unauthorized_hint: str = ""

    async def request(
        self,
        ctx: ActionContext,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Params | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        """:func:`request` asking for JSON; failures say ``"{name}: {method} timed out"``."""
        return await request(
            ctx,
            method,
            url,
            where=f"{self.name}: {method}",
            headers={"Accept": "application/json", **headers},
            params=params,
            json=json,
            form=form,
            timed_out="{where} timed out",
            failed="{where} failed: {error}",
        )

    def said(self, reply: Reply, secrets: Iterable[SecretValue | str]) -> str:
        """The vendor's error message in ``reply``, with the secrets scrubbed."""
        return scrub(self.message(reply), secrets)

    def check(self, reply: Reply, what: str, secrets: Iterable[SecretValue | str]) -> None:
        """:func:`raise_for` with this vendor's wording; ``what`` names the request."""
        if reply.ok:
            return
        text = f"{self.name}: {what}: HTTP {reply.status}: {self.said(reply, secrets)}"
        raise_for(
            reply,
            text,
            unauthorized=f"{text}{self.unauthorized_hint}" if self.unauthorized_hint else None,
            reset_header=self.reset_header,
            reset_floor=self.reset_floor,
        )


# -- OAuth2 client credentials --------------------------------------------------------------------


@dataclass
class _Token:
    client_id: SecretValue
    client_secret: SecretValue
    value: SecretValue
    expires: float  # time.monotonic()


@dataclass
class ClientCredentials:
    """An OAuth2 client-credentials token (secrets ``client_id`` and ``client_secret``), kept
    until ``early`` seconds before it expires (or half its life, if shorter), for as long as the
    context's credentials stay the same.

    ``url`` is the token endpoint, ``fields`` what its form carries besides the credentials
    (``grant_type``, ``scope``), ``lifetime`` the seconds assumed when the answer gives no
    ``expires_in``, and ``refused(status, message)`` the text (after ``"vendor: "``) of the
    AuthError when the endpoint answers 400, 401 or 403. The client secret goes in the form
    only and never into an error."""

    vendor: Vendor
    url: str
    refused: Callable[[int, str], str]
    fields: Mapping[str, str] = field(default_factory=dict)
    lifetime: float = 3599.0
    early: float = EARLY
    requests: int = field(default=0, init=False)  # tokens asked for
    _token: _Token | None = field(default=None, init=False, repr=False)

    @staticmethod
    def secrets(ctx: ActionContext) -> tuple[SecretValue, SecretValue]:
        """The context's ``client_id`` and ``client_secret``."""
        return ctx.secret("client_id"), ctx.secret("client_secret")

    def invalidate(self) -> None:
        """Forget the token: the next call asks for a new one."""
        self._token = None

    async def token(self, ctx: ActionContext, *, fresh: bool = False) -> SecretValue:
        """A valid token for the context's credentials: the cached one, else a new one."""
        client_id, client_secret = self.secrets(ctx)
        token = self._token
        if (
            not fresh
            and token is not None
            and token.client_id == client_id
            and token.client_secret == client_secret
            and token.expires > time.monotonic()
        ):
            return token.value
        self._token = None
        self.requests += 1
        name = self.vendor.name
        reply = await self.vendor.request(
            ctx,
            "POST",
            self.url,
            headers={},
            form={
                **self.fields,
                "client_id": client_id.reveal(),
                "client_secret": client_secret.reveal(),
            },
        )
        secrets = (client_id, client_secret)
        if reply.status in (400, 401, 403):
            message = self.vendor.said(reply, secrets)
            raise AuthError(f"{name}: {self.refused(reply.status, message)}")
        self.vendor.check(reply, "token request", secrets)
        body = reply.mapping()
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise PermanentError(f"{name}: the token answer has no access_token")
        expires_in = body.get("expires_in")
        seconds = float(expires_in) if isinstance(expires_in, int | float) else self.lifetime
        self._token = _Token(
            client_id,
            client_secret,
            SecretValue(value),
            time.monotonic() + max(0.0, seconds - min(self.early, seconds / 2)),
        )
        return self._token.value

    async def call(
        self,
        ctx: ActionContext,
        method: str,
        url: str,
        what: str,
        *,
        params: Params | None = None,
        json: Any = None,
    ) -> Reply:
        """An authenticated call (a 2xx reply, else the vendor's error); a 401 gets a new
        token and tries once more."""
        secrets = self.secrets(ctx)
        for attempt in range(2):
            token = await self.token(ctx, fresh=attempt > 0)
            reply = await self.vendor.request(
                ctx,
                method,
                url,
                headers={"Authorization": f"Bearer {token.reveal()}"},
                params=params,
                json=json,
            )
            if reply.status != 401:
                break
            self.invalidate()
        if reply.status == 401:
            raise AuthError(
                f"{self.vendor.name}: {what}: the API refused a fresh token (HTTP 401: "
                f"{self.vendor.said(reply, secrets)})"
            )
        self.vendor.check(reply, what, secrets)
        return reply


# -- listings -------------------------------------------------------------------------------------


Page = tuple[Iterable[dict[str, Any]], str | None]


async def follow_links(
    fetch: Callable[[str, Params | None], Awaitable[Reply]],
    url: str,
    params: Params | None,
    *,
    page: Callable[[Reply], Page],
    origin: str,
    most: int,
    elsewhere: str,
    max_pages: int = MAX_PAGES,
) -> tuple[list[dict[str, Any]], bool]:
    """The items of a listing, fetching ``url`` (with ``params``) and then each next link that
    ``page`` finds in a reply, for at most ``max_pages`` pages and ``most`` items; and whether
    more were left. A next link off ``origin`` raises ``PermanentError(elsewhere)``."""
    items: list[dict[str, Any]] = []
    current: str | None = url
    query = params
    for _page in range(max_pages):
        if current is None:
            break
        found, link = page(await fetch(current, query))
        items.extend(found)
        current, query = None, None
        if link:
            if not same_origin(link, origin):
                raise PermanentError(elsewhere)
            current = link
        if len(items) >= most:
            break
    return items[:most], current is not None or len(items) > most


# -- Microsoft (Entra ID, OData) ------------------------------------------------------------------


def microsoft_message(reply: Reply) -> str:
    """Microsoft's error message (``{"error": {"code", "message"}}``, or the token endpoint's
    ``{"error", "error_description"}``), trimmed."""
    body = reply.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            text = f"{code}: {message}" if code and message else str(message or code or "")
            if text:
                return text[:300]
        if isinstance(error, str):
            description = str(body.get("error_description") or "").split("\n", 1)[0].strip()
            return f"{error}: {description}"[:300] if description else error[:300]
    return reply.text.strip()[:200] or f"HTTP {reply.status}"


def odata_page(reply: Reply) -> Page:
    """An OData listing page's items (``value``) and ``@odata.nextLink``."""
    body = reply.mapping()
    link = body.get("@odata.nextLink")
    items = [item for item in body.get("value") or [] if isinstance(item, dict)]
    return items, link if isinstance(link, str) and link else None


@dataclass
class MicrosoftApi:
    """A Microsoft API (Defender for Endpoint, Graph) at ``base_url``, called with an Entra ID
    (Azure AD) app's client-credentials token for ``scope`` in ``tenant_id``."""

    vendor: str
    base_url: str
    auth: ClientCredentials

    @classmethod
    def for_tenant(
        cls, vendor: str, base_url: str, login_url: str, tenant_id: str, scope: str
    ) -> MicrosoftApi:
        """The API, with the token from ``{login_url}/{tenant_id}/oauth2/v2.0/token``."""
        auth = ClientCredentials(
            Vendor(vendor, microsoft_message),
            f"{login_url}/{tenant_id}/oauth2/v2.0/token",
            lambda status, message: (
                f"Entra ID refused the app's credentials for tenant {tenant_id} "
                f"(HTTP {status}: {message}); check tenant_id, client_id and client_secret"
            ),
            fields={"grant_type": "client_credentials", "scope": scope},
            lifetime=3599.0,
        )
        return cls(vendor, base_url, auth)

    async def call(
        self,
        ctx: ActionContext,
        method: str,
        path_or_url: str,
        what: str,
        *,
        params: Params | None = None,
        json: Any = None,
    ) -> Reply:
        """An authenticated call to a path under ``base_url`` (or a full URL)."""
        url = path_or_url if "://" in path_or_url else f"{self.base_url}{path_or_url}"
        return await self.auth.call(ctx, method, url, what, params=params, json=json)

    async def pages(
        self, ctx: ActionContext, path: str, what: str, params: Params, most: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Items of an OData listing, following ``@odata.nextLink`` (on ``base_url`` only, at
        most ``MAX_PAGES`` pages); and whether more were left."""

        async def fetch(url: str, query: Params | None) -> Reply:
            return await self.call(ctx, "GET", url, what, params=query)

        return await follow_links(
            fetch,
            path,
            params,
            page=odata_page,
            origin=self.base_url,
            most=most,
            elsewhere=f"{self.vendor}: {what}: a next page on another host",
        )


__all__ = [
    "EARLY",
    "FAILED",
    "MAX_BODY",
    "MAX_PAGES",
    "TIMED_OUT",
    "TIMEOUT",
    "ClientCredentials",
    "MicrosoftApi",
    "Page",
    "Params",
    "Reply",
    "Site",
    "Vendor",
    "follow_links",
    "http_url",
    "idempotency_tag",
    "microsoft_message",
    "next_link",
    "odata_page",
    "raise_for",
    "raise_for_call",
    "rate_limit_wait",
    "request",
    "retry_after",
    "same_origin",
    "scrub",
]
