"""Structured logging in both formats, with secrets and tokens kept out."""

from __future__ import annotations

import io
import json
import logging

import structlog

from quell.governance.tokens import generate_token
from quell.logs import configure_logging, mask_tokens
from quell.settings import LogFormat, LogLevel


def test_json_format_gives_one_object_per_line_for_ours_and_stdlib_records() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)
    structlog.get_logger("quell.test").info("alert_received", source="suricata", count=3)
    logging.getLogger("uvicorn.error").warning("stdlib says %s", "hello")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "alert_received"
    assert lines[0]["source"] == "suricata"
    assert lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")
    assert lines[1]["event"] == "stdlib says hello"
    assert lines[1]["logger"] == "uvicorn.error"


def test_human_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.HUMAN, LogLevel.INFO, stream=stream)
    structlog.get_logger("quell.test").info("alert_received", source="zeek")
    output = stream.getvalue()
    assert "alert_received" in output
    assert "source=zeek" in output
    assert not output.lstrip().startswith("{")


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.WARNING, stream=stream)
    structlog.get_logger("quell.test").info("quiet")
    structlog.get_logger("quell.test").warning("loud")
    assert "quiet" not in stream.getvalue()
    assert "loud" in stream.getvalue()


def test_token_shaped_strings_are_masked_even_as_plain_text() -> None:
    token = generate_token().reveal()
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream=stream)
    structlog.get_logger("quell.test").info(f"peer echoed {token}", url=f"http://x/?t={token}")
    logging.getLogger("some.library").error("header was Bearer %s", token)
    assert token not in stream.getvalue()
    assert mask_tokens(f"a {token} b") == "a qk_********** b"


def test_exceptions_render_without_local_variables() -> None:
    stream = io.StringIO()
    configure_logging(LogFormat.HUMAN, LogLevel.INFO, stream=stream)
    password = "local-canary-31337"
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("quell.test").exception("failed")
    assert "boom" in stream.getvalue()
    assert password not in stream.getvalue()


def test_tokens_in_exception_messages_are_masked_in_both_formats() -> None:
    token = generate_token().reveal()
    for log_format in LogFormat:
        stream = io.StringIO()
        configure_logging(log_format, LogLevel.INFO, stream=stream)
        try:
            raise RuntimeError(f"peer rejected Bearer {token}")
        except RuntimeError:
            structlog.get_logger("quell.test").exception("call_failed")
        assert "peer rejected" in stream.getvalue()
        assert token not in stream.getvalue()
