"""Audit chain: the first entry hashed with the audit key (HMAC), so older entries still verify.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Entries up to keyed_from - 1 keep their plain sha256 links; from keyed_from on each link is
HMAC-SHA256 with the key kept outside the database (core.storage.audit_key). NULL: no entry is
keyed yet (the next commit with a key sets it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_chain") as batch_op:
        batch_op.add_column(sa.Column("keyed_from", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_chain") as batch_op:
        batch_op.drop_column("keyed_from")
