"""Guardrail policy, and the executions hourly limits count.

Revision ID: 0006_guardrails
Revises: 0005_connector_instances
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0006_guardrails"
down_revision = "0005_connector_instances"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "guardrails",
        sa.Column("name", sa.String(160), nullable=False),
        sa.Column("value", _json(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_guardrails")),
    )
    op.create_table(
        "guard_events",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(160), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guard_events")),
    )
    op.create_index("ix_guard_events_scope_at", "guard_events", ["scope", "at"])


def downgrade() -> None:
    op.drop_index("ix_guard_events_scope_at", table_name="guard_events")
    op.drop_table("guard_events")
    op.drop_table("guardrails")
