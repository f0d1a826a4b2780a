"""``quell playbook``, ``run``, ``task`` and ``worker`` (``approval``: quell.cli.approvals)."""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from quell import codec
from quell.cli.output import json_option, print_json, print_table, show_time
from quell.cli.state import CliState, pass_state
from quell.errors import InvalidInput

if TYPE_CHECKING:
    from quell.engine.service import RunView
    from quell.playbooks.ir import Playbook
    from quell.runtime import Runtime


def actor() -> str:
    """Who a CLI decision is recorded as."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _inputs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        value = codec.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"--input is not JSON: {exc}", field="input") from None
    if not isinstance(value, dict):
        raise InvalidInput("--input must be a JSON object", field="input")
    return value


def compile_file(runtime: Runtime, path: Path) -> Playbook:
    """Compile a playbook file against the installed actions, secrets and playbooks."""
    from quell.connectors.registry import Registry
    from quell.engine.actions import EnvSecrets
    from quell.playbooks.compiler import parse_playbook

    registry = Registry.discover(runtime.settings.plugins)
    return parse_playbook(
        path.read_bytes(),
        str(path),
        actions=registry,
        secrets=EnvSecrets(),
        playbooks=runtime.playbooks,
    )


@click.group("playbook")
def playbook_group() -> None:
    """Validate, add, run and test playbooks."""


@playbook_group.command("validate")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--cacao",
    "cacao_mode",
    type=click.Choice(["strict", "lenient"]),
    help="Check CACAO 2.0 JSON against the official schemas (strict: JSON Schema 2020-12, "
    "unevaluatedProperties enforced; lenient: draft-07 as the schemas declare) and the "
    "reference checks; one line per problem naming its JSON path.",
)
@pass_state
def validate(state: CliState, files: tuple[Path, ...], cacao_mode: str | None) -> None:
    """Check playbooks; one line per problem (file:line:col: message), exit 1 if any."""
    from quell.playbooks.compiler import PlaybookInvalid
    from quell.playtest.cases import is_cases_file

    if cacao_mode is not None:
        from quell.playbooks.cacao.schema import schemas_dir

        if cacao_mode == "strict" and schemas_dir() is None:
            raise InvalidInput(
                "--cacao strict checks against the official CACAO JSON schemas, and they are "
                "not here: set QUELL_CACAO_SCHEMAS to the schemas/ folder of a checkout of "
                "github.com/oasis-open/cacao-json-schemas"
            )
        failed = False
        for path in files:
            failed = not _validate_cacao(path, cacao_mode) or failed
        if failed:
            raise SystemExit(1)
        return
    runtime = state.runtime()
    failed = False
    for path in files:
        if _looks_cacao(path):
            failed = not _validate_cacao(path, "lenient") or failed
            continue
        if is_cases_file(path):
            failed = not _validate_cases(state, path) or failed
            continue
        try:
            playbook = compile_file(runtime, path)
        except PlaybookInvalid as exc:
            failed = True
            for problem in exc.problems:
                click.echo(str(problem))
            continue
        except InvalidInput as exc:
            failed = True
            click.echo(exc.message)
            continue
        click.echo(
            f"{path}: valid ({playbook.id} v{playbook.version}, {len(playbook.steps)} steps)",
            err=True,
        )
    if failed:
        raise SystemExit(1)


def _looks_cacao(path: Path) -> bool:
    from quell.engine.library import _is_cacao_text

    return path.suffix.lower() == ".json" and _is_cacao_text(path.read_bytes())


def _validate_cacao(path: Path, mode: str) -> bool:
    """Validate one CACAO file: errors on stdout (``file: $.path: message``), warnings and
    signature checks on stderr; whether it has no error."""
    from quell.playbooks.cacao.importer import import_cacao
    from quell.playbooks.cacao.schema import CacaoInvalid, load_cacao, validate_cacao

    try:
        doc = load_cacao(path.read_bytes(), str(path))
    except InvalidInput as exc:
        click.echo(f"{path}: $: {exc.message}")
        return False
    problems = validate_cacao(doc, "strict" if mode == "strict" else "lenient")
    errors = [p for p in problems if p.severity == "error"]
    for problem in errors:
        click.echo(f"{path}: {problem.path}: {problem.message}")
    for problem in problems:
        if problem.severity != "error":
            click.echo(f"{path}: warning: {problem.path}: {problem.message}", err=True)
    if errors:
        return False
    try:  # what the schema and references cannot catch: conditions, commands Quell reads
        imported = import_cacao(doc, mode="strict" if mode == "strict" else "lenient")
    except CacaoInvalid as exc:
        for problem in exc.problems:
            click.echo(f"{path}: {problem.path}: {problem.message}")
        return False
    except InvalidInput as exc:
        click.echo(f"{path}: $: {exc.message}")
        return False
    for check in imported.report.signatures:
        click.echo(f"{path}: signature {check['id']}: {check['reason']}", err=True)
    for item in imported.report.unsupported:
        click.echo(f"{path}: unsupported: {item['path']}: {item['reason']}", err=True)
    click.echo(f"{path}: valid CACAO 2.0 ({mode}, {imported.report.steps} steps)", err=True)
    return True


def _validate_cases(state: CliState, path: Path) -> bool:
    """Check a test cases file against its playbook (``quell playbook validate`` globs both)."""
    from quell.connectors.registry import Registry
    from quell.playtest.suite import SuiteInvalid, locate, prepare

    registry = Registry.discover(state.settings.plugins)
    try:
        suite = prepare(*locate(path), registry)
    except SuiteInvalid as exc:
        for problem in exc.problems:
            click.echo(problem)
        return False
    count = len(suite.cases.cases)
    click.echo(f"{path}: valid ({count} test cases of {suite.playbook.id})", err=True)
    return True


@playbook_group.command("schema")
def schema() -> None:
    """Print the playbook language's JSON Schema (for editors)."""
    from quell.playbooks.dsl import json_schema

    print_json(json_schema())


