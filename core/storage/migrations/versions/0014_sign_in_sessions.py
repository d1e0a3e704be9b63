"""Dashboard sign-ins kept on the server, so a browser reload keeps the user signed in.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

token_hash: sha256 of the random token the browser holds as a cookie (the token itself is never
stored). A row ends (ended_at, end_reason) at sign-out, expiry, idleness, a password change or the
user's deactivation; it goes with its user.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "sign_in_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", DateTime, nullable=False),
        sa.Column("last_seen_at", DateTime, nullable=False),
        sa.Column("expires_at", DateTime, nullable=False),
        sa.Column("ended_at", DateTime, nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sign_in_sessions"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_sign_in_sessions_user_id_users", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("token_hash", name="uq_sign_in_sessions_token_hash"),
        **TABLE_ARGS,
    )
    op.create_index("ix_sign_in_sessions_user_id", "sign_in_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_table("sign_in_sessions")
