"""``quell intel``: import indicators, look values up, keep the allow-list, export, feeds."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from quell import codec
from quell.cli.intel_feeds import feed_group
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state
from quell.intel.formats import IMPORT_FORMATS
from quell.intel.model import IndicatorType, Tlp

TYPES = [t.value for t in IndicatorType]
TLPS = ["clear", "white", "green", "amber", "amber+strict", "red"]


@click.group("intel")
def intel_group() -> None:
    """Threat intelligence: the indicator store, verdicts, the allow-list and feeds."""


@intel_group.command("import")
@click.argument("target")
@click.option(
    "--format",
    "format_",
    type=click.Choice(IMPORT_FORMATS),
    help="The input's format (default: guessed from its name and content).",
)
@click.option("--source", help="The name its indicators are kept under (default: the file name).")
@click.option(
    "--map",
    "mapping",
    help="CSV columns: 'column=target,...' (targets: a type such as ip-dst, sha256, url, auto; "
    "or first_seen, last_seen, valid_until, confidence, tags, tlp, description, skip).",
)
@click.option("--type", "type_", help="A plain list's indicator type (default: auto).")
@click.option("--tlp", type=click.Choice(TLPS, case_sensitive=False), help="Default TLP.")
@click.option("--confidence", type=click.IntRange(0, 100), help="Default confidence.")
@click.option("--delimiter", default=None, help="CSV delimiter (default ,).")
@click.option(
    "--header",
    type=click.Choice(["first", "comment", "none"]),
    help="CSV: the header is the first line (default), the last '#' comment line before the "
    "data (abuse.ch), or absent (map columns by number).",
)
@pass_state
def import_command(
    state: CliState,
    target: str,
    format_: str | None,
    source: str | None,
    mapping: str | None,
    type_: str | None,
    tlp: str | None,
    confidence: int | None,
    delimiter: str | None,
    header: str | None,
) -> None:
    """Import indicators from a FILE (a MISP feed: its directory), ``-`` for stdin, or a URL.

    STIX 2.1 bundles, MISP events and feeds, CSV with a column mapping, plain lists. One
    transaction: a bad input changes nothing. The last line is JSON with the counts."""
    from quell.intel.service import import_bytes
    from quell.intel.service import import_path as import_file

    runtime = state.runtime()
    options: dict[str, Any] = {
        "mapping": mapping,
        "type": type_,
        "tlp": tlp,
        "confidence": confidence,
        "delimiter": delimiter,
        "header": header,
    }
    options = {key: value for key, value in options.items() if value is not None}
    who = actor()
    if target.startswith(("http://", "https://")):
        data = asyncio.run(_download(runtime, target))
        name = urlsplit(target).path.rstrip("/").rsplit("/", 1)[-1] or "download"
        report = import_bytes(
            runtime, data, format_=format_, source=source or name, options=options, actor=who,
            name=name,
        )  # fmt: skip
    elif target == "-":
        data = sys.stdin.buffer.read(runtime.settings.intel_max_bytes + 1)
        report = import_bytes(
            runtime, data, format_=format_, source=source or "stdin", options=options, actor=who,
            name="stdin",
        )  # fmt: skip
    else:
        path = Path(target)
        if not path.exists():
            raise click.BadParameter(f"no such file or directory: {target}", param_hint="TARGET")
        report = import_file(
            runtime, path, format_=format_, source=source, options=options, actor=who
        )
    for item in report.unsupported_items[:20]:
        click.echo(f"unsupported: {item.where}: {item.reason}", err=True)
    if len(report.unsupported_items) > 20:
        click.echo(f"unsupported: ... {len(report.unsupported_items) - 20} more", err=True)
    click.echo(
        f"{report.source}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.expired} expired, "
        f"{report.unsupported} unsupported"
        + (f", {report.withdrawn} withdrawn" if report.withdrawn else "")
    )
    counts = report.as_dict(items=0)
    counts.pop("unsupported_items")
    click.echo(codec.dumps_str(counts))


async def _download(runtime: Any, url: str) -> bytes:
    """GET ``url`` through the outbound policy, refusing a body over the import limit."""
    import aiohttp

    from quell.intel.feeds import FeedError
    from quell.intel.taxii import display_url, read_limited
    from quell.sdk.http import OutboundBlocked, OutboundPolicy, guard

    session = guard(OutboundPolicy.parse(runtime.settings.outbound_allow))
    shown = display_url(url)
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise FeedError(f"{shown} answered HTTP {response.status}")
            return await read_limited(response, runtime.settings.intel_max_bytes, shown)
    except OutboundBlocked as exc:
        raise FeedError(f"{shown}: {exc}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FeedError(f"{shown} could not be read: {type(exc).__name__}") from None
    finally:
        await session.close()


@intel_group.command("lookup")
@click.argument("value")
@click.option("--type", "type_", type=click.Choice(TYPES), help="Default: guessed from VALUE.")
@click.option(
    "--tlp",
    type=click.Choice(TLPS, case_sensitive=False),
    default="clear",
    help="The value's own TLP: it is never sent to a service whose ceiling it reaches.",
)
@click.option("--local", is_flag=True, help="Only the store and the allow-list; ask no service.")
@click.option("--source", "only", multiple=True, help="Ask only this enrichment instance.")
@json_option
@pass_state
def lookup(
    state: CliState,
    value: str,
    type_: str | None,
    tlp: str,
    local: bool,
    only: tuple[str, ...],
    as_json: bool,
) -> None:
    """The verdict on VALUE (an IP, domain, URL, hash or e-mail address), with its reasons."""
    from quell.intel.service import guess_type

    runtime = state.runtime()
    kind = type_ or guess_type(value)
    result = asyncio.run(
        runtime.enricher.lookup(
            kind,
            value,
            tlp=Tlp.parse(tlp),
            external=not local,
            only=only or None,
            actor=actor(),
        )
    )
    if as_json:
        print_json(result.as_dict())
        return
    click.echo(f"{result.type} {result.value}: {result.verdict.label} (score {result.score})")
    for reason in result.reasons:
        click.echo(f"  {reason.source} [{reason.kind}] {reason.verdict.label}: {reason.says}")
    if not result.reasons:
        click.echo("  nothing known")


@intel_group.command("show")
@click.argument("indicator_id")
@pass_state
def show(state: CliState, indicator_id: str) -> None:
    """One indicator, whole, with its latest sightings (JSON)."""
    print_json(state.runtime().intel.get(indicator_id))


@intel_group.command("list")
@click.option("--source", help="Only this source's indicators.")
@click.option("--type", "type_", type=click.Choice(TYPES), help="Only indicators of this type.")
@click.option("--contains", help="Part of the value.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, help="At most this many.")
@json_option
@pass_state
def list_indicators(
    state: CliState,
    source: str | None,
    type_: str | None,
    contains: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Indicators, oldest first."""
    rows = state.runtime().intel.search(source=source, type_=type_, contains=contains, limit=limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["ID", "SOURCE", "TYPE", "VALUE", "CONF", "TLP", "VALID UNTIL", "SIGHTINGS"],
        [
            [
                r["id"], r["source"], r["type"], r["value"][:60], r["confidence"] or "-", r["tlp"],
                show_time(r["valid_until"]), r["sightings"],
            ]
            for r in rows
        ],
    )  # fmt: skip


