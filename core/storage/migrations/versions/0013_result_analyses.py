"""Result analyses in a side table: the result rows the KPIs and scans read stay under 1 KB.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

verification_results.gallery_analysis and .verification_analysis (about 3 KB of JSON a row) move
to result_analyses (result_id, gallery, verification), one row per result that has either; the
columns are then dropped. The downgrade copies them back.

photos (member_id, kind, current): the members with a current gallery and verification photo (a
re-verification's scope and its counts on the Retrain page) found from the index alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "result_analyses",
        sa.Column("result_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("gallery", sa.JSON(), nullable=True),
        sa.Column("verification", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["verification_results.id"],
            name="fk_result_analyses_result_id_verification_results",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("result_id", name="pk_result_analyses"),
        **MYSQL,
    )
    op.execute(
        "INSERT INTO result_analyses (result_id, gallery, verification) "
        "SELECT id, gallery_analysis, verification_analysis FROM verification_results "
        "WHERE gallery_analysis IS NOT NULL OR verification_analysis IS NOT NULL"
    )
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 has it): a batch copy of the table would
    # drop and re-create it, and its ON DELETE CASCADE children with it.
    op.drop_column("verification_results", "verification_analysis")
    op.drop_column("verification_results", "gallery_analysis")
    op.create_index("ix_photos_member_kind_current", "photos", ["member_id", "kind", "current"])


def downgrade() -> None:
    op.drop_index("ix_photos_member_kind_current", table_name="photos")
    op.add_column("verification_results", sa.Column("gallery_analysis", sa.JSON(), nullable=True))
    op.add_column("verification_results", sa.Column("verification_analysis", sa.JSON(), nullable=True))
    op.execute(
        "UPDATE verification_results SET "
        "gallery_analysis = (SELECT a.gallery FROM result_analyses a WHERE a.result_id = verification_results.id), "
        "verification_analysis = (SELECT a.verification FROM result_analyses a "
        "WHERE a.result_id = verification_results.id) "
        "WHERE id IN (SELECT result_id FROM result_analyses)"
    )
    op.drop_table("result_analyses")
