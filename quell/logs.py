"""Structured logging: human-readable by default, JSON lines with ``--log-format json``.

structlog renders both Quell's own events and stdlib records (uvicorn, alembic, SQLAlchemy).
Two processors keep secrets out: every :class:`~quell.sdk.secret.SecretValue` in an event is
replaced by the redaction marker, and anything shaped like a Quell API token is masked even if
it arrived as a plain string (say, inside a URL or a peer's error message). Tracebacks are
rendered as plain text without local variables (which could hold revealed secrets), and
scrubbed like everything else.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from quell import codec
from quell.sdk.secret import redact
from quell.settings import LogFormat, LogLevel

# Credentials with a shape: API tokens (qk_), login sessions (qs_), signed approval links (qa_).
_TOKEN_SHAPE = re.compile(
    r"\b(q[ks])_[0-9A-Za-z_-]{20,}|\b(qa)_[0-9A-Za-z_]+\.[0-9]+\.[0-9A-Za-z_-]+"
)
_TOKEN_MASK = r"\1\2_**********"

_QUIET_LIBRARIES = {"alembic": logging.WARNING, "sqlalchemy": logging.WARNING}
# HTTP clients log request lines, and a URL can carry a credential (a webhook's path, a key in
# a query string): they never log below WARNING, whatever the level.
_URL_LOGGERS = ("httpx", "httpcore", "hpack", "urllib3", "aiohttp.client")


def mask_tokens(text: str) -> str:
    """``text`` with every API-token-shaped substring masked."""
    return _TOKEN_SHAPE.sub(_TOKEN_MASK, text)


def _scrub(value: Any) -> Any:
    value = redact(value)
    if isinstance(value, str):
        return mask_tokens(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no secret leaves through a log line."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):  # structlog's own bookkeeping (the stdlib record, etc.)
            continue
        event_dict[key] = _scrub(value)
    return event_dict


def _json_dumps(event: MutableMapping[str, Any], **_kwargs: Any) -> str:
    return codec.dumps_str(dict(event))


def configure_logging(
    log_format: LogFormat = LogFormat.HUMAN,
    level: LogLevel = LogLevel.INFO,
    *,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) in the chosen format."""
    stream = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Processor
    if log_format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(stream))
    # Tracebacks become text first, so that the scrubbing also covers exception messages.
    final: list[Processor] = [structlog.processors.format_exc_info, redact_secrets, renderer]
    structlog.configure(
        # filter_by_level first: a line below the level costs a check, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    numeric = logging.getLevelNamesMapping()[level.value.upper()]
    root.setLevel(numeric)
    for name, quiet in _QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(min(numeric, quiet) if numeric <= logging.DEBUG else quiet)
    for name in _URL_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
