"""Indexes for a large database: newest result per member, reviewed pairs, audit by action, index check.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

- verification_results (member_id, id, model_version, status, similarity): each member's newest
  result (re-verification counts, version comparison) answered from the index alone, without a
  primary-key lookup into the wide result rows.
- verification_results (decided_by, ground_truth_same, id, member_id, ground_truth_gender,
  gallery_photo_id, verification_photo_id): the reviewed pairs a retraining reads, and their counts.
- verification_results (created_at, batch_id, model_version, status, latency_ms, same_person,
  ground_truth_same, predicted_gender, ground_truth_gender): the KPI aggregates of a period read
  from the index alone.
- audit_log (action, at): the audit views filtered by action.
- photos (kind, current, sha256): the 1:N index's consistency check over current photos.
- audit_checkpoint: the last audit entry a full or incremental check found intact (seq, hash),
  sealed with the audit key, so the next check starts there instead of at the first entry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = (
    (
        "ix_verification_results_member_newest",
        "verification_results",
        ["member_id", "id", "model_version", "status", "similarity"],
    ),
    (
        "ix_verification_results_reviewed",
        "verification_results",
        [
            "decided_by",
            "ground_truth_same",
            "id",
            "member_id",
            "ground_truth_gender",
            "gallery_photo_id",
            "verification_photo_id",
        ],
    ),
    (
        "ix_verification_results_kpi",
        "verification_results",
        [
            "created_at",
            "batch_id",
            "model_version",
            "status",
            "latency_ms",
            "same_person",
            "ground_truth_same",
            "predicted_gender",
            "ground_truth_gender",
        ],
    ),
    ("ix_audit_log_action_at", "audit_log", ["action", "at"]),
    ("ix_photos_kind_current_sha256", "photos", ["kind", "current", "sha256"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("seal", sa.String(64), nullable=False),
        sa.Column(
            "verified_at",
            sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoint")
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
