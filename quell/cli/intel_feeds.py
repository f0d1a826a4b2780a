"""``quell intel feed``: intel feeds pulled on a schedule (a URL, a MISP feed, a TAXII 2.1
collection): add, list, show, pull now, enable, disable, remove.

Credentials never go on the command line (shell history and ``ps`` would keep them): a
password or a token is read from stdin (``--password-stdin``, ``--token-stdin``), sealed
under the secret key, and never shown back.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from quell import aio, codec
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state
from quell.errors import InvalidInput
from quell.sdk.secret import SecretValue

if TYPE_CHECKING:
    from quell.intel.feeds import Feed, FeedService
    from quell.runtime import Runtime

KINDS = ["url", "misp-feed", "taxii"]
FORMATS = ["stix", "misp", "csv", "list"]
TLPS = ["clear", "white", "green", "amber", "amber+strict", "red"]


def _service(runtime: Runtime) -> FeedService:
    from quell.intel.feeds import FeedService

    return FeedService.for_runtime(runtime)


def _stdin_secret(what: str) -> SecretValue:
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise InvalidInput(f"no {what} on stdin", field=what)
    return SecretValue(value)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("feed")
def feed_group() -> None:
    """Intel feeds pulled on a schedule: URLs, MISP feeds, TAXII 2.1 collections."""


@feed_group.command("add")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="url",
    show_default=True,
    help="url (one document), misp-feed (a MISP feed directory), taxii (a TAXII 2.1 server).",
)
@click.option("--url", required=True, help="The document, the MISP feed's directory, or the "
              "TAXII server's discovery (…/taxii2/) or API root URL.")  # fmt: skip
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    help="A url feed's format (misp-feed is misp, taxii is stix).",
)
@click.option("--interval", default="1h", show_default=True, help="How often: 15m, 6h, 1d.")
@click.option("--tlp", type=click.Choice(TLPS, case_sensitive=False), help="Default TLP.")
@click.option("--confidence", type=click.IntRange(0, 100), help="Default confidence.")
@click.option("--map", "mapping", help="CSV columns: 'column=target,...' (as intel import).")
@click.option("--type", "type_", help="A plain list's indicator type (default: auto).")
@click.option("--delimiter", help="CSV delimiter (default ,).")
@click.option(
    "--header",
    type=click.Choice(["first", "comment", "none"]),
    help="CSV: the header is the first line (default), the last '#' comment line (abuse.ch), "
    "or absent.",
)
@click.option("--collection", help="TAXII collection id (default: the only readable one).")
@click.option("--api-root", help="TAXII API root, a URL or a path (default: the server's).")
@click.option("--page-size", type=click.IntRange(1, 10_000), help="TAXII objects per page.")
@click.option(
    "--max-pages",
    type=click.IntRange(1, 100_000),
    help="TAXII pages or MISP events one pull reads (the next pull carries on).",
)
@click.option("--max-bytes", type=click.IntRange(1), help="Largest response (default 64 MiB).")
@click.option("--timeout", "timeout_s", type=click.IntRange(1, 3600), help="Seconds per request.")
@click.option("--username", help="HTTP basic user name (the password from --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--token-stdin", is_flag=True, help="Read a bearer token from stdin.")
@click.option("--disabled", is_flag=True, help="Keep it, but do not pull it on schedule.")
@json_option
@pass_state
def add_feed(
    state: CliState,
    name: str,
    kind: str,
    url: str,
    format_: str | None,
    interval: str,
    tlp: str | None,
    confidence: int | None,
    mapping: str | None,
    type_: str | None,
    delimiter: str | None,
    header: str | None,
    collection: str | None,
    api_root: str | None,
    page_size: int | None,
    max_pages: int | None,
    max_bytes: int | None,
    timeout_s: int | None,
    username: str | None,
    password_stdin: bool,
    token_stdin: bool,
    disabled: bool,
    as_json: bool,
) -> None:
    """Add a feed NAME (its indicators' source); it is due at once."""
    secret: dict[str, str | SecretValue] = {}
    if token_stdin and (password_stdin or username):
        raise InvalidInput("give --token-stdin, or --username with --password-stdin; not both")
    if token_stdin:
        secret["token"] = _stdin_secret("token")
    elif username or password_stdin:
        if not (username and password_stdin):
            raise InvalidInput("--username and --password-stdin go together", field="username")
        secret["username"] = username
        secret["password"] = _stdin_secret("password")
    settings: dict[str, Any] = {
        "tlp": tlp,
        "confidence": confidence,
        "mapping": mapping,
        "type": type_,
        "delimiter": delimiter,
        "header": header,
        "collection": collection,
        "api_root": api_root,
        "page_size": page_size,
        "max_pages": max_pages,
        "max_bytes": max_bytes,
        "timeout_s": timeout_s,
    }
    feed = _service(state.runtime()).add(
        name,
        kind=kind,
        url=url,
        format=format_,
        settings={key: value for key, value in settings.items() if value is not None},
        secret=secret or None,
        interval=interval,
        enabled=not disabled,
        by=actor(),
    )
    if as_json:
        print_json(feed.as_dict())
        return
    click.echo(f"added feed {feed.name} ({feed.kind}, {feed.format}, every "
               f"{_duration(feed.interval_s)})")  # fmt: skip


@feed_group.command("list")
@json_option
@pass_state
def list_feeds(state: CliState, as_json: bool) -> None:
    """Every feed: when it last succeeded, its last error, when it is pulled next."""
    feeds = _service(state.runtime()).list()
    if as_json:
        print_json([feed.as_dict() for feed in feeds])
        return
    print_table(
        ["NAME", "KIND", "FORMAT", "EVERY", "STATUS", "LAST SUCCESS", "LAST ERROR AT",
         "NEXT PULL", "LAST ERROR"],
        [
            [f.name, f.kind, f.format, _duration(f.interval_s),
             f.status if f.enabled else f"{f.status} (disabled)", show_time(f.last_success_at),
             show_time(f.last_error_at), show_time(f.next_pull_at), _one_line(f.last_error)]
            for f in feeds
        ],
    )  # fmt: skip


@feed_group.command("show")
@click.argument("name")
@json_option
@pass_state
def show_feed(state: CliState, name: str, as_json: bool) -> None:
    """One feed: its settings (never its credentials), position and last outcome."""
    feed = _service(state.runtime()).get(name)
    if as_json:
        print_json(feed.as_dict())
        return
    _print_feed(feed)


def _print_feed(feed: Feed) -> None:
    settings = {k: v for k, v in feed.settings.items() if not k.startswith("_")}
    rows: list[tuple[str, Any]] = [
        ("name", feed.name),
        ("kind", feed.kind),
        ("format", feed.format),
        ("url", feed.url),
        ("credentials", feed.auth or "none"),
        ("settings", codec.dumps_str(settings) if settings else "-"),
        ("every", _duration(feed.interval_s)),
        ("enabled", "yes" if feed.enabled else "no"),
        ("status", feed.status),
        ("failures in a row", feed.failures),
        ("last attempt", show_time(feed.last_attempt_at)),
        ("last success", show_time(feed.last_success_at)),
        ("last error at", show_time(feed.last_error_at)),
        ("last error", feed.last_error or "-"),
        ("next pull", show_time(feed.next_pull_at)),
        ("etag", feed.etag or "-"),
        ("last modified", feed.last_modified or "-"),
        ("last report", codec.dumps_str(_counts(feed.last_report)) if feed.last_report else "-"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label.ljust(width)}  {value}")


def _counts(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "unsupported_items"}


@feed_group.command("pull")
@click.argument("name")
@pass_state
@click.pass_context
def pull_feed(ctx: click.Context, state: CliState, name: str) -> None:
    """Pull NAME now. The last line is JSON with the counts; exit 1 when the pull failed."""
    runtime = state.runtime()
    service = _service(runtime)
    outcome = aio.run(service.pull(name, by=actor()), runtime.settings.event_loop)
    if outcome.error:
        click.echo(f"error: feed {name}: {outcome.error}", err=True)
    click.echo(codec.dumps_str(outcome.as_dict()))
    if not outcome.ok:
        ctx.exit(1)


@feed_group.command("enable")
@click.argument("name")
@pass_state
def enable_feed(state: CliState, name: str) -> None:
    """Pull NAME on schedule again."""
    _service(state.runtime()).set_enabled(name, True, by=actor())
    click.echo(f"enabled feed {name}")


@feed_group.command("disable")
@click.argument("name")
@pass_state
def disable_feed(state: CliState, name: str) -> None:
    """Stop pulling NAME on schedule (it can still be pulled by hand)."""
    _service(state.runtime()).set_enabled(name, False, by=actor())
    click.echo(f"disabled feed {name}")


@feed_group.command("remove")
@click.argument("name")
@pass_state
def remove_feed(state: CliState, name: str) -> None:
    """Forget NAME and its credentials (its indicators stay in the store)."""
    _service(state.runtime()).remove(name, by=actor())
    click.echo(f"removed feed {name}")
