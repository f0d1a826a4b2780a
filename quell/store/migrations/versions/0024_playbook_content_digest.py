"""Playbook versions identified by their content, not by the path they were added from.

A version's digest was the SHA-256 of its IR, which holds the name of the file it was read
from. The same text added again from another folder (``quell playbook add typed.yaml`` after
``quell playbook add pb/typed.yaml``), or through the API without a file name, was refused as
"other content" under the same version number. The digest now leaves the file name out
(``quell.playbooks.ir.content_digest``, which this migration copies, so that it stays what it
was when written). Each stored version gets its digest again; where two versions of one content
were stored under two paths, the older keeps the digest and the newer keeps its old one.

Revision ID: 0024_playbook_content_digest
Revises: 0023_waits_status_created
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0024_playbook_content_digest"
down_revision = "0023_waits_status_created"
branch_labels = None
depends_on = None

_versions = sa.table(
    "playbook_versions",
    sa.column("id", sa.String),
    sa.column("ir", sa.Text),
    sa.column("digest", sa.String),
    sa.column("created_at", sa.String),
)


def _content_digest(ir: str) -> str:
    document = orjson.loads(ir)
    document["file"] = None
    for step in document.get("steps", {}).values():
        position = step.get("position")
        if isinstance(position, dict):
            position["file"] = None
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _redigest(digest_of: Callable[[str], str]) -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_versions.c.id, _versions.c.ir, _versions.c.digest).order_by(
            _versions.c.created_at, _versions.c.id
        )
    ).all()
    taken = {row.digest for row in rows}
    for row in rows:
        digest = digest_of(row.ir)
        if digest == row.digest or digest in taken:  # unchanged, or the older one's
            continue
        conn.execute(sa.update(_versions).where(_versions.c.id == row.id).values(digest=digest))
        taken.discard(row.digest)
        taken.add(digest)


def upgrade() -> None:
    _redigest(_content_digest)


def downgrade() -> None:
    _redigest(lambda ir: hashlib.sha256(ir.encode()).hexdigest())
