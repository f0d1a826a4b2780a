"""Sources: where alerts come from, each configured by name.

A source has a kind (how records arrive: http, file, syslog, imap, elastic), a format (which
parser reads them), parser options (the generic JSON mapping, say), settings (deduplication
and correlation windows, fingerprint fields, record size limit, and the kind's own
connection settings) and optionally one secret (the HMAC key of an HTTP source, the IMAP
password, the SIEM API key), sealed at rest. Each source keeps counters of what became of
its records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from quell.clock import Clock
from quell.correlate.dedup import DEFAULT_FINGERPRINT, Fingerprinter
from quell.correlate.grouping import DEFAULT_KEYS, validate_keys
from quell.durations import parse_duration
from quell.errors import Conflict, InvalidInput, NotFound
from quell.governance.secrets import SecretBox
from quell.ids import new_id
from quell.ingest.intake import IntakeResult
from quell.ingest.parsers import build_parser
from quell.sdk.secret import SecretValue
from quell.store.database import Database
from quell.store.schema import ingest_checkpoints, sources

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_RECORD_BYTES = 16 * 1024 * 1024  # the largest settings.max_record_bytes


class SourceKind(StrEnum):
    """How a source's records arrive."""

    HTTP = "http"
    FILE = "file"
    SYSLOG = "syslog"
    IMAP = "imap"
    ELASTIC = "elastic"


class SourceSettings(BaseModel):
    """A source's settings. Durations are text such as ``1h`` or ``15m``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dedup_window: str = Field(default="1h", description="A repeat within this is counted.")
    correlation_window: str = Field(default="1h", description="Alerts this close group.")
    correlate_on: list[str] = Field(default_factory=lambda: list(DEFAULT_KEYS))
    fingerprint: list[str] = Field(default_factory=lambda: list(DEFAULT_FINGERPRINT))
    max_record_bytes: int = Field(default=65_536, ge=256, le=MAX_RECORD_BYTES)
    signature_window: str = Field(default="5m", description="HTTP: allowed timestamp skew.")
    connection: dict[str, Any] = Field(
        default_factory=dict, description="The kind's own settings: listener, mailbox, index."
    )

    @field_validator("dedup_window", "correlation_window", "signature_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("correlate_on")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        validate_keys(value)
        return value

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one field")
        Fingerprinter(value)
        return value


@dataclass(frozen=True)
class Source:
    """A configured source."""

    id: str
    name: str
    kind: SourceKind
    format: str
    parser_options: dict[str, Any]
    settings: SourceSettings
    has_secret: bool
    enabled: bool
    created_at: datetime
    updated_at: datetime
    counters: IntakeResult
    last_received_at: datetime | None

    @property
    def dedup_window(self) -> timedelta:
        """How close in time a repeat must be to be counted instead of stored."""
        return parse_duration(self.settings.dedup_window)

    @property
    def correlation_window(self) -> timedelta:
        """How close in time alerts sharing a key must be to group."""
        return parse_duration(self.settings.correlation_window)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (never the secret)."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind.value,
            "format": self.format,
            "parser_options": self.parser_options,
            "settings": self.settings.model_dump(),
            "has_secret": self.has_secret,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "counters": self.counters.as_dict(),
            "last_received_at": self.last_received_at,
        }


def _source(row: Any) -> Source:
    return Source(
        id=row.id,
        name=row.name,
        kind=SourceKind(row.kind),
        format=row.format,
        parser_options=dict(row.parser_options),
        settings=SourceSettings.model_validate(row.settings),
        has_secret=row.secret is not None,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        counters=IntakeResult(
            received=row.received,
            stored=row.stored,
            deduplicated=row.deduplicated,
            suppressed=row.suppressed,
            dead_lettered=row.dead_lettered,
        ),
        last_received_at=row.last_received_at,
    )


def parse_settings(values: dict[str, Any] | None) -> SourceSettings:
    """Validated settings; InvalidInput names the first bad field."""
    try:
        return SourceSettings.model_validate(values or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidInput(f"settings.{where}: {error['msg']}", field=f"settings.{where}") from None


def merge_settings(current: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``current``, as a JSON merge patch two levels deep: a setting given
    replaces its value, and so does each key given inside ``connection`` (the rest of the
    connection stays: changing a listener's UDP port keeps its TCP one). ``null`` removes a
    setting (its default applies again) or a connection key. Deeper values (an Elasticsearch
    ``query``) are replaced whole, never merged into."""
    merged = dict(current)
    for key, value in given.items():
        if value is None:
            merged.pop(key, None)
        elif key == "connection" and isinstance(value, dict):
            connection = dict(merged.get("connection") or {})
            for inner, setting in value.items():
                if setting is None:
                    connection.pop(inner, None)
                else:
                    connection[inner] = setting
            merged["connection"] = connection
        else:
            merged[key] = value
    return merged