def _library(runtime: Runtime) -> Any:
    from quell.engine.actions import EnvSecrets
    from quell.engine.cacao import attach
    from quell.engine.library import ConfiguredSecrets, PlaybookLibrary

    library = PlaybookLibrary(
        runtime.db,
        runtime.playbooks,
        runtime.registry,
        ConfiguredSecrets(EnvSecrets(), runtime.connector_instances),
        review_required=runtime.settings.playbook_review == "required",
        audit=runtime.audit,
    )
    attach(library, runtime)
    return library


def _as(state: CliState, as_user: str | None, permission: str) -> str:
    from quell.cli.approvals import acting_user
    from quell.governance.permissions import Permission

    return acting_user(state, as_user, Permission(permission))[0]


_AS = click.option(
    "--as", "as_user", metavar="USER", help="Act as this Quell user (asks their password)."
)


@playbook_group.command("add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--publish",
    is_flag=True,
    help="Publish it at once (only where playbook_review is 'optional'; else it is a draft "
    "to submit for review).",
)
@_AS
@json_option
@pass_state
def add(state: CliState, path: Path, publish: bool, as_user: str | None, as_json: bool) -> None:
    """Store a playbook version as a draft (submit it for review to publish it)."""
    runtime = state.runtime()
    author = _as(state, as_user, "playbooks:write")
    version = _library(runtime).add(
        path.read_bytes(), str(path), created_by=author, activate=publish
    )
    if as_json:
        print_json(version.as_dict())
    else:
        shown = "active" if version.active else version.state
        click.echo(f"{version.playbook_id} v{version.version} {shown} ({version.id})")


_VERSION = click.option("--version", "version", type=int, help="The version (default: newest).")
_WHY = click.option("--comment", "-m", help="Why.")

_BIND = click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="ID=INSTANCE",
    help="Run a CACAO agent or target on this connector instance (an http-api one: on this "
    "base URL). Repeat for each.",
)


