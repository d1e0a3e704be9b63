"""Tamper-evident audit log (hash chain, existing rows backfilled) and sign-in / API key throttling.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("entry_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_audit_log_seq", ["seq"])
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_chain"),
        **MYSQL,
    )
    op.create_table(
        "auth_throttle",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", DT, nullable=False),
        sa.Column("last_failed_at", DT, nullable=False),
        sa.Column("locked_until", DT, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_auth_throttle"),
        sa.UniqueConstraint("kind", "subject", name="uq_auth_throttle_kind_subject"),
        **MYSQL,
    )
    _backfill()


def _backfill() -> None:
    """Chain the rows already there, in id order, and record the head."""
    from core.storage.audit import GENESIS, entry_hash

    bind = op.get_bind()
    log = sa.table(
        "audit_log",
        sa.column("id"),
        sa.column("at"),
        sa.column("actor"),
        sa.column("action"),
        sa.column("target_type"),
        sa.column("target_id"),
        sa.column("detail", sa.JSON),
        sa.column("seq"),
        sa.column("entry_hash"),
    )
    prev, seq, updates = GENESIS, 0, []
    rows = bind.execute(
        sa.select(
            log.c.id, log.c.at, log.c.actor, log.c.action, log.c.target_type, log.c.target_id, log.c.detail
        ).order_by(log.c.id)
    ).all()
    for row in rows:
        seq += 1
        prev = entry_hash(
            prev, seq, row.at, row.actor, row.action, row.target_type, row.target_id, row.detail
        )
        updates.append({"row_id": row.id, "s": seq, "h": prev})
    if updates:
        stmt = (
            log.update()
            .where(log.c.id == sa.bindparam("row_id"))
            .values(seq=sa.bindparam("s"), entry_hash=sa.bindparam("h"))
        )
        for start in range(0, len(updates), 1000):
            bind.execute(stmt, updates[start : start + 1000])
    bind.execute(
        sa.table("audit_chain", sa.column("id"), sa.column("seq"), sa.column("last_hash")).insert(),
        [{"id": 1, "seq": seq, "last_hash": prev}],
    )


def downgrade() -> None:
    op.drop_table("auth_throttle")
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_constraint("uq_audit_log_seq", type_="unique")
        batch.drop_column("entry_hash")
        batch.drop_column("seq")
