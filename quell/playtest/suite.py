"""A playbook file with its cases file and sub-playbooks: found, compiled and checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quell.connectors.registry import Registry
from quell.errors import InvalidInput
from quell.playbooks.compiler import PlaybookInvalid, parse_playbook
from quell.playbooks.ir import Playbook
from quell.playbooks.source import load
from quell.playtest.cases import (
    Case,
    CasesFile,
    CasesInvalid,
    Steps,
    cases_file_for,
    check_cases,
    is_cases_file,
    load_cases,
    playbook_file_for,
)


class SuiteInvalid(InvalidInput):
    """The playbook, a sub-playbook or the cases file has problems; one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(problems[0], problems=list(problems))
        self.problems = list(problems)


@dataclass
class Suite:
    """What ``quell playbook test`` runs for one playbook."""

    playbook_file: Path
    cases_file: Path
    playbook: Playbook
    cases: CasesFile
    children: list[Playbook] = field(default_factory=list)

    def selected(self, names: Sequence[str] = ()) -> list[Case]:
        """The cases of these names (all of them when no name is given)."""
        return [spec.case for spec in self.cases.cases if not names or spec.case.name in names]


class _Given:
    """PlaybookCatalog of the sub-playbook files a test was given."""

    def __init__(self, known: dict[str, set[int]]) -> None:
        self.known = known

    def exists(self, playbook_id: str, version: int | None) -> bool:
        versions = self.known.get(playbook_id)
        return versions is not None and (version is None or version in versions)


def locate(path: Path, cases: Path | None = None) -> tuple[Path, Path]:
    """The playbook file and its cases file, from either one (``cases`` overrides)."""
    if cases is None and is_cases_file(path):
        playbook = playbook_file_for(path)
        if playbook is None or not playbook.is_file():
            raise SuiteInvalid([f"{path}: no playbook beside it ({playbook} does not exist)"])
        return playbook, path
    found = cases or cases_file_for(path)
    if found is None:
        stem = path.name.rsplit(".", 1)[0]
        raise SuiteInvalid(
            [f"{path}: no test cases; write them in {path.with_name(stem + '.test.yaml')}"]
        )
    return path, found


def prepare(
    playbook_file: Path,
    cases_file: Path,
    registry: Registry,
    *,
    with_files: Sequence[Path] = (),
) -> Suite:
    """Compile the playbook and its sub-playbooks and check the cases against them."""
    problems: list[str] = []
    cases: CasesFile | None = None
    try:
        cases = load_cases(cases_file)
    except CasesInvalid as exc:
        problems.extend(str(problem) for problem in exc.problems)
    except InvalidInput as exc:
        problems.append(exc.message)
    child_files = [*(cases.playbooks if cases else []), *with_files]
    texts: dict[Path, bytes] = {}
    known: dict[str, set[int]] = {}
    for path in [playbook_file, *child_files]:
        try:
            texts[path] = path.read_bytes()
        except OSError as exc:
            problems.append(f"{path}: cannot read the playbook ({exc.strerror})")
            continue
        try:
            data = load(texts[path], str(path)).data
        except InvalidInput:
            continue  # compiling it reports why
        if isinstance(data, dict) and isinstance(data.get("id"), str) and path != playbook_file:
            version = data.get("version", 1)
            known.setdefault(data["id"], set()).add(version if isinstance(version, int) else 1)
    catalog = _Given(known)
    compiled: dict[Path, Playbook] = {}
    for path, text in texts.items():
        try:
            compiled[path] = parse_playbook(text, str(path), actions=registry, playbooks=catalog)
        except PlaybookInvalid as exc:
            problems.extend(_hinted(str(problem)) for problem in exc.problems)
        except InvalidInput as exc:
            problems.append(exc.message)
    playbook = compiled.get(playbook_file)
    children = [compiled[path] for path in child_files if path in compiled]
    if cases is not None and playbook is not None:
        steps = Steps(playbook, children)
        problems.extend(str(problem) for problem in check_cases(cases, steps, registry))
    if problems or cases is None or playbook is None:
        raise SuiteInvalid(problems or [f"{playbook_file}: cannot be tested"])
    return Suite(playbook_file, cases_file, playbook, cases, children)


def _hinted(problem: str) -> str:
    if ": no playbook " in problem and " is known" in problem:
        return problem + " (give its file under playbooks: in the cases file, or --with FILE)"
    return problem


__all__ = ["Suite", "SuiteInvalid", "locate", "prepare"]
