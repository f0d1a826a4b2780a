"""``quell source`` and ``quell suppression``: where alerts come from, and what to drop."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from quell import codec
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.errors import InvalidInput
from quell.ingest.parsers import FORMATS
from quell.sdk.secret import SecretValue

KINDS = ("http", "file", "syslog", "imap", "elastic")


def _object(text: str | None, what: str) -> dict[str, Any]:
    """A JSON/YAML object given inline or as @FILE (or a plain path to a .json/.yaml file)."""
    if not text:
        return {}
    path = Path(text[1:]) if text.startswith("@") else Path(text)
    if text.startswith("@") or (path.suffix in {".json", ".yaml", ".yml"} and path.is_file()):
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise InvalidInput(f"{what}: cannot read {path}: {exc.strerror}", field=what) from None
    from quell.playbooks.source import load_data

    value = load_data(text, what)
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: must be an object", field=what)
    return value


def _secret(from_env: str | None, from_stdin: bool) -> SecretValue | None:
    if from_env and from_stdin:
        raise InvalidInput("give the secret with --secret-env or --secret-stdin, not both")
    if from_env:
        value = os.environ.get(from_env)
        if not value:
            raise InvalidInput(
                f"environment variable {from_env} is empty or unset", field="--secret-env"
            )
        return SecretValue(value)
    if from_stdin:
        value = sys.stdin.readline().rstrip("\n")
        if not value:
            raise InvalidInput("no secret on stdin", field="--secret-stdin")
        return SecretValue(value)
    return None


@click.group("source")
def source_group() -> None:
    """Configure alert sources (HTTP intake, files, syslog, IMAP, SIEM pulls)."""


@source_group.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="How records arrive.")
@click.option(
    "--format",
    "format_name",
    type=click.Choice(FORMATS),
    required=True,
    help="Which parser reads them.",
)
@click.option(
    "--options", help="Parser options (the json format's field mapping): inline JSON/YAML or @FILE."
)
@click.option("--settings", "settings_text", help="Source settings: inline JSON/YAML or @FILE.")
@click.option(
    "--secret-env",
    help="Read the source's secret (HMAC key, password, API key) from this environment variable.",
)
@click.option("--secret-stdin", is_flag=True, help="Read the source's secret from stdin.")
@json_option
@pass_state
def add_source(
    state: CliState,
    name: str,
    kind: str,
    format_name: str,
    options: str | None,
    settings_text: str | None,
    secret_env: str | None,
    secret_stdin: bool,
    as_json: bool,
) -> None:
    """Add the source NAME."""
    source = state.runtime().sources.create(
        name,
        kind,
        format_name,
        parser_options=_object(options, "--options"),
        settings=_object(settings_text, "--settings"),
        secret=_secret(secret_env, secret_stdin),
    )
    state.audit("source.create", f"source:{source.name}", {"after": source.as_dict()})
    if as_json:
        print_json(source.as_dict())
    else:
        click.echo(f"Added {source.kind.value} source {source.name!r} reading {source.format}.")


@source_group.command("update")
@click.argument("name")
@click.option("--options", help="New parser options: inline JSON/YAML or @FILE.")
@click.option("--settings", "settings_text", help="Settings to change: inline JSON/YAML or @FILE.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the source on or off.")
@pass_state
def update_source(
    state: CliState, name: str, options: str | None, settings_text: str | None, enabled: bool | None
) -> None:
    """Change the source NAME (for example its field mapping, then replay its dead letters)."""
    before = state.runtime().sources.get(name)
    source = state.runtime().sources.update(
        name,
        parser_options=_object(options, "--options") if options else None,
        settings=_object(settings_text, "--settings") if settings_text else None,
        enabled=enabled,
    )
    state.audit(
        "source.update", f"source:{name}", {"before": before.as_dict(), "after": source.as_dict()}
    )
    click.echo(f"Updated source {source.name!r}.")


@source_group.command("list")
@json_option
@pass_state
def list_sources(state: CliState, as_json: bool) -> None:
    """Every source with its counters."""
    found = state.runtime().sources.list_all()
    if as_json:
        print_json([source.as_dict() for source in found])
        return
    print_table(
        ["NAME", "KIND", "FORMAT", "RECEIVED", "STORED", "DEDUP", "SUPPRESSED", "DEAD", "LAST"],
        [
            [
                s.name,
                s.kind.value,
                s.format,
                s.counters.received,
                s.counters.stored,
                s.counters.deduplicated,
                s.counters.suppressed,
                s.counters.dead_lettered,
                show_time(s.last_received_at),
            ]
            for s in found
        ],
    )


@source_group.command("show")
@click.argument("name")
@pass_state
def show_source(state: CliState, name: str) -> None:
    """One source as JSON (never its secret)."""
    print_json(state.runtime().sources.get(name).as_dict())


@source_group.command("set-secret")
@click.argument("name")
@click.option("--secret-env", help="Read the secret from this environment variable.")
@click.option("--secret-stdin", is_flag=True, help="Read the secret from stdin.")
@click.option("--clear", is_flag=True, help="Remove the secret.")
@pass_state
def set_secret(
    state: CliState, name: str, secret_env: str | None, secret_stdin: bool, clear: bool
) -> None:
    """Replace (or --clear) the secret of source NAME; it is stored encrypted."""
    secret = None if clear else _secret(secret_env, secret_stdin)
    if secret is None and not clear:
        raise InvalidInput("give --secret-env VAR, --secret-stdin or --clear")
    state.runtime().sources.set_secret(name, secret)
    state.audit("source.secret", f"source:{name}", {"set": secret is not None})
    click.echo(f"{'Cleared' if clear else 'Set'} the secret of source {name!r}.")


@source_group.command("remove")
@click.argument("name")
@pass_state
def remove_source(state: CliState, name: str) -> None:
    """Remove the source NAME (its alerts stay)."""
    before = state.runtime().sources.get(name)
    state.runtime().sources.remove(name)
    state.audit("source.remove", f"source:{name}", {"before": before.as_dict()})
    click.echo(f"Removed source {name!r}.")


@click.group("suppression")
def suppression_group() -> None:
    """Rules that drop alerts, or close them as benign, by match."""


@suppression_group.command("add")
@click.argument("name")
@click.option(
    "--match",
    "match_text",
    required=True,
    help='Fields and conditions, e.g. \'{"rule_name": "ET SCAN *", "src.ip": "10.0.0.0/8"}\'.',
)
@click.option(
    "--action",
    type=click.Choice(["drop", "close"]),
    default="drop",
    show_default=True,
    help="drop: not stored; close: stored as a suppressed alert, no incident.",
)
@click.option("--expires-in", help="e.g. 7d; never by default.")
@pass_state
def add_suppression(
    state: CliState, name: str, match_text: str, action: str, expires_in: str | None
) -> None:
    """Add the suppression rule NAME."""
    from quell.durations import parse_duration

    lifetime = parse_duration(expires_in, field="--expires-in") if expires_in else None
    rule = state.runtime().suppressions.add(
        name, _object(match_text, "--match"), action, expires_in=lifetime
    )
    state.audit("suppression.add", f"suppression:{rule.name}", {"action": rule.action.value})
    click.echo(f"Added suppression rule {rule.name!r} ({rule.action.value}).")


@suppression_group.command("list")
@json_option
@pass_state
def list_suppressions(state: CliState, as_json: bool) -> None:
    """Every rule and how many alerts it suppressed."""
    rules = state.runtime().suppressions.list_all()
    if as_json:
        print_json(
            [
                {
                    "name": r.name,
                    "action": r.action.value,
                    "match": r.match,
                    "builtin": r.builtin,
                    "hits": r.hits,
                    "last_hit_at": r.last_hit_at,
                    "expires_at": r.expires_at,
                }
                for r in rules
            ]
        )
        return
    print_table(
        ["NAME", "ACTION", "HITS", "LAST HIT", "EXPIRES", "MATCH"],
        [
            [
                r.name,
                r.action.value,
                r.hits,
                show_time(r.last_hit_at),
                show_time(r.expires_at),
                codec.dumps_str(r.match),
            ]
            for r in rules
        ],
    )


@suppression_group.command("remove")
@click.argument("name")
@pass_state
def remove_suppression(state: CliState, name: str) -> None:
    """Remove the suppression rule NAME."""
    state.runtime().suppressions.remove(name)
    state.audit("suppression.remove", f"suppression:{name}")
    click.echo(f"Removed suppression rule {name!r}.")
