"""Waits by status and age. The approvals and tasks pages list the pending waits oldest first,
a page at a time; they sorted every pending wait for each page (38 ms at 9,750 waiting).

The index of a run's waits gains the age too. Without it, SQLite (no statistics) lists one
run's pending waits, oldest first, by walking every pending wait in the new index (4 ms at
10,000 pending) rather than finding the run's few and sorting them (0.2 ms).

Revision ID: 0023_waits_status_created
Revises: 0022_incident_documents_tsvector
"""

from __future__ import annotations

from alembic import op

revision = "0023_waits_status_created"
down_revision = "0022_incident_documents_tsvector"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_waits_status_created", "waits", ["status", "created_at", "id"])
    op.create_index(
        "ix_waits_run_id_status_created", "waits", ["run_id", "status", "created_at", "id"]
    )
    op.drop_index("ix_waits_run_id_status", table_name="waits")


def downgrade() -> None:
    op.create_index("ix_waits_run_id_status", "waits", ["run_id", "status"])
    op.drop_index("ix_waits_run_id_status_created", table_name="waits")
    op.drop_index("ix_waits_status_created", table_name="waits")
