"""Parsers, one module per format, looked up by format name.

The registry names each parser's class by import path so that a source loads only its own
parser's dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from quell.errors import InvalidInput
from quell.ingest.parsers.base import NotAnAlert, ParseError, Parser, ParseResult, RecordKind

PARSERS: dict[str, str] = {
    "suricata": "quell.ingest.parsers.suricata:SuricataParser",
    "zeek": "quell.ingest.parsers.zeek:ZeekParser",
    "wazuh": "quell.ingest.parsers.wazuh:WazuhParser",
    "splunk": "quell.ingest.parsers.splunk:SplunkParser",
    "ecs": "quell.ingest.parsers.ecs:EcsParser",
    "ocsf": "quell.ingest.parsers.ocsf:OcsfParser",
    "json": "quell.ingest.parsers.generic:GenericJsonParser",
    "cef": "quell.ingest.parsers.cef:CefParser",
    "leef": "quell.ingest.parsers.leef:LeefParser",
    "syslog": "quell.ingest.parsers.syslog:SyslogParser",
    "email": "quell.ingest.parsers.email:EmailParser",
}

FORMATS = tuple(PARSERS)


def parser_class(format_name: str) -> type[Parser]:
    """The parser class for ``format_name``; InvalidInput names the formats there are."""
    target = PARSERS.get(format_name)
    if target is None:
        raise InvalidInput(
            f"unknown format {format_name!r}; formats are: {', '.join(FORMATS)}",
            field="format",
            value=format_name,
        )
    module_name, _, class_name = target.partition(":")
    cls: type[Parser] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_parser(format_name: str, options: Mapping[str, Any] | None = None) -> Parser:
    """A parser for ``format_name`` configured with ``options``; bad options are InvalidInput."""
    cls = parser_class(format_name)
    try:
        return cls(options or {})
    except ParseError as exc:
        raise InvalidInput(
            f"invalid options for format {format_name!r}: {exc.reason}",
            field=f"options.{exc.field}" if exc.field else "options",
        ) from None


__all__ = [
    "FORMATS",
    "PARSERS",
    "NotAnAlert",
    "ParseError",
    "ParseResult",
    "Parser",
    "RecordKind",
    "build_parser",
    "parser_class",
]
