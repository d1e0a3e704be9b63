"""Users: a password reset that must be changed at the next sign-in, and the language each user chose.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Both columns are added in place: must_change_password with a server default (false), language
nullable (no choice yet: the dashboard's default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("must_change_password", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("language", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("language")
        batch_op.drop_column("must_change_password")
