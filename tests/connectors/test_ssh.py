"""The ssh connector against a real OpenSSH server in a network namespace.

sshd runs in the lab's firewall namespace with its own host key, config and authorized key
(all in a temporary folder); the connector runs in the client namespace (through the SDK's
harness, in a child process) and reaches it over the veth pair: a real SSH session, a real
shell, real commands. Nothing listens in the host's own namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.connectors.netlab import Lab
from tests.fixtures.requirements import REPO_ROOT, requirement

SSHD = Path("/usr/sbin/sshd")


@requirement("sshd")
def _sshd() -> str | None:
    if not SSHD.exists():
        return "OpenSSH server is not installed (apt-get install openssh-server)"
    return None


pytestmark = [pytest.mark.requires("nftables"), pytest.mark.requires("sshd")]


def _key_pair(folder: Path, name: str) -> tuple[str, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = folder / name
    private.write_bytes(key.export_private_key())
    private.chmod(0o600)
    return key.export_private_key().decode(), key.export_public_key().decode().strip()


def _wait_listening(lab: Lab, port: int) -> None:
    for _ in range(100):  # bounded: about 10 s
        probe = subprocess.run(
            ["ip", "netns", "exec", lab.firewall, "ss", "-ltn", f"sport = :{port}"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if f":{port}" in probe.stdout:
            return
        time.sleep(0.1)
    pytest.fail("sshd did not start in the firewall namespace")


@pytest.fixture(scope="module")
def sshd(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("sshd")
    folder.chmod(0o755)
    _host_private, host_public = _key_pair(folder, "host_key")
    client_private, client_public = _key_pair(folder, "client_key")
    (folder / "authorized_keys").write_text(client_public + "\n")
    (folder / "authorized_keys").chmod(0o600)
    (folder / "evidence.txt").write_text("line one\nline two\n")
    port = 2222
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 0.0.0.0\nHostKey {folder / 'host_key'}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nPrintMotd no\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    process = subprocess.Popen(
        ["ip", "netns", "exec", lab.firewall, str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_listening(lab, port)
        yield {
            "folder": folder,
            "port": port,
            "client_key": client_private,
            "known_hosts": f"[{lab.fw_v4}]:{port} {host_public}",
            "host": lab.fw_v4,
        }
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _config(sshd: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "host": sshd["host"],
        "port": sshd["port"],
        "username": "root",
        "known_hosts": sshd["known_hosts"],
        "commands": {
            "show-file": {"argv": ["cat", "{path}"], "params": {"path": r"/[A-Za-z0-9_./-]+"}},
            "count-lines": {"argv": ["wc", "-l", "{path}"], "params": {"path": r"/[\w./-]+"}},
            "fail": {"argv": ["sh", "-c", "echo broken >&2; exit 3"]},
            "echo": {"argv": ["echo", "{word}"], "params": {"word": r".{1,100}"}},
        },
        **changes,
    }


def _call(lab: Lab, request: dict[str, Any]) -> dict[str, Any]:
    """Run the connector in the client namespace; its JSON answer."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        ["ip", "netns", "exec", lab.client, sys.executable, "-m", "tests.connectors.ssh_call",
         json.dumps(request)],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _run(lab: Lab, sshd: dict[str, Any], command: str, args: dict[str, str] | None = None,
         **options: Any) -> dict[str, Any]:  # fmt: skip
    secrets = options.pop("secrets", {"private_key": sshd["client_key"]})
    config = _config(sshd, **options.pop("config", {}))
    return _call(
        lab,
        {"config": config, "secrets": secrets, "action": "run_command",
         "input": {"command": command, "args": args or {}}, **options},
    )  # fmt: skip


