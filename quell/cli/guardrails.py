"""``quell guardrail``: the kill switch, hourly limits, protected assets, the circuit breaker."""

from __future__ import annotations

import click

from quell.cli.output import json_option, print_json
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state
from quell.sdk.actions import RiskLevel

RISKS = [level.value for level in RiskLevel]


@click.group("guardrail")
def guardrail_group() -> None:
    """Policy checked before every write a playbook makes (see quell.engine.guardrails)."""


@guardrail_group.command("show")
@json_option
@pass_state
def show(state: CliState, as_json: bool) -> None:
    """The guardrails as set now."""
    policy = state.runtime().guardrails.policy().as_dict()
    if as_json:
        print_json(policy)
        return
    switch = policy["kill_switch"]
    click.echo(
        f"kill switch: ON ({switch['reason']}, by {switch['by']} at {switch['at']})"
        if switch["on"]
        else "kill switch: off"
    )
    for limit in policy["limits"]:
        scope = f"action {limit['action']}" if limit["action"] else f"risk {limit['risk']}"
        click.echo(f"limit: {scope}: {limit['per_hour']} per hour")
    click.echo(f"protected: {', '.join(policy['protected']) or 'none'}")
    click.echo(f"protected tags: {', '.join(policy['protected_tags']) or 'none'}")
    for entry, tags in sorted(policy["asset_tags"].items()):
        click.echo(f"asset: {entry}: {', '.join(tags)}")
    breaker = policy["breaker"]
    click.echo(
        f"circuit breaker: opens at {breaker['failure_rate']:.0%} failed of at least "
        f"{breaker['min_runs']} runs in {breaker['window_minutes']} min"
        if breaker
        else "circuit breaker: off"
    )
    for playbook, detail in policy["open_circuits"].items():
        click.echo(f"open circuit: {playbook} since {detail.get('since')}")


@guardrail_group.command("kill-switch")
@click.argument("state_word", type=click.Choice(["on", "off"]))
@click.option("--reason", default="", help="Why (shown in every held run).")
@pass_state
def kill_switch(state: CliState, state_word: str, reason: str) -> None:
    """Hold (on) or release (off) every write of every run at once."""
    woken = state.runtime().guardrails.kill_switch(state_word == "on", by=actor(), reason=reason)
    if state_word == "on":
        click.echo("kill switch ON: every playbook write is held until it is turned off")
    else:
        click.echo(f"kill switch off: {woken} held run(s) go on")


@guardrail_group.group("limit")
def limit_group() -> None:
    """Hourly limits on automated executions, per action or per risk."""


def _scope(action: str | None, risk: str | None) -> dict[str, str | None]:
    return {"action": action, "risk": risk}


@limit_group.command("set")
@click.option("--action", help="An action key (nftables.deny).")
@click.option("--risk", type=click.Choice(RISKS), help="Every action of this risk.")
@click.option("--per-hour", type=int, required=True, help="Executions allowed per hour.")
@pass_state
def set_limit(state: CliState, action: str | None, risk: str | None, per_hour: int) -> None:
    """Set (or replace) a limit."""
    runtime = state.runtime()
    limit = runtime.guardrails.add_limit(
        per_hour, by=actor(), known=runtime.registry, **_scope(action, risk)
    )
    click.echo(f"limit {limit.scope}: {limit.per_hour} per hour")


@limit_group.command("remove")
@click.option("--action", help="An action key.")
@click.option("--risk", type=click.Choice(RISKS), help="A risk.")
@pass_state
def remove_limit(state: CliState, action: str | None, risk: str | None) -> None:
    """Remove a limit."""
    state.runtime().guardrails.remove_limit(by=actor(), **_scope(action, risk))
    click.echo("removed")


@guardrail_group.command("protect")
@click.argument("entries", nargs=-1)
@click.option("--tag", "tags", multiple=True, help="Protect every asset with this tag.")
@pass_state
def protect(state: CliState, entries: tuple[str, ...], tags: tuple[str, ...]) -> None:
    """Protect assets (addresses, networks, host names, or --tag TAG): writes naming them need
    a person's approval."""
    if not entries and not tags:
        raise click.UsageError("give assets to protect, or --tag TAG")
    guardrails = state.runtime().guardrails
    if entries:
        click.echo(f"protected: {', '.join(guardrails.protect(entries, by=actor()))}")
    if tags:
        click.echo(f"protected tags: {', '.join(guardrails.protect_tags(tags, by=actor()))}")


@guardrail_group.command("unprotect")
@click.argument("entries", nargs=-1)
@click.option("--tag", "tags", multiple=True, help="Stop protecting assets with this tag.")
@pass_state
def unprotect(state: CliState, entries: tuple[str, ...], tags: tuple[str, ...]) -> None:
    """Stop protecting assets (or --tag TAG)."""
    if not entries and not tags:
        raise click.UsageError("give assets, or --tag TAG")
    guardrails = state.runtime().guardrails
    if entries:
        listed = guardrails.unprotect(entries, by=actor())
        click.echo(f"protected: {', '.join(listed) or 'none'}")
    if tags:
        left = guardrails.protect_tags(tags, by=actor(), remove=True)
        click.echo(f"protected tags: {', '.join(left) or 'none'}")


@guardrail_group.command("tag")
@click.argument("entry")
@click.argument("tags", nargs=-1)
@click.option("--clear", is_flag=True, help="Remove the asset's tags.")
@pass_state
def tag(state: CliState, entry: str, tags: tuple[str, ...], clear: bool) -> None:
    """Tag an asset (an address, network or host name), replacing its tags: ``tag dc01.corp
    domain-controller crown-jewel``. Without tags, show them; ``--clear`` removes them."""
    guardrails = state.runtime().guardrails
    if clear and tags:
        raise click.UsageError("give tags, or --clear, not both")
    if tags or clear:
        assets = guardrails.tag_asset(entry, tags, by=actor())
    else:
        assets = guardrails.policy().asset_tags
    click.echo(f"{entry}: {', '.join(assets.get(entry.strip(), [])) or 'no tags'}")


@guardrail_group.group("breaker")
def breaker_group() -> None:
    """The circuit breaker that holds a playbook whose runs fail too often."""


@breaker_group.command("set")
@click.option(
    "--failure-rate", type=float, default=0.5, show_default=True, help="Share of runs failed."
)
@click.option(
    "--min-runs", type=int, default=10, show_default=True, help="Runs ended before it can open."
)
@click.option(
    "--window-minutes", type=int, default=15, show_default=True, help="How far back to look."
)
@pass_state
def set_breaker(state: CliState, failure_rate: float, min_runs: int, window_minutes: int) -> None:
    """Turn the breaker on with these thresholds."""
    from quell.engine.guardrails import Breaker

    state.runtime().guardrails.set_breaker(
        Breaker(failure_rate=failure_rate, min_runs=min_runs, window_minutes=window_minutes),
        by=actor(),
    )
    click.echo("circuit breaker on")


@breaker_group.command("off")
@pass_state
def breaker_off(state: CliState) -> None:
    """Turn the breaker off (open circuits stay open until reset)."""
    state.runtime().guardrails.set_breaker(None, by=actor())
    click.echo("circuit breaker off")


@breaker_group.command("reset")
@click.argument("playbook")
@pass_state
def reset(state: CliState, playbook: str) -> None:
    """Close PLAYBOOK's open circuit; its held runs go on."""
    woken = state.runtime().guardrails.reset_breaker(playbook, by=actor())
    click.echo(f"circuit of {playbook} closed: {woken} held run(s) go on")
