"""An index for the approvals due to escalate, which every tick looks for: before it, each
tick read every pending wait under the write lock.

Revision ID: 0017_waits_escalation_index
Revises: 0016_playbook_credentials
"""

from __future__ import annotations

from alembic import op

revision = "0017_waits_escalation_index"
down_revision = "0016_playbook_credentials"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_waits_status_escalation", "waits", ["status", "escalated_at", "escalate_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_waits_status_escalation", table_name="waits")
