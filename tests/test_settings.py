"""Settings: environment over TOML over defaults, with errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from quell.errors import ConfigurationError
from quell.settings import (
    LogFormat,
    Settings,
    SqliteSynchronous,
    default_data_dir,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'data' / 'quell.db'}"
    assert settings.api_host == "127.0.0.1"
    assert settings.api_port == 8470
    assert settings.sqlite_synchronous is SqliteSynchronous.NORMAL
    assert settings.secret_key is None


def test_environment_wins_over_the_toml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "quell.toml"
    config.write_text('api_port = 9000\nlog_format = "json"\nsqlite_synchronous = "full"\n')
    monkeypatch.setenv("QUELL_CONFIG_FILE", str(config))
    monkeypatch.setenv("QUELL_API_PORT", "9100")
    settings = load_settings()
    assert settings.api_port == 9100
    assert settings.log_format is LogFormat.JSON
    assert settings.sqlite_synchronous is SqliteSynchronous.FULL
    assert settings.config_file == config


def test_toml_in_the_data_dir_is_read_without_being_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "quell.toml").write_text('api_host = "::1"\n')
    assert load_settings().api_host == "::1"


def test_explicit_config_file_argument(tmp_path: Path) -> None:
    config = tmp_path / "other.toml"
    config.write_text("database_pool_size = 3\n")
    assert load_settings(config).database_pool_size == 3


def test_unknown_toml_key_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "quell.toml"
    config.write_text("api_prot = 9000\n")
    monkeypatch.setenv("QUELL_CONFIG_FILE", str(config))
    with pytest.raises(ConfigurationError, match="unknown setting 'api_prot'"):
        load_settings()


def test_broken_toml_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "quell.toml"
    config.write_text("api_port = \n")
    monkeypatch.setenv("QUELL_CONFIG_FILE", str(config))
    with pytest.raises(ConfigurationError, match=str(config)):
        load_settings()


def test_an_invalid_value_says_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The error named the environment variable even for a value written in the file."""
    config = tmp_path / "quell.toml"
    config.write_text('api_port = "abc"\n')
    monkeypatch.setenv("QUELL_CONFIG_FILE", str(config))
    with pytest.raises(ConfigurationError) as in_file:
        load_settings()
    assert in_file.value.message.startswith(f"invalid setting api_port (in {config}): ")
    monkeypatch.setenv("QUELL_API_PORT", "xyz")
    with pytest.raises(ConfigurationError) as in_env:
        load_settings()
    assert in_env.value.message.startswith("invalid setting api_port (from QUELL_API_PORT): ")
    monkeypatch.delenv("QUELL_API_PORT")
    monkeypatch.setenv("quell_api_port", "abc")  # read in any case: named as it was set
    with pytest.raises(ConfigurationError) as lower:
        load_settings()
    assert lower.value.message.startswith("invalid setting api_port (from quell_api_port): ")
    with pytest.raises(ConfigurationError) as given:
        load_settings(api_port="no")
    assert given.value.message.startswith("invalid setting api_port (as given): ")


def test_a_structured_setting_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad QUELL_OIDC_PROVIDERS was pydantic-settings' SettingsError: a traceback."""
    monkeypatch.setenv("QUELL_OIDC_PROVIDERS", "{bad")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.message.startswith(
        "invalid setting oidc_providers (from QUELL_OIDC_PROVIDERS): not JSON: Expecting"
    )


def test_missing_explicit_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUELL_CONFIG_FILE", "/nonexistent/quell.toml")
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "env"),
    [
        ("QUELL_API_PORT", "70000", "QUELL_API_PORT"),
        ("QUELL_API_PORT", "eighty", "QUELL_API_PORT"),
        ("QUELL_SQLITE_SYNCHRONOUS", "off", "QUELL_SQLITE_SYNCHRONOUS"),
        ("QUELL_LOG_FORMAT", "xml", "QUELL_LOG_FORMAT"),
    ],
)
def test_bad_values_name_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, env: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert env in str(caught.value)
    assert caught.value.details["env"] == env


def test_secret_key_from_the_environment_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUELL_SECRET_KEY", "k" * 40)
    settings = load_settings()
    assert settings.secret_key is not None
    assert settings.secret_key.reveal() == "k" * 40
    assert "k" * 40 not in repr(settings)
    assert "k" * 40 not in settings.model_dump_json()


def test_data_dir_defaults_to_dot_quell_in_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(REPO_ROOT / "quell")
    assert default_data_dir() == REPO_ROOT / ".quell"
    monkeypatch.chdir(tmp_path)
    outside = default_data_dir()
    assert outside != tmp_path / ".quell"
    assert "quell" in outside.parts[-1].lower()


def test_relative_data_dir_becomes_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QUELL_DATA_DIR", "relative/dir")
    assert load_settings().data_dir == tmp_path / "relative" / "dir"
    assert load_settings().data_dir.is_absolute()


def test_oidc_providers_come_from_toml_tables_or_json_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "quell.toml"
    config.write_text(
        '[oidc_providers.corp]\nissuer = "https://idp.example"\nclient_id = "quell"\n'
        'client_secret = "toml-secret"\nprovision = true\ndefault_role = "analyst"\n'
    )
    monkeypatch.setenv("QUELL_CONFIG_FILE", str(config))
    corp = load_settings().oidc_providers["corp"]
    assert (corp.issuer, corp.client_id, corp.provision, corp.link_by) == (
        "https://idp.example",
        "quell",
        True,
        "email",  # the default: preferred_username is not trusted to name a user
    )
    assert corp.client_secret is not None
    assert corp.client_secret.reveal() == "toml-secret"
    assert "toml-secret" not in repr(load_settings().model_dump(mode="json"))

    monkeypatch.setenv(
        "QUELL_OIDC_PROVIDERS", '{"okta": {"issuer": "https://okta.example", "client_id": "q"}}'
    )
    assert sorted(load_settings().oidc_providers) == ["corp", "okta"]  # merged, by name
    monkeypatch.setenv(
        "QUELL_OIDC_PROVIDERS", '{"Bad Name": {"issuer": "https://x", "client_id": "q"}}'
    )
    with pytest.raises(ConfigurationError, match="OIDC provider name 'Bad Name'"):
        load_settings()
    monkeypatch.setenv(
        "QUELL_OIDC_PROVIDERS",
        '{"x": {"issuer": "https://x", "client_id": "q", "scope": "openid"}}',
    )
    with pytest.raises(ConfigurationError, match="oidc_providers"):
        load_settings()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """Five settings were missing from the README's table (a walkthrough's finding)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [
        f"QUELL_{name.upper()}" for name in Settings.model_fields
        if f"`QUELL_{name.upper()}`" not in table
    ]  # fmt: skip
    assert missing == []


def test_a_short_secret_key_is_refused_when_settings_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the commands that opened the data dir refused it; 'config show' took it."""
    monkeypatch.setenv("QUELL_SECRET_KEY", "short-canary")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.message == (
        "invalid setting secret_key (from QUELL_SECRET_KEY): Value error, too short: use at "
        "least 32 characters of random data"
    )  # and never the value itself
