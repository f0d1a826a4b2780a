"""``runner``: run a script a playbook step gives (CACAO ``bash`` and ``powershell`` commands).

A script is arbitrary code, so the runner is off by default: an instance refuses every call
until an admin turns it on (``"enabled": true``), and each CACAO agent is bound to one
instance, so a script runs only where an admin said scripts may run. It runs in bash
(``bash --noprofile --norc``) or PowerShell (``pwsh -NoProfile -NonInteractive``), here
(``location: local``) or on a host over SSH (``location: ssh``, the host's key pinned as for
the ``ssh`` connector, with the same secrets)::

    quell connector add ir-runner --type runner --config '{
      "enabled": true, "shell": "bash", "timeout": 120,
      "env": {"CASE_DIR": "/srv/cases"}}'

What a script gets is bounded: the environment is only the configured ``env`` (with ``PATH``
and ``LANG``), never the worker's own (which holds Quell's settings); a local script runs in a
fresh temporary directory removed after it (unless ``workdir`` is set) and in a process group
of its own, killed whole when the script ends or times out, so nothing it started outlives its
step (a process that leaves the group with ``setsid`` is beyond that reach); output is read
in chunks and only ``max_output`` bytes of each stream are kept. The script text and the
``env`` values are never logged: only their sizes, the shell, the location and the exit
status.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import shlex
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quell.connectors.ssh import KnownHosts, SshHost, SshPort, SshUsername, open_connection
from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    Connector,
    PermanentError,
    RiskLevel,
    TransientError,
    action,
)

if TYPE_CHECKING:
    import asyncssh  # the SSH connector's open_connection imports it when it connects

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LANG = "C.UTF-8"
_CHUNK = 64 * 1024
_MAX_TEXT = 1024 * 1024  # the most any script or stdin may be, whatever the instance says
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CALL_VAR = re.compile(r"^QUELL_VAR_[A-Za-z0-9_]{1,117}$")
_SSH_FIELDS = ("host", "username", "known_hosts")


class RunnerConfig(BaseModel):
    """Whether scripts may run at all, in which shell, where, and within which bounds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"enabled": True, "shell": "bash", "timeout": 120, "env": {"CASE": "/srv/case"}},
            ]
        },
    )

    enabled: bool = Field(
        False, description="Off by default: an admin turns scripts on, per instance (per agent)."
    )
    shell: Literal["bash", "powershell"] = "bash"
    location: Literal["local", "ssh"] = "local"
    host: SshHost | None = None
    port: SshPort = 22
    username: SshUsername | None = None
    known_hosts: KnownHosts | None = None
    workdir: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="An absolute directory to run in (it must exist). Default: local, a fresh "
        "temporary directory per call, removed after; ssh, the account's home.",
    )
    timeout: float = Field(60.0, gt=0, le=3600, description="Seconds per script.")
    max_output: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    env: dict[str, str] = Field(
        default_factory=dict,
        max_length=100,
        description="The only environment variables a script sees (with PATH and LANG).",
    )
    max_script: int = Field(64 * 1024, ge=1, le=_MAX_TEXT)

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\0" in value):
            raise ValueError("workdir must be an absolute path")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"env name {name!r}: use letters, digits and _")
            if "\0" in text:
                raise ValueError(f"env {name}: a value cannot hold a NUL character")
        return value

    @model_validator(mode="after")
    def _target(self) -> RunnerConfig:
        given = [name for name in _SSH_FIELDS if getattr(self, name) is not None]
        if self.location == "ssh":
            missing = [name for name in _SSH_FIELDS if name not in given]
            if missing:
                raise ValueError(f"location ssh needs {', '.join(missing)}")
        elif given:
            raise ValueError(f"{', '.join(given)}: only for location ssh")
        return self


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("cannot hold a NUL character")
    return value


