"""Ingestion and correlation: sources, alerts and their observables, incidents, suppression
rules, dead letters, checkpoints and the signatures the HTTP intake has accepted.

Revision ID: 0002_ingest
Revises: 0001_api_tokens
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0002_ingest"
down_revision = "0001_api_tokens"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("parser_options", _json(), nullable=False),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("stored", sa.BigInteger(), nullable=False),
        sa.Column("deduplicated", sa.BigInteger(), nullable=False),
        sa.Column("suppressed", sa.BigInteger(), nullable=False),
        sa.Column("dead_lettered", sa.BigInteger(), nullable=False),
        _time("last_received_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("name", name=op.f("uq_sources_name")),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resolution", sa.String(32), nullable=True),
        sa.Column("severity_id", sa.SmallInteger(), nullable=False),
        sa.Column("alert_count", sa.Integer(), nullable=False),
        _time("first_seen"),
        _time("last_seen"),
        _time("created_at"),
        _time("updated_at"),
        sa.Column("merged_into", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(
            ["merged_into"], ["incidents.id"], name=op.f("fk_incidents_merged_into_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    op.create_index("ix_incidents_status_last_seen", "incidents", ["status", "last_seen"])
    op.create_table(
        "incident_keys",
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("type", sa.String(24), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        _time("last_seen"),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_incident_keys_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("incident_id", "type", "value", name=op.f("pk_incident_keys")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_incident_keys_lookup", "incident_keys", ["type", "value"])
    op.create_table(
        "incident_events",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        _time("at"),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("data", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_incident_events_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_events")),
    )
    op.create_index(op.f("ix_incident_events_incident_id"), "incident_events", ["incident_id"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        _time("time"),
        _time("first_seen"),
        _time("last_seen"),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("severity_id", sa.SmallInteger(), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("rule_uid", sa.String(256), nullable=True),
        sa.Column("rule_name", sa.String(512), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("incident_id", sa.String(32), nullable=True),
        _time("received_at"),
        sa.Column("data", _json(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_alerts_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_fingerprint_last_seen", "alerts", ["fingerprint", "last_seen"])
    op.create_index(op.f("ix_alerts_incident_id"), "alerts", ["incident_id"])
    op.create_table(
        "alert_observables",
        sa.Column("type", sa.String(24), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("alert_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("private", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_alert_observables_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("type", "value", "alert_id", name=op.f("pk_alert_observables")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "suppression_rules",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("match", _json(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        _time("last_hit_at", nullable=True),
        _time("created_at"),
        _time("expires_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppression_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_suppression_rules_name")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        _time("received_at"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("field", sa.String(256), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _time("replayed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index("ix_dead_letters_source_status", "dead_letters", ["source", "status"])
    op.create_table(
        "ingest_checkpoints",
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("cursor", _json(), nullable=False),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ingest_checkpoints")),
    )
    op.create_table(
        "ingest_nonces",
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        _time("expires_at"),
        sa.PrimaryKeyConstraint("signature", name=op.f("pk_ingest_nonces")),
    )
    op.create_index(op.f("ix_ingest_nonces_expires_at"), "ingest_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ingest_nonces_expires_at"), table_name="ingest_nonces")
    op.drop_table("ingest_nonces")
    op.drop_table("ingest_checkpoints")
    op.drop_index("ix_dead_letters_source_status", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_table("suppression_rules")
    op.drop_table("alert_observables")
    op.drop_index(op.f("ix_alerts_incident_id"), table_name="alerts")
    op.drop_index("ix_alerts_fingerprint_last_seen", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index(op.f("ix_incident_events_incident_id"), table_name="incident_events")
    op.drop_table("incident_events")
    op.drop_index("ix_incident_keys_lookup", table_name="incident_keys")
    op.drop_table("incident_keys")
    op.drop_index("ix_incidents_status_last_seen", table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("sources")