def _with_format_defaults(format_name: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    values = dict(settings or {})
    if format_name == "syslog" and "fingerprint" not in values:
        # Plain syslog has no rule id: without the title, every message of one program on one
        # host would count as a repeat of the first.
        values["fingerprint"] = [*DEFAULT_FINGERPRINT, "title"]
    if format_name == "email" and "max_record_bytes" not in values:
        # A record is a whole message, attachments included: the 64 KiB meant for one log
        # line would dead-letter nearly every report that attaches the original or a file.
        values["max_record_bytes"] = MAX_RECORD_BYTES
    return values


SECRET_KEYS = frozenset({"password", "api_key", "apikey", "secret", "token", "passphrase"})


def _check_connection(
    kind: SourceKind, settings: SourceSettings, secret: SecretValue | None
) -> None:
    from quell.ingest.runner import RUN_KINDS, connection_config

    for key in settings.connection:
        if key.lower().replace("-", "_") in SECRET_KEYS:
            # Settings are stored and shown in clear; a credential belongs in the sealed secret.
            raise InvalidInput(
                f"settings.connection.{key}: a credential is not a setting; "
                "give it as the source's secret (quell source set-secret, or 'secret' in the API)",
                field=f"settings.connection.{key}",
            )
    if kind in RUN_KINDS:
        connection_config(kind, settings.connection, secret)


class SourceService:
    """Create, read and remove sources; open their secrets; count their records."""

    def __init__(self, db: Database, clock: Clock, box: SecretBox) -> None:
        self.db = db
        self.clock = clock
        self.box = box

    def create(
        self,
        name: str,
        kind: str,
        format_name: str,
        *,
        parser_options: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        secret: SecretValue | None = None,
    ) -> Source:
        """Add a source. The format's parser is built once to check the options."""
        if not _NAME.match(name):
            raise InvalidInput(
                "source name must be 1-64 lowercase letters, digits, '.', '_' or '-'",
                field="name",
                value=name,
            )
        try:
            parsed_kind = SourceKind(kind)
        except ValueError:
            raise InvalidInput(
                f"unknown source kind {kind!r}; kinds are: {', '.join(SourceKind)}", field="kind"
            ) from None
        build_parser(format_name, parser_options)
        checked = parse_settings(_with_format_defaults(format_name, settings))
        _check_connection(parsed_kind, checked, secret)
        now = self.clock.now()
        row = {
            "id": new_id("src"),
            "name": name,
            "kind": parsed_kind.value,
            "format": format_name,
            "parser_options": parser_options or {},
            "settings": checked.model_dump(),
            "secret": self.box.seal(secret, purpose=f"source:{name}") if secret else None,
            "enabled": True,
            "created_at": now,
            "updated_at": now,
            "received": 0,
            "stored": 0,
            "deduplicated": 0,
            "suppressed": 0,
            "dead_lettered": 0,
            "last_received_at": None,
        }
        try:
            with self.db.write() as conn:
                conn.execute(insert(sources).values(**row))
        except IntegrityError:
            raise Conflict(f"a source named {name!r} exists", field="name", value=name) from None
        return self.get(name)

    def ensure(self, name: str, kind: str, format_name: str) -> Source:
        """The source called ``name``, created with defaults if it does not exist."""
        try:
            return self.get(name)
        except NotFound:
            try:
                return self.create(name, kind, format_name)
            except Conflict:  # created meanwhile by another process
                return self.get(name)

    def get(self, name: str) -> Source:
        """The source called ``name``."""
        with self.db.read() as conn:
            row = conn.execute(select(*sources.c).where(sources.c.name == name)).first()
        if row is None:
            raise NotFound(f"no source named {name!r}", field="source", value=name)
        return _source(row)

    def list_all(self) -> list[Source]:
        """Every source, by name."""
        with self.db.read() as conn:
            return [_source(r) for r in conn.execute(select(*sources.c).order_by(sources.c.name))]

    def update(
        self,
        name: str,
        *,
        parser_options: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        enabled: bool | None = None,
    ) -> Source:
        """Change a source's parser options, settings (merged) or enabled flag."""
        current = self.get(name)
        values: dict[str, Any] = {"updated_at": self.clock.now()}
        if parser_options is not None:
            build_parser(current.format, parser_options)
            values["parser_options"] = parser_options
        if settings is not None:
            given = merge_settings(current.settings.model_dump(), settings)
            merged = parse_settings(_with_format_defaults(current.format, given))
            # The sealed secret completes the connection (an API key, a password): without
            # it, a source that authenticates could never have its settings changed.
            secret = self.secret(name) if current.has_secret else None
            _check_connection(current.kind, merged, secret)
            values["settings"] = merged.model_dump()
        if enabled is not None:
            values["enabled"] = enabled
        with self.db.write() as conn:
            conn.execute(update(sources).where(sources.c.name == name).values(**values))
        return self.get(name)

    def remove(self, name: str) -> None:
        """Delete a source's configuration and where it had got to (its alerts stay): a source
        added again under the name starts afresh, from its own ``lookback``, not from the old
        one's checkpoint."""
        with self.db.write() as conn:
            kind = conn.execute(
                delete(sources).where(sources.c.name == name).returning(sources.c.kind)
            ).scalar_one_or_none()
            if kind is None:
                raise NotFound(f"no source named {name!r}", field="source", value=name)
            # Keys are "<kind>:<name>" or "<kind>:<name>:<detail>" (an IMAP folder).
            prefix = f"{kind}:{name}"
            stale = [
                key
                for key in conn.execute(
                    select(ingest_checkpoints.c.key).where(
                        ingest_checkpoints.c.key.startswith(prefix, autoescape=True)
                    )
                ).scalars()
                if key == prefix or key.startswith(prefix + ":")
            ]
            if stale:
                conn.execute(delete(ingest_checkpoints).where(ingest_checkpoints.c.key.in_(stale)))

    def set_secret(self, name: str, secret: SecretValue | None) -> None:
        """Replace (or clear) a source's secret."""
        sealed = self.box.seal(secret, purpose=f"source:{name}") if secret else None
        with self.db.write() as conn:
            changed = conn.execute(
                update(sources)
                .where(sources.c.name == name)
                .values(secret=sealed, updated_at=self.clock.now())
            ).rowcount
        if not changed:
            raise NotFound(f"no source named {name!r}", field="source", value=name)

    def secret(self, name: str) -> SecretValue | None:
        """A source's secret, opened, or None when it has none."""
        with self.db.read() as conn:
            row = conn.execute(select(sources.c.secret).where(sources.c.name == name)).first()
        if row is None:
            raise NotFound(f"no source named {name!r}", field="source", value=name)
        if row.secret is None:
            return None
        return self.box.open(row.secret, purpose=f"source:{name}")

    @staticmethod
    def count(conn: Connection, name: str, result: IntakeResult, at: datetime | None) -> None:
        """Add a batch's counts to the source, in the caller's transaction.

        ``at`` is when the batch was received (None for a replay, which received nothing new).
        """
        values: dict[str, Any] = {
            "received": sources.c.received + result.received,
            "stored": sources.c.stored + result.stored,
            "deduplicated": sources.c.deduplicated + result.deduplicated,
            "suppressed": sources.c.suppressed + result.suppressed,
            "dead_lettered": sources.c.dead_lettered + result.dead_lettered,
        }
        if at is not None:
            values["last_received_at"] = at
        conn.execute(update(sources).where(sources.c.name == name).values(**values))