class ScriptIn(ActionInput):
    """The script, what it reads on stdin, and its positional parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"script": 'echo "checking $1"; uname -a', "args": ["host-17"]}]
        },
    )

    script: str = Field(min_length=1, max_length=_MAX_TEXT)
    stdin: str | None = Field(None, max_length=_MAX_TEXT)
    expect_exit: list[int] = Field(
        default_factory=lambda: [0], description="Exit statuses that count as success."
    )
    args: list[str] = Field(
        default_factory=list, max_length=64, description="Positional parameters: $1, $2, ..."
    )
    variables: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Values the script reads as environment variables named QUELL_VAR_*: how a "
        "playbook hands it data without splicing the data into the script's text.",
    )

    @field_validator("variables")
    @classmethod
    def _variables(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _CALL_VAR.match(name):
                raise ValueError(f"variable name {name!r}: QUELL_VAR_ then letters, digits, _")
            _no_nul(item)
        return value

    @field_validator("script")
    @classmethod
    def _script(cls, value: str) -> str:
        return _no_nul(value)

    @field_validator("args")
    @classmethod
    def _args(cls, value: list[str]) -> list[str]:
        for item in value:
            _no_nul(item)
        return value


class ScriptOut(ActionOutput):
    """What the script did."""

    shell: str
    location: str
    exit_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    simulated: bool = False


class _Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


@dataclass(frozen=True)
class _Result:
    exit_status: int | None
    stdout: str
    stderr: str
    truncated: bool


async def _drain(stream: _Readable, limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes of a stream as text, and whether there was more: the stream
    is read to its end in chunks and the rest is counted and dropped, so a script printing
    gigabytes costs a chunk of memory, not gigabytes."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(_CHUNK):
        total += len(chunk)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
    truncated = total > limit
    # A cut may fall inside a UTF-8 sequence: the incomplete tail is dropped, not garbled.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(bytes(kept), final=not truncated), truncated


def _kill_group(pid: int) -> None:
    """Kill the script's whole process group (it leads its own session): what it left running
    in the background dies with it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _ps_quote(text: str) -> str:
    """A PowerShell single-quoted string: every quote character PowerShell accepts as one
    (the ASCII one and the typographic ones) is doubled."""
    quoted = re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", text)
    return f"'{quoted}'"


