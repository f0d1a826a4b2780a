"""Data keys for secrets at rest, so that ``quell secrets rotate-key`` can rotate them. The
downgrade refuses once a rotation has made a key: the secrets sealed under it would be lost.

Revision ID: 0014_secret_keys
Revises: 0013_approvals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from quell.errors import Conflict
from quell.store.types import UTCDateTime

revision = "0014_secret_keys"
down_revision = "0013_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_keys")),
    )
    op.create_index(
        "uq_secret_keys_live_state",
        "secret_keys",
        ["state"],
        unique=True,
        sqlite_where=sa.text("state != 'retired'"),
        postgresql_where=sa.text("state != 'retired'"),
    )


def downgrade() -> None:
    # After a rotation the stored secrets are sealed under a key only this table holds:
    # dropping it would make every one of them unreadable.
    live = op.get_bind().execute(
        sa.text("SELECT count(*) FROM secret_keys WHERE kind = 'random' AND state != 'retired'")
    )
    if live.scalar():
        raise Conflict(
            "cannot downgrade below 0014_secret_keys: stored secrets are sealed under a data "
            "key that only the secret_keys table holds, and would be lost"
        )
    op.drop_index("uq_secret_keys_live_state", table_name="secret_keys")
    op.drop_table("secret_keys")