@playbook_group.command("import-cacao")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_BIND
@click.option(
    "--mode",
    type=click.Choice(["lenient", "strict"]),
    default="lenient",
    show_default=True,
    help="How strictly the file is validated first.",
)
@click.option("--publish", is_flag=True, help="Publish at once (where review is optional).")
@click.option(
    "--on",
    "trigger_on",
    metavar="EVENT",
    help="Start it by itself on this event (alert.created, incident.created, incident.updated, "
    "incident.sla_breached, schedule) once published.",
)
@click.option("--if", "trigger_if", metavar="EXPR", help="With --on: a condition on the event.")
@click.option("--cron", "trigger_cron", metavar="CRON", help="With --on schedule: when.")
@_AS
@json_option
@pass_state
def import_cacao_command(
    state: CliState,
    path: Path,
    binds: tuple[str, ...],
    mode: str,
    publish: bool,
    trigger_on: str | None,
    trigger_if: str | None,
    trigger_cron: str | None,
    as_user: str | None,
    as_json: bool,
) -> None:
    """Import a CACAO 2.0 playbook as a draft version, and report what it needs."""
    from quell.engine.cacao import attach, check_bindings, parse_trigger

    runtime = state.runtime()
    author = _as(state, as_user, "playbooks:write")
    library = _library(runtime)
    service = library.cacao or attach(library, runtime)
    from quell.playbooks.cacao.schema import CacaoInvalid

    try:
        version, report = service.import_text(
            path.read_bytes(), str(path), by=author,
            mode="strict" if mode == "strict" else "lenient",
            bindings=check_bindings(binds), activate=publish,
            triggers=parse_trigger(trigger_on, trigger_if, trigger_cron),
        )  # fmt: skip
    except CacaoInvalid as exc:  # every problem, each with its JSON path
        if as_json:
            print_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
        else:
            for problem in exc.problems:
                click.echo(f"{path}: {problem.path}: {problem.message}")
        raise SystemExit(1) from None
    answer = {**report.as_dict(), "version": version.version, "state": version.state,
              "version_id": version.id}  # fmt: skip
    if as_json:
        print_json(answer)
        return
    click.echo(f"{version.playbook_id} v{version.version} {version.state} ({report.steps} steps)")
    for item in report.unsupported:
        click.echo(f"  unsupported: {item['path']}: {item['reason']}")
    for item in report.needs:
        click.echo(f"  needs: {item['message']}")
    for item in report.warnings:
        click.echo(f"  warning: {item['path']}: {item['message']}")
    for check in report.signatures:
        click.echo(f"  signature {check['id']}: {check['reason']}")
    for auth in report.credentials:
        click.echo(f"  credentials of {auth}: moved into Quell's sealed secrets")


@playbook_group.command("export-cacao")
@click.argument("playbook_id")
@_VERSION
@click.option(
    "--sign", "sign", is_flag=True,
    help="Sign it (JSS) with the configured key (cacao_signing_key), or --key.",
)  # fmt: skip
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key to sign with (implies --sign).",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
@pass_state
def export_cacao_command(
    state: CliState,
    playbook_id: str,
    version: int | None,
    sign: bool,
    key_path: Path | None,
    output: Path | None,
) -> None:
    """Print a stored playbook as CACAO 2.0 JSON (notes on what only Quell runs: stderr)."""
    from quell.engine.cacao import attach

    runtime = state.runtime()
    library = _library(runtime)
    service = library.cacao or attach(library, runtime)
    key = None
    if sign or key_path is not None:
        from quell.playbooks.cacao.signatures import SigningKey

        key_file = key_path or runtime.settings.cacao_signing_key
        if key_file is None:
            raise InvalidInput("--sign needs a key: --key FILE, or set cacao_signing_key")
        key = SigningKey.from_file(Path(key_file), signee=runtime.settings.cacao_signee)
    doc, notes = service.export(playbook_id, version, signing_key=key)
    for note in notes:
        click.echo(f"note: {note['path']}: {note['message']}", err=True)
    import orjson

    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def _review_step(state: CliState, step: str, playbook_id: str, version: int | None,
                 comment: str | None, as_user: str | None, permission: str) -> None:  # fmt: skip
    runtime = state.runtime()
    by = _as(state, as_user, permission)
    kept = getattr(_library(runtime), step)(playbook_id, version, by=by, comment=comment)
    shown = "active" if kept.active else kept.state
    click.echo(f"{kept.playbook_id} v{kept.version}: {shown}")


