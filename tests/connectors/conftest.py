"""Fixtures of the connector tests.

``sshd`` (module scope) is a real OpenSSH server in the lab's firewall namespace, shared by the
ssh and runner tests: its own host key, config and authorized key, all in a temporary folder.
Tests that use it mark themselves ``requires("nftables")`` and ``requires("sshd")``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.cli.conftest import invoke
from tests.connectors.netlab import Lab, lab
from tests.connectors.slapd import slapd_fixture
from tests.fixtures.requirements import requirement

SSHD = Path("/usr/sbin/sshd")
SSHD_PORT = 2222


@requirement("sshd")
def _sshd() -> str | None:
    if not SSHD.exists():
        return "OpenSSH server is not installed (apt-get install openssh-server)"
    return None


def _key_pair(folder: Path, name: str) -> tuple[str, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = folder / name
    private.write_bytes(key.export_private_key())
    private.chmod(0o600)
    return key.export_private_key().decode(), key.export_public_key().decode().strip()


def wait_listening(lab: Lab, port: int, log: Path | None = None) -> None:
    """Until something listens on ``port`` in the firewall namespace (``log``: sshd's stderr,
    shown if it never does)."""
    for _ in range(100):  # bounded: about 10 s
        probe = subprocess.run(
            ["ip", "netns", "exec", lab.firewall, "ss", "-ltn", f"sport = :{port}"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if f":{port}" in probe.stdout:
            return
        time.sleep(0.1)
    said = f": {log.read_text()[-2000:]}" if log is not None and log.exists() else ""
    pytest.fail(f"sshd did not start in the firewall namespace{said}")


@pytest.fixture(scope="module")
def sshd(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """sshd in the firewall namespace: ``folder`` (its files, and ``evidence.txt``), ``port``,
    ``host``, ``known_hosts`` (its pinned key) and ``client_key`` (root may log in with it)."""
    folder = tmp_path_factory.mktemp("sshd")
    folder.chmod(0o755)
    _host_private, host_public = _key_pair(folder, "host_key")
    client_private, client_public = _key_pair(folder, "client_key")
    (folder / "authorized_keys").write_text(client_public + "\n")
    (folder / "authorized_keys").chmod(0o600)
    (folder / "evidence.txt").write_text("line one\nline two\n")
    port = SSHD_PORT
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
        wait_listening(lab, port)
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


__all__ = ["invoke", "lab", "slapd_fixture", "sshd", "wait_listening"]
