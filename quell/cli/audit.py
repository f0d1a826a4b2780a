"""``quell audit``: read the audit trail, check its hash chain, and export it."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.errors import InvalidInput, QuellError


@click.group("audit")
def audit_group() -> None:
    """The audit trail: who did what to which, and why."""


@audit_group.command("list")
@click.option("--action", help="Only actions starting with this (guardrail., connector.).")
@click.option("--subject", help="Only events about this (a run/step, an instance, ...).")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@json_option
@pass_state
def list_events(
    state: CliState, action: str | None, subject: str | None, limit: int, as_json: bool
) -> None:
    """Events, newest first."""
    found = state.runtime().audit.list_all(action=action, subject=subject, limit=limit)
    if as_json:
        print_json([event.as_dict() for event in found])
        return
    print_table(
        ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT"],
        [[e.seq, show_time(e.at), e.actor, e.action, e.subject or "-"] for e in found],
    )


@audit_group.command("verify")
@click.option(
    "--file",
    "exported",
    type=click.File("rb"),
    help="Check an export (JSON Lines from quell audit export; '-': stdin) instead of the "
    "database.",
)
@pass_state
def verify(state: CliState, exported: IO[bytes] | None) -> None:
    """Check the hash chain; exit 1 naming the first event that does not fit."""
    if exported is not None:
        _verify_file(exported)
        return
    checked, broken = state.runtime().audit.verify()
    if broken is None:
        click.echo(f"audit trail intact: {checked} event(s) checked")
        return
    click.echo(f"audit trail BROKEN at event {broken} (after {checked} good ones)", err=True)
    sys.exit(1)


@audit_group.command("export")
@click.option(
    "--output",
    "-o",
    help="Write JSON Lines to this file ('-': standard output, the default without --syslog).",
)
@click.option(
    "--since",
    "since_seq",
    type=click.IntRange(min=0),
    default=0,
    help="Only events after this seq (the last one you already have).",
)
@click.option(
    "--after",
    "after_time",
    help="Only events recorded after this time (ISO 8601; UTC when it has no zone).",
)
@click.option(
    "--syslog",
    "syslog_target",
    metavar="HOST:PORT",
    help="Send each event as CEF in an RFC 5424 message to this syslog receiver.",
)
@click.option(
    "--protocol",
    type=click.Choice(["udp", "tcp", "tls"]),
    default="tcp",
    show_default=True,
    help="With --syslog: UDP datagrams, or octet-counted frames over TCP or TLS.",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --protocol tls: the CA bundle the receiver's certificate is checked against "
    "(default: the system's).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --protocol tls: a client certificate (PEM), for receivers that ask for one.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The client certificate's private key (PEM), if not in --tls-cert.",
)
@click.option(
    "--facility",
    type=click.IntRange(0, 23),
    default=13,
    show_default=True,
    help="Syslog facility (13: log audit).",
)
@click.option("--hostname", help="HOSTNAME in the syslog header (default: this machine's).")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep running: send (and write) new events as they are recorded, until Ctrl+C.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    help="With --follow: seconds between looks for new events.",
)
@pass_state
def export(
    state: CliState,
    output: str | None,
    since_seq: int,
    after_time: str | None,
    syslog_target: str | None,
    protocol: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    facility: int,
    hostname: str | None,
    follow: bool,
    interval: float,
) -> None:
    """Export the audit trail, oldest first: JSON Lines (with each event's hashes, so the chain
    can be checked again), and/or CEF over syslog to a SIEM.

    The last line on stderr says how many events went and the last seq: give it to --since
    next time to send only what is new.
    """
    from quell.governance.audit import iter_events
    from quell.governance.audit_export import (
        Protocol,
        SyslogSender,
        SyslogTarget,
        json_line,
        syslog_hostname,
        tls_context,
        to_syslog,
    )

    after = _parse_time(after_time) if after_time else None
    if protocol != "tls" and (tls_ca or tls_cert or tls_key):
        raise click.UsageError("--tls-ca, --tls-cert and --tls-key are for --protocol tls")
    target = SyslogTarget.parse(syslog_target) if syslog_target else None
    if target is None and output is None:
        output = "-"
    runtime = state.runtime()
    sender = None
    if target is not None:
        chosen = Protocol(protocol)
        context = tls_context(tls_ca, tls_cert, tls_key) if chosen is Protocol.TLS else None
        sender = SyslogSender(target, chosen, context=context)
    host = syslog_hostname(hostname)
    count, last = 0, since_seq
    with contextlib.ExitStack() as stack:
        if sender is not None:
            stack.callback(sender.close)
        out = _open_output(output, stack)
        try:
            while True:
                runtime.audit.drain()  # a run's action calls waiting in the outbox, first
                for event in iter_events(runtime.db, after_seq=last, after_time=after):
                    if out is not None:
                        out.write(json_line(event))
                    if sender is not None:
                        sender.send(to_syslog(event, hostname=host, facility=facility))
                    count, last = count + 1, event.seq
                if out is not None:
                    out.flush()
                if not follow:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass  # --follow ends with Ctrl+C: say how far it got
        except QuellError as exc:
            click.echo(f"exported {count} event(s); last seq {last}", err=True)
            raise type(exc)(f"{exc.message}; resume with --since {last}", **exc.details) from None
    if count == 0:
        since = (
            f"after {after_time} and seq {since_seq}" if after_time else f"after seq {since_seq}"
        )
        click.echo(f"exported 0 events: none {since}", err=True)
    else:
        click.echo(f"exported {count} event(s); last seq {last}", err=True)


def _parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--after") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _open_output(output: str | None, stack: contextlib.ExitStack) -> IO[bytes] | None:
    if output is None:
        return None
    if output == "-":
        return sys.stdout.buffer
    try:
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {output}: {exc.strerror}", param_hint="--output"
        ) from None
    return stack.enter_context(os.fdopen(descriptor, "wb"))


def _verify_file(exported: IO[bytes]) -> None:
    import orjson

    from quell.governance.audit import GENESIS, verify_exported

    def events() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(exported, 1):
            if not line.strip():
                continue
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise InvalidInput(f"line {number} is not a JSON object", field="file")
            first.setdefault("prev_hash", parsed.get("prev_hash"))
            yield parsed

    first: dict[str, Any] = {}
    checked, broken = verify_exported(events())
    if broken is None and checked == 0:  # an empty (or emptied) file proves nothing
        raise InvalidInput("the file holds no events: nothing to verify", field="file")
    if broken is None:
        start = "the first event" if first.get("prev_hash") == GENESIS else "mid-trail"
        click.echo(f"export intact: {checked} event(s) checked (it starts at {start})")
        return
    click.echo(f"export BROKEN at event {broken} (after {checked} good ones)", err=True)
    sys.exit(1)
