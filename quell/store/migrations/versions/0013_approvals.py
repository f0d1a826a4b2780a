"""Approval policies and four-eyes decisions, signed approval links, custom roles, and what
OIDC sign-in needs (a user's identity at a provider, and logins in flight).

Revision ID: 0013_approvals
Revises: 0012_users
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from quell.store.types import UTCDateTime

revision = "0013_approvals"
down_revision = "0012_users"
branch_labels = None
depends_on = None


def _json() -> Any:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_WAIT_COLUMNS = (
    ("required", sa.SmallInteger()),
    ("rule", sa.String(64)),
    ("excluded", _json()),
    ("escalate_at", UTCDateTime()),
    ("escalate_to", _json()),
    ("escalated_at", UTCDateTime()),
)


def upgrade() -> None:
    op.create_table(
        "approval_rules",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("match", _json(), nullable=False),
        sa.Column("approvals", sa.SmallInteger(), nullable=False),
        sa.Column("roles", _json(), nullable=True),
        sa.Column("expires_after", sa.Integer(), nullable=True),
        sa.Column("on_expiry", sa.String(16), nullable=True),
        sa.Column("escalate_after", sa.Integer(), nullable=True),
        sa.Column("escalate_to", _json(), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_approval_rules_name")),
    )
    op.create_table(
        "approval_votes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("wait_id", sa.String(32), nullable=False),
        sa.Column("voter", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=True),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wait_id"], ["waits.id"], name=op.f("fk_approval_votes_wait_id_waits")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_votes")),
        sa.UniqueConstraint("wait_id", "voter", name=op.f("uq_approval_votes_wait_id_voter")),
    )
    op.create_table(
        "approval_links",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("wait_id", sa.String(32), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("sent_via", sa.String(64), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wait_id"], ["waits.id"], name=op.f("fk_approval_links_wait_id_waits")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_links")),
    )
    op.create_index(op.f("ix_approval_links_wait_id"), "approval_links", ["wait_id"])
    with op.batch_alter_table("waits") as batch:
        for name, kind in _WAIT_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    op.create_table(
        "roles",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("permissions", _json(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_roles")),
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email", sa.String(254), nullable=True))
        batch.add_column(sa.Column("oidc_issuer", sa.String(255), nullable=True))
        batch.add_column(sa.Column("oidc_subject", sa.String(255), nullable=True))
        batch.create_unique_constraint(
            op.f("uq_users_oidc_issuer_oidc_subject"), ["oidc_issuer", "oidc_subject"]
        )
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("code_verifier", sa.LargeBinary(), nullable=False),
        sa.Column("redirect_to", sa.String(1024), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_oidc_logins")),
    )


def downgrade() -> None:
    op.drop_table("oidc_logins")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint(op.f("uq_users_oidc_issuer_oidc_subject"), type_="unique")
        batch.drop_column("oidc_subject")
        batch.drop_column("oidc_issuer")
        batch.drop_column("email")
    op.drop_table("roles")
    with op.batch_alter_table("waits") as batch:
        for name, _kind in reversed(_WAIT_COLUMNS):
            batch.drop_column(name)
    op.drop_index(op.f("ix_approval_links_wait_id"), table_name="approval_links")
    op.drop_table("approval_links")
    op.drop_table("approval_votes")
    op.drop_table("approval_rules")