@intel_group.command("stats")
@json_option
@pass_state
def stats(state: CliState, as_json: bool) -> None:
    """Indicators by source and type, and how many are live."""
    counts = state.runtime().intel.counts()
    if as_json:
        print_json(counts)
        return
    print_table(
        ["SOURCE", "TYPE", "INDICATORS", "LIVE"],
        [[r["source"], r["type"], r["indicators"], r["live"]] for r in counts["sources"]],
    )
    click.echo(f"total: {counts['total']}")


@intel_group.command("export")
@click.option("--source", help="Only this source's indicators.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@pass_state
def export(state: CliState, source: str | None, out: Path | None) -> None:
    """The indicators and their sightings as a STIX 2.1 bundle."""
    from quell.intel.stix_export import export_bundle

    bundle = export_bundle(state.runtime().intel, source=source)
    data = codec.dumps_str(bundle, indent=True)
    if out is None:
        click.echo(data)
    else:
        out.write_text(data + "\n")
        click.echo(f"{len(bundle['objects'])} objects written to {out}", err=True)


@intel_group.group("allow")
def allow_group() -> None:
    """Known-good values: a match is safe, whatever else says."""


@allow_group.command("add")
@click.argument("type_", metavar="TYPE", type=click.Choice(TYPES))
@click.argument("value")
@click.option("--reason", required=True, help="Why it is known good (shown in every verdict).")
@click.option(
    "--exact", is_flag=True, help="A domain only, not its subdomains (default: with them)."
)
@pass_state
def allow_add(state: CliState, type_: str, value: str, reason: str, exact: bool) -> None:
    """Allow VALUE (an IP or range, a domain and its subdomains, a URL, a hash, an address)."""
    from quell.intel.service import allow

    entry = allow(
        state.runtime(), type_, value, reason, actor=actor(), match="exact" if exact else None
    )
    click.echo(f"allowed {entry.type} {entry.value} ({entry.match}): {entry.reason}")


@allow_group.command("list")
@json_option
@pass_state
def allow_list(state: CliState, as_json: bool) -> None:
    """The allow-list."""
    entries = state.runtime().intel.allowlist()
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    print_table(
        ["ID", "TYPE", "VALUE", "MATCH", "REASON", "BY"],
        [[e.id, e.type, e.value, e.match, e.reason, e.created_by] for e in entries],
    )


@allow_group.command("remove")
@click.argument("entry")
@pass_state
def allow_remove(state: CliState, entry: str) -> None:
    """Remove an allow-list entry, by id or value."""
    from quell.intel.service import disallow

    removed = disallow(state.runtime(), entry, actor=actor())
    click.echo(f"removed {removed.type} {removed.value}")


intel_group.add_command(feed_group)
