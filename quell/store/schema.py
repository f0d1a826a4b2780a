"""The tables, as SQLAlchemy Core metadata.

Core, not the ORM: the hot paths (journal writes, claims, ingest) use compiled statements and
``executemany``, and the services map rows to their own frozen dataclasses. Every change here
comes with an Alembic migration in ``quell/store/migrations/versions``; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from quell.store.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("hint", String(8), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(64), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("last_used_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

# One active token per name; revoked tokens keep their row (and name) for the record.
Index(
    "uq_api_tokens_active_name",
    api_tokens.c.name,
    unique=True,
    sqlite_where=api_tokens.c.revoked_at.is_(None),
    postgresql_where=api_tokens.c.revoked_at.is_(None),
)


def _json() -> JSON:
    """JSON on SQLite, JSONB on PostgreSQL (indexable, compact)."""
    return JSON().with_variant(JSONB(), "postgresql")


# -- ingestion ---------------------------------------------------------------------------------

sources = Table(
    "sources",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # http, file, syslog, imap, elastic
    Column("format", String(16), nullable=False),
    Column("parser_options", _json(), nullable=False),
    Column("settings", _json(), nullable=False),  # kind-specific (ports, mailbox, index, ...)
    Column("secret", LargeBinary, nullable=True),  # sealed by quell.governance.secrets
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("received", BigInteger, nullable=False, default=0),
    Column("stored", BigInteger, nullable=False, default=0),
    Column("deduplicated", BigInteger, nullable=False, default=0),
    Column("suppressed", BigInteger, nullable=False, default=0),
    Column("dead_lettered", BigInteger, nullable=False, default=0),
    Column("last_received_at", UTCDateTime(), nullable=True),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("title", String(512), nullable=False),
    Column("status", String(16), nullable=False),  # new, triage, contained, ... closed
    Column("resolution", String(32), nullable=True),
    Column("severity_id", SmallInteger, nullable=False),
    Column("alert_count", Integer, nullable=False),
    Column("first_seen", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("merged_into", String(32), ForeignKey("incidents.id"), nullable=True),
)
Index("ix_incidents_status_last_seen", incidents.c.status, incidents.c.last_seen)

# The observables an open incident correlates on, with when each was last seen in it.
incident_keys = Table(
    "incident_keys",
    metadata,
    Column("incident_id", String(32), ForeignKey("incidents.id"), primary_key=True),
    Column("type", String(24), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("last_seen", UTCDateTime(), nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_incident_keys_lookup", incident_keys.c.type, incident_keys.c.value)

incident_events = Table(
    "incident_events",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),  # created, merged, merged_into, ...
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(64), nullable=True),
    Column("data", _json(), nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("format", String(16), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("first_seen", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("count", Integer, nullable=False),
    Column("severity_id", SmallInteger, nullable=False),
    Column("title", String(512), nullable=False),
    Column("rule_uid", String(256), nullable=True),
    Column("rule_name", String(512), nullable=True),
    Column("status", String(16), nullable=False),
    Column("incident_id", String(32), ForeignKey("incidents.id"), nullable=True, index=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("data", _json(), nullable=False),  # the alert's content fields (see ingest.alerts)
    Column("raw", LargeBinary, nullable=False),  # the record's bytes, verbatim
)
Index("ix_alerts_fingerprint_last_seen", alerts.c.fingerprint, alerts.c.last_seen)
# No index on received_at: ids are time-ordered at receipt, so "newest first" is the id order.

# Keyed (type, value, alert_id) and WITHOUT ROWID on SQLite: one B-tree per row, ordered the
# way it is searched (which alerts saw this IP?). An alert's own observables are read from its
# document, so no second index by alert is kept. PostgreSQL ignores the SQLite option.
alert_observables = Table(
    "alert_observables",
    metadata,
    Column("type", String(24), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("alert_id", String(32), ForeignKey("alerts.id"), primary_key=True),
    Column("role", String(16), nullable=True),
    Column("private", Boolean, nullable=True),  # IPs: not globally routable
    sqlite_with_rowid=False,
)

suppression_rules = Table(
    "suppression_rules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("match", _json(), nullable=False),
    Column("action", String(16), nullable=False),  # drop, close
    Column("builtin", Boolean, nullable=False, default=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("hits", BigInteger, nullable=False, default=0),
    Column("last_hit_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("format", String(16), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False),
    Column("field", String(256), nullable=True),
    Column("raw", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # pending, replayed
    Column("attempts", Integer, nullable=False, default=1),
    Column("replayed_at", UTCDateTime(), nullable=True),
)
Index("ix_dead_letters_source_status", dead_letters.c.source, dead_letters.c.status)

ingest_checkpoints = Table(
    "ingest_checkpoints",
    metadata,
    Column("key", String(256), primary_key=True),
    Column("cursor", _json(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Signatures already accepted by the HTTP intake, kept for the replay window.
ingest_nonces = Table(
    "ingest_nonces",
    metadata,
    Column("signature", String(128), primary_key=True),
    Column("source", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
)
