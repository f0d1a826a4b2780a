"""``quell approval rule …`` and four-eyes decisions at the CLI, on both backends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quell.clock import ManualClock
from quell.playbooks.compiler import parse_playbook
from quell.runtime import Runtime
from quell.sdk import SecretValue
from tests.cli.conftest import Invoke
from tests.cli.processes import quell_command
from tests.engine.harness import ENDED, Harness
from tests.engine.peer import Peer

PASSWORD = "correct horse battery staple"
CONTAIN = """
id: contain
name: Contain a host
inputs: {host: {type: string, required: true}}
steps:
  - {id: isolate, action: test.contain, with: {target: "{{ host }}"}}
"""


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    # The test's actions (test.contain): a rule naming actions there are not is refused.
    return {"QUELL_DATABASE_URL": database_url, "QUELL_PLUGINS": "tests.engine.peer"}


def test_rules_and_four_eyes_from_the_command_line(
    invoke: Invoke, env: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    Peer.reset()
    # The CLI runs on the system clock: the test's clock is brought to now, so the
    # approval's expiry (4 h) lies ahead for both.
    clock = runtime.clock
    assert isinstance(clock, ManualClock)
    clock.advance(datetime.now(UTC) - clock.now())
    for name, role in [("alice", "approver"), ("bob", "approver"), ("olga", "analyst"),
                       ("adam", "admin")]:  # fmt: skip
        runtime.users.add(name, role, password=SecretValue(PASSWORD), by="setup")
    runtime.connector_instances.create(  # no outbound allow-list here: the guard refuses it
        "soc-chat", "notify", {"format": "slack"},
        {"webhook_url": SecretValue("http://127.0.0.1:9/hook")},
    )  # fmt: skip
    made = invoke(
        "approval", "rule", "set", "contain", "--action", "test.*", "--risk", "high",
        "--approvals", "2", "--role", "approver", "--expires-after", "4h", env=env,
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    wrong = invoke("approval", "rule", "set", "x", "--role", "overlord", env=env)
    assert wrong.exit_code == 1
    assert "unknown role 'overlord'" in wrong.stderr
    for option, name, said in [
        ("--action", "test.contian", "'test.contian' matches no action (did you mean"),
        ("--action", "nftables.dney*", "'nftables.dney*' matches no action"),
        ("--connector", "nftabls", "no connector 'nftabls' (did you mean 'nftables'?)"),
    ]:
        never = invoke("approval", "rule", "set", "x", option, name, env=env)
        assert (never.exit_code, said in never.stderr) == (1, True), never.stderr
    from_file = tmp_path / "rule.yaml"
    from_file.write_text("match: {initiator: person}\napprovals: 7\n")
    refused = invoke("approval", "rule", "set", "y", "--file", str(from_file), env=env)
    assert refused.exit_code == 1
    assert "approvals" in refused.stderr
    from_file.write_text("match: {initiator: person\napprovals: 2\n")  # a YAML mistake
    broken = invoke("approval", "rule", "set", "y", "--file", str(from_file), env=env)
    assert broken.exit_code == 1
    assert f"{from_file}:2:" in broken.stderr
    assert "Traceback" not in broken.stderr
    (rule,) = json.loads(invoke("approval", "rule", "list", "--json", env=env).stdout)
    assert (rule["name"], rule["approvals"], rule["expires_after"]) == ("contain", 2, 14_400)
    assert rule["match"] == {"risks": ["high"], "actions": ["test.*"]}

    async def scenario() -> str:
        async with Harness(runtime) as harness:
            playbook = parse_playbook(CONTAIN, "t.yaml", actions=harness.registry)
            version = runtime.playbooks.register(playbook, created_by="dana", published=True).id
            run_id = await harness.engine.start(version, {"host": "ws-3"}, created_by="carol")
            assert (await harness.settle(run_id)).status == "waiting"
            (wait,) = harness.waits.list_all(kind="approval")

            def cli(*args: str, password: str = PASSWORD) -> tuple[int, str]:
                done = invoke("approval", *args, env=env, input=f"{password}\n")
                return done.exit_code, done.stdout + done.stderr

            # A link is its user's credential: printed only to that user, else sent.
            code, out = await asyncio.to_thread(cli, "link", wait.id, "--user", "alice")
            assert (code, "a link is alice's credential" in out) == (1, True), out
            code, out = await asyncio.to_thread(
                cli, "link", wait.id, "--user", "alice", "--as", "adam"
            )
            assert (code, "a link is alice's credential" in out) == (1, True), out
            code, out = await asyncio.to_thread(
                cli, "link", wait.id, "--user", "alice", "--as", "alice"
            )  # an approver's own link (a walkthrough found approvers could not get one)
            assert code == 0, out
            assert "/api/approval-links/qa_" in out
            code, out = await asyncio.to_thread(
                cli, "link", wait.id, "--user", "bob", "--via", "soc-chat", "--as", "alice"
            )  # sending one to someone else is runs:control's, as through the API
            assert (code, "lacks the permission 'runs:control'" in out) == (1, True), out
            code, out = await asyncio.to_thread(cli, "link", wait.id, "--user", "olga", "--as",
                                                "olga")  # fmt: skip
            assert (code, "lacks the permission 'approvals:decide'" in out) == (1, True), out
            # Sending that fails is an error, not a traceback (here: the outbound guard).
            code, out = await asyncio.to_thread(
                cli, "link", wait.id, "--user", "bob", "--via", "soc-chat"
            )
            assert code == 1, out
            assert "error: the link for bob was not sent through 'soc-chat': " in out
            assert "blocked" in out
            assert "Traceback" not in out

            # --as signs in: a wrong password decides nothing.
            code, out = await asyncio.to_thread(
                lambda: cli("approve", wait.id, "--as", "alice", "-m", "x", password="guess")
            )
            assert (code, "invalid" in out.lower()) == (1, True)

            code, out = cli("approve", wait.id, "--as", "alice")
            assert (code, "Missing option '--comment'" in out) == (2, True)
            code, out = await asyncio.to_thread(cli, "approve", wait.id, "--as", "olga", "-m", "x")
            assert (code, "lacks the permission 'approvals:decide'" in out) == (1, True)
            code, out = await asyncio.to_thread(cli, "approve", wait.id, "--as", "alice", "-m",
                                                "confirmed")  # fmt: skip
            assert code == 0, out
            assert f"{wait.id}: approved by alice; 1 of 2 approvals\n" in out
            code, out = await asyncio.to_thread(cli, "approve", wait.id, "--as", "alice", "-m",
                                                "again")  # fmt: skip
            assert (code, "alice already approved this" in out) == (1, True)
            listed = json.loads(await asyncio.to_thread(lambda: cli("list", "--json")[1]))
            assert listed[0]["approvals"] == ["alice"]
            code, out = await asyncio.to_thread(cli, "approve", wait.id, "--as", "bob", "-m",
                                                "agreed")  # fmt: skip
            assert code == 0, out
            assert out.startswith(f"{wait.id}: approved (run {run_id}")
            return (await harness.settle(run_id, until=ENDED)).status

    assert asyncio.run(scenario()) == "succeeded"
    assert list(Peer.applied.values()) == ["ws-3"]


def test_a_piped_password_for_as_is_read_without_getpass_warnings(tmp_path: Path) -> None:
    """``--as USER`` with the password piped in (a script, CI) printed getpass's warning and
    traceback lines, since it cannot hide what a pipe does not echo. A piped password is read
    as one line; no terminal is involved (a new session has none)."""
    done = subprocess.run(
        [*quell_command(), "approval", "approve", "wai_nope", "--as", "alice", "-m", "x"],
        input="not-her-password\n",
        env={**os.environ, "QUELL_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert "error:" in done.stderr  # the login is refused: no such user, or a wrong password
