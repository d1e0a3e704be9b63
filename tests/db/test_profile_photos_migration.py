"""The profile-photos revision: every member's current gallery photo becomes a profile of one and
keeps its state, on SQLite and MariaDB, with data in the database."""

from __future__ import annotations

from sqlalchemy import select, text

from core.storage import db
from core.storage.schema import Member, ProfilePhoto, utcnow


def test_existing_members_keep_their_gallery_photo_and_state(new_database_url):
    engine = db.make_engine(new_database_url())
    try:
        db.upgrade(engine, "0009")
        now = utcnow()
        with engine.begin() as conn:
            # Plain SQL on purpose: the ORM classes describe the newest schema.
            conn.execute(
                text(
                    "INSERT INTO members (id, gender, status, created_at, updated_at) "
                    "VALUES (:id, 'F', :s, :t, :t)"
                ),
                [
                    {"id": "OK-1", "s": "verified", "t": now},
                    {"id": "NO-2", "s": "rejected", "t": now},
                    {"id": "NEW-3", "s": "pending", "t": now},
                    {"id": "SELFIE-ONLY", "s": "pending", "t": now},
                ],
            )
            photos = [
                ("OK-1", "gallery", "a1", 0),  # replaced earlier: not the profile
                ("OK-1", "gallery", "a2", 1),
                ("OK-1", "verification", "a3", 1),
                ("NO-2", "gallery", "b1", 1),
                ("NEW-3", "gallery", "c1", 1),
                ("SELFIE-ONLY", "verification", "d1", 1),
            ]
            for member, kind, sha, current in photos:
                conn.execute(
                    text(
                        "INSERT INTO photos (member_id, kind, sha256, stored_path, size_bytes, current, "
                        "created_at) VALUES (:m, :k, :sha, 'x/y.jpg', 10, :c, :t)"
                    ),
                    {"m": member, "k": kind, "sha": sha * 32, "c": bool(current), "t": now},
                )
            ids = dict(conn.execute(text("SELECT sha256, id FROM photos")).all())
            conn.execute(
                text(
                    "INSERT INTO verification_results (member_id, gallery_photo_id, verification_photo_id, "
                    "similarity, threshold, band_low, band_high, status, flags, model_version, created_at, "
                    "gender_mismatch, possible_duplicate, version) VALUES ('OK-1', :g, :v, 0.93, 0.5, 0.4, "
                    "0.6, 'auto_approved', '[]', 'v1', :t, 0, 0, 1)"
                ),
                {"g": ids["a2" * 32], "v": ids["a3" * 32], "t": now},
            )

        db.init_db(engine)

        with db.session_factory(engine)() as session:
            profile = {p.member_id: p for p in session.scalars(select(ProfilePhoto))}
            assert set(profile) == {"OK-1", "NO-2", "NEW-3"}
            assert all(p.position == 1 for p in profile.values())
            ok = profile["OK-1"]
            assert ok.photo_id == ids["a2" * 32] and ok.state == "matches"
            assert abs(ok.similarity - 0.93) < 1e-9 and ok.model_version == "v1" and ok.checked_at
            assert profile["NO-2"].state == "does_not_match"
            assert profile["NEW-3"].state == "unchecked" and profile["NEW-3"].checked_at is None
            # The members themselves are untouched: the verified one is still verified.
            assert session.get(Member, "OK-1").status == "verified"

        from alembic import command

        command.downgrade(db.alembic_config(engine), "0009")
        db.init_db(engine)  # and up again, on the same data
        with db.session_factory(engine)() as session:
            assert len(session.scalars(select(ProfilePhoto)).all()) == 3
    finally:
        engine.dispose()
