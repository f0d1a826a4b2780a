"""Configured connector instances, with their secrets sealed.

Revision ID: 0005_connector_instances
Revises: 0004_action_slots
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0005_connector_instances"
down_revision = "0004_action_slots"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "connector_instances",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("secrets", sa.LargeBinary(), nullable=True),
        sa.Column("secret_names", _json(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connector_instances")),
        sa.UniqueConstraint("name", name=op.f("uq_connector_instances_name")),
    )


def downgrade() -> None:
    op.drop_table("connector_instances")
