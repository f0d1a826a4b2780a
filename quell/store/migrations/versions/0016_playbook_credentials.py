"""Credentials an imported CACAO playbook carried inline, sealed (the playbook text keeps only
a reference to them).

Revision ID: 0016_playbook_credentials
Revises: 0015_publishing
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from quell.store.types import UTCDateTime

revision = "0016_playbook_credentials"
down_revision = "0015_publishing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "playbook_credentials",
        sa.Column("id", sa.String(300), nullable=False),
        sa.Column("playbook_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("hosts", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_playbook_credentials")),
    )
    op.create_index("ix_playbook_credentials_playbook_id", "playbook_credentials", ["playbook_id"])


def downgrade() -> None:
    op.drop_index("ix_playbook_credentials_playbook_id", table_name="playbook_credentials")
    op.drop_table("playbook_credentials")
