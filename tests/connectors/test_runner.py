"""The script runner: off by default, and bounded when an admin turns it on.

Local scripts run for real (bash, through the SDK harness in this process): their arguments,
stdin and environment, their exit status, the timeout that kills their whole process group,
the bound on their output (and on the memory it costs), the temporary directory they run in.
Remote scripts run on a real OpenSSH server in a network namespace (the ``sshd`` fixture of
tests/connectors/conftest.py), the connector in the client namespace.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from quell.connectors.runner import PATH, Runner, RunnerConfig
from quell.sdk import ActionError
from quell.sdk.testing import Harness
from tests.connectors.netlab import Lab
from tests.connectors.ssh_call import call_in_client

ENABLED: dict[str, Any] = {"enabled": True}


def _run(
    config: dict[str, Any] | None, inputs: dict[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    """runner.run in this process, as the engine calls it: its output, or the error."""

    async def scenario() -> dict[str, Any]:
        async with Harness(Runner, config=config) as harness:
            try:
                output = await harness.call("run", inputs, dry_run=dry_run)
            except ActionError as exc:
                return {"ok": False, "error": exc.to_dict()}
        return {"ok": True, "output": output}

    return asyncio.run(scenario())


def _processes_with(marker: str) -> list[int]:
    """The live processes whose command line holds ``marker`` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _gone(marker: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_default_instance_refuses_every_script() -> None:
    for dry_run in (False, True):
        refused = _run(None, {"script": "echo hi"}, dry_run=dry_run)
        assert refused["ok"] is False
        assert refused["error"]["code"] == "runner_disabled"
        message = refused["error"]["message"]
        assert """quell connector add NAME --type runner --config '{"enabled": true""" in message
    assert RunnerConfig().enabled is False

    async def health() -> None:
        async with Harness(Runner) as harness:
            await harness.health()

    with pytest.raises(ActionError, match="disabled"):
        asyncio.run(health())


def test_an_enabled_local_bash_script_gets_its_args_and_stdin() -> None:
    script = 'echo "args: $1|$2|$#"\nread -r line\necho "stdin: $line"\necho warned >&2'
    done = _run(ENABLED, {"script": script, "args": ["one", "two words"], "stdin": "hello\n"})
    assert done["ok"], done
    output = done["output"]
    assert output["stdout"] == "args: one|two words|2\nstdin: hello\n"
    assert output["stderr"] == "warned\n"
    assert output["exit_status"] == 0
    assert (output["shell"], output["location"]) == ("bash", "local")
    assert output["truncated"] is False
    assert output["simulated"] is False


def test_a_script_sees_only_the_configured_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_TEST_LEAK", "leaked")
    config = {**ENABLED, "env": {"CASE_ID": "case 42", "TOKEN": "it's"}}
    done = _run(config, {"script": "env"})
    assert done["ok"], done
    seen = dict(line.split("=", 1) for line in done["output"]["stdout"].splitlines())
    assert "RUNNER_TEST_LEAK" not in seen
    assert (seen["CASE_ID"], seen["TOKEN"]) == ("case 42", "it's")
    assert (seen["PATH"], seen["LANG"]) == (PATH, "C.UTF-8")
    # bash's own (PWD, SHLVL, _) and nothing else of the worker's.
    assert set(seen) <= {"CASE_ID", "TOKEN", "PATH", "LANG", "PWD", "SHLVL", "_"}


def test_an_unexpected_exit_status_fails_with_its_code() -> None:
    failed = _run(ENABLED, {"script": "echo first >&2\necho 'it broke' >&2\nexit 4"})
    assert failed["ok"] is False
    assert failed["error"]["code"] == "command_failed"
    assert failed["error"]["message"] == "the script exited with 4: it broke"
    expected = _run(ENABLED, {"script": "exit 4", "expect_exit": [0, 4]})
    assert expected["output"]["exit_status"] == 4


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = f"quell-runner-marker-{secrets.token_hex(6)}"
    pid_file = tmp_path / "child.pid"
    script = f'(exec -a {marker} sleep 1000) &\necho $! > "$1"\nsleep 1000\n'
    started = time.monotonic()
    timed_out = _run({**ENABLED, "timeout": 1}, {"script": script, "args": [str(pid_file)]})
    assert time.monotonic() - started < 10
    assert timed_out["ok"] is False
    assert timed_out["error"]["code"] == "timeout"
    assert timed_out["error"]["retryable"] is True
    child = int(pid_file.read_text())
    assert _gone(marker), f"left running: {_processes_with(marker)}"
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def test_nothing_a_script_started_outlives_it() -> None:
    marker = f"quell-runner-marker-{secrets.token_hex(6)}"
    script = f"(exec -a {marker} sleep 1000) >/dev/null 2>&1 &\necho started"
    done = _run(ENABLED, {"script": script})
    assert done["output"]["stdout"] == "started\n"
    assert _gone(marker), f"left running: {_processes_with(marker)}"


def test_output_is_bounded_and_so_is_the_memory_it_costs() -> None:
    script = (
        "head -c 10000000 /dev/zero | tr '\\0' a\n"
        "head -c 10000000 /dev/zero | tr '\\0' b >&2\n"
        "echo end"
    )
    tracemalloc.start()
    try:
        done = _run({**ENABLED, "max_output": 4096}, {"script": script})
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done["ok"], done
    output = done["output"]
    assert output["stdout"] == "a" * 4096
    assert output["stderr"] == "b" * 4096
    assert output["truncated"] is True
    assert peak < 3 * 1024 * 1024, f"{peak} bytes at the peak for 20 MB of output"


def test_a_script_runs_in_a_fresh_temporary_directory_removed_after(tmp_path: Path) -> None:
    script = "pwd\ntouch left-behind\nls"
    first = _run(ENABLED, {"script": script})["output"]["stdout"].splitlines()
    second = _run(ENABLED, {"script": script})["output"]["stdout"].splitlines()
    assert first[1:] == second[1:] == ["left-behind"]  # each started empty
    assert first[0] != second[0]
    for folder in (Path(first[0]), Path(second[0])):
        assert folder.parent == Path(tempfile.gettempdir())
        assert folder.name.startswith("quell-runner-")
        assert not folder.exists()
    kept = _run({**ENABLED, "workdir": str(tmp_path)}, {"script": script})
    assert kept["output"]["stdout"].splitlines()[0] == str(tmp_path)
    assert (tmp_path / "left-behind").exists()  # an admin's workdir is the admin's to clean
    missing = _run({**ENABLED, "workdir": str(tmp_path / "nope")}, {"script": "pwd"})
    assert missing["error"]["code"] == "workdir_missing"


def test_powershell_is_refused_when_pwsh_is_not_installed() -> None:
    assert shutil.which("pwsh", path=PATH) is None  # (the image has no PowerShell)
    config = {**ENABLED, "shell": "powershell"}
    missing = _run(config, {"script": "Get-Date"})
    assert missing["error"]["code"] == "runner_unavailable"
    assert "pwsh is not installed" in missing["error"]["message"]
    with_args = _run(config, {"script": "Get-Date", "args": ["x"]})
    assert with_args["error"]["code"] == "invalid_input"


def test_inputs_are_checked_before_anything_runs() -> None:
    too_long = _run({**ENABLED, "max_script": 10}, {"script": "echo 0123456789"})
    assert too_long["error"]["code"] == "invalid_input"
    assert "at most 10" in too_long["error"]["message"]
    nul = _run(ENABLED, {"script": "echo a\0b"})
    assert nul["error"]["code"] == "invalid_input"
    unknown = _run(ENABLED, {"script": "true", "shell": "zsh"})
    assert unknown["error"]["code"] == "invalid_input"


def test_a_dry_run_runs_nothing(tmp_path: Path) -> None:
    target = tmp_path / "made"
    pretend = _run(ENABLED, {"script": f"touch {target}"}, dry_run=True)
    assert pretend["ok"], pretend
    assert pretend["output"]["simulated"] is True
    assert pretend["output"]["exit_status"] is None
    assert not target.exists()


def test_the_script_and_env_values_are_never_logged() -> None:
    with capture_logs() as logs:
        done = _run(
            {**ENABLED, "env": {"API": "s3cret-env-value"}},
            {"script": "echo s3cret-script-text >/dev/null"},
        )
    assert done["ok"], done
    assert "s3cret" not in repr(logs)
    (logged,) = [entry for entry in logs if entry["event"] == "runner_script"]
    assert logged["script_length"] == len("echo s3cret-script-text >/dev/null")
    assert (logged["shell"], logged["location"], logged["exit_status"]) == ("bash", "local", 0)


def test_the_configuration_is_checked() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    ssh = {"location": "ssh", "host": "h", "username": "u", "known_hosts": f"h {key}"}
    RunnerConfig.model_validate(ssh)
    cases = [
        ({"enabled": True, "commands": {}}, "Extra inputs are not permitted"),
        ({**ssh, "known_hosts": "h ssh-ed25519 x"}, "not OpenSSH known_hosts"),
        ({"location": "ssh", "host": "h"}, "location ssh needs username, known_hosts"),
        ({"host": "h"}, "host: only for location ssh"),
        ({**ssh, "port": 0}, "greater than or equal to 1"),
        ({"workdir": "relative/dir"}, "absolute path"),
        ({"env": {"BAD-NAME": "x"}}, "env name"),
        ({"timeout": 7200}, "less than or equal to 3600"),
        ({"shell": "zsh"}, "'bash' or 'powershell'"),
    ]
    for config, message in cases:
        with pytest.raises(ValidationError, match=message):
            RunnerConfig.model_validate(config)


# --- location ssh: a real sshd in the lab's firewall namespace ------------------------------


def _remote(lab: Lab, sshd: dict[str, Any], inputs: dict[str, Any], **changes: Any) -> Any:
    config = {
        "enabled": True,
        "location": "ssh",
        "host": sshd["host"],
        "port": sshd["port"],
        "username": "root",
        "known_hosts": sshd["known_hosts"],
        **changes,
    }
    return call_in_client(
        lab,
        {"connector": "runner", "config": config,
         "secrets": {"private_key": sshd["client_key"]}, "action": "run", "input": inputs},
    )  # fmt: skip


@pytest.mark.requires("nftables", "sshd")
def test_a_bash_script_runs_on_a_host_over_ssh(lab: Lab, sshd: dict[str, Any]) -> None:
    script = 'echo "remote: $1|$#|$CASE_ID"\npwd\nenv\necho warned >&2'
    done = _remote(
        lab, sshd, {"script": script, "args": ["a b"]},
        env={"CASE_ID": "it's 42"}, workdir=str(sshd["folder"]),
    )  # fmt: skip
    assert done["ok"], done
    output = done["output"]
    lines = output["stdout"].splitlines()
    assert lines[0] == "remote: a b|1|it's 42"
    assert lines[1] == str(sshd["folder"])
    names = {line.split("=", 1)[0] for line in lines[2:]}
    assert "SSH_CONNECTION" not in names  # the session's own environment is not passed on
    assert {"PATH", "LANG", "CASE_ID"} <= names
    assert output["stderr"] == "warned\n"
    assert (output["location"], output["exit_status"]) == ("ssh", 0)
    failed = _remote(lab, sshd, {"script": "echo gone >&2; exit 3"})
    assert failed["error"]["code"] == "command_failed"
    assert failed["error"]["message"] == "the script exited with 3: gone"
    stdin = _remote(lab, sshd, {"script": "cat", "stdin": "x"})
    assert stdin["error"]["code"] == "invalid_input"


@pytest.mark.requires("nftables", "sshd")
def test_a_remote_script_is_bounded_and_the_host_key_pinned(lab: Lab, sshd: dict[str, Any]) -> None:
    flood = _remote(
        lab, sshd, {"script": "head -c 5000000 /dev/zero | tr '\\0' a"}, max_output=2048
    )
    assert flood["output"]["stdout"] == "a" * 2048
    assert flood["output"]["truncated"] is True
    slow = _remote(lab, sshd, {"script": "sleep 3"}, timeout=0.5)
    assert slow["error"]["code"] == "timeout"
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = _remote(
        lab, sshd, {"script": "true"}, known_hosts=f"[{sshd['host']}]:{sshd['port']} {other}"
    )
    assert wrong["error"]["code"] == "host_key_mismatch"
