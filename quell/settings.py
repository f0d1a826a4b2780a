"""Settings: ``QUELL_*`` environment variables over an optional TOML file over defaults.

The TOML file is ``$QUELL_CONFIG_FILE`` when set (it must then exist), else ``quell.toml`` in
the data directory when present. Its keys are the field names below (``database_url = "…"``);
an unknown key is an error that names it, so a typo never passes silently.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from quell.errors import ConfigurationError
from quell.sdk.secret import SecretValue

ENV_PREFIX = "QUELL_"
CONFIG_FILE_ENV = "QUELL_CONFIG_FILE"
CONFIG_FILE_NAME = "quell.toml"
DATA_DIR_NAME = ".quell"

_config_file_override: ContextVar[Path | None] = ContextVar("quell_config_file", default=None)


class LogFormat(StrEnum):
    """How log lines are rendered."""

    HUMAN = "human"
    JSON = "json"


class LogLevel(StrEnum):
    """The least severe level that is logged."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class SqliteSynchronous(StrEnum):
    """SQLite's ``synchronous`` pragma in WAL mode.

    ``normal`` survives a crash of the process (the default); ``full`` also survives a power
    loss, at the cost of an fsync per commit, which group commit amortizes.
    """

    NORMAL = "normal"
    FULL = "full"


class EventLoop(StrEnum):
    """The asyncio event loop Quell's processes run on (see :mod:`quell.aio`).

    ``auto`` takes uvloop where it is installed (Linux and macOS, with CPython), else asyncio's
    own loop; ``uvloop`` insists on it (an error where it is missing).
    """

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class OidcProviderSettings(BaseModel):
    """One OpenID Connect provider users may sign in with (``quell.governance.oidc``).

    In TOML: a table ``[oidc_providers.NAME]``; in the environment, ``QUELL_OIDC_PROVIDERS``
    holds a JSON object of them by name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="The provider's issuer URL; its /.well-known/openid-configuration is read.",
    )
    client_id: str = Field(min_length=1, max_length=255, description="Quell's client id there.")
    client_secret: SecretValue | None = Field(
        default=None, description="Quell's client secret; none for a public client (PKCE only)."
    )
    token_auth: Literal["client_secret_basic", "client_secret_post", "none"] | None = Field(
        default=None,
        description="How Quell authenticates at the token endpoint; default "
        "client_secret_basic with a secret, none without.",
    )
    redirect_uri: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Where the provider sends the browser back; default "
        "PUBLIC_URL/api/auth/oidc/NAME/callback.",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email"],
        description="Scopes asked for; openid is always among them.",
    )
    username_claim: str = Field(
        default="preferred_username",
        min_length=1,
        description="The ID token claim that names the user (linking by name, new users).",
    )
    link_by: Literal["name", "email", "none"] = Field(
        default="email",
        description="How a first sign-in finds its Quell user: email (a verified email claim "
        "is the user's email: the default), name (username_claim is the user's name; only "
        "where the provider does not let users choose it) or none (only identities linked "
        "before).",
    )
    provision: bool = Field(
        default=False, description="Create a user (no password) when none matches."
    )
    default_role: str = Field(default="auditor", description="The role of users it creates.")
    ca_file: Path | None = Field(
        default=None, description="CA bundle (PEM) to trust for this provider's TLS."
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of each call to the provider."
    )


def find_checkout(start: Path) -> Path | None:
    """The root of a Quell source checkout containing ``start``, if there is one."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and (folder / "quell" / "__init__.py").is_file():
            try:
                project = tomllib.loads(pyproject.read_text("utf-8")).get("project", {})
            except (OSError, tomllib.TOMLDecodeError):
                continue
            if project.get("name") == "quell":
                return folder
    return None


def default_data_dir() -> Path:
    """``./.quell`` at the root of a checkout when run from one, else the per-user data dir."""
    checkout = find_checkout(Path.cwd())
    if checkout is not None:
        return checkout / DATA_DIR_NAME
    return platformdirs.user_data_path("quell", appauthor=False)


