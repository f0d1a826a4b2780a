"""The edge guard: refuse anonymous and oversized requests before anything reads the body.

FastAPI parses and validates a body before it resolves the dependencies that authenticate,
so without this a caller with no token could make the server read and parse any body, and
would get a 422 instead of a 401. This pure ASGI middleware answers first: a request to a
non-public path without ``Authorization: Bearer …`` (or, for ``POST /api/ingest/{source}``, a
signature header) gets 401. ``POST /api/callbacks/{token}`` is the one exception: its one-time
token in the path is its credential, checked by the route (``quell.api.auth.CAPABILITY_PATHS``).
A body over the limit gets 413, whether its length is declared or it streams in chunks (the
bytes are counted as they arrive). Whether a token is *valid* is still decided by the route's
dependency; this only checks that one is there.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quell.api.auth import is_public
from quell.api.problems import problem_response
from quell.errors import AuthenticationRequired, TooLarge

INTAKE = re.compile(r"^/api/ingest/[^/]+$")  # POST: the intake; the other ingest routes are not
CAPABILITY = re.compile(r"^/api/callbacks/[^/]+$")  # POST: a token in the path, no bearer
LINK = re.compile(r"^/api/approval-links/[^/]+$")  # GET and POST: a signed approval link
EVIDENCE = re.compile(r"^/api/incidents/[^/]+/evidence$")  # POST: an upload, its own limit
MAX_BODY = 1024 * 1024  # everything but the intake takes small JSON bodies
MAX_INGEST_BODY = 16 * 1024 * 1024


class EdgeGuardMiddleware:
    """401 without credentials and 413 over the body limit, before routing."""

    def __init__(self, app: ASGIApp, *, evidence_limit: int = MAX_BODY) -> None:
        self.app = app
        self.evidence_limit = evidence_limit  # settings.evidence_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        path: str = scope.get("path", "")
        public = is_public(path)  # no credential needed, but the body limit holds
        intake = scope.get("method") == "POST" and INTAKE.match(path) is not None
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        signed = intake and b"x-quell-signature" in headers
        capability = (scope.get("method") == "POST" and CAPABILITY.match(path) is not None) or (
            scope.get("method") in {"GET", "POST"} and LINK.match(path) is not None
        )
        upload = scope.get("method") == "POST" and EVIDENCE.match(path) is not None
        limit = MAX_INGEST_BODY if intake else self.evidence_limit if upload else MAX_BODY
        error: Exception | None = None
        if (
            not signed
            and not capability
            and not public
            and (scheme.lower() != b"bearer" or not credentials.strip())
        ):
            error = AuthenticationRequired(
                "this endpoint needs an 'Authorization: Bearer <token>' header"
            )
        else:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                error = TooLarge(
                    f"request body of {int(declared)} bytes exceeds the {limit}-byte limit"
                )
        if error is None:
            await self.app(scope, _counting(receive, limit), send)
            return
        state = scope.get("state") or {}
        response = problem_response(error, state.get("request_id"))
        await response(scope, receive, send)


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises TooLarge once the body passes ``limit`` bytes (chunked too)."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(f"request body exceeds the {limit}-byte limit")
        return message

    return counted
