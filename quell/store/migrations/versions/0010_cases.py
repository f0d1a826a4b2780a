"""Cases: incident ownership, priority, tags and techniques, SLA stops; notes, tasks, evidence
with its chain of custody, SLA clocks.

Revision ID: 0010_cases
Revises: 0009_intel
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0010_cases"
down_revision = "0009_intel"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_INCIDENT_COLUMNS = (
    ("priority", sa.SmallInteger()),
    ("owner", sa.String(128)),
    ("assignee", sa.String(128)),
    ("description", sa.Text()),
    ("acknowledged_at", UTCDateTime()),
    ("contained_at", UTCDateTime()),
    ("closed_at", UTCDateTime()),
    ("closed_by", sa.String(128)),
)


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        for name, type_ in _INCIDENT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        for name in ("tags", "techniques"):
            batch.add_column(
                sa.Column(name, _json(), nullable=False, server_default=sa.text("'[]'"))
            )
    op.create_table(
        "incident_notes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_incident_notes_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_notes")),
    )
    op.create_index(op.f("ix_incident_notes_incident_id"), "incident_notes", ["incident_id"])
    op.create_table(
        "incident_tasks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("assignee", sa.String(128), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("completed_by", sa.String(128), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(32), nullable=True),
        sa.Column("step_key", sa.String(512), nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_incident_tasks_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_tasks")),
    )
    op.create_index(op.f("ix_incident_tasks_incident_id"), "incident_tasks", ["incident_id"])
    op.create_table(
        "incident_evidence",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_evidence_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_evidence")),
    )
    op.create_index(op.f("ix_incident_evidence_incident_id"), "incident_evidence", ["incident_id"])
    op.create_table(
        "evidence_custody",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("evidence_id", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["evidence_id"],
            ["incident_evidence.id"],
            name=op.f("fk_evidence_custody_evidence_id_incident_evidence"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evidence_custody")),
    )
    op.create_index("ix_evidence_custody_evidence_at", "evidence_custody", ["evidence_id", "at"])
    op.create_table(
        "incident_slas",
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("severity_id", sa.SmallInteger(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("met_at", UTCDateTime(), nullable=True),
        sa.Column("breached_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_incident_slas_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("incident_id", "metric", name=op.f("pk_incident_slas")),
    )
    op.create_index("ix_incident_slas_due", "incident_slas", ["breached_at", "met_at", "due_at"])
    op.create_table(
        "sla_policies",
        sa.Column("severity_id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("acknowledge_s", sa.Integer(), nullable=True),
        sa.Column("contain_s", sa.Integer(), nullable=True),
        sa.Column("close_s", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(128), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("severity_id", name=op.f("pk_sla_policies")),
    )


def downgrade() -> None:
    for table in (
        "sla_policies",
        "incident_slas",
        "evidence_custody",
        "incident_evidence",
        "incident_tasks",
        "incident_notes",
    ):
        op.drop_table(table)
    with op.batch_alter_table("incidents") as batch:
        for name in ("techniques", "tags", *(n for n, _ in reversed(_INCIDENT_COLUMNS))):
            batch.drop_column(name)
