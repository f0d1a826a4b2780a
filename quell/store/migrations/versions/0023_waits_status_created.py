"""Waits by status and age. The approvals and tasks pages list the pending waits oldest first,
a page at a time; they sorted every pending wait for each page (38 ms at 9,750 waiting).

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


def downgrade() -> None:
    op.drop_index("ix_waits_status_created", table_name="waits")
