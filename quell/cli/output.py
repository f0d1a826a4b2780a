"""How the CLI prints: aligned tables for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from quell import codec

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def show_time(value: datetime | None) -> str:
    """A timestamp in a table: UTC, to the second; ``-`` when absent."""
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print left-aligned columns separated by two spaces."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *cells]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(line.rstrip())


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    click.echo(codec.dumps_str(value, indent=True))
