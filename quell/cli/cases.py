"""``quell incident update|note|notes|task …``: working a case from the command line
(``quell.cli.app`` adds :data:`COMMANDS` to ``quell incident``)."""

from __future__ import annotations

import click

from quell.cli.evidence import evidence_group
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state

STATUSES = ["new", "triage", "contained", "eradicated", "recovered", "closed"]
RESOLUTIONS = ["true_positive", "benign", "false_positive", "duplicate"]


@click.command("update")
@click.argument("incident_id")
@click.option("--status", type=click.Choice(STATUSES), help="The NIST SP 800-61 phase.")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), help="Needed to close.")
@click.option(
    "--severity-id", type=click.IntRange(1, 6), help="1 informational .. 5 critical, 6 fatal."
)
@click.option("--priority", type=click.IntRange(1, 4), help="1 (most urgent) to 4.")
@click.option("--title", help="A new title.")
@click.option("--owner", help="Who owns the case ('' clears it).")
@click.option("--assignee", help="Who works it now ('' clears it).")
@click.option("--tag", "tags", multiple=True, help="The tags (replacing them; repeat it).")
@click.option("--technique", "techniques", multiple=True, help="ATT&CK ids (replacing them).")
@click.option("--comment", help="Why (kept on the timeline and in the audit trail).")
@json_option
@pass_state
def update(
    state: CliState,
    incident_id: str,
    status: str | None,
    resolution: str | None,
    severity_id: int | None,
    priority: int | None,
    title: str | None,
    owner: str | None,
    assignee: str | None,
    tags: tuple[str, ...],
    techniques: tuple[str, ...],
    comment: str | None,
    as_json: bool,
) -> None:
    """Change an incident: status, resolution, severity, priority, owner, assignee, tags."""
    changes = state.runtime().cases.update(
        incident_id,
        by=actor(),
        status=status,
        resolution=resolution,
        severity_id=severity_id,
        priority=priority,
        title=title,
        owner=owner,
        assignee=assignee,
        tags=tags or None,
        techniques=techniques or None,
        comment=comment,
    )
    if as_json:
        print_json(changes)
        return
    if not changes:
        click.echo("nothing changed")
    for field, (before, after) in changes.items():
        click.echo(f"{field}: {before} -> {after}")


@click.command("note")
@click.argument("incident_id")
@click.argument("text")
@pass_state
def note(state: CliState, incident_id: str, text: str) -> None:
    """Add a note to an incident."""
    added = state.runtime().cases.add_note(incident_id, text, by=actor())
    click.echo(f"note {added.id} added")


@click.command("notes")
@click.argument("incident_id")
@json_option
@pass_state
def notes(state: CliState, incident_id: str, as_json: bool) -> None:
    """An incident's notes, oldest first."""
    found = state.runtime().cases.notes(incident_id)
    if as_json:
        print_json([n.as_dict() for n in found])
        return
    for item in found:
        click.echo(f"{show_time(item.created_at)}  {item.author}: {item.body}")


@click.group("task")
def task_group() -> None:
    """Tasks on incidents."""


@task_group.command("add")
@click.argument("incident_id")
@click.argument("title")
@click.option("--assignee", help="Who should do it.")
@click.option("--description", help="More on what to do.")
@pass_state
def add_task(
    state: CliState, incident_id: str, title: str, assignee: str | None, description: str | None
) -> None:
    """Add a task to an incident."""
    task = state.runtime().cases.add_task(
        incident_id, title, by=actor(), assignee=assignee, description=description
    )
    click.echo(f"task {task.id} added")


@task_group.command("list")
@click.argument("incident_id", required=False)
@click.option("--status", type=click.Choice(["open", "done", "cancelled"]), help="Only these.")
@json_option
@pass_state
def list_tasks(state: CliState, incident_id: str | None, status: str | None, as_json: bool) -> None:
    """Tasks of an incident (or of all), oldest first."""
    found = state.runtime().cases.tasks(incident_id, status=status)
    if as_json:
        print_json([t.as_dict() for t in found])
        return
    print_table(
        ["ID", "INCIDENT", "STATUS", "ASSIGNEE", "CREATED", "TITLE"],
        [
            [t.id, t.incident_id, t.status, t.assignee or "-", show_time(t.created_at), t.title]
            for t in found
        ],
    )


@task_group.command("done")
@click.argument("task_id")
@click.option("--result", help="What came of it.")
@click.option("--cancel", is_flag=True, help="Cancelled rather than done.")
@pass_state
def done(state: CliState, task_id: str, result: str | None, cancel: bool) -> None:
    """Complete (or cancel) a task."""
    task = state.runtime().cases.complete_task(task_id, by=actor(), result=result, cancel=cancel)
    click.echo(f"task {task.id} {task.status}")


@click.command("merge")
@click.argument("incident_id")
@click.option("--into", required=True, help="The incident it merges into.")
@click.option("--comment", help="Why.")
@pass_state
def merge(state: CliState, incident_id: str, into: str, comment: str | None) -> None:
    """Merge an incident into another (it closes as a duplicate)."""
    state.runtime().cases.merge(incident_id, into, by=actor(), comment=comment)
    click.echo(f"{incident_id} merged into {into}")


@click.command("split")
@click.argument("incident_id")
@click.argument("alert_ids", nargs=-1, required=True)
@click.option("--title", help="The new incident's title (default: its first alert's).")
@pass_state
def split(state: CliState, incident_id: str, alert_ids: tuple[str, ...], title: str | None) -> None:
    """Split alerts off an incident into a new one; prints the new id."""
    new = state.runtime().cases.split(incident_id, alert_ids, by=actor(), title=title)
    click.echo(new)


@click.command("search")
@click.argument("words", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(1, 500), default=20, help="At most this many.")
@json_option
@pass_state
def search(state: CliState, words: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Incidents whose text (title, notes, tasks, tags, alerts, observables) has every word."""
    found = state.runtime().incident_search.search(" ".join(words), limit=limit)
    if as_json:
        print_json([{**incident.as_dict(), "rank": rank} for incident, rank in found])
        return
    print_table(
        ["ID", "STATUS", "SEV", "LAST SEEN", "TITLE"],
        [
            [i.id, i.status.value, i.severity.label.lower(), show_time(i.last_seen), i.title[:60]]
            for i, _rank in found
        ],
    )


COMMANDS = (update, note, notes, task_group, merge, split, search, evidence_group)
