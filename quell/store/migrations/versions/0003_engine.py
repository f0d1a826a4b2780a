"""Playbooks and the durable engine: pinned playbook versions, runs with their leases, the
step journal, waits, the trigger outbox, cron schedules and cross-worker rate buckets.

Revision ID: 0003_engine
Revises: 0002_ingest
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0003_engine"
down_revision = "0002_ingest"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "playbook_versions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("playbook_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ir", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _time("created_at"),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_playbook_versions")),
        sa.UniqueConstraint("digest", name=op.f("uq_playbook_versions_digest")),
    )
    op.create_index(
        "ix_playbook_versions_playbook_id_version",
        "playbook_versions",
        ["playbook_id", "version"],
    )
    op.create_index(
        "uq_playbook_versions_active",
        "playbook_versions",
        ["playbook_id"],
        unique=True,
        sqlite_where=sa.text("active IS 1"),
        postgresql_where=sa.text("active IS true"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("playbook_version_id", sa.String(32), nullable=False),
        sa.Column("playbook_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("inputs", _json(), nullable=False),
        sa.Column("variables", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("trigger_ref", sa.String(64), nullable=True),
        sa.Column("dedupe_key", sa.String(160), nullable=True),
        sa.Column("parent_run_id", sa.String(32), nullable=True),
        sa.Column("parent_key", sa.String(512), nullable=True),
        sa.Column("root_run_id", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        _time("deadline", nullable=True),
        _time("wake_at", nullable=True),
        sa.Column("control", sa.String(16), nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), nullable=False),
        _time("lease_expires", nullable=True),
        sa.ForeignKeyConstraint(
            ["playbook_version_id"],
            ["playbook_versions.id"],
            name=op.f("fk_runs_playbook_version_id_playbook_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_runs_dedupe_key")),
    )
    for name, column, status in (
        ("ix_runs_ready", "created_at", "ready"),
        ("ix_runs_running_lease", "lease_expires", "running"),
        ("ix_runs_waiting_wake", "wake_at", "waiting"),
    ):
        op.create_index(
            name,
            "runs",
            [column],
            sqlite_where=sa.text(f"status = '{status}'"),
            postgresql_where=sa.text(f"status = '{status}'"),
        )
    op.create_index("ix_runs_playbook_id_created_at", "runs", ["playbook_id", "created_at"])
    op.create_index(
        "ix_runs_parent_run_id",
        "runs",
        ["parent_run_id"],
        sqlite_where=sa.text("parent_run_id IS NOT NULL"),
        postgresql_where=sa.text("parent_run_id IS NOT NULL"),
    )
    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("action", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(160), nullable=True),
        sa.Column("inputs", _json(), nullable=True),
        sa.Column("output", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("assigned", _json(), nullable=True),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        _time("started_at"),
        _time("finished_at", nullable=True),
        _time("due_at", nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_steps_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", "key", "attempt", name=op.f("pk_run_steps")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "waits",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("step_key", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("approvers", _json(), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=True),
        _time("expires_at", nullable=True),
        sa.Column("on_expiry", sa.String(16), nullable=True),
        sa.Column("requested_by", sa.String(64), nullable=True),
        sa.Column("decision", _json(), nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=True),
        _time("decided_at", nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        _time("created_at"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_waits_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waits")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_waits_token_hash")),
    )
    op.create_index(op.f("ix_waits_run_id"), "waits", ["run_id"])
    op.create_index("ix_waits_status_expires_at", "waits", ["status", "expires_at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(32), nullable=False),
        sa.Column("payload", _json(), nullable=True),
        _time("created_at"),
        _time("processed_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_processed_at_id", "outbox", ["processed_at", "id"])
    op.create_table(
        "schedules",
        sa.Column("playbook_id", sa.String(128), nullable=False),
        sa.Column("trigger", sa.Integer(), nullable=False),
        sa.Column("cron", sa.String(128), nullable=False),
        _time("next_at"),
        _time("last_at", nullable=True),
        sa.PrimaryKeyConstraint("playbook_id", "trigger", name=op.f("pk_schedules")),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_table("schedules")
    op.drop_index("ix_outbox_processed_at_id", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_waits_status_expires_at", table_name="waits")
    op.drop_index(op.f("ix_waits_run_id"), table_name="waits")
    op.drop_table("waits")
    op.drop_table("run_steps")
    for name in (
        "ix_runs_parent_run_id",
        "ix_runs_playbook_id_created_at",
        "ix_runs_waiting_wake",
        "ix_runs_running_lease",
        "ix_runs_ready",
    ):
        op.drop_index(name, table_name="runs")
    op.drop_table("runs")
    op.drop_index("uq_playbook_versions_active", table_name="playbook_versions")
    op.drop_index("ix_playbook_versions_playbook_id_version", table_name="playbook_versions")
    op.drop_table("playbook_versions")
