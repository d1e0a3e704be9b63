"""Profile photos: a member's ordered photos, each with its own check against the verified face.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Every member's current gallery photo becomes a profile of one (position 1), keeping what the
member's newest verification said of it: a verified member's photo matches, a rejected member's
does not, one in review waits for a person, a member never verified is unchecked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

_STATE_OF_MEMBER = {
    "verified": "matches",
    "rejected": "does_not_match",
    "in_review": "review",
}


def upgrade() -> None:
    op.create_table(
        "profile_photos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("photo_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), server_default="unchecked", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("similarity", sa.Double(), nullable=True),
        sa.Column("face_box", sa.JSON(), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("checked_at", DateTime, nullable=True),
        sa.Column("result_id", sa.Integer(), nullable=True),
        sa.Column("review_decision", sa.String(16), nullable=True),
        sa.Column("reviewed_by", sa.String(64), nullable=True),
        sa.Column("reviewed_at", DateTime, nullable=True),
        sa.Column("created_at", DateTime, nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name="fk_profile_photos_member_id_members", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["photo_id"], ["photos.id"], name="fk_profile_photos_photo_id_photos", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_profile_photos"),
        sa.UniqueConstraint("member_id", "position", name="uq_profile_photos_member_id_position"),
        sa.UniqueConstraint("member_id", "photo_id", name="uq_profile_photos_member_id_photo_id"),
        **TABLE_ARGS,
    )
    op.create_index("ix_profile_photos_member_id", "profile_photos", ["member_id"])
    op.create_index("ix_profile_photos_photo_id", "profile_photos", ["photo_id"])

    # Each member's current gallery photo (the newest, should there be two) as a profile of one.
    bind = op.get_bind()
    newest = bind.execute(
        sa.text(
            "SELECT p.member_id, MAX(p.id) FROM photos p WHERE p.kind = 'gallery' AND p.current = :yes "
            "GROUP BY p.member_id"
        ),
        {"yes": True},
    ).all()
    if not newest:
        return
    status = dict(bind.execute(sa.text("SELECT id, status FROM members")).all())
    rows = []
    for member_id, photo_id in newest:
        result = bind.execute(
            sa.text(
                "SELECT similarity, model_version, created_at, decided_at FROM verification_results "
                "WHERE member_id = :m AND gallery_photo_id = :p ORDER BY id DESC LIMIT 1"
            ),
            {"m": member_id, "p": photo_id},
        ).first()
        state = _STATE_OF_MEMBER.get(status.get(member_id), "unchecked")
        checked = (result.decided_at or result.created_at) if result is not None else None
        rows.append(
            {
                "member_id": member_id,
                "position": 1,
                "photo_id": photo_id,
                "state": state,
                "reason": "Kept from the member's gallery photo and its last verification."
                if state != "unchecked"
                else None,
                "similarity": result.similarity if result is not None else None,
                "model_version": result.model_version if result is not None else None,
                "checked_at": checked if state != "unchecked" else None,
                "created_at": checked or sa.func.now(),
            }
        )
    table = sa.table(
        "profile_photos",
        *(
            sa.column(name)
            for name in (
                "member_id",
                "position",
                "photo_id",
                "state",
                "reason",
                "similarity",
                "model_version",
                "checked_at",
                "created_at",
            )
        ),
    )
    for row in rows:
        bind.execute(table.insert().values(**row))


def downgrade() -> None:
    op.drop_table("profile_photos")
