"""Indexes for a source's alerts and a subject's audit events, newest first. Before them, a
quiet source's alerts, or what was done to one run or host, were found by reading every alert,
or the whole audit trail.

Revision ID: 0019_alerts_source_audit_subject
Revises: 0018_runs_listing_indexes
"""

from __future__ import annotations

from alembic import op

revision = "0019_alerts_source_audit_subject"
down_revision = "0018_runs_listing_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_alerts_source_id", "alerts", ["source", "id"])
    op.create_index("ix_audit_events_subject_seq", "audit_events", ["subject", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_subject_seq", table_name="audit_events")
    op.drop_index("ix_alerts_source_id", table_name="alerts")
