"""Errors to RFC 9457 problem+json, in one place.

:func:`problem_response` is the only code that turns an exception into an HTTP error answer.
It is registered for Quell's errors, FastAPI's validation errors and Starlette's HTTP errors,
and the request middleware calls it for anything unexpected, so every error a client sees has
the same shape::

    {"type": "urn:quell:problem:forbidden", "title": "Forbidden", "status": 403,
     "detail": "…", "code": "forbidden", "request_id": "req_…", …details}

No traceback, no secret and no internal message ever reaches the body of a 500.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from quell import codec
from quell.errors import ErrorCode, InvalidInput, NotFound, Overloaded, QuellError, TooLarge
from quell.sdk.secret import redact

PROBLEM_MEDIA_TYPE = "application/problem+json"

STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.INTERNAL: 500,
    ErrorCode.INVALID_INPUT: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.CONFIG_INVALID: 500,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.MIGRATION_REQUIRED: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
}

log = structlog.get_logger(__name__)


def _as_quell_error(exc: Exception) -> tuple[QuellError, int]:
    if isinstance(exc, QuellError):
        return exc, STATUS_BY_CODE[exc.code]
    if isinstance(exc, RequestValidationError):
        errors = [
            {
                "field": ".".join(str(part) for part in error.get("loc", ())),
                "message": error.get("msg", ""),
                "type": error.get("type", ""),
            }
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"field": "request", "message": "invalid"}
        error = InvalidInput(
            f"{first['field']}: {first['message']}", field=first["field"], errors=errors
        )
        return error, 422
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        if status == 404:
            return NotFound("no such resource"), 404
        if status == 413:
            return TooLarge(str(exc.detail) if exc.detail else phrase), 413
        if status < 500:
            return InvalidInput(str(exc.detail) if exc.detail else phrase), status
        return QuellError(phrase), status
    return QuellError("internal error; the server log has the details"), 500


def problem_response(exc: Exception, request_id: str | None) -> Response:
    """The problem+json answer for ``exc``."""
    error, status = _as_quell_error(exc)
    if status >= 500:
        if isinstance(exc, QuellError):  # expected (a database outage): no traceback needed
            log.error(
                "request_failed", request_id=request_id, code=error.code.value, reason=exc.message
            )
        else:
            log.error("unhandled_error", request_id=request_id, exc_info=exc)
    body: dict[str, Any] = {
        "type": f"urn:quell:problem:{error.code.value}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": error.message,
        "code": error.code.value,
    }
    if request_id:
        body["request_id"] = request_id
    for key, value in redact(error.details).items():
        body.setdefault(key, value)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="quell"'
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after)
    return Response(
        codec.dumps(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers or None,
    )


async def _handle(request: Request, exc: Exception) -> Response:
    return problem_response(exc, getattr(request.state, "request_id", None))


def install_problem_handler(app: FastAPI) -> None:
    """Register :func:`problem_response` for every error type FastAPI can raise."""
    for kind in (QuellError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, _handle)
