"""``ssh``: run an allow-listed command on a host over SSH (the base of CACAO ``ssh`` commands).

Nothing arbitrary runs: the instance's ``commands`` name each command a playbook may run, as an
argv template whose ``{placeholders}`` are filled from the step's ``args``, each checked against
its own pattern (a full match) before anything is sent; the command line is then built with
shell quoting, so an argument is always one argument. ``run_line`` takes a command line as a
CACAO ``ssh`` command gives it (``touch /root/file1``): the line is split into words like a
shell would, refused if it holds shell syntax (operators, redirections, substitutions,
expansions: a single command of plain words is all it can be), and runs only as the first
allowed command whose argv template matches its words, so the allow-list stays the whole
security model. The host's key is pinned (``known_hosts``
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

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

if TYPE_CHECKING:
    import asyncssh  # imported where a connection is made: it takes 0.2 s to load

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]{0,31})\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _check_known_hosts(value: str) -> str:
    """Each line must be an OpenSSH known_hosts entry with a key that parses: a typo here
    would otherwise only show as a refused connection at the worst moment."""
    lines = [line.strip() for line in value.splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise ValueError("not OpenSSH known_hosts lines: no key given")
    import asyncssh

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


# The fields of an SSH target, shared by every connector that reaches a host over SSH (ssh,
# runner): one definition, so their checks cannot drift apart.
SshHost = Annotated[str, Field(min_length=1, max_length=253)]
SshPort = Annotated[int, Field(ge=1, le=65535)]
SshUsername = Annotated[str, Field(min_length=1, max_length=64)]
KnownHosts = Annotated[
    str,
    Field(
        min_length=1, description="The host's public key(s), as lines of an OpenSSH known_hosts."
    ),
    AfterValidator(_check_known_hosts),
]


async def open_connection(
    ctx: ActionContext,
    *,
    host: str,
    port: int,
    username: str,
    known_hosts: str,
    connect_timeout: float,
    connector: str = "ssh",
) -> asyncssh.SSHClientConnection:
    """An authenticated connection to ``host``, its key pinned to ``known_hosts``, with the
    call's ``private_key`` (and ``passphrase``) or ``password`` secret; the failures as
    ActionErrors that never carry a secret. No agent, no default keys: only what the
    instance was given."""
    import asyncssh

    claimed = ctx.secrets.get("username")  # a playbook's credential (CACAO user-auth) names one
    if claimed is not None and claimed.reveal() != username:
        raise PermanentError(
            f"the step's credential is for another account than the instance's ({username}): "
            "the account is the instance's to choose",
            code="credential_mismatch",
        )
    options: dict[str, Any] = {
        "username": username,
        "known_hosts": asyncssh.import_known_hosts(known_hosts),
        "connect_timeout": min(connect_timeout, 30.0),
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
            f"give the {connector} connector a private_key or a password secret",
            code="secret_missing",
        )
    where = f"{host}:{port}"
    try:
        return await asyncssh.connect(host, port, **options)
    except asyncssh.HostKeyNotVerifiable:
        raise PermanentError(
            f"{where}: the host's key does not match known_hosts: refusing to connect",
            code="host_key_mismatch",
        ) from None
    except asyncssh.PermissionDenied:
        raise AuthError(f"{where}: {username} was refused (key or password)") from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise TransientError(f"{where}: cannot connect ({type(exc).__name__})") from None


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

    host: SshHost
    port: SshPort = 22
    username: SshUsername
    known_hosts: KnownHosts
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


class LineIn(ActionInput):
    """A command line, as a CACAO ``ssh`` command gives it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"line": "who"}]},
    )

    line: str = Field(min_length=1, max_length=4096)
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


# What a POSIX shell reads as syntax outside quotes. A line is run as words, never by a shell
# reading it, so any of these would silently mean something else than its author meant.
_OPERATORS = frozenset(";&|<>()")
_GLOBS = frozenset("*?[")


