"""``quell incident evidence add|list|get|custody|verify``: evidence attached to incidents, kept
by SHA-256, with its chain of custody (``quell.cli.cases`` adds the group to ``quell incident``).
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

import click

from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.playbooks import actor
from quell.cli.state import CliState, pass_state
from quell.errors import Conflict


@click.group("evidence")
def evidence_group() -> None:
    """Evidence on incidents: files kept by SHA-256, every read on the chain of custody."""


@evidence_group.command("add")
@click.argument("incident_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--name", help="The file name to keep (default: FILE's own name).")
@click.option("--media-type", help="Its media type (default: guessed from the name).")
@click.option("--description", help="What it is and where it came from.")
@json_option
@pass_state
def add(
    state: CliState,
    incident_id: str,
    file: Path,
    name: str | None,
    media_type: str | None,
    description: str | None,
    as_json: bool,
) -> None:
    """Attach FILE to an incident as evidence."""
    shown_name = name or file.name
    kind = media_type or mimetypes.guess_type(shown_name)[0] or "application/octet-stream"
    with file.open("rb") as source:
        added = state.runtime().evidence.add(
            incident_id, source, name=shown_name, media_type=kind, by=actor(),
            description=description,
        )  # fmt: skip
    if as_json:
        print_json(added.as_dict())
        return
    click.echo(f"evidence {added.id} added ({added.size} bytes, sha256 {added.sha256})")


@evidence_group.command("list")
@click.argument("incident_id")
@json_option
@pass_state
def list_evidence(state: CliState, incident_id: str, as_json: bool) -> None:
    """An incident's evidence, oldest first."""
    found = state.runtime().evidence.list(incident_id)
    if as_json:
        print_json([e.as_dict() for e in found])
        return
    print_table(
        ["ID", "NAME", "SIZE", "SHA256", "ADDED", "BY"],
        [[e.id, e.name, e.size, e.sha256[:16], show_time(e.added_at), e.added_by] for e in found],
    )


@evidence_group.command("get")
@click.argument("evidence_id")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write the bytes.",
)
@click.option("--purpose", help="Why it is read (kept on the chain of custody).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@pass_state
def get(state: CliState, evidence_id: str, out: Path, purpose: str | None, force: bool) -> None:
    """Write evidence's bytes to a file, checked against its SHA-256; the read is on the
    chain of custody."""
    if out.exists() and not force:
        raise Conflict(f"{out} exists; --force overwrites it", field="out")
    evidence, content = state.runtime().evidence.open(evidence_id, by=actor(), purpose=purpose)
    folder = out.parent if str(out.parent) else Path()
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=folder)
    temp = Path(name)
    try:
        with content, os.fdopen(handle, "wb") as target:
            shutil.copyfileobj(content, target, 1024 * 1024)
        temp.replace(out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    click.echo(f"{out}: {evidence.size} bytes, sha256 {evidence.sha256} (verified)")


@evidence_group.command("custody")
@click.argument("evidence_id")
@json_option
@pass_state
def custody(state: CliState, evidence_id: str, as_json: bool) -> None:
    """Evidence's chain of custody, oldest first: added, read, verified, verify_failed."""
    found = state.runtime().evidence.custody(evidence_id)
    if as_json:
        print_json([c.as_dict() for c in found])
        return
    print_table(
        ["AT", "ACTOR", "ACTION", "DETAIL"],
        [
            [
                show_time(c.at),
                c.actor,
                c.action,
                ", ".join(f"{k}={v}" for k, v in c.detail.items() if v is not None) or "-",
            ]
            for c in found
        ],
    )


@evidence_group.command("verify")
@click.argument("evidence_id")
@pass_state
def verify(state: CliState, evidence_id: str) -> None:
    """Check evidence's stored bytes against their SHA-256; exit 1 when they do not match."""
    service = state.runtime().evidence
    if service.verify(evidence_id, by=actor()):
        click.echo(f"{evidence_id}: intact (sha256 {service.get(evidence_id).sha256})")
        return
    problem = service.custody(evidence_id)[-1].detail.get("problem", "mismatch")
    click.echo(f"{evidence_id}: verification FAILED ({problem})", err=True)
    sys.exit(1)
