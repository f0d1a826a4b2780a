"""The data directory and the secret key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from quell.datadir import SECRET_KEY_FILE, ensure_data_dir, load_or_create_secret_key
from quell.errors import ConfigurationError
from quell.sdk.secret import SecretValue


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_is_created_private(tmp_path: Path) -> None:
    folder = ensure_data_dir(tmp_path / "a" / "b")
    assert folder.is_dir()
    assert _mode(folder) == 0o700


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigurationError, match="data directory"):
        ensure_data_dir(blocker)


def test_secret_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_secret_key(tmp_path, None)
    path = tmp_path / SECRET_KEY_FILE
    assert _mode(path) == 0o600
    assert len(first.reveal()) >= 40
    assert load_or_create_secret_key(tmp_path, None) == first
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_KEY_FILE]


def test_configured_key_wins_and_nothing_is_written(tmp_path: Path) -> None:
    key = SecretValue("x" * 48)
    assert load_or_create_secret_key(tmp_path, key) is key
    assert not (tmp_path / SECRET_KEY_FILE).exists()


def test_a_short_configured_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="too short"):
        load_or_create_secret_key(tmp_path, SecretValue("short"))