@playbook_group.command("submit")
@click.argument("playbook_id")
@_VERSION
@_WHY
@_AS
@pass_state
def submit(state: CliState, playbook_id: str, version: int | None, comment: str | None,
           as_user: str | None) -> None:  # fmt: skip
    """Submit a draft for review."""
    _review_step(state, "submit", playbook_id, version, comment, as_user, "playbooks:write")


@playbook_group.command("publish")
@click.argument("playbook_id")
@_VERSION
@click.option("--comment", "-m", required=True, help="Why it may go live.")
@_AS
@pass_state
def publish(state: CliState, playbook_id: str, version: int | None, comment: str,
            as_user: str | None) -> None:  # fmt: skip
    """Approve a version under review: it is published and becomes active (not by its
    author)."""
    _review_step(state, "publish", playbook_id, version, comment, as_user, "playbooks:publish")


@playbook_group.command("reject")
@click.argument("playbook_id")
@_VERSION
@click.option("--comment", "-m", required=True, help="What must change.")
@_AS
@pass_state
def reject(state: CliState, playbook_id: str, version: int | None, comment: str,
           as_user: str | None) -> None:  # fmt: skip
    """Send a version under review back to draft."""
    _review_step(state, "reject", playbook_id, version, comment, as_user, "playbooks:publish")


@playbook_group.command("rollback")
@click.argument("playbook_id")
@click.option("--version", "version", type=int, required=True, help="The earlier version.")
@_WHY
@_AS
@pass_state
def rollback(state: CliState, playbook_id: str, version: int, comment: str | None,
             as_user: str | None) -> None:  # fmt: skip
    """Make an earlier published version active again."""
    _review_step(state, "rollback", playbook_id, version, comment, as_user, "playbooks:publish")


@playbook_group.command("history")
@click.argument("playbook_id")
@json_option
@pass_state
def history(state: CliState, playbook_id: str, as_json: bool) -> None:
    """Who added, submitted, published, rejected or rolled back which version."""
    found = _library(state.runtime()).reviews(playbook_id)
    if as_json:
        print_json(found)
        return
    print_table(
        ["AT", "VERSION", "ACTION", "BY", "COMMENT"],
        [[show_time(r["at"]), r["version"], r["action"], r["by"], r["comment"] or ""]
         for r in found],
    )  # fmt: skip


@playbook_group.command("diff")
@click.argument("playbook_id")
@click.argument("old", type=int)
@click.argument("new", type=int)
@pass_state
def diff(state: CliState, playbook_id: str, old: int, new: int) -> None:
    """A unified diff between versions OLD and NEW."""
    click.echo("".join(_library(state.runtime()).diff(playbook_id, old, new)), nl=False)


@playbook_group.command("list")
@json_option
@pass_state
def list_playbooks(state: CliState, as_json: bool) -> None:
    """Stored playbook versions."""
    found = state.runtime().playbooks.list_all()
    if as_json:
        print_json([version.as_dict() for version in found])
        return
    print_table(
        ["PLAYBOOK", "VERSION", "STATE", "ACTIVE", "ID", "CREATED", "NAME"],
        [
            [
                v.playbook_id,
                v.version,
                v.state,
                "yes" if v.active else "",
                v.id,
                show_time(v.created_at),
                v.name,
            ]
            for v in found
        ],
    )


