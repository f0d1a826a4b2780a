"""Incidents by the time they last changed. The SLA check, after its first full look, reads
only the incidents changed since its last check (and the clocks come due), instead of every open
incident and every running clock every five seconds.

Revision ID: 0021_incidents_updated_at
Revises: 0020_waits_run_id_status
"""

from __future__ import annotations

from alembic import op

revision = "0021_incidents_updated_at"
down_revision = "0020_waits_run_id_status"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_incidents_updated_at", "incidents", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_incidents_updated_at", table_name="incidents")
