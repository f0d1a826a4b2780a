"""Threat intelligence: indicators, sightings, allow-list, feeds, lookup cache and quotas,
alert verdicts.

Revision ID: 0009_intel
Revises: 0008_audit_events
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0009_intel"
down_revision = "0008_audit_events"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "indicators",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("key", sa.String(2100), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("match", sa.String(16), nullable=False),
        sa.Column("value", sa.String(2048), nullable=False),
        sa.Column("confidence", sa.SmallInteger(), nullable=True),
        sa.Column("severity_id", sa.SmallInteger(), nullable=True),
        sa.Column("tlp", sa.SmallInteger(), nullable=False),
        sa.Column("first_seen", UTCDateTime(), nullable=True),
        sa.Column("last_seen", UTCDateTime(), nullable=True),
        sa.Column("valid_until", UTCDateTime(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("kill_chain", _json(), nullable=False),
        sa.Column("stix_ids", _json(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("sightings", sa.Integer(), nullable=False),
        sa.Column("last_sighted_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("rev", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_indicators")),
    )
    op.create_index("uq_indicators_key_source", "indicators", ["key", "source"], unique=True)
    op.create_index("ix_indicators_rev", "indicators", ["rev"])
    revisions = op.create_table(
        "intel_revision",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("rev", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intel_revision")),
    )
    op.bulk_insert(revisions, [{"id": 1, "rev": 0}])
    op.create_table(
        "indicator_sightings",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("indicator_id", sa.String(32), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.Column("alert_id", sa.String(32), nullable=True),
        sa.Column("observable", sa.String(2048), nullable=False),
        sa.Column("reported_by", sa.String(256), nullable=True),
        sa.ForeignKeyConstraint(
            ["indicator_id"],
            ["indicators.id"],
            name=op.f("fk_indicator_sightings_indicator_id_indicators"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_indicator_sightings")),
    )
    op.create_index(
        op.f("ix_indicator_sightings_indicator_id"), "indicator_sightings", ["indicator_id"]
    )
    op.create_index(op.f("ix_indicator_sightings_alert_id"), "indicator_sightings", ["alert_id"])
    op.create_table(
        "intel_allowlist",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(2100), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("match", sa.String(16), nullable=False),
        sa.Column("value", sa.String(2048), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intel_allowlist")),
        sa.UniqueConstraint("key", name=op.f("uq_intel_allowlist_key")),
    )
    op.create_table(
        "intel_feeds",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("etag", sa.String(512), nullable=True),
        sa.Column("last_modified", sa.String(64), nullable=True),
        sa.Column("checkpoint", _json(), nullable=True),
        sa.Column("next_pull_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("last_success_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", UTCDateTime(), nullable=True),
        sa.Column("last_report", _json(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intel_feeds")),
        sa.UniqueConstraint("name", name=op.f("uq_intel_feeds_name")),
    )
    op.create_table(
        "intel_cache",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("key", sa.String(2100), nullable=False),
        sa.Column("answer", _json(), nullable=False),
        sa.Column("fetched_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("source", "key", name=op.f("pk_intel_cache")),
    )
    op.create_table(
        "intel_quota",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("source", "window_start", name=op.f("pk_intel_quota")),
    )
    op.create_table(
        "alert_verdicts",
        sa.Column("alert_id", sa.String(32), nullable=False),
        sa.Column("verdict", sa.SmallInteger(), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("reasons", _json(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_alert_verdicts_alert_id_alerts")
        ),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alert_verdicts")),
    )


def downgrade() -> None:
    for table in (
        "alert_verdicts",
        "intel_quota",
        "intel_cache",
        "intel_feeds",
        "intel_allowlist",
        "indicator_sightings",
        "intel_revision",
        "indicators",
    ):
        op.drop_table(table)