def shell_syntax(line: str) -> str | None:
    """What in ``line`` a POSIX shell would read as syntax rather than as text of a word
    (an operator, a redirection, a substitution, an expansion, a second line), or None.

    ``shlex.split`` turns ``ls; id`` into the words ``ls;`` and ``id``: the ``;`` is gone as
    syntax and only a character is left, so the check is made on the line itself, walking
    the same quoting rules (single quotes: everything literal; double quotes: ``$`` and a
    backquote still expand; a backslash outside quotes escapes one character). Unbalanced
    quotes are left to ``shlex.split``, which refuses them.
    """
    quote = ""
    word_start = True
    index = 0
    while index < len(line):
        char = line[index]
        after = line[index + 1 : index + 2]
        if char == "\0":
            return "a NUL character"
        if quote == "'":
            if char == "'":
                quote = ""
        elif quote == '"':
            if char == '"':
                quote = ""
            elif char == "\\":
                if after in ("$", "`", "\n"):
                    return f"an escaped {after!r} inside double quotes (use single quotes)"
                index += 1
            elif char == "`":
                return "` (command substitution)"
            elif char == "$":
                return "$( (command substitution)" if after == "(" else "$ (an expansion)"
        elif char == "\\":
            if after in ("\n", "\r"):
                return "a backslash-newline (a continued line)"
            index += 2
            word_start = False
            continue
        elif char in " \t":
            word_start = True
            index += 1
            continue
        elif char in "\n\r":
            return "a new line outside quotes (a second command)"
        elif char == "`":
            return "` (command substitution)"
        elif char == "$":
            return "$( (command substitution)" if after == "(" else "$ (an expansion)"
        elif char in _OPERATORS:
            return f"{char!r} (an operator or a redirection)"
        elif char in _GLOBS:
            return f"{char!r} (a glob pattern)"
        elif word_start and char == "~":
            return "'~' (a home directory expansion)"
        elif word_start and char == "#":
            return "'#' (a comment)"
        elif char in "'\"":
            quote = char
        word_start = False
        index += 1
    return None


