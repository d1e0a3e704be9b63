"""Member erasures: the record of each removal of a member's biometric data.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "member_erasures",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("at", DT, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("via", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_member_erasures"),
        **MYSQL,
    )
    op.create_index("ix_member_erasures_member_id", "member_erasures", ["member_id"])


def downgrade() -> None:
    op.drop_index("ix_member_erasures_member_id", table_name="member_erasures")
    op.drop_table("member_erasures")
