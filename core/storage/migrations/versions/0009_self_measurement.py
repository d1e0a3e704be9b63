"""Self-measurement: members' birth years, measurement runs, the pairs that reached the approve
point, and reviewers' verdicts on two members.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

birth_year is nullable (the import column is optional). The pairs and verdicts name members and
photos without foreign keys, so a measurement's record outlives an erasure.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("members") as batch_op:
        batch_op.add_column(sa.Column("birth_year", sa.Integer(), nullable=True))

    op.create_table(
        "self_measurements",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_key", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("measured_on", sa.String(10), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("triggered_by", sa.String(64), nullable=True),
        sa.Column("started_at", DateTime, nullable=False),
        sa.Column("finished_at", DateTime, nullable=True),
        sa.Column("heartbeat_at", DateTime, nullable=True),
        sa.Column("run_token", sa.String(36), nullable=True),
        sa.Column("approve_at", sa.Double(), nullable=False),
        sa.Column("reject_below", sa.Double(), nullable=False),
        sa.Column("floor", sa.Double(), nullable=False),
        sa.Column("block_rows", sa.Integer(), nullable=False),
        sa.Column("blocks_total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("blocks_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("snapshot", sa.String(200), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_self_measurements"),
        sa.UniqueConstraint("run_key", name="uq_self_measurements_run_key"),
        **TABLE_ARGS,
    )
    op.create_index("ix_self_measurements_model_version", "self_measurements", ["model_version"])
    op.create_index("ix_self_measurements_started_at", "self_measurements", ["started_at"])

    op.create_table(
        "self_measurement_pairs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("member_a_id", sa.String(64), nullable=False),
        sa.Column("member_b_id", sa.String(64), nullable=False),
        sa.Column("photo_a_id", sa.Integer(), nullable=False),
        sa.Column("photo_b_id", sa.Integer(), nullable=False),
        sa.Column("gender", sa.String(1), nullable=False),
        sa.Column("similarity", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_self_measurement_pairs"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["self_measurements.id"],
            name="fk_self_measurement_pairs_run_id_self_measurements",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "run_id",
            "photo_a_id",
            "photo_b_id",
            name="uq_self_measurement_pairs_run_id_photo_a_id_photo_b_id",
        ),
        **TABLE_ARGS,
    )
    op.create_index("ix_self_measurement_pairs_run_id", "self_measurement_pairs", ["run_id"])

    op.create_table(
        "member_pair_verdicts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("member_a_id", sa.String(64), nullable=False),
        sa.Column("member_b_id", sa.String(64), nullable=False),
        sa.Column("same_person", sa.Boolean(), nullable=False),
        sa.Column("decided_by", sa.String(64), nullable=False),
        sa.Column("decided_at", DateTime, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_member_pair_verdicts"),
        sa.UniqueConstraint(
            "member_a_id", "member_b_id", name="uq_member_pair_verdicts_member_a_id_member_b_id"
        ),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("member_pair_verdicts")
    op.drop_index("ix_self_measurement_pairs_run_id", table_name="self_measurement_pairs")
    op.drop_table("self_measurement_pairs")
    op.drop_index("ix_self_measurements_started_at", table_name="self_measurements")
    op.drop_index("ix_self_measurements_model_version", table_name="self_measurements")
    op.drop_table("self_measurements")
    with op.batch_alter_table("members") as batch_op:
        batch_op.drop_column("birth_year")
