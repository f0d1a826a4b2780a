"""Indexes for reading runs as people do: newest first (the runs list), by status, and by what
started them (an incident's timeline). Before them, each of those read every run.

Revision ID: 0018_runs_listing_indexes
Revises: 0017_waits_escalation_index
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_runs_listing_indexes"
down_revision = "0017_waits_escalation_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_created_at", "runs", ["created_at", "id"])
    op.create_index("ix_runs_trigger_ref", "runs", ["trigger_ref"])
    not_succeeded = sa.text("status != 'succeeded'")
    op.create_index(
        "ix_runs_not_succeeded",
        "runs",
        ["status", "created_at", "id"],
        sqlite_where=not_succeeded,
        postgresql_where=not_succeeded,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_not_succeeded", table_name="runs")
    op.drop_index("ix_runs_trigger_ref", table_name="runs")
    op.drop_index("ix_runs_created_at", table_name="runs")
