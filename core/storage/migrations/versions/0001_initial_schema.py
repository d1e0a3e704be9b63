"""Initial schema: users, members, photos, batches, results, reviews, models, training, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Self-contained on purpose: revisions never import the ORM classes, which keep changing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Microsecond timestamps on MySQL; plain DATETIME elsewhere.
DT = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ID = sa.String(64)
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
TRUE, FALSE = sa.text("1"), sa.text("0")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", ID, nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=TRUE, nullable=False),
        sa.Column("created_at", DT, nullable=False),
        sa.Column("password_changed_at", DT, nullable=True),
        sa.Column("last_login_at", DT, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
        **MYSQL,
    )

    op.create_table(
        "members",
        sa.Column("id", ID, nullable=False),
        sa.Column("gender", sa.String(1), nullable=False),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("created_at", DT, nullable=False),
        sa.Column("updated_at", DT, nullable=False),
        sa.Column("last_verified_at", DT, nullable=True),
        sa.Column("source", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_members"),
        **MYSQL,
    )
    op.create_index("ix_members_created_at", "members", ["created_at"])
    op.create_index("ix_members_status", "members", ["status"])

    op.create_table(
        "photos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("stored_path", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(2048), nullable=True),
        sa.Column("current", sa.Boolean(), server_default=TRUE, nullable=False),
        sa.Column("created_at", DT, nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_photos_member_id_members", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_photos"),
        sa.UniqueConstraint("member_id", "kind", "sha256", name="uq_photos_member_id_kind_sha256"),
        **MYSQL,
    )
    op.create_index("ix_photos_member_id", "photos", ["member_id"])
    op.create_index("ix_photos_sha256", "photos", ["sha256"])

    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("created_by", ID, nullable=False),
        sa.Column("created_at", DT, nullable=False),
        sa.Column("model_version", ID, nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("n_items", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", DT, nullable=True),
        sa.Column("finished_at", DT, nullable=True),
        sa.Column("run_token", sa.String(36), nullable=True),
        sa.Column("heartbeat_at", DT, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        **MYSQL,
    )
    op.create_index("ix_batches_created_at", "batches", ["created_at"])
    op.create_index("ix_batches_model_version", "batches", ["model_version"])

    op.create_table(
        "batch_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("member_id", ID, nullable=False),
        sa.Column("gallery_photo_id", sa.Integer(), nullable=False),
        sa.Column("verification_photo_id", sa.Integer(), nullable=False),
        sa.Column("registered_gender", sa.String(1), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_batch_items_batch_id_batches", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["gallery_photo_id"], ["photos.id"], name="fk_batch_items_gallery_photo_id_photos"
        ),
        sa.ForeignKeyConstraint(["member_id"], ["members.id"], name="fk_batch_items_member_id_members"),
        sa.ForeignKeyConstraint(
            ["verification_photo_id"], ["photos.id"], name="fk_batch_items_verification_photo_id_photos"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batch_items"),
        sa.UniqueConstraint("batch_id", "position", name="uq_batch_items_batch_id_position"),
        **MYSQL,
    )
    op.create_index("ix_batch_items_member_id", "batch_items", ["member_id"])

    op.create_table(
        "verification_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("batch_item_id", sa.Integer(), nullable=True),
        sa.Column("member_id", ID, nullable=True),
        sa.Column("gallery_photo_id", sa.Integer(), nullable=True),
        sa.Column("verification_photo_id", sa.Integer(), nullable=True),
        sa.Column("same_person", sa.Boolean(), nullable=True),
        sa.Column("similarity", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("band_low", sa.Double(), nullable=False),
        sa.Column("band_high", sa.Double(), nullable=False),
        sa.Column("predicted_gender", sa.String(1), nullable=True),
        sa.Column("gender_confidence", sa.Double(), nullable=True),
        sa.Column("registered_gender", sa.String(1), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("gallery_analysis", sa.JSON(), nullable=True),
        sa.Column("verification_analysis", sa.JSON(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("model_version", ID, nullable=False),
        sa.Column("gender_mismatch", sa.Boolean(), server_default=FALSE, nullable=False),
        sa.Column("possible_duplicate", sa.Boolean(), server_default=FALSE, nullable=False),
        sa.Column("ground_truth_same", sa.Boolean(), nullable=True),
        sa.Column("ground_truth_gender", sa.String(1), nullable=True),
        sa.Column("created_at", DT, nullable=False),
        sa.Column("decided_at", DT, nullable=True),
        sa.Column("decided_by", ID, nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_verification_results_batch_id_batches", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["batch_item_id"],
            ["batch_items.id"],
            name="fk_verification_results_batch_item_id_batch_items",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["gallery_photo_id"], ["photos.id"], name="fk_verification_results_gallery_photo_id_photos"
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_verification_results_member_id_members"
        ),
        sa.ForeignKeyConstraint(
            ["verification_photo_id"],
            ["photos.id"],
            name="fk_verification_results_verification_photo_id_photos",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_verification_results"),
        sa.UniqueConstraint("batch_item_id", name="uq_verification_results_batch_item_id"),
        **MYSQL,
    )
    op.create_index("ix_verification_results_batch_id", "verification_results", ["batch_id"])
    op.create_index("ix_verification_results_created_at", "verification_results", ["created_at"])
    op.create_index("ix_verification_results_member_id", "verification_results", ["member_id"])
    op.create_index("ix_verification_results_model_version", "verification_results", ["model_version"])
    op.create_index(
        "ix_verification_results_status_created_at", "verification_results", ["status", "created_at"]
    )

    op.create_table(
        "possible_duplicates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("candidate_member_id", ID, nullable=False),
        sa.Column("similarity", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_member_id"], ["members.id"], name="fk_possible_duplicates_candidate_member_id_members"
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["verification_results.id"],
            name="fk_possible_duplicates_result_id_verification_results",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_possible_duplicates"),
        sa.UniqueConstraint(
            "result_id", "candidate_member_id", name="uq_possible_duplicates_result_id_candidate_member_id"
        ),
        **MYSQL,
    )
    op.create_index(
        "ix_possible_duplicates_candidate_member_id", "possible_duplicates", ["candidate_member_id"]
    )

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("reviewer", ID, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("same_person", sa.Boolean(), nullable=True),
        sa.Column("true_gender", sa.String(1), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_at", DT, nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["verification_results.id"],
            name="fk_reviews_result_id_verification_results",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
        sa.UniqueConstraint("result_id", name="uq_reviews_result_id"),
        **MYSQL,
    )
    op.create_index("ix_reviews_decided_at", "reviews", ["decided_at"])
    op.create_index("ix_reviews_reviewer", "reviews", ["reviewer"])

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", ID, nullable=False),
        sa.Column("kind", sa.String(32), server_default="verifier", nullable=False),
        sa.Column("created_at", DT, nullable=False),
        sa.Column("created_by", ID, nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("band_low", sa.Double(), nullable=True),
        sa.Column("band_high", sa.Double(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("data_summary", sa.JSON(), nullable=True),
        sa.Column("path", sa.String(512), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=FALSE, nullable=False),
        sa.Column("promoted_at", DT, nullable=True),
        sa.Column("promoted_by", ID, nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("version", name="uq_model_versions_version"),
        **MYSQL,
    )

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_by", ID, nullable=False),
        sa.Column("started_at", DT, nullable=False),
        sa.Column("finished_at", DT, nullable=True),
        sa.Column("status", sa.String(16), server_default="queued", nullable=False),
        sa.Column("stage", sa.String(64), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("model_version", ID, nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version"],
            ["model_versions.version"],
            name="fk_training_runs_model_version_model_versions",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
        **MYSQL,
    )
    op.create_index("ix_training_runs_started_at", "training_runs", ["started_at"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", DT, nullable=False),
        sa.Column("actor", ID, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=True),
        sa.Column("target_id", ID, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        **MYSQL,
    )
    op.create_index("ix_audit_log_actor", "audit_log", ["actor"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_target_type_target_id", "audit_log", ["target_type", "target_id"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "audit_log",
        "training_runs",
        "model_versions",
        "reviews",
        "possible_duplicates",
        "verification_results",
        "batch_items",
        "batches",
        "photos",
        "members",
        "users",
    ):
        op.drop_table(table)
