"""Playbook publishing: a version's state (draft, in review, published) and the record of who
submitted, published, rejected or rolled back which version. The audit trail: the request id of
each event, and an outbox through which every action call a run makes reaches the chain.

Revision ID: 0015_publishing
Revises: 0014_secret_keys
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0015_publishing"
down_revision = "0014_secret_keys"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("playbook_versions") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("published_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("published_by", sa.String(64), nullable=True))
    # Versions stored before the workflow were usable as they were: they count as published.
    versions = sa.table(
        "playbook_versions",
        sa.column("state", sa.String),
        sa.column("created_at", UTCDateTime()),
        sa.column("published_at", UTCDateTime()),
    )
    op.execute(versions.update().values(state="published", published_at=versions.c.created_at))
    op.create_table(
        "playbook_reviews",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("version_id", sa.String(32), nullable=False),
        sa.Column("playbook_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["playbook_versions.id"],
            name=op.f("fk_playbook_reviews_version_id_playbook_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_playbook_reviews")),
    )
    op.create_index(op.f("ix_playbook_reviews_playbook_id"), "playbook_reviews", ["playbook_id"])
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("request_id", sa.String(40), nullable=True))
    op.create_table(
        "audit_outbox",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(512), nullable=True),
        sa.Column("detail", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_outbox")),
    )


def downgrade() -> None:
    op.drop_table("audit_outbox")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("request_id")
    op.drop_index(op.f("ix_playbook_reviews_playbook_id"), table_name="playbook_reviews")
    op.drop_table("playbook_reviews")
    with op.batch_alter_table("playbook_versions") as batch:
        batch.drop_column("published_by")
        batch.drop_column("published_at")
        batch.drop_column("state")
