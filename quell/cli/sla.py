"""``quell sla show|set|reset``: the SLA policy per incident severity (:mod:`quell.cases.sla`).

An incident's clocks are shown by ``quell incident show`` (``slas`` with ``--json``).
"""

from __future__ import annotations

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state
from quell.ingest.model import Severity

# quell.cases.sla.SEVERITIES by name, without loading the SLA service (and SQLAlchemy) for help.
SEVERITY_NAMES = [s.name.lower() for s in Severity if Severity.INFORMATIONAL <= s <= Severity.FATAL]

_TARGET = "e.g. 15m, 4h, 3d; 'none' for no SLA (left out: unchanged)."


@click.group("sla")
def sla_group() -> None:
    """SLA targets per incident severity: time to acknowledge, to contain and to close."""


@sla_group.command("show")
@json_option
@pass_state
def show(state: CliState, as_json: bool) -> None:
    """Each severity's targets, and whether they are the defaults."""
    from quell.cases.sla import METRICS

    policy = [p.as_dict() for p in state.runtime().sla.policy()]
    if as_json:
        print_json(policy)
        return
    print_table(
        ["SEVERITY", "ACKNOWLEDGE", "CONTAIN", "CLOSE", "SET BY", "SET AT"],
        [
            [
                p["severity"],
                *(p[metric] or "-" for metric in METRICS),
                "(default)" if p["default"] else p["updated_by"] or "-",
                show_time(p["updated_at"]),
            ]
            for p in policy
        ],
    )


@sla_group.command("set")
@click.argument("severity", type=click.Choice(SEVERITY_NAMES, case_sensitive=False))
@click.option("--acknowledge", help=f"Time to acknowledge (leave new): {_TARGET}")
@click.option("--contain", help=f"Time to contain (or close): {_TARGET}")
@click.option("--close", help=f"Time to close: {_TARGET}")
@json_option
@pass_state
def set_targets(
    state: CliState,
    severity: str,
    acknowledge: str | None,
    contain: str | None,
    close: str | None,
    as_json: bool,
) -> None:
    """Change a severity's targets; its incidents' running clocks move with them."""
    policy = state.runtime().sla.set_policy(
        severity, by=actor(), acknowledge=acknowledge, contain=contain, close=close
    )
    _print(policy.as_dict(), as_json)


@sla_group.command("reset")
@click.argument("severity", type=click.Choice(SEVERITY_NAMES, case_sensitive=False))
@json_option
@pass_state
def reset(state: CliState, severity: str, as_json: bool) -> None:
    """Go back to a severity's default targets."""
    _print(state.runtime().sla.reset_policy(severity, by=actor()).as_dict(), as_json)


def _print(policy: dict[str, object], as_json: bool) -> None:
    from quell.cases.sla import METRICS

    if as_json:
        print_json(policy)
        return
    targets = ", ".join(f"{m} {policy[m] or 'none'}" for m in METRICS)
    click.echo(f"{policy['severity']}: {targets}")