@dataclass(frozen=True)
class _Template:
    """An allowed command as a line is matched against it: one regex per argv part, and which
    of its groups holds which placeholder."""

    name: str
    spec: CommandSpec
    parts: tuple[tuple[re.Pattern[str], tuple[tuple[str, str], ...]], ...]

    @classmethod
    def build(cls, name: str, spec: CommandSpec) -> _Template:
        """The part regexes: literal text escaped, each placeholder its own pattern in a
        group (a placeholder repeated in one part: a backreference, so the values agree).
        Group names are generated, so a placeholder's name never meets a group name of its
        own pattern; re.error (a pattern that cannot be embedded) propagates."""
        parts = []
        for part in spec.argv:
            pieces: list[str] = []
            groups: list[tuple[str, str]] = []
            seen: dict[str, str] = {}
            position = 0
            for found in _PLACEHOLDER.finditer(part):
                pieces.append(re.escape(part[position : found.start()]))
                placeholder = found[1]
                if placeholder in seen:
                    pieces.append(f"(?P={seen[placeholder]})")
                else:
                    group = f"quell_p{len(groups)}"
                    seen[placeholder] = group
                    groups.append((group, placeholder))
                    pieces.append(f"(?P<{group}>(?:{spec.params[placeholder]}))")
                position = found.end()
            pieces.append(re.escape(part[position:]))
            parts.append((re.compile("".join(pieces)), tuple(groups)))
        return cls(name, spec, tuple(parts))

    def match(self, words: list[str]) -> list[str] | None:
        """The argv when ``words`` are this command, else None. The values found are put
        back through :meth:`CommandSpec.render` (each checked by its own pattern alone) and
        the result must be the words again: what runs is exactly what run_command would
        run with those arguments, and exactly what the line said."""
        if len(words) != len(self.parts):
            return None
        values: dict[str, str] = {}
        for (regex, groups), word in zip(self.parts, words, strict=True):
            found = regex.fullmatch(word)
            if found is None:
                return None
            for group, placeholder in groups:
                value = str(found.group(group))
                if values.setdefault(placeholder, value) != value:
                    return None  # one placeholder, two different values
        try:
            argv = self.spec.render(values)
        except ValueError:
            return None
        return argv if argv == words else None


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
        self._templates: list[_Template] = []
        for name, spec in config.commands.items():
            try:
                self._templates.append(_Template.build(name, spec))
            except re.error:
                continue  # a pattern that only works alone: run_command still runs it

    def _allowed(self) -> str:
        return ", ".join(sorted(self.settings.commands))

    def _argv(self, params: CommandIn) -> list[str]:
        spec = self.settings.commands.get(params.command)
        if spec is None:
            raise PermanentError(
                f"command {params.command!r} is not allowed on {self.settings.host} "
                f"(allowed: {self._allowed()})",
                code="command_not_allowed",
            )
        try:
            return spec.render(params.args)
        except ValueError as exc:
            raise PermanentError(f"{params.command}: {exc}", code="invalid_input") from None

    def _line_argv(self, line: str) -> tuple[str, list[str]]:
        """The allowed command a line is, and its argv; PermanentError when it holds shell
        syntax, does not split, or matches no template. The line is never echoed whole: a
        playbook's line may be long, and only its first word is needed to say what failed."""
        syntax = shell_syntax(line)
        if syntax is not None:
            raise PermanentError(
                f"the line holds shell syntax: {syntax}; a line runs as one command of plain "
                "words (quote the character if it is meant as text)",
                code="command_not_allowed",
            )
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise PermanentError(
                f"the line does not split into words ({exc})", code="command_not_allowed"
            ) from None
        if not words:
            raise PermanentError("the line holds no command", code="command_not_allowed")
        for template in self._templates:
            argv = template.match(words)
            if argv is not None:
                return template.name, argv
        first = words[0] if len(words[0]) <= 64 else words[0][:61] + "..."
        raise PermanentError(
            f"no allowed command on {self.settings.host} matches the line ({len(words)} words, "
            f"the first {first!r}) (allowed: {self._allowed()})",
            code="command_not_allowed",
        )

    async def _connect(self, ctx: ActionContext) -> asyncssh.SSHClientConnection:
        settings = self.settings
        return await open_connection(
            ctx,
            host=settings.host,
            port=settings.port,
            username=settings.username,
            known_hosts=settings.known_hosts,
            connect_timeout=settings.timeout,
        )

    async def _execute(
        self, ctx: ActionContext, command: str, argv: list[str], expect_exit: list[int]
    ) -> CommandOut:
        """Run one checked argv (shell-quoted, so each word stays one argument); both actions
        end here, so a line runs exactly as its allowed command would."""
        if ctx.dry_run:
            return CommandOut(command=command, argv=argv, simulated=True)
        line = shlex.join(argv)
        limit = self.settings.max_output
        async with await self._connect(ctx) as connection:
            try:
                result = await asyncio.wait_for(
                    connection.run(line, check=False), timeout=self.settings.timeout
                )
            except TimeoutError:
                raise TransientError(
                    f"{command}: no end within {self.settings.timeout:g}s", code="timeout"
                ) from None
        stdout = str(result.stdout or "")
        stderr = str(result.stderr or "")
        truncated = len(stdout) > limit or len(stderr) > limit
        out = CommandOut(
            command=command,
            argv=argv,
            exit_status=result.exit_status,
            stdout=stdout[:limit],
            stderr=stderr[:limit],
            truncated=truncated,
        )
        ctx.log.info("ssh_command", command=command, exit_status=result.exit_status)
        if result.exit_status not in expect_exit:
            said = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "no stderr"
            raise PermanentError(
                f"{command} exited with {result.exit_status}: {said}",
                code="command_failed",
                details={"exit_status": result.exit_status},
            )
        return out

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
        return await self._execute(ctx, params.command, argv, params.expect_exit)

    @action(
        "run_line",
        risk=RiskLevel.HIGH,
        title="Run a command line on the host, if it is an allowed command",
        supports_dry_run=True,
    )
    async def run_line(self, ctx: ActionContext, params: LineIn) -> CommandOut:
        """Run a command line (a CACAO ``ssh`` command) as the first allowed command whose
        argv template matches its words; a line with shell syntax, or that is no allowed
        command, is refused before anything connects."""
        command, argv = self._line_argv(params.line)
        return await self._execute(ctx, command, argv, params.expect_exit)

    async def health(self, ctx: ActionContext) -> str:
        """Connect and authenticate (no command runs)."""
        async with await self._connect(ctx) as connection:
            version = connection.get_extra_info("server_version") or "an SSH server"
        settings = self.settings
        return f"{settings.username}@{settings.host}:{settings.port}: {version}"


__all__ = [
    "CommandIn",
    "CommandOut",
    "CommandSpec",
    "KnownHosts",
    "LineIn",
    "Ssh",
    "SshConfig",
    "SshHost",
    "SshPort",
    "SshUsername",
    "open_connection",
    "shell_syntax",
]