def test_an_allowed_command_runs_on_the_host(lab: Lab, sshd: dict[str, Any]) -> None:
    path = str(sshd["folder"] / "evidence.txt")
    shown = _run(lab, sshd, "show-file", {"path": path})
    assert shown["ok"], shown
    assert shown["output"]["stdout"] == "line one\nline two\n"
    assert shown["output"]["exit_status"] == 0
    assert shown["output"]["argv"] == ["cat", path]
    counted = _run(lab, sshd, "count-lines", {"path": path})
    assert counted["output"]["stdout"].split()[0] == "2"


def test_arguments_are_checked_and_quoted_never_interpreted(lab: Lab, sshd: dict[str, Any]) -> None:
    bad = _run(lab, sshd, "show-file", {"path": "/etc/passwd; id"})
    assert bad["ok"] is False
    assert bad["error"]["code"] == "invalid_input"
    assert "does not match" in bad["error"]["message"]
    # A pattern that lets shell syntax through still gets one quoted argument, not a command.
    echoed = _run(lab, sshd, "echo", {"word": "$(id) ; touch /tmp/pwned"})
    assert echoed["output"]["stdout"] == "$(id) ; touch /tmp/pwned\n"
    assert not Path("/tmp/pwned").exists()
    unknown = _run(lab, sshd, "rm-rf", {})
    assert unknown["error"]["code"] == "command_not_allowed"
    assert "allowed: count-lines, echo, fail, show-file" in unknown["error"]["message"]
    extra = _run(lab, sshd, "show-file", {"path": "/x", "more": "y"})
    assert "takes no argument more" in extra["error"]["message"]


def test_a_failing_command_fails_its_step_with_the_exit_status(
    lab: Lab, sshd: dict[str, Any]
) -> None:
    failed = _run(lab, sshd, "fail")
    assert failed["ok"] is False
    assert failed["error"]["message"] == "fail exited with 3: broken"


def test_the_host_key_is_pinned_and_credentials_are_checked(lab: Lab, sshd: dict[str, Any]) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong_host = _run(
        lab, sshd, "fail", config={"known_hosts": f"[{sshd['host']}]:{sshd['port']} {other}"}
    )
    assert wrong_host["error"]["code"] == "host_key_mismatch"
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    refused = _run(lab, sshd, "fail", secrets={"private_key": stranger})
    assert refused["error"]["code"] == "auth_failed"
    assert "BEGIN" not in json.dumps(refused)
    closed = _run(lab, sshd, "fail", config={"port": 2223})
    assert closed["error"]["code"] == "transient"


def test_a_dry_run_connects_to_nothing_and_health_authenticates(
    lab: Lab, sshd: dict[str, Any]
) -> None:
    pretend = _run(lab, sshd, "show-file", {"path": "/etc/hostname"}, dry_run=True,
                   config={"port": 2223})  # fmt: skip
    assert pretend["output"]["simulated"] is True
    assert pretend["output"]["argv"] == ["cat", "/etc/hostname"]
    healthy = _call(
        lab, {"config": _config(sshd), "secrets": {"private_key": sshd["client_key"]},
              "action": "health"},
    )  # fmt: skip
    assert healthy["ok"], healthy
    assert healthy["output"].startswith(f"root@{sshd['host']}:{sshd['port']}: SSH-2.0-OpenSSH")


def test_the_allow_list_is_checked_when_configured() -> None:
    from pydantic import ValidationError

    from quell.connectors.ssh import SshConfig

    base = {"host": "h", "username": "u", "known_hosts": "h ssh-ed25519 x"}
    with pytest.raises(ValidationError, match="not OpenSSH known_hosts"):
        SshConfig.model_validate({**base, "commands": {"who": {"argv": ["who"]}}})
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    hosts = f"h {key}"
    with pytest.raises(ValidationError, match="placeholders without a pattern: pid"):
        SshConfig.model_validate(
            {**base, "known_hosts": hosts, "commands": {"kill": {"argv": ["kill", "{pid}"]}}}
        )
    with pytest.raises(ValidationError, match="command name"):
        SshConfig.model_validate(
            {**base, "known_hosts": hosts, "commands": {"Bad Name": {"argv": ["who"]}}}
        )