class Settings(BaseSettings):
    """Everything Quell can be told from outside. Each field is ``QUELL_<FIELD>`` in the env."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_default=True
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the embedded database, the secret key and blobs live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is a SQLite file in the data dir. "
        "PostgreSQL: postgresql://user:password@host/db",
    )
    secret_key: SecretValue | None = Field(
        default=None,
        description="Key that encrypts secrets at rest and signs links; "
        "generated into the data dir (mode 0600) when absent.",
    )
    log_format: LogFormat = Field(default=LogFormat.HUMAN, description="human or json")
    log_level: LogLevel = Field(default=LogLevel.INFO, description="debug, info, warning, error")
    api_host: str = Field(default="127.0.0.1", description="Address `quell serve` binds to.")
    api_port: int = Field(default=8470, ge=0, le=65535, description="Port `quell serve` binds.")
    sqlite_synchronous: SqliteSynchronous = Field(
        default=SqliteSynchronous.NORMAL, description="normal (crash-safe) or full (power-safe)"
    )
    database_pool_size: int = Field(default=10, ge=1, le=1000, description="Connections kept.")
    ingest_workers: int = Field(
        default=1,
        ge=0,
        le=8,
        description="Processes `quell serve` parses incoming alerts in, beside the one that "
        "writes them; 0 parses in threads of the server process.",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Upgrade the schema on start. Turn off in a cluster and run "
        "`quell db upgrade` once per release instead.",
    )
    plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules whose connectors to load besides the installed ones (comma list).",
    )
    outbound_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Private networks or hosts actions may reach (comma list: 10.0.0.0/8, "
        "edr.corp.example); public addresses are always allowed.",
    )
    engine_concurrency: int = Field(
        default=256, ge=1, le=100_000, description="Runs one engine process executes at once."
    )
    engine_lease_seconds: float = Field(
        default=30.0,
        ge=0.5,
        le=3600,
        description="How long a run stays with a worker that stopped renewing (a dead one).",
    )
    embedded_worker: bool = Field(
        default=True,
        description="`quell serve` also runs playbooks (an engine and the trigger dispatcher) "
        "in its own process. Turn off in a cluster where `quell worker` processes do.",
    )
    playbook_review: Literal["required", "optional"] = Field(
        default="required",
        description="Whether a new playbook version is published through review by someone "
        "other than its author (required), or its author may publish it (optional: a lab).",
    )
    organization_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="DNS domains inside the organization (comma list: corp.example). With "
        "private and loopback addresses they are where TLP:RED and TLP:AMBER+STRICT playbook "
        "data may go; anything else is outside.",
    )
    cacao_max_iterations: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="The bound put on an imported CACAO while-condition (CACAO sets none).",
    )
    cacao_signing_key: Path | None = Field(
        default=None,
        description="PEM private key (RSA, EC P-256 or Ed25519) `quell playbook export-cacao "
        "--sign` signs with.",
    )
    cacao_signee: str = Field(
        default="Quell", description="Who CACAO signatures made here name as their signee."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8470",
        description="How others reach this server (callback links are built on it).",
    )
    intel_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=2**31,
        description="The largest intel import or feed download (bytes); larger is refused.",
    )
    evidence_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        le=2**40,
        description="The largest evidence file attached to an incident (bytes); larger is refused.",
    )
    session_hours: float = Field(
        default=12,
        gt=0,
        le=24 * 365,
        description="How long a login session lasts without use (hours); each use (at most "
        "once a minute) extends it by as much.",
    )
    oidc_providers: dict[str, OidcProviderSettings] = Field(
        default_factory=dict,
        description="OpenID Connect providers to sign in with, by name (see "
        "OidcProviderSettings); QUELL_OIDC_PROVIDERS takes them as a JSON object.",
    )
    event_loop: EventLoop = Field(
        default=EventLoop.AUTO,
        description="auto (uvloop where installed, else asyncio), asyncio or uvloop: the loop "
        "`quell serve`, `quell worker` and the CLI's engine run on.",
    )

    @field_validator("plugins", "outbound_allow", "organization_domains", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("oidc_providers")
    @classmethod
    def _provider_names(
        cls, value: dict[str, OidcProviderSettings]
    ) -> dict[str, OidcProviderSettings]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
                raise ValueError(
                    f"OIDC provider name {name!r} must be 1-64 lowercase letters, digits, "
                    "'_' or '-'"
                )
        return value

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretValue | None) -> SecretValue | None:
        # Checked here too, so that every command (config show included) refuses it.
        if value is not None and len(value.reveal()) < 32:
            raise ValueError("too short: use at least 32 characters of random data")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("database_url")
    @classmethod
    def _non_empty_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the embedded SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        # Built, not formatted: a data dir may contain '?' or '#', which a URL would misread.
        from sqlalchemy.engine import URL

        embedded = URL.create("sqlite", database=str(self.data_dir / "quell.db"))
        return embedded.render_as_string(hide_password=False)

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        path = _config_path()
        return path if path is not None and path.is_file() else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments win over the environment, which wins over the TOML file."""
        return init_settings, env_settings, _TomlSource(settings_cls, _config_path())


def _config_path() -> Path | None:
    override = _config_file_override.get()
    if override is not None:
        return override
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    data_dir = os.environ.get(f"{ENV_PREFIX}DATA_DIR")
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return folder / CONFIG_FILE_NAME


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file; refuses unknown keys by name."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.explicit = _config_file_override.get() is not None or bool(
            os.environ.get(CONFIG_FILE_ENV)
        )

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: values come from :meth:`__call__` all at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        if not self.path.is_file():
            if self.explicit:
                raise ConfigurationError(
                    f"configuration file {self.path} does not exist", file=str(self.path)
                )
            return {}
        try:
            data = tomllib.loads(self.path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(
                f"cannot read configuration file {self.path}: {exc}", file=str(self.path)
            ) from exc
        known = set(self.settings_cls.model_fields)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown setting {unknown[0]!r} in {self.path}; known: {', '.join(sorted(known))}",
                file=str(self.path),
                field=unknown[0],
            )
        return data


def _given_by(field: str, env_name: str, overrides: dict[str, Any]) -> str:
    """Where the value of ``field`` came from, by the sources' order: an argument, the
    environment, else the TOML file (its path). Called while the file override is set."""
    top = field.split(".")[0]
    if top in overrides:
        return "as given"
    variable = f"{ENV_PREFIX}{top.upper()}"
    named = [key for key in os.environ if key.upper() == variable]  # in any case, as read
    if named:
        return f"from {named[0]}"
    path = _config_path()
    return f"in {path}" if path is not None and path.is_file() else env_name


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings, turning validation errors into one ConfigurationError naming the field."""
    token = _config_file_override.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        env_name = f"{ENV_PREFIX}{field.upper()}"
        raise ConfigurationError(
            f"invalid setting {field} ({_given_by(field, env_name, overrides)}): {first['msg']}",
            field=field,
            env=env_name,
        ) from None
    except SettingsError as exc:  # a structured setting whose JSON does not parse
        named = re.search(r'field "([^"]+)"', str(exc))
        field = named.group(1) if named else "settings"
        env_name = f"{ENV_PREFIX}{field.upper()}"
        reason = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise ConfigurationError(
            f"invalid setting {field} ({_given_by(field, env_name, overrides)}): not JSON{reason}",
            field=field,
            env=env_name,
        ) from None
    finally:
        _config_file_override.reset(token)
