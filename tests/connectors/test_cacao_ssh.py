"""The corpus's SOARCA ssh playbook, run by the real ``quell`` command against a real sshd.

The playbook (``cacao/playbooks/soarca_ssh-playbook.json``) runs ``ls -la`` and then
``touch /root/file1`` over ssh on its target, logging in with its own inline credential: a
``user-auth`` of root with the password "password". Quell seals that credential at import and
hands it to each step's call over the connector instance's own secrets; the instance here has
no secret at all, so a login can only succeed with the playbook's password.

That needs an sshd that accepts root with the password "password", which the shared ``sshd``
fixture (keys only) does not: ``root_sshd`` runs a second sshd in the lab's firewall namespace
and in a mount namespace of its own where a throwaway shadow file (root's password "password")
is bind-mounted over /etc/shadow. The host's own /etc/shadow is never written, and the
filesystem is otherwise shared, so /root/file1 appears on the host: this test's scratch file,
removed at the end. Quell itself runs in the lab's client namespace, on SQLite in a temporary
data dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.connectors.conftest import wait_listening
from tests.connectors.netlab import Lab
from tests.fixtures.requirements import REPO_ROOT, corpus_path

pytestmark = [
    pytest.mark.requires("nftables"),
    pytest.mark.requires("sshd"),
    pytest.mark.requires("corpus"),
]

SSHD = Path("/usr/sbin/sshd")
PORT = 2224  # the shared sshd fixture listens on 2222; the ssh tests use 2223 as a closed port
TARGET = "ssh--1c3900b4-f86b-430d-b415-12312b9e31f4"
AUTH = "user-auth--b7ddc2ea-9f6a-4e82-8eaa-be202e942090"
START = "start--9e7d62b2-88ac-4656-94e1-dbd4413ba008"
LIST = "action--eb9372d4-d524-49fc-bf24-be26ea084779"
TOUCH = "action--88f4c4df-fa96-44e6-b310-1c06d193ea55"
SCRATCH = Path("/root/file1")  # what the playbook's second step touches
COMMANDS = {
    "list": {"argv": ["ls", "-la"]},
    "touch": {"argv": ["touch", "{path}"], "params": {"path": "/root/file[0-9]+"}},
}
# The bind mount is made by a shell in the new mount namespace, then sshd replaces it.
_START_SSHD = 'mount --bind "$1" /etc/shadow && exec "$2" -D -e -f "$3"'


def ssh_playbook() -> Path:
    return corpus_path() / "cacao" / "playbooks" / "soarca_ssh-playbook.json"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"the {name} command is needed to run sshd with a password for root")
    return found


def _password_hash(password: str) -> str:
    done = subprocess.run(
        [_tool("openssl"), "passwd", "-6", "-stdin"],
        input=password, capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture(scope="module")
def root_sshd(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """sshd in the firewall namespace that lets root in with the password "password" only:
    ``host``, ``port``, ``known_hosts`` (its pinned key) and ``log`` (its stderr)."""
    folder = tmp_path_factory.mktemp("root-sshd")
    folder.chmod(0o755)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    (folder / "host_key").write_bytes(host_key.export_private_key())
    (folder / "host_key").chmod(0o600)
    hashed = _password_hash("password")
    shadow = folder / "shadow"
    shadow.write_text(f"root:{hashed}:19000:0:99999:7:::\n")
    shadow.chmod(0o600)
    config = folder / "sshd_config"
    config.write_text(
        f"Port {PORT}\nListenAddress 0.0.0.0\nHostKey {folder / 'host_key'}\n"
        f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile none\nPubkeyAuthentication no\n"
        "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin yes\nStrictModes no\nPrintMotd no\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    log = folder / "sshd.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            ["ip", "netns", "exec", lab.firewall, _tool("unshare"), "--mount",
             "--propagation", "private", "sh", "-c", _START_SSHD, "sh", str(shadow), str(SSHD),
             str(config)],
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    try:
        wait_listening(lab, PORT, log)
        assert hashed not in Path("/etc/shadow").read_text(), "the host's shadow file changed"
        yield {
            "host": lab.fw_v4,
            "port": PORT,
            "known_hosts": f"[{lab.fw_v4}]:{PORT} {host_key.export_public_key().decode().strip()}",
            "log": log,
        }
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def quell(lab: Lab, data: Path, *args: str, allow: str = "") -> subprocess.CompletedProcess[str]:
    """The real ``quell`` command in the lab's client namespace, on ``data`` (SQLite)."""
    env = {
        **os.environ,
        "QUELL_DATA_DIR": str(data),
        "QUELL_PLAYBOOK_REVIEW": "optional",
        "QUELL_OUTBOUND_ALLOW": allow,
        "QUELL_CORPUS": str(corpus_path()),
    }
    return subprocess.run(
        ["ip", "netns", "exec", lab.client, sys.executable, "-m", "quell", *args],
        capture_output=True, text=True, timeout=180, env=env, cwd=REPO_ROOT, check=False,
    )  # fmt: skip


def add_instance(lab: Lab, data: Path, sshd: dict[str, Any], name: str, username: str) -> None:
    """An ssh instance with the playbook's two commands allowed, and no secret at all."""
    config = {
        "host": sshd["host"],
        "port": sshd["port"],
        "username": username,
        "known_hosts": sshd["known_hosts"],
        "commands": COMMANDS,
    }
    added = quell(lab, data, "connector", "add", name, "--type", "ssh", "--config",
                  json.dumps(config), allow=sshd["host"])  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"added {name} (ssh)\n"


