"""``ssh``: run an allow-listed command on a host over SSH (the base of CACAO ``ssh`` commands).

Nothing arbitrary runs: the instance's ``commands`` name each command a playbook may run, as an
argv template whose ``{placeholders}`` are filled from the step's ``args``, each checked against
its own pattern (a full match) before anything is sent; the command line is then built with
shell quoting, so an argument is always one argument. The host's key is pinned (``known_hosts``
in OpenSSH format): an unknown or changed key refuses the connection. Authentication is by
private key (secret ``private_key``, optional ``passphrase``) or password (secret ``password``);
none of them is ever logged or shown.

::

    quell connector add web01 --type ssh --secret-stdin private_key --config '{
      "host": "10.0.0.5", "username": "responder",
      "known_hosts": "10.0.0.5 ssh-ed25519 AAAA...",
      "commands": {
        "kill-process": {"argv": ["kill", "-9", "{pid}"], "params": {"pid": "[0-9]{1,7}"}},
        "who": {"argv": ["who"]}}}'
"""

from __future__ import annotations

import asyncio
import re
import shlex
from typing import Any

import asyncssh
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quell.sdk import (
    ActionContext,
    ActionInput,
    ActionOutput,
    AuthError,
    Connector,
    PermanentError,
    RiskLevel,
    TransientError,
    action,
)

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]{0,31})\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class CommandSpec(BaseModel):
    """One allowed command: its argv, and the pattern each of its placeholders must match."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1, max_length=64)
    params: dict[str, str] = Field(
        default_factory=dict,
        description="Placeholder name -> the regular expression its value must match in full.",
    )
    description: str = ""

    @model_validator(mode="after")
    def _placeholders_have_patterns(self) -> CommandSpec:
        used = {name for part in self.argv for name in _PLACEHOLDER.findall(part)}
        missing = used - set(self.params)
        if missing:
            raise ValueError(f"placeholders without a pattern: {', '.join(sorted(missing))}")
        unused = set(self.params) - used
        if unused:
            raise ValueError(f"patterns for no placeholder: {', '.join(sorted(unused))}")
        for name, pattern in self.params.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"params.{name}: not a regular expression: {exc}") from None
        return self

    def render(self, args: dict[str, str]) -> list[str]:
        """The argv with each placeholder filled; ValueError naming a bad or missing arg."""
        extra = set(args) - set(self.params)
        if extra:
            raise ValueError(f"this command takes no argument {', '.join(sorted(extra))}")
        for name, pattern in self.params.items():
            if name not in args:
                raise ValueError(f"argument {name} is missing")
            if re.fullmatch(pattern, args[name]) is None:
                raise ValueError(f"argument {name} does not match {pattern!r}")
        return [_PLACEHOLDER.sub(lambda m: args[m[1]], part) for part in self.argv]


class SshConfig(BaseModel):
    """The host, its pinned key, the account, and the commands that may run there."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "host": "127.0.0.1",
                    "port": 9,
                    "username": "responder",
                    "known_hosts": "[127.0.0.1]:9 ssh-ed25519 "
                    "AAAAC3NzaC1lZDI1NTE5AAAAIGtCwyue8HJEGOzy8R2ZRkZdbl/xpclRW0nLK1iemmau",
                    "commands": {"who": {"argv": ["who"]}},
                }
            ]
        },
    )

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(22, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=64)
    known_hosts: str = Field(
        min_length=1, description="The host's public key(s), as lines of an OpenSSH known_hosts."
    )
    commands: dict[str, CommandSpec] = Field(min_length=1, max_length=200)
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds per command.")
    max_output: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)

    @field_validator("commands")
    @classmethod
    def _names(cls, value: dict[str, CommandSpec]) -> dict[str, CommandSpec]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"command name {name!r}: use lowercase letters, digits, . _ -")
        return value

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts(cls, value: str) -> str:
        lines = [line.strip() for line in value.splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        if not entries:
            raise ValueError("not OpenSSH known_hosts lines: no key given")
        for number, line in enumerate(entries, 1):
            parts = line.split()
            if parts and parts[0].startswith("@"):  # @cert-authority / @revoked
                parts = parts[1:]
            try:
                if len(parts) < 3:
                    raise ValueError("expected: host(s) key-type base64-key")
                asyncssh.import_public_key(f"{parts[1]} {parts[2]}")
            except (ValueError, asyncssh.KeyImportError) as exc:
                raise ValueError(f"not OpenSSH known_hosts lines: line {number}: {exc}") from None
        return value


class CommandIn(ActionInput):
    """Which allowed command, and its arguments."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"command": "who"}]},
    )

    command: str = Field(min_length=1, max_length=64)
    args: dict[str, str] = Field(default_factory=dict, max_length=32)
    expect_exit: list[int] = Field(
        default_factory=lambda: [0], description="Exit statuses that count as success."
    )


class CommandOut(ActionOutput):
    """What the command did."""

    command: str
    argv: list[str]
    exit_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    simulated: bool = False


class Ssh(Connector):
    """Allow-listed commands on a host over SSH, with its key pinned."""

    name = "ssh"
    title = "SSH (allow-listed commands)"
    Config = SshConfig
    secrets = ("private_key", "passphrase", "password")

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        if not isinstance(config, SshConfig):
            raise PermanentError("the ssh connector needs a configuration (host, commands, ...)")
        self.settings = config

    def _argv(self, params: CommandIn) -> list[str]:
        spec = self.settings.commands.get(params.command)
        if spec is None:
            allowed = ", ".join(sorted(self.settings.commands))
            raise PermanentError(
                f"command {params.command!r} is not allowed on {self.settings.host} "
                f"(allowed: {allowed})",
                code="command_not_allowed",
            )
        try:
            return spec.render(params.args)
        except ValueError as exc:
            raise PermanentError(f"{params.command}: {exc}", code="invalid_input") from None

    async def _connect(self, ctx: ActionContext) -> asyncssh.SSHClientConnection:
        settings = self.settings
        options: dict[str, Any] = {
            "username": settings.username,
            "known_hosts": asyncssh.import_known_hosts(settings.known_hosts),
            "connect_timeout": min(settings.timeout, 30.0),
            "agent_path": None,
            "client_keys": None,
            "password": None,
        }
        key = ctx.secrets.get("private_key")
        if key is not None:
            phrase = ctx.secrets.get("passphrase")
            try:
                options["client_keys"] = [
                    asyncssh.import_private_key(
                        key.reveal(), phrase.reveal() if phrase is not None else None
                    )
                ]
            except (asyncssh.KeyImportError, ValueError):
                raise PermanentError(
                    "the private_key secret is not a private key (or its passphrase is wrong)",
                    code="bad_key",
                ) from None
        password = ctx.secrets.get("password")
        if password is not None:
            options["password"] = password.reveal()
        if key is None and password is None:
            raise PermanentError(
                "give the ssh connector a private_key or a password secret", code="secret_missing"
            )
        where = f"{settings.host}:{settings.port}"
        try:
            return await asyncssh.connect(settings.host, settings.port, **options)
        except asyncssh.HostKeyNotVerifiable:
            raise PermanentError(
                f"{where}: the host's key does not match known_hosts: refusing to connect",
                code="host_key_mismatch",
            ) from None
        except asyncssh.PermissionDenied:
            raise AuthError(f"{where}: {settings.username} was refused (key or password)") from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise TransientError(f"{where}: cannot connect ({type(exc).__name__})") from None

    @action(
        "run_command",
        risk=RiskLevel.HIGH,
        title="Run an allowed command on the host",
        supports_dry_run=True,
    )
    async def run_command(self, ctx: ActionContext, params: CommandIn) -> CommandOut:
        """Run one of the instance's allowed commands, its arguments checked by their
        patterns; the exit status and (bounded) output."""
        argv = self._argv(params)
        if ctx.dry_run:
            return CommandOut(command=params.command, argv=argv, simulated=True)
        line = shlex.join(argv)
        limit = self.settings.max_output
        async with await self._connect(ctx) as connection:
            try:
                result = await asyncio.wait_for(
                    connection.run(line, check=False), timeout=self.settings.timeout
                )
            except TimeoutError:
                raise TransientError(
                    f"{params.command}: no end within {self.settings.timeout:g}s", code="timeout"
                ) from None
        stdout = str(result.stdout or "")
        stderr = str(result.stderr or "")
        truncated = len(stdout) > limit or len(stderr) > limit
        out = CommandOut(
            command=params.command,
            argv=argv,
            exit_status=result.exit_status,
            stdout=stdout[:limit],
            stderr=stderr[:limit],
            truncated=truncated,
        )
        ctx.log.info("ssh_command", command=params.command, exit_status=result.exit_status)
        if result.exit_status not in params.expect_exit:
            said = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "no stderr"
            raise PermanentError(
                f"{params.command} exited with {result.exit_status}: {said}",
                code="command_failed",
                details={"exit_status": result.exit_status},
            )
        return out

    async def health(self, ctx: ActionContext) -> str:
        """Connect and authenticate (no command runs)."""
        async with await self._connect(ctx) as connection:
            version = connection.get_extra_info("server_version") or "an SSH server"
        settings = self.settings
        return f"{settings.username}@{settings.host}:{settings.port}: {version}"


__all__ = ["CommandIn", "CommandOut", "CommandSpec", "Ssh", "SshConfig"]
