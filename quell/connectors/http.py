"""``http``: plain HTTP requests from a playbook, through the SSRF-guarded client.

``http.get`` only reads; ``http.request`` may change things at the peer, so it is a write
(held in dry-run, subject to approval policy) and sends the step's ``Idempotency-Key``.
Errors say the host and status, never the URL's query or the headers, which may hold keys.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
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

MAX_BODY = 1024 * 1024


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
            headers.setdefault("Idempotency-Key", ctx.idempotency_key)
        url = str(params.url)
        host = httpx.URL(url).host
        try:
            response = await ctx.client.request(
                method,
                url,
                headers=headers,
                params=params.params or None,
                json=payload if body is None and payload is not None else None,
                content=body.encode() if body is not None else None,
                timeout=params.timeout,
            )
        except httpx.TimeoutException:
            raise TransientError(f"{method} {host}: timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{method} {host}: {type(exc).__name__}") from None
        expected = params.expect or list(range(200, 300))
        if response.status_code not in expected:
            message = f"{method} {host}: HTTP {response.status_code}"
            if response.status_code == 429:
                raise RateLimited(
                    message, retry_after=_retry_after(response.headers.get("retry-after"))
                )
            if response.status_code >= 500:
                raise TransientError(message)
            raise PermanentError(message, details={"status": response.status_code})
        content = response.content[:MAX_BODY]
        data: Any = None
        text: str | None = None
        if "json" in response.headers.get("content-type", ""):
            try:
                data = response.json()
            except ValueError:
                text = content.decode("utf-8", "replace")
        else:
            text = content.decode("utf-8", "replace")
        return Response(
            status=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in _PRIVATE},
            json=data,
            text=text,
        )


_PRIVATE = frozenset({"set-cookie", "authorization", "www-authenticate", "proxy-authenticate"})
