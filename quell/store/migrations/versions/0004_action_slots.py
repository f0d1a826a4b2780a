"""Concurrency slots that cap an action's calls in flight across every worker.

Revision ID: 0004_action_slots
Revises: 0003_engine
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from quell.store.types import UTCDateTime

revision = "0004_action_slots"
down_revision = "0003_engine"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "action_slots",
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key", "slot", name=op.f("pk_action_slots")),
    )


def downgrade() -> None:
    op.drop_table("action_slots")
