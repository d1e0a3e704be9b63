"""Fraud checks: perceptual hashes per photo, the checks' evidence per result, pose challenges.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Nullable columns on tables that already hold data (photos, verification_results), so the upgrade
runs in place; photos analysed before it get their hashes the next time they are verified.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("photos") as batch_op:
        batch_op.add_column(sa.Column("photo_hashes", sa.String(200), nullable=True))
    with op.batch_alter_table("verification_results") as batch_op:
        batch_op.add_column(sa.Column("checks", sa.JSON(), nullable=True))
    op.create_table(
        "challenges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", DT, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("expires_at", DT, nullable=False),
        sa.Column("used_at", DT, nullable=True),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_challenges"),
        sa.UniqueConstraint("token", name="uq_challenges_token"),
        **MYSQL,
    )
    op.create_index("ix_challenges_member_id", "challenges", ["member_id"])


def downgrade() -> None:
    op.drop_index("ix_challenges_member_id", table_name="challenges")
    op.drop_table("challenges")
    with op.batch_alter_table("verification_results") as batch_op:
        batch_op.drop_column("checks")
    with op.batch_alter_table("photos") as batch_op:
        batch_op.drop_column("photo_hashes")