@playbook_group.command("run")
@click.argument("target")
@click.option("--input", "input_text", help="Run inputs as a JSON object (or @file.json).")
@click.option("--dry-run", is_flag=True, help="Run reads; record the writes it would make.")
@click.option("--wait", is_flag=True, help="Run it here and wait until it ends.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after seconds.")
@_BIND
@json_option
@pass_state
def run(
    state: CliState,
    target: str,
    input_text: str | None,
    dry_run: bool,
    wait: bool,
    timeout: float | None,
    binds: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run a playbook file, or a stored playbook by id."""
    from quell.ids import new_id

    runtime = state.runtime()
    inputs = _inputs(input_text)
    path = Path(target)
    if path.is_file() and _looks_cacao(path):
        from quell.engine.cacao import check_bindings

        library = _library(runtime)
        version, _report = library.cacao.import_text(
            path.read_bytes(), str(path), by=actor(), bindings=check_bindings(binds)
        )
        playbook = runtime.playbooks.ir(version.id)
    elif path.is_file():
        playbook = compile_file(runtime, path)
        version = runtime.playbooks.register(
            playbook, source=path.read_text(encoding="utf-8"), created_by=actor()
        )
    else:
        version = runtime.playbooks.resolve(target)
        playbook = runtime.playbooks.ir(version.id)
    _check_inputs(playbook, inputs)
    run_id = new_id("run")
    # The operator at the console may run a draft for real (a file being written); the trail
    # says which version, in which state, and who.
    state.audit(
        "run.start", run_id,
        {"playbook": version.playbook_id, "version": version.version, "state": version.state,
         "dry_run": dry_run, "from": "file" if path.is_file() else "stored"},
    )  # fmt: skip
    if wait:
        from quell import aio

        view = aio.run(
            _run_here(runtime, version.id, inputs, run_id, dry_run, timeout),
            runtime.settings.event_loop,
        )
    else:
        view = _enqueue(runtime, version.id, inputs, run_id, dry_run)
    if as_json:
        print_json(view.as_dict())
    elif wait:
        _print_run(view)
    else:
        click.echo(view.id)
    if wait and view.status == "failed":
        raise SystemExit(1)


@playbook_group.command("test")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--cases",
    "cases_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The cases file (default: FILE.test.yaml or FILE.tests.yaml beside FILE).",
)
@click.option(
    "--case",
    "names",
    multiple=True,
    metavar="NAME",
    help="Run only the case of this name (repeatable).",
)
@click.option(
    "--with",
    "with_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A sub-playbook file the playbook calls (repeatable).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=30.0,
    show_default=True,
    help="Seconds of wall time a case may take.",
)
@click.option("-v", "--verbose", is_flag=True, help="Print each run's step timeline too.")
@json_option
@pass_state
def playbook_test(
    state: CliState,
    files: tuple[Path, ...],
    cases_file: Path | None,
    names: tuple[str, ...],
    with_files: tuple[Path, ...],
    timeout: float,
    verbose: bool,
    as_json: bool,
) -> None:
    """Run the test cases written beside playbooks, with mocked actions.

    For foo.yaml the cases are in foo.test.yaml: each gives inputs, mocked action outputs
    and decisions for approvals, and the expected status, path, variables, outputs and calls.
    Each case runs through the real engine on a throwaway database; no action reaches a peer.
    Exit 0 when every case passes, 1 when one fails, 2 when a file is invalid.
    """
    from quell.connectors.registry import Registry
    from quell.playtest.report import case_lines, summary
    from quell.playtest.runner import PlaybookTest
    from quell.playtest.suite import SuiteInvalid, locate, prepare

    if cases_file is not None and len(files) > 1:
        raise click.UsageError("--cases goes with one playbook file")
    registry = Registry.discover(state.settings.plugins)
    suites = []
    problems: list[str] = []
    for path in dict.fromkeys(files):
        try:
            playbook_file, found = locate(path, cases_file)
            suites.append(prepare(playbook_file, found, registry, with_files=with_files))
        except SuiteInvalid as exc:
            problems.extend(exc.problems)
    known = [spec.case.name for suite in suites for spec in suite.cases.cases]
    for name in names:
        if suites and name not in known:
            listed = ", ".join(repr(case) for case in known)
            problems.append(f"no case is named {name!r} (the cases: {listed})")
    if problems:
        if as_json:
            print_json({"valid": False, "problems": problems})
        else:
            for problem in problems:
                click.echo(problem)
        raise SystemExit(2)
    report: list[dict[str, Any]] = []
    everything = []
    for suite in suites:
        cases = suite.selected(names)
        if not cases:
            continue
        tester = PlaybookTest(suite.playbook, registry, children=suite.children, timeout=timeout)
        results = tester.run(cases)
        everything.extend(results)
        if as_json:
            report.append(
                {
                    "playbook": str(suite.playbook_file),
                    "cases_file": str(suite.cases_file),
                    "cases": [result.as_dict() for result in results],
                }
            )
            continue
        click.echo(f"{suite.playbook_file} ({suite.cases_file.name}, {len(results)} cases)")
        for result in results:
            for line in case_lines(result):
                click.echo(line)
            if verbose and result.run is not None:
                _print_run(result.run)
    failed = sum(1 for result in everything if not result.passed)
    if as_json:
        print_json(
            {
                "passed": len(everything) - failed,
                "failed": failed,
                "files": report,
            }
        )
    else:
        click.echo(summary(everything))
    if failed:
        raise SystemExit(1)


def _check_inputs(playbook: Playbook, inputs: dict[str, Any]) -> None:
    from quell.engine.launch import check_inputs

    check_inputs(playbook, inputs, field="input")


def _enqueue(
    runtime: Runtime, version_id: str, inputs: dict[str, Any], run_id: str, dry_run: bool
) -> RunView:
    from quell.engine.engine import Engine
    from quell.engine.notify import notify_ready
    from quell.engine.service import RunService

    engine = Engine.for_runtime(runtime)
    row = engine.run_row(run_id, version_id, runtime.playbooks.ir(version_id).id, inputs,
                         dry_run=dry_run, created_by=actor())  # fmt: skip
    with runtime.db.write() as conn:
        engine.journal.insert_run.run(conn, [row])
        notify_ready(conn)  # a worker listening on PostgreSQL takes it at once
    return RunService(runtime.db, runtime.clock).get(run_id, with_steps=False)


async def _run_here(
    runtime: Runtime,
    version_id: str,
    inputs: dict[str, Any],
    run_id: str,
    dry_run: bool,
    give_up: float | None,
) -> RunView:
    from quell.engine.engine import Engine
    from quell.engine.service import RunService

    service = RunService(runtime.db, runtime.clock)
    engine = Engine.for_runtime(runtime, roots=[run_id], poll=0.2, tick=0.5)
    async with engine:
        stop = asyncio.Event()
        serving = asyncio.create_task(engine.serve(stop))
        try:
            await engine.start(
                version_id, inputs, dry_run=dry_run, created_by=actor(), run_id=run_id
            )
            async with asyncio.timeout(give_up):
                while True:
                    view = await asyncio.to_thread(service.get, run_id, with_steps=False)
                    if view.status in ("succeeded", "failed", "canceled"):
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            click.echo(f"{run_id}: not finished after {give_up:g}s", err=True)
        finally:
            stop.set()
            await serving
    return await asyncio.to_thread(service.get, run_id)


def _summary(value: Any, limit: int = 60) -> str:
    if value is None:
        return ""
    text = codec.dumps_str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _print_run(view: RunView) -> None:
    click.echo(
        f"run {view.id}  {view.playbook_id}  {view.status}"
        + ("  (dry run)" if view.dry_run else "")
    )
    if view.error:
        click.echo(f"error: {view.error.get('message', view.error)}")
    print_table(
        ["STEP", "STATUS", "TRY", "ACTION", "STARTED", "OUTPUT / ERROR"],
        [
            [
                step.key,
                step.status + (" (simulated)" if step.simulated else ""),
                step.attempt,
                step.action or step.kind,
                show_time(step.started_at),
                _summary(step.error.get("message") if step.error else step.output),
            ]
            for step in view.steps
        ],
    )


@click.group("run")
def run_group() -> None:
    """List, show and control runs."""


@run_group.command("list")
@click.option("--status", help="Only runs in this status.")
@click.option("--playbook", help="Only this playbook's runs.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="At most this many.",
)
@json_option
@pass_state
def list_runs(
    state: CliState, status: str | None, playbook: str | None, limit: int, as_json: bool
) -> None:
    """Runs, newest first."""
    from quell.engine.service import RunService

    runtime = state.runtime()
    found = RunService(runtime.db, runtime.clock).list_all(
        status=status, playbook=playbook, limit=limit
    )
    if as_json:
        print_json([view.as_dict(with_steps=False) for view in found])
        return
    print_table(
        ["RUN", "PLAYBOOK", "STATUS", "TRIGGER", "CREATED", "FINISHED"],
        [
            [
                v.id,
                v.playbook_id,
                v.status,
                v.trigger,
                show_time(v.created_at),
                show_time(v.finished_at),
            ]
            for v in found
        ],
    )


@run_group.command("show")
@click.argument("run_id")
@json_option
@pass_state
def show_run(state: CliState, run_id: str, as_json: bool) -> None:
    """A run and its step timeline."""
    from quell.engine.service import RunService

    runtime = state.runtime()
    view = RunService(runtime.db, runtime.clock).get(run_id)
    if as_json:
        print_json(view.as_dict())
    else:
        _print_run(view)


def _control(state: CliState, run_id: str, verb: str) -> None:
    from quell.engine.service import RunService

    runtime = state.runtime()
    service = RunService(runtime.db, runtime.clock)
    view = getattr(service, verb)(run_id)
    state.audit(f"run.{verb}", run_id, {"playbook": view.playbook_id, "status": view.status})
    pending = " (the worker holding it stops at its next step)" if view.status == "running" else ""
    click.echo(f"{view.id}: {view.status}{pending}")


@run_group.command("cancel")
@click.argument("run_id")
@pass_state
def cancel_run(state: CliState, run_id: str) -> None:
    """Cancel a run and its child runs."""
    _control(state, run_id, "cancel")


@run_group.command("pause")
@click.argument("run_id")
@pass_state
def pause_run(state: CliState, run_id: str) -> None:
    """Pause a run."""
    _control(state, run_id, "pause")


@run_group.command("resume")
@click.argument("run_id")
@pass_state
def resume_run(state: CliState, run_id: str) -> None:
    """Resume a paused run."""
    _control(state, run_id, "resume")


@run_group.command("retry")
@click.argument("run_id")
@pass_state
def retry_run(state: CliState, run_id: str) -> None:
    """Run a failed run again from its failed steps."""
    _control(state, run_id, "retry")


@click.group("task")
def task_group() -> None:
    """Manual tasks runs wait for (and writes nobody could reconcile)."""


@task_group.command("list")
@json_option
@pass_state
def list_tasks(state: CliState, as_json: bool) -> None:
    """Open tasks."""
    from quell.engine.waits import WaitService

    runtime = state.runtime()
    service = WaitService(runtime.db, runtime.clock)
    found = service.list_all(kind="task") + service.list_all(kind="reconcile")
    if as_json:
        print_json([wait.as_dict() for wait in found])
        return
    print_table(
        ["ID", "KIND", "RUN", "STEP", "PROMPT"],
        [[w.id, w.kind, w.run_id, w.step_key, w.prompt or ""] for w in found],
    )


@task_group.command("complete")
@click.argument("wait_id")
@click.option("--comment", "-m", help="What was done.")
@click.option(
    "--landed/--not-landed", default=None, help="For a reconcile task: did the write land?"
)
@pass_state
def complete_task(state: CliState, wait_id: str, comment: str | None, landed: bool | None) -> None:
    """Complete a task."""
    from quell.engine.waits import WaitService

    runtime = state.runtime()
    done = WaitService(runtime.db, runtime.clock).complete(wait_id, actor(), comment, landed=landed)
    click.echo(f"{done.id}: {done.status}")


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100_000),
    help="Runs at once (default: QUELL_ENGINE_CONCURRENCY).",
)
@pass_state
def worker_command(state: CliState, concurrency: int | None) -> None:
    """Run playbook runs from the database until interrupted (cluster mode)."""
    from quell.engine.worker import run_worker

    runtime = state.runtime()
    runtime.preflight()
    run_worker(runtime, concurrency=concurrency)
