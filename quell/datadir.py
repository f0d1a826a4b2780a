"""The data directory: created private (0700), holding the secret key (0600) and the database.

The secret key encrypts secrets at rest and signs links. ``QUELL_SECRET_KEY`` wins; otherwise it
is read from ``secret.key`` in the data directory, and generated there on first run.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

import structlog

from quell.errors import ConfigurationError
from quell.sdk.secret import SecretValue

SECRET_KEY_FILE = "secret.key"
_KEY_BYTES = 32

log = structlog.get_logger(__name__)


def ensure_data_dir(path: Path) -> Path:
    """Create the data directory (mode 0700) if needed and check it is a writable folder."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create data directory {path}: {exc.strerror}", path=str(path)
        ) from exc
    if not path.is_dir():
        raise ConfigurationError(f"data directory {path} is not a directory", path=str(path))
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(f"data directory {path} is not writable", path=str(path))
    return path


def load_or_create_secret_key(data_dir: Path, configured: SecretValue | None) -> SecretValue:
    """The configured key, else the one in ``secret.key``, else a new one written there."""
    if configured is not None:
        if len(configured.reveal()) < 32:
            raise ConfigurationError(
                "QUELL_SECRET_KEY is too short: use at least 32 characters of random data",
                env="QUELL_SECRET_KEY",
            )
        return configured
    path = data_dir / SECRET_KEY_FILE
    key = _read_key(path)
    if key is not None:
        return key
    new_key = base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode().rstrip("=")
    # Write a private temporary file, then link it into place: the link is atomic and fails if
    # another process won the race, so readers never see a half-written key.
    tmp = data_dir / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(new_key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        existing = _read_key(path)
        if existing is None:
            raise ConfigurationError(f"secret key file {path} is empty", path=str(path)) from None
        return existing
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create secret key file {path}: {exc.strerror}", path=str(path)
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("secret_key_generated", path=str(path))
    return SecretValue(new_key)


def _read_key(path: Path) -> SecretValue | None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "secret_key_permissions_too_open",
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
            hint="chmod 600",
        )
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not ASCII text"
        raise ConfigurationError(
            f"cannot read the secret key file {path}: {reason}", path=str(path)
        ) from None
    return SecretValue(text) if text else None
