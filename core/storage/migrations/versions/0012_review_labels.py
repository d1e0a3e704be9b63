"""Reviews: the label of the pair apart from the decision, and the member's status before it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

label: what the reviewer said the photos show (same / different / unsure); the decision on the
member (approve / reject) no longer stands in for it. member_status_before: what an undo restores.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch_op:
        batch_op.add_column(sa.Column("label", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("member_status_before", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch_op:
        batch_op.drop_column("member_status_before")
        batch_op.drop_column("label")
