"""A run's waits by (run_id, status) instead of run_id alone. Asked for a run's pending waits
(a cancel closes them), SQLite chose between the run_id index and a status index as equals, and
took the status one: every pending wait of every run, under the write lock.

Revision ID: 0020_waits_run_id_status
Revises: 0019_alerts_source_audit_subject
"""

from __future__ import annotations

from alembic import op

revision = "0020_waits_run_id_status"
down_revision = "0019_alerts_source_audit_subject"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_waits_run_id_status", "waits", ["run_id", "status"])
    op.drop_index("ix_waits_run_id", table_name="waits")


def downgrade() -> None:
    op.create_index("ix_waits_run_id", "waits", ["run_id"])
    op.drop_index("ix_waits_run_id_status", table_name="waits")
