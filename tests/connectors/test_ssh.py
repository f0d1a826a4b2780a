"""The ssh connector against a real OpenSSH server in a network namespace.

sshd runs in the lab's firewall namespace with its own host key, config and authorized key
(all in a temporary folder: the ``sshd`` fixture of tests/connectors/conftest.py); the
connector runs in the client namespace (through the SDK's harness, in a child process) and
reaches it over the veth pair: a real SSH session, a real shell, real commands. Nothing
listens in the host's own namespace.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.connectors.netlab import Lab
from tests.connectors.ssh_call import call_in_client

pytestmark = [pytest.mark.requires("nftables"), pytest.mark.requires("sshd")]


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
    return call_in_client(lab, request)


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


# --- run_line: a CACAO ssh command line, run only as an allowed command it matches ----------

_LINE_COMMANDS: dict[str, Any] = {
    "list": {"argv": ["ls", "{flags}", "{dir}"], "params": {"flags": "-[la]{1,2}", "dir": "/tmp"}},
    "touch": {"argv": ["touch", "{path}"], "params": {"path": r"/tmp/[A-Za-z0-9._/-]+"}},
    "echo": {"argv": ["echo", "{text}"], "params": {"text": r".{1,100}"}},
    "backup": {"argv": ["cp", "{path}", "{path}.bak"], "params": {"path": r"/tmp/[a-z]+"}},
    "mark": {"argv": ["mark", "{word}:{word}"], "params": {"word": "[a-z]+"}},
    "show": {"argv": ["cat", "--number", "--file={path}"], "params": {"path": r"/[a-z/]+"}},
    "echo-word": {"argv": ["echo", "{word}"], "params": {"word": "[a-z]+"}},
}


def _offline(**changes: Any) -> dict[str, Any]:
    """A config whose host is never reached: a port nothing listens on."""
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    return {
        "host": "127.0.0.1",
        "port": 9,
        "username": "root",
        "known_hosts": f"[127.0.0.1]:9 {key}",
        "commands": _LINE_COMMANDS,
        **changes,
    }


def _line(line: str, *, dry_run: bool = False) -> dict[str, Any]:
    """run_line in this process, against a host that is never reached: what the line
    resolves to (dry run), or the error it is refused with."""
    from quell.connectors.ssh import Ssh
    from quell.sdk import ActionError
    from quell.sdk.testing import Harness

    async def scenario() -> dict[str, Any]:
        async with Harness(Ssh, config=_offline(), secrets={"password": "p"}) as harness:
            try:
                output = await harness.call("run_line", {"line": line}, dry_run=dry_run)
            except ActionError as exc:
                return {"ok": False, "error": exc.to_dict()}
        return {"ok": True, "output": output}

    return asyncio.run(scenario())


def test_a_line_runs_as_the_allowed_command_its_words_match(
    lab: Lab, sshd: dict[str, Any], tmp_path: Path
) -> None:
    def run_line(line: str) -> dict[str, Any]:
        return _call(
            lab,
            {"config": _config(sshd, commands=_LINE_COMMANDS),
             "secrets": {"private_key": sshd["client_key"]},
             "action": "run_line", "input": {"line": line}},
        )  # fmt: skip

    (Path("/tmp") / f"quell-line-{tmp_path.name}").write_text("x")
    listed = run_line("ls -la /tmp")
    assert listed["ok"], listed
    assert listed["output"]["command"] == "list"
    assert listed["output"]["argv"] == ["ls", "-la", "/tmp"]
    assert listed["output"]["exit_status"] == 0
    assert f"quell-line-{tmp_path.name}" in listed["output"]["stdout"]
    (Path("/tmp") / f"quell-line-{tmp_path.name}").unlink()
    # sshd runs in another network namespace, on the same filesystem: the file is there.
    target = tmp_path / "file1"
    touched = run_line(f"touch {target}")
    assert touched["ok"], touched
    assert touched["output"]["command"] == "touch"
    assert target.exists()
    # Quoted shell syntax is text of one argument, printed, never run.
    pwned = tmp_path / "pwned"
    echoed = run_line(f"echo 'x; touch {pwned}'")
    assert echoed["output"]["stdout"] == f"x; touch {pwned}\n"
    assert not pwned.exists()


@pytest.mark.parametrize(
    "line",
    [
        "ls -la /tmp; id",
        "ls -la /tmp|nc 10.0.0.1 9",
        "ls -la /tmp && id",
        "ls -la /tmp &",
        "echo $(id)",
        'echo "$(id)"',
        "echo `id`",
        'echo "`id`"',
        "echo hi > /tmp/x",
        "echo hi >>/tmp/x",
        "cat < /etc/shadow",
        "echo $HOME",
        "echo ${HOME}",
        "ls -la /tmp\nid",
        "touch /tmp/*",
        "echo ~",
    ],
)
def test_a_line_with_shell_syntax_is_refused_before_connecting(line: str) -> None:
    refused = _line(line)
    assert refused["ok"] is False
    assert refused["error"]["code"] == "command_not_allowed"
    assert "shell syntax" in refused["error"]["message"]


def test_a_line_that_is_no_allowed_command_is_refused() -> None:
    unknown = _line("rm -rf /")
    assert unknown["error"]["code"] == "command_not_allowed"
    message = unknown["error"]["message"]
    assert "the first 'rm'" in message
    assert "allowed: backup, echo, echo-word, list, mark, show, touch" in message
    wrong_arity = _line("ls -la /tmp /etc")
    assert wrong_arity["error"]["code"] == "command_not_allowed"
    wrong_value = _line("ls -la /etc")
    assert wrong_value["error"]["code"] == "command_not_allowed"
    partial = _line("ls -lax /tmp")  # a part matches in full or not at all
    assert partial["error"]["code"] == "command_not_allowed"
    unbalanced = _line("echo 'open")
    assert unbalanced["error"]["code"] == "command_not_allowed"
    assert "does not split" in unbalanced["error"]["message"]
    long_line = _line("frobnicate " + "x" * 3000)
    assert long_line["error"]["code"] == "command_not_allowed"
    assert len(long_line["error"]["message"]) < 300
    assert "x" * 100 not in long_line["error"]["message"]


def test_quoting_makes_one_word_which_its_pattern_still_checks() -> None:
    spaced = _line("touch '/tmp/a b'", dry_run=True)
    assert spaced["error"]["code"] == "command_not_allowed"  # the pattern forbids spaces
    quoted = _line("touch '/tmp/ab'", dry_run=True)
    assert quoted["output"]["argv"] == ["touch", "/tmp/ab"]
    escaped = _line(r"echo a\;b", dry_run=True)  # an escaped ; is text
    assert escaped["output"]["argv"] == ["echo", "a;b"]
    one_word = _line('echo "two words"', dry_run=True)
    assert one_word["output"]["argv"] == ["echo", "two words"]


def test_a_placeholder_used_twice_must_have_one_value() -> None:
    same = _line("cp /tmp/abc /tmp/abc.bak", dry_run=True)
    assert same["output"]["command"] == "backup"
    assert same["output"]["argv"] == ["cp", "/tmp/abc", "/tmp/abc.bak"]
    differ = _line("cp /tmp/abc /tmp/xyz.bak", dry_run=True)
    assert differ["error"]["code"] == "command_not_allowed"
    assert _line("mark ab:ab", dry_run=True)["output"]["argv"] == ["mark", "ab:ab"]
    assert _line("mark ab:cd", dry_run=True)["error"]["code"] == "command_not_allowed"
    # Literal text around a placeholder must be there exactly.
    shown = _line("cat --number --file=/etc/hostname", dry_run=True)
    assert shown["output"]["argv"] == ["cat", "--number", "--file=/etc/hostname"]
    assert _line("cat --number --fil=/etc/x", dry_run=True)["ok"] is False


def test_a_dry_run_line_resolves_without_connecting_and_the_first_match_wins() -> None:
    pretend = _line("echo hello", dry_run=True)  # the host is never reached
    assert pretend["ok"], pretend
    assert pretend["output"]["simulated"] is True
    assert pretend["output"]["command"] == "echo"  # "echo-word" matches too, but comes later
    assert pretend["output"]["argv"] == ["echo", "hello"]
    assert pretend["output"]["exit_status"] is None


@pytest.mark.parametrize(
    ("line", "syntax"),
    [
        ("ls -la /tmp", None),
        ("echo 'a;b|c>d$(e)`f`'", None),
        (r"echo a\;b\|c", None),
        ('echo "a;b|c>d"', None),
        ("echo a#b a~b", None),
        (r"find /tmp -name x -exec rm {} \;", None),
        ("echo '$HOME'", None),
        ('echo "a\\$b"', "escaped"),
        ("echo #comment", "comment"),
        ("echo a\\\nb", "continued"),
        ("echo (x)", "operator"),
        ("echo a\0b", "NUL"),
    ],
)
def test_shell_syntax_is_found_outside_single_quotes_only(line: str, syntax: str | None) -> None:
    from quell.connectors.ssh import shell_syntax

    found = shell_syntax(line)
    if syntax is None:
        assert found is None
    else:
        assert found is not None
        assert syntax in found
