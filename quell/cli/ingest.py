"""``quell ingest``: files and stdin into alerts; the dead-letter queue.

``quell ingest [--source NAME | --format FORMAT] FILE|-`` reads JSON, a JSON array, NDJSON (an
EVE log) or text lines, and ends with one JSON line of counts. ``quell ingest errors`` lists
dead letters; ``quell ingest replay`` runs them again after a fix.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from quell import codec
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.errors import InvalidInput, NotFound
from quell.ingest.parsers import FORMATS

PROGRESS_THRESHOLD = 1024 * 1024  # files at least this large show a progress bar
WORKER_THRESHOLD = 4 * 1024 * 1024  # files at least this large are staged in a worker process


class IngestGroup(click.Group):
    """``quell ingest FILE`` runs the ``file`` command; other words name subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Route ``quell ingest [OPTIONS] FILE`` to ``quell ingest file``."""
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["file", *args]
        return super().parse_args(ctx, args)


@click.group("ingest", cls=IngestGroup)
def group() -> None:
    """Ingest alerts from a file or stdin, and manage the dead-letter queue.

    \b
    quell ingest --format suricata eve.json
    quell ingest --source siem-export alerts.ndjson
    cat alerts.json | quell ingest --format json -
    """


class _Counting:
    """Wraps a binary stream and reports how many bytes were read, for the progress bar."""

    def __init__(self, stream: IO[bytes], on_read: Any) -> None:
        self.stream = stream
        self.on_read = on_read

    def readline(self, size: int = -1) -> bytes:
        line = self.stream.readline(size)
        self.on_read(len(line))
        return line

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.on_read(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self.on_read(len(line))
            yield line


@group.command("file")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--source", "source_name", help="The source to ingest for (it must exist).")
@click.option(
    "--format",
    "format_name",
    type=click.Choice(FORMATS),
    help="The input format; without --source, a source named file-FORMAT is used (and made).",
)
@click.option(
    "--batch",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Records per transaction.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar (default: on for large files on a terminal).",
)
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    help="Processes that parse while this one writes: 0 to 8, or auto "
    "(1 for files of 4 MiB or more).",
)
@pass_state
def ingest_file(
    state: CliState,
    path: Path,
    source_name: str | None,
    format_name: str | None,
    batch: int,
    progress: bool | None,
    workers: str,
) -> None:
    """Ingest PATH ('-' for stdin); the last line printed is the JSON of counts."""
    from quell.aio import tune_gc
    from quell.ingest.parsers import parser_class
    from quell.ingest.records import iter_file_records
    from quell.ingest.staging import StagingPool

    runtime = state.runtime()
    source = _source(runtime, source_name, format_name)
    kind = parser_class(source.format).record_kind
    stream: IO[bytes]
    size: int | None = None
    if str(path) == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = path.open("rb")
            size = os.fstat(stream.fileno()).st_size
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="path") from None
    show = (
        progress
        if progress is not None
        else bool(size and size >= PROGRESS_THRESHOLD and sys.stderr.isatty())
    )
    processes = _workers(workers, size)
    pool = StagingPool(processes) if processes else None
    tune_gc()  # the commits unpickle and write many objects that form no cycles (quell.aio)
    try:
        with (
            stream,
            click.progressbar(
                length=size or 0, label=f"ingesting {path.name}", file=sys.stderr, hidden=not show
            ) as bar,
        ):
            batches = iter_file_records(_Counting(stream, bar.update), kind, batch=batch)
            total = runtime.pipeline.ingest_stream(source, batches, pool=pool)
    finally:
        if pool is not None:
            pool.close()
    click.echo(codec.dumps_str(total.as_dict()))


def _source(runtime: Any, source_name: str | None, format_name: str | None) -> Any:
    if source_name is None and format_name is None:
        raise InvalidInput("give --source NAME, or --format FORMAT", field="--format")
    if source_name is None:
        return runtime.sources.ensure(f"file-{format_name}", "file", str(format_name))
    try:
        source = runtime.sources.get(source_name)
    except NotFound:
        if format_name is None:
            raise
        source = runtime.sources.create(source_name, "file", format_name)
    if format_name is not None and source.format != format_name:
        raise InvalidInput(
            f"source {source.name!r} reads {source.format}, not {format_name}", field="--format"
        )
    return source


def _workers(value: str, size: int | None) -> int:
    if value == "auto":
        return 1 if size is not None and size >= WORKER_THRESHOLD else 0
    if value.isdigit() and int(value) <= 8:
        return int(value)
    raise InvalidInput("--workers must be 0 to 8, or auto", field="--workers")


@group.command("errors")
@click.option("--source", help="Only this source's dead letters.")
@click.option("--all", "everything", is_flag=True, help="Include replayed ones.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="At most this many.",
)
@json_option
@pass_state
def errors(
    state: CliState, source: str | None, everything: bool, limit: int, as_json: bool
) -> None:
    """List input that could not become alerts, with the exact reason."""
    from quell.ingest.deadletters import DeadLetterStatus

    letters = state.runtime().dead_letters.list_all(
        source=source, status=None if everything else DeadLetterStatus.PENDING, limit=limit
    )
    if as_json:
        print_json([letter.as_dict() for letter in letters])
        return
    print_table(
        ["ID", "SOURCE", "RECEIVED", "STATUS", "SIZE", "REASON"],
        [
            [
                letter.id,
                letter.source,
                show_time(letter.received_at),
                letter.status.value,
                len(letter.raw),
                letter.reason if len(letter.reason) <= 100 else letter.reason[:97] + "...",
            ]
            for letter in letters
        ],
    )


@group.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--source", help="Replay every pending dead letter of this source.")
@pass_state
def replay(state: CliState, ids: tuple[str, ...], source: str | None) -> None:
    """Run dead letters through their source again, after a mapping or parser fix."""
    from quell.ingest.deadletters import DeadLetterStatus

    runtime = state.runtime()
    if not ids and source is None:
        raise InvalidInput("give dead-letter ids, or --source NAME", field="ids")
    if ids:
        letters = [runtime.dead_letters.get(letter_id) for letter_id in ids]
        pending = [letter for letter in letters if letter.status is DeadLetterStatus.PENDING]
        result = runtime.pipeline.replay(pending)
    else:
        runtime.sources.get(source or "")  # names an unknown source
        result = runtime.pipeline.replay_source(source or "")
    state.audit(
        "ingest.replay", source,
        {"ids": list(ids)[:100], "replayed": result.replayed,
         "still_failing": result.still_failing},
    )  # fmt: skip
    click.echo(
        codec.dumps_str(
            {
                "replayed": result.replayed,
                "still_failing": result.still_failing,
                "stored": result.outcome.stored,
                "deduplicated": result.outcome.deduplicated,
                "suppressed": result.outcome.suppressed,
            }
        )
    )
