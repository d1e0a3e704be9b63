"""Batches: a group key, so single verifications of a day and source share one batch.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

group_key is unique (NULL for ordinary batches, which many may share): two processes that
start the same day's batch at once cannot both create it (core.workflows.batches.add_single_item).
Older batches of one keep their own batch.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("group_key", sa.String(200), nullable=True))
        batch_op.create_unique_constraint("uq_batches_group_key", ["group_key"])


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_constraint("uq_batches_group_key", type_="unique")
        batch_op.drop_column("group_key")
