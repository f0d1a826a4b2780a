"""Full-text search over incidents: the documents, and each backend's own index of them.

Revision ID: 0011_incident_search
Revises: 0010_cases
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from quell.store.types import UTCDateTime

revision = "0011_incident_search"
down_revision = "0010_cases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incident_documents",
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("indexed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_incident_documents_incident_id_incidents"),
        ),
        sa.PrimaryKeyConstraint("incident_id", name=op.f("pk_incident_documents")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_incident_documents_fts ON incident_documents "
            "USING gin (to_tsvector('simple', body))"
        )
    else:
        op.execute(
            "CREATE VIRTUAL TABLE incident_fts USING fts5("
            "incident_id UNINDEXED, body, tokenize = 'unicode61 remove_diacritics 2')"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TABLE incident_fts")
    op.drop_table("incident_documents")