class Runner(Connector):
    """Runs a playbook step's script (bash or PowerShell), here or on a host over SSH; off
    until an admin enables the instance."""

    name = "runner"
    title = "Script runner (bash, PowerShell): off by default"
    Config = RunnerConfig
    secrets = ("private_key", "passphrase", "password")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.settings = config if isinstance(config, RunnerConfig) else RunnerConfig()

    def _check(self, ctx: ActionContext, params: ScriptIn) -> None:
        """Refuse what cannot run, before anything starts: a disabled instance, a script over
        the instance's bound, inputs the chosen shell and location cannot carry."""
        settings = self.settings
        if not settings.enabled:
            name = ctx.instance or "NAME"
            raise PermanentError(
                "this runner instance is disabled: scripts run only where an admin enabled "
                f"them (quell connector add {name} --type runner --config "
                f"""'{{"enabled": true, "shell": "{settings.shell}"}}', or quell connector """
                f"""update {name} --config '{{"enabled": true}}')""",
                code="runner_disabled",
            )
        if len(params.script) > settings.max_script:
            raise PermanentError(
                f"the script is {len(params.script)} characters; this instance takes at most "
                f"{settings.max_script}",
                code="invalid_input",
            )
        if settings.shell == "powershell" and params.args:
            raise PermanentError(
                "args are positional parameters of a bash script; a PowerShell script (read "
                "by pwsh -Command - from stdin) takes none",
                code="invalid_input",
            )
        if params.stdin is not None and (
            settings.shell == "powershell" or settings.location == "ssh"
        ):
            raise PermanentError(
                "stdin is given only to a local bash script: elsewhere the script itself is "
                "sent on stdin",
                code="invalid_input",
            )

    def _out(self, result: _Result | None = None) -> ScriptOut:
        settings = self.settings
        if result is None:
            return ScriptOut(shell=settings.shell, location=settings.location, simulated=True)
        return ScriptOut(
            shell=settings.shell,
            location=settings.location,
            exit_status=result.exit_status,
            stdout=result.stdout,
            stderr=result.stderr,
            truncated=result.truncated,
        )

    def _timed_out(self) -> TransientError:
        return TransientError(
            f"the script did not end within {self.settings.timeout:g}s: it was killed",
            code="timeout",
        )

    def _program(self) -> str:
        """The shell's absolute path, found on the PATH the script gets."""
        settings = self.settings
        command = "bash" if settings.shell == "bash" else "pwsh"
        found = shutil.which(command, path=settings.env.get("PATH", PATH))
        if found is None:
            raise PermanentError(
                f"{command} is not installed on this worker", code="runner_unavailable"
            )
        return found

    async def _local(self, params: ScriptIn) -> _Result:
        """Run the script here, in its own session and process group, with only the configured
        environment; the group is killed when the script ends (or times out)."""
        settings = self.settings
        program = self._program()
        if settings.shell == "bash":
            argv = [program, "--noprofile", "--norc", "-c", params.script, "quell-runner"]
            argv += params.args
            feed = (params.stdin or "").encode()
        else:
            argv = [program, "-NoLogo", "-NoProfile", "-NonInteractive", "-Command", "-"]
            feed = params.script.encode() + (b"" if params.script.endswith("\n") else b"\n")
        env = {"PATH": PATH, "LANG": LANG, **settings.env, **params.variables}
        if settings.workdir is not None:
            if not await asyncio.to_thread(Path(settings.workdir).is_dir):
                raise PermanentError(
                    f"workdir {settings.workdir} is not a directory on this worker",
                    code="workdir_missing",
                )
            return await self._spawn(argv, env, settings.workdir, feed)
        folder = tempfile.mkdtemp(prefix="quell-runner-")
        try:
            return await self._spawn(argv, env, folder, feed)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    async def _spawn(self, argv: list[str], env: dict[str, str], cwd: str, feed: bytes) -> _Result:
        limit = self.settings.max_output
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        stdin, stdout_pipe, stderr_pipe = process.stdin, process.stdout, process.stderr
        if stdin is None or stdout_pipe is None or stderr_pipe is None:  # (PIPE gives all three)
            _kill_group(process.pid)
            raise RuntimeError("the script's pipes were not opened")

        async def give() -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if feed:
                    stdin.write(feed)
                    await stdin.drain()
                stdin.close()

        try:
            async with asyncio.timeout(self.settings.timeout):
                _, (stdout, cut_out), (stderr, cut_err) = await asyncio.gather(
                    give(), _drain(stdout_pipe, limit), _drain(stderr_pipe, limit)
                )
                status = await process.wait()
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            _kill_group(process.pid)
            if process.returncode is None:
                await process.wait()
        return _Result(status, stdout, stderr, cut_out or cut_err)

    async def _connect(self, ctx: ActionContext) -> asyncssh.SSHClientConnection:
        """The SSH connection, made as the ssh connector makes it (pinned key, secrets)."""
        settings = self.settings
        if settings.host is None or settings.username is None or settings.known_hosts is None:
            raise PermanentError("location ssh needs host, username and known_hosts")
        return await open_connection(
            ctx,
            host=settings.host,
            port=settings.port,
            username=settings.username,
            known_hosts=settings.known_hosts,
            connect_timeout=settings.timeout,
            connector="runner",
        )

    def _remote_command(self, params: ScriptIn) -> tuple[str, bytes]:
        """The command line sent over SSH and the stdin it reads (the script). bash gets an
        empty environment but PATH and LANG (the configured env is exported by a prelude on
        stdin, so no value shows in the host's process list); PowerShell, often on a host with
        no POSIX tools, gets a prelude that sets env and the directory."""
        settings = self.settings
        script = params.script if params.script.endswith("\n") else params.script + "\n"
        if settings.shell == "bash":
            words = ["env", "-i", f"PATH={PATH}", f"LANG={LANG}"]
            words += ["bash", "--noprofile", "--norc", "-s", "--", *params.args]
            command = shlex.join(words)
            if settings.workdir is not None:
                command = f"cd -- {shlex.quote(settings.workdir)} && {command}"
            prelude = "".join(
                f"export {name}={shlex.quote(value)}\n"
                for name, value in {**settings.env, **params.variables}.items()
            )
        else:
            command = "pwsh -NoLogo -NoProfile -NonInteractive -Command -"
            lines = [
                f"$env:{name} = {_ps_quote(value)}\n"
                for name, value in {**settings.env, **params.variables}.items()
            ]
            if settings.workdir is not None:
                lines.append(f"Set-Location -LiteralPath {_ps_quote(settings.workdir)}\n")
            prelude = "".join(lines)
        return command, (prelude + script).encode()

    async def _remote(self, ctx: ActionContext, params: ScriptIn) -> _Result:
        """Run the script on the host: the command reads it on stdin; on timeout the session
        is closed (with a kill signal asked for, which servers may ignore)."""
        settings = self.settings
        command, feed = self._remote_command(params)
        limit = settings.max_output
        async with await self._connect(ctx) as connection:
            process = await connection.create_process(command, encoding=None)

            async def give() -> None:
                process.stdin.write(feed)
                await process.stdin.drain()
                process.stdin.write_eof()

            try:
                async with asyncio.timeout(settings.timeout):
                    _, (stdout, cut_out), (stderr, cut_err) = await asyncio.gather(
                        give(), _drain(process.stdout, limit), _drain(process.stderr, limit)
                    )
                    await process.wait_closed()
            except TimeoutError:
                with contextlib.suppress(Exception):
                    process.kill()
                process.close()
                raise self._timed_out() from None
        return _Result(process.returncode, stdout, stderr, cut_out or cut_err)

    @action(
        "run",
        risk=RiskLevel.HIGH,
        title="Run a script (bash or PowerShell) where the instance says",
        supports_dry_run=True,
    )
    async def run(self, ctx: ActionContext, params: ScriptIn) -> ScriptOut:
        """Run the step's script with its args and stdin, bounded in time and output; refused
        unless an admin enabled this instance. A dry run checks the same and runs nothing."""
        self._check(ctx, params)
        if ctx.dry_run:
            return self._out()
        settings = self.settings
        if settings.location == "local":
            result = await self._local(params)
        else:
            result = await self._remote(ctx, params)
        ctx.log.info(
            "runner_script",
            shell=settings.shell,
            location=settings.location,
            script_length=len(params.script),
            exit_status=result.exit_status,
        )
        if result.exit_status not in params.expect_exit:
            said = result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else ""
            raise PermanentError(
                f"the script exited with {result.exit_status}: {said or 'no stderr'}",
                code="command_failed",
                details={"exit_status": result.exit_status},
            )
        return self._out(result)

    async def health(self, ctx: ActionContext) -> str:
        """Enabled, and the shell is there (local) or the host authenticates (ssh); no script
        runs."""
        settings = self.settings
        if not settings.enabled:
            raise PermanentError("this runner instance is disabled", code="runner_disabled")
        if settings.location == "local":
            return f"{settings.shell}: {self._program()} (local)"
        async with await self._connect(ctx) as connection:
            version = connection.get_extra_info("server_version") or "an SSH server"
        where = f"{settings.username}@{settings.host}:{settings.port}"
        return f"{settings.shell} over ssh: {where}: {version}"


__all__ = ["Runner", "RunnerConfig", "ScriptIn", "ScriptOut"]
