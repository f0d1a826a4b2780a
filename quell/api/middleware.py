"""Per-request context: a request id, one structured access log line, and a safety net.

A pure ASGI middleware (no response buffering). It accepts a sane ``X-Request-ID`` from the
caller or makes one, binds it to every log line of the request, returns it as a header, and
turns any exception that escaped the routes into a problem+json 500 instead of a traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quell.api.problems import problem_response
from quell.clock import Clock
from quell.ids import new_id

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz"})
_CALLBACK = re.compile(r"^(/api/(?:callbacks|approval-links)/)[^/]+")

log = structlog.get_logger("quell.api.access")


class RequestContextMiddleware:
    """Request id, access log and last-resort error rendering."""

    def __init__(self, app: ASGIApp, clock: Clock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or new_id("req")
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = self.clock.monotonic()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                if response_started:
                    raise
                response = problem_response(exc, request_id)
                await response(scope, receive, send_with_id)
            finally:
                principal = state.get("principal")
                quiet = scope.get("path") in _QUIET_PATHS
                log.log(
                    logging.DEBUG if quiet else logging.INFO,
                    "request",
                    method=scope.get("method"),
                    path=_loggable(scope.get("path", "")),
                    status=status,
                    duration_ms=round((self.clock.monotonic() - started) * 1000, 2),
                    actor=getattr(principal, "name", None),
                )


def _loggable(path: str) -> str:
    """The path as logged: a callback's or approval link's token is a credential, so it is
    masked."""
    return _CALLBACK.sub(r"\1***", path)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None