def run_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout.strip(), done.stderr
    run: dict[str, Any] = json.loads(done.stdout)
    return run


def test_the_corpus_ssh_playbook_runs_on_sshd_with_its_own_credential(
    lab: Lab, root_sshd: dict[str, Any], tmp_path: Path
) -> None:
    if SCRATCH.exists():
        pytest.fail(
            f"{SCRATCH} exists before the test: it is the scratch file this test's playbook "
            "touches, and the test must see it made; remove it and run the test again"
        )
    data = tmp_path / "quell"
    host = root_sshd["host"]
    add_instance(lab, data, root_sshd, "web", "root")
    bind = f"{TARGET}=web"
    try:
        imported = quell(lab, data, "playbook", "import-cacao", str(ssh_playbook()), "--bind",
                         bind, "--json", allow=host)  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        report = json.loads(imported.stdout)
        assert (report["needs"], report["unsupported"]) == ([], [])
        assert report["bindings"] == {TARGET: "web"}
        assert report["credentials"] == [AUTH]

        done = quell(lab, data, "playbook", "run", str(ssh_playbook()), "--bind", bind,
                     "--wait", "--json", allow=host)  # fmt: skip
        run = run_json(done)
        assert [(s["key"], s["status"], s["error"]) for s in run["steps"]] == [
            (START, "succeeded", None),
            (LIST, "succeeded", None),
            (TOUCH, "succeeded", None),
        ], done.stdout
        assert (run["status"], run["error"], done.returncode) == ("succeeded", None, 0)
        assert run["playbook_version"] == report["version_id"]  # the same version, not a new one
        steps = {step["key"]: step for step in run["steps"]}
        # The step variables (constants) filled the command lines in.
        assert steps[LIST]["inputs"] == {"line": "ls -la"}
        assert steps[TOUCH]["inputs"] == {"line": f"touch {SCRATCH}"}
        listed = steps[LIST]["output"]
        assert (listed["command"], listed["argv"], listed["exit_status"]) == (
            "list", ["ls", "-la"], 0,
        )  # fmt: skip
        assert listed["stdout"].startswith("total ")
        assert re.search(r"^d\S+ +\d+ root +root .* \.$", listed["stdout"], re.M), listed
        touched = steps[TOUCH]["output"]
        assert (touched["command"], touched["argv"], touched["exit_status"]) == (
            "touch", ["touch", str(SCRATCH)], 0,
        )  # fmt: skip
        assert (touched["stdout"], touched["stderr"]) == ("", "")
        assert SCRATCH.is_file()
        # Root logged in with the playbook's password: the instance has no secret to offer.
        logins = re.findall(r"Accepted (\w+) for (\w+) from (\S+)", root_sshd["log"].read_text())
        assert logins[-2:] == [("password", "root", lab.client_v4)] * 2
    finally:
        SCRATCH.unlink(missing_ok=True)


def test_the_instance_named_like_the_target_runs_it_as_its_own_user(
    lab: Lab, root_sshd: dict[str, Any], tmp_path: Path
) -> None:
    # No binding: the step runs on the instance named like the CACAO target. Its username is
    # the one that logs in: the playbook's credential is for "root", the instance's account is
    # "nobody", and the step refuses to send root's password for another account.
    data = tmp_path / "quell"
    host = root_sshd["host"]
    add_instance(lab, data, root_sshd, TARGET, "nobody")
    imported = quell(lab, data, "playbook", "import-cacao", str(ssh_playbook()), "--json",
                     allow=host)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["needs"] == []
    done = quell(lab, data, "playbook", "run", str(ssh_playbook()), "--wait", "--json",
                 allow=host)  # fmt: skip
    run = run_json(done)
    refused = {
        "code": "credential_mismatch",
        "message": "the step's credential is for another account than the instance's "
        "(nobody): the account is the instance's to choose",
        "retryable": False,
    }
    steps = {step["key"]: step for step in run["steps"]}
    assert steps[LIST]["inputs"] == {"line": "ls -la"}
    assert (steps[LIST]["status"], steps[LIST]["error"]) == ("failed", refused)
    assert (steps[TOUCH]["status"], steps[TOUCH]["error"]) == ("failed", refused)
    assert not SCRATCH.exists()


def test_without_a_binding_or_instance_the_missing_instance_is_named(
    lab: Lab, tmp_path: Path
) -> None:
    data = tmp_path / "quell"
    imported = quell(lab, data, "playbook", "import-cacao", str(ssh_playbook()), "--json")
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert report["needs"] == [
        {
            "kind": "instance",
            "ref": TARGET,
            "message": f"an ssh connector instance for system 1 ({TARGET}): name one "
            f"{TARGET!r}, or import with --bind {TARGET}=INSTANCE",
            "connector": "ssh",
        }
    ]
    done = quell(lab, data, "playbook", "run", str(ssh_playbook()), "--wait", "--json")
    run = run_json(done)
    missing = {
        "code": "connector_config",
        "message": f"no connector instance named {TARGET!r}",
        "retryable": False,
    }
    assert [(s["key"], s["status"], s["error"]) for s in run["steps"]] == [
        (START, "succeeded", None),
        (LIST, "failed", missing),
        (TOUCH, "failed", missing),
    ], done.stdout
    # Each step leads on with on_completion, which in Quell's IR handles a failure (the run
    # goes on to the next step), so the run itself ends succeeded and --wait exits 0.
    assert (run["status"], done.returncode) == ("succeeded", 0)
    assert not SCRATCH.exists()
