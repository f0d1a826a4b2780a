"""Active containments and their reverts.

Revision ID: 0007_containments
Revises: 0006_guardrails
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0007_containments"
down_revision = "0006_guardrails"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "containments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("instance", sa.String(64), nullable=True),
        sa.Column("target", _json(), nullable=False),
        sa.Column("output", _json(), nullable=True),
        sa.Column("revert_action", sa.String(128), nullable=False),
        sa.Column("revert_input", _json(), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("step_key", sa.String(512), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("last_error", _json(), nullable=True),
        sa.Column("reverted_at", UTCDateTime(), nullable=True),
        sa.Column("reverted_by", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_containments")),
    )
    op.create_index("ix_containments_status_expires", "containments", ["status", "expires_at"])
    op.create_index("uq_containments_run_step", "containments", ["run_id", "step_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_containments_run_step", table_name="containments")
    op.drop_index("ix_containments_status_expires", table_name="containments")
    op.drop_table("containments")
