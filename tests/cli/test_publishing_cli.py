"""``quell playbook add|submit|publish|reject|rollback|history|diff`` with review required, on
both backends: at the CLI too, an author never publishes their own version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quell.runtime import Runtime
from quell.sdk import SecretValue
from tests.cli.conftest import Invoke

PASSWORD = "correct horse battery staple"
TEXT = """\
id: look
name: Look at a host
version: {version}
inputs: {{host: {{type: string, required: true}}}}
steps:
  - {{id: log, action: core.log, with: {{message: "{{{{ host }}}} v{version}"}}}}
"""


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "QUELL_DATABASE_URL": database_url,
        "QUELL_DATA_DIR": str(tmp_path / "cli-data"),
        "QUELL_PLAYBOOK_REVIEW": "required",
    }


def test_publishing_from_the_command_line(
    invoke: Invoke, env: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    runtime.users.add("dana", "author", password=SecretValue(PASSWORD), by="setup")
    runtime.users.add("pat", "approver", password=SecretValue(PASSWORD), by="setup")
    files = []
    for number in (1, 2):
        path = tmp_path / f"look-{number}.yaml"
        path.write_text(TEXT.format(version=number))
        files.append(path)

    def quell(*args: str) -> tuple[int, str]:
        done = invoke("playbook", *args, env=env, input=f"{PASSWORD}\n")
        return done.exit_code, done.stdout if done.exit_code == 0 else done.stderr

    assert quell("add", str(files[0]), "--publish", "--as", "dana")[0] == 1
    code, out = quell("add", str(files[0]), "--as", "dana")
    assert (code, out.split(" (")[0]) == (0, "look v1 draft")
    assert quell("submit", "look", "--as", "dana") == (0, "look v1: in_review\n")
    code, out = quell("publish", "look", "-m", "mine", "--as", "dana")
    assert code == 1
    assert "lacks the permission 'playbooks:publish'" in out
    code, out = quell("publish", "look", "-m", "fine", "--as", "pat")
    assert (code, out) == (0, "look v1: active\n")
    code, out = quell("add", str(files[0]), "--as", "dana")  # the same text: the same version
    assert (code, out.split(" (")[0]) == (0, "look v1 active")  # and no second "added" below
    quell("add", str(files[1]), "--as", "dana")
    quell("submit", "look", "--version", "2", "--as", "dana")
    assert quell("reject", "look", "--version", "2", "-m", "not yet", "--as", "pat") == (
        0, "look v2: draft\n",
    )  # fmt: skip
    quell("submit", "look", "--version", "2", "--as", "dana")
    assert quell("publish", "look", "-m", "ok now", "--as", "pat") == (0, "look v2: active\n")
    assert quell("rollback", "look", "--version", "1", "-m", "undo", "--as", "pat") == (
        0, "look v1: active\n",
    )  # fmt: skip
    code, out = quell("diff", "look", "1", "2")
    assert code == 0
    assert "-version: 1\n+version: 2\n" in out
    code, out = quell("history", "look", "--json")
    steps = [(r["version"], r["action"], r["by"]) for r in json.loads(out)]
    assert steps == [
        (1, "added", "dana"), (1, "submitted", "dana"), (1, "published", "pat"),
        (2, "added", "dana"), (2, "submitted", "dana"), (2, "rejected", "pat"),
        (2, "submitted", "dana"), (2, "published", "pat"), (1, "rolled_back", "pat"),
    ]  # fmt: skip
