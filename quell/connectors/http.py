"""``http``: plain HTTP requests from a playbook, through the SSRF-guarded client.

``http.get`` only reads; ``http.request`` may change things at the peer, so it is a write
(held in dry-run, subject to approval policy) and sends the step's ``Idempotency-Key``.
Errors say the host and status, never the URL's query or the headers, which may hold keys.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, HttpUrl

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    PermanentError,
    RateLimited,
    RiskLevel,
    TransientError,
    action,
)
from quell.sdk.http import OutboundBlocked

MAX_BODY = 1024 * 1024
_PRIVATE = frozenset({"set-cookie", "authorization", "www-authenticate", "proxy-authenticate"})


class GetIn(ActionInput):
    """A GET request."""

    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    expect: list[int] = Field(default_factory=list, description="Accepted statuses (2xx if empty).")
    timeout: float = Field(30.0, gt=0, le=300)


class RequestIn(GetIn):
    """Any request."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    json_body: Any = Field(None, alias="json")
    body: str | None = None


class Response(ActionOutput):
    """What the peer answered."""

    status: int
    headers: dict[str, str]
    json_body: Any = Field(None, alias="json", serialization_alias="json")
    text: str | None = None


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """The request's timeout (immutable, so one per value serves every request). The connect
    has its own, shorter share: a connect that timed out sent nothing (retried as usual), told
    apart from a request sent and left unanswered (which may have landed)."""
    return aiohttp.ClientTimeout(total=seconds, connect=min(10.0, seconds * 0.8))


_SUCCESS = range(200, 300)  # what a request expects unless it says otherwise


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _authorization(ctx: ActionContext) -> tuple[str, str] | None:
    """The header a step's own credential asks for (a CACAO authentication info an import
    sealed: http-basic, or an OAuth2 token). The connector declares no secrets, so nothing but
    a step's credential ever sets these: no configured token goes to every URL."""
    secrets = ctx.secrets
    token = secrets.get("token")
    if token is not None:
        header = secrets.get("oauth_header")
        name = header.reveal() if header is not None else "Authorization"
        value = token.reveal()
        return name, value if " " in value or name.lower() != "authorization" else f"Bearer {value}"
    user, password = secrets.get("username"), secrets.get("password")
    if user is not None and password is not None:
        pair = f"{user.reveal()}:{password.reveal()}".encode()
        return "Authorization", "Basic " + base64.b64encode(pair).decode("ascii")
    return None


class Http(Connector):
    """HTTP requests to any peer the outbound policy allows."""

    name = "http"
    title = "HTTP"

    @action("get", risk=RiskLevel.READ, idempotent=True, title="GET a URL")
    async def get(self, ctx: ActionContext, params: GetIn) -> Response:
        """GET ``url`` and return the status, headers and body."""
        return await self._send(ctx, "GET", params, None, None)

    @action("request", risk=RiskLevel.MEDIUM, title="Send an HTTP request")
    async def request(self, ctx: ActionContext, params: RequestIn) -> Response:
        """Send ``method`` to ``url`` with a JSON or text body."""
        return await self._send(ctx, params.method, params, params.json_body, params.body)

    async def _send(
        self, ctx: ActionContext, method: str, params: GetIn, payload: Any, body: str | None
    ) -> Response:
        headers = dict(params.headers)
        if method != "GET":
            headers.setdefault("Idempotency-Key", ctx.step_idempotency_key)  # the same on a retry
        authorization = _authorization(ctx)
        if authorization is not None:
            headers[authorization[0]] = authorization[1]
        data: bytes | None = None
        if body is not None:
            data = body.encode()
        elif payload is not None:
            data = orjson.dumps(payload)
            headers.setdefault("Content-Type", "application/json")
        host = params.url.host or "?"
        try:
            async with ctx.client.request(
                method,
                str(params.url),
                headers=headers,
                params=params.params or None,
                data=data,
                allow_redirects=False,
                timeout=_timeout(params.timeout),
            ) as response:
                status = response.status
                content = await response.content.read(MAX_BODY)
                reply_headers = {
                    k: v for k, v in response.headers.items() if k.lower() not in _PRIVATE
                }
                content_type = response.headers.get("Content-Type", "")
                retry_after = response.headers.get("Retry-After")
        except OutboundBlocked as exc:
            raise PermanentError(str(exc), code="outbound_blocked") from None
        except aiohttp.ConnectionTimeoutError:  # nothing was sent: an ordinary retry
            raise TransientError(f"{method} {host}: could not connect in time") from None
        except TimeoutError:  # sent, and no answer came: it may have landed
            raise TransientError(f"{method} {host}: timed out", code="timeout") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OutboundBlocked) else None
            if cause is not None:
                raise PermanentError(str(cause), code="outbound_blocked") from None
            raise TransientError(f"{method} {host}: {type(exc).__name__}") from None
        expected = params.expect or _SUCCESS
        if status not in expected:
            message = f"{method} {host}: HTTP {status}"
            if status == 429:
                raise RateLimited(message, retry_after=_retry_after(retry_after))
            if status >= 500:
                raise TransientError(message)
            raise PermanentError(message, details={"status": status})
        parsed: Any = None
        text: str | None = None
        if "json" in content_type:
            try:
                parsed = orjson.loads(content)
            except orjson.JSONDecodeError:
                text = content.decode("utf-8", "replace")
        else:
            text = content.decode("utf-8", "replace")
        return Response(status=status, headers=reply_headers, json=parsed, text=text)
