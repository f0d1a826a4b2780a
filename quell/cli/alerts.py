"""``quell alert`` and ``quell incident``: read what ingestion and correlation made."""

from __future__ import annotations

import click

from quell import codec
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state


@click.group("alert")
def alert_group() -> None:
    """List and show alerts."""


@alert_group.command("list")
@click.option("--source", help="Only this source's alerts.")
@click.option("--incident", help="Only this incident's alerts.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="At most this many.",
)
@json_option
@pass_state
def list_alerts(
    state: CliState, source: str | None, incident: str | None, limit: int, as_json: bool
) -> None:
    """Alerts, newest received first."""
    from quell.ingest.alerts import render_alert

    found = state.runtime().alerts.list_all(source=source, incident_id=incident, limit=limit)
    if as_json:
        print_json([render_alert(alert) for alert in found])
        return
    print_table(
        ["ID", "TIME", "SEV", "COUNT", "SOURCE", "INCIDENT", "TITLE"],
        [
            [
                a.id,
                show_time(a.time),
                a.severity.label.lower(),
                a.count,
                a.source,
                a.incident_id or "-",
                a.title if len(a.title) <= 70 else a.title[:67] + "...",
            ]
            for a in found
        ],
    )


@alert_group.command("show")
@click.argument("alert_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["quell", "ocsf"]),
    default="quell",
    show_default=True,
    help="Quell's JSON or an OCSF Detection Finding.",
)
@pass_state
def show_alert(state: CliState, alert_id: str, fmt: str) -> None:
    """One alert as JSON (with its raw payload)."""
    from quell.ingest.alerts import render_alert
    from quell.ingest.ocsf import to_ocsf

    runtime = state.runtime()
    alert = runtime.alerts.get(alert_id)
    if fmt == "ocsf":
        print_json(to_ocsf(alert))
        return
    verdict = runtime.enricher.alert_verdict(alert_id)
    print_json({**render_alert(alert, with_raw=True), "verdict": verdict})


@click.group("incident")
def incident_group() -> None:
    """List and show incidents."""


@incident_group.command("list")
@click.option(
    "--status", help="open, or one of new, triage, contained, eradicated, recovered, closed."
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="At most this many.",
)
@json_option
@pass_state
def list_incidents(state: CliState, status: str | None, limit: int, as_json: bool) -> None:
    """Incidents, most recently active first."""
    found = state.runtime().incidents.list_all(status=status, limit=limit)
    if as_json:
        print_json([incident.as_dict() for incident in found])
        return
    print_table(
        ["ID", "STATUS", "SEV", "ALERTS", "FIRST SEEN", "LAST SEEN", "TITLE"],
        [
            [
                i.id,
                i.status.value,
                i.severity.label.lower(),
                i.alert_count,
                show_time(i.first_seen),
                show_time(i.last_seen),
                i.title if len(i.title) <= 60 else i.title[:57] + "...",
            ]
            for i in found
        ],
    )


@incident_group.command("show")
@click.argument("incident_id")
@json_option
@pass_state
def show_incident(state: CliState, incident_id: str, as_json: bool) -> None:
    """An incident with its alerts, correlation keys and timeline."""
    from quell.ingest.alerts import render_alert

    runtime = state.runtime()
    incident = runtime.incidents.get(incident_id)
    alerts = runtime.alerts.list_all(incident_id=incident_id, limit=1000)
    keys = runtime.incidents.keys(incident_id)
    timeline = runtime.incidents.full_timeline(incident_id)
    verdict = runtime.enricher.incident_verdict(incident_id)
    if as_json:
        print_json(
            {
                **incident.as_dict(),
                "keys": [{"type": t, "value": v} for t, v in keys],
                "verdict": verdict,
                "observables": runtime.enricher.incident_observables(incident_id),
                "notes": [n.as_dict() for n in runtime.cases.notes(incident_id)],
                "tasks": [t.as_dict() for t in runtime.cases.tasks(incident_id)],
                "slas": [c.as_dict() for c in runtime.sla.clocks(incident_id)],
                "evidence": [e.as_dict() for e in runtime.evidence.list(incident_id)],
                "alerts": [render_alert(a) for a in alerts],
                "timeline": timeline,
            }
        )
        return
    click.echo(
        f"{incident.id}  {incident.status.value}  {incident.severity.label}  {incident.title}"
    )
    click.echo(
        f"alerts {incident.alert_count}, {show_time(incident.first_seen)} .. "
        f"{show_time(incident.last_seen)}"
    )
    if incident.merged_into:
        click.echo(f"merged into {incident.merged_into}")
    click.echo(
        f"priority {incident.priority or '-'}, owner {incident.owner or '-'}, "
        f"assignee {incident.assignee or '-'}"
    )
    if incident.tags or incident.techniques:
        click.echo(f"tags: {', '.join(incident.tags) or '-'}; "
                   f"techniques: {', '.join(incident.techniques) or '-'}")  # fmt: skip
    click.echo("keys: " + (", ".join(f"{t}={v}" for t, v in keys) or "-"))
    click.echo(f"verdict: {verdict['verdict']} (score {verdict['score']})")
    for clock in runtime.sla.clocks(incident_id):
        click.echo(f"sla {clock.metric}: {clock.state}, due {show_time(clock.due_at)}")
    for reason in verdict["reasons"][:10]:
        click.echo(f"  {reason['observable']}: {reason['source']} says {reason['says']}")
    observables = runtime.enricher.incident_observables(incident_id)
    if observables:
        print_table(
            ["OBSERVABLE", "VALUE", "ALERTS", "VERDICT"],
            [[o["type"], o["value"], str(o["alerts"]), f"{o['verdict']} ({o['score']})"]
             for o in observables],
        )  # fmt: skip
    for event in timeline:
        click.echo(
            f"  {show_time(event['at'])}  {event['kind']}  {event['actor'] or '-'}  "
            f"{codec.dumps_str(event['data'])}"
        )
    for alert in alerts:
        click.echo(f"  {alert.id}  {show_time(alert.time)}  x{alert.count}  {alert.title}")
