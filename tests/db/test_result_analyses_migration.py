"""The result-analyses revision: every result's per-photo analyses move to the side table and back,
nothing lost, on SQLite and MariaDB, with data in the database (and its reviews and possible
duplicates, which cascade from the result rows, kept)."""

from __future__ import annotations

import json

from sqlalchemy import inspect, select, text

from core.storage import db
from core.storage.schema import ResultAnalysis, Review, utcnow
from core.storage.schema import VerificationResult as ResultRow

GALLERY = {
    "sha256": "a" * 64,
    "faces": [{"box": [1, 2, 30, 40], "score": 0.99}],
    "quality": {"sharpness": 120.5},
}
SELFIE = {"sha256": "b" * 64, "faces": [], "error": "no face", "timings_ms": {"detect": 12.25}}


def _result(conn, member: str, gallery, verification) -> int:
    conn.execute(
        text(
            "INSERT INTO verification_results (member_id, similarity, threshold, band_low, band_high, "
            "status, flags, gallery_analysis, verification_analysis, model_version, created_at, "
            "gender_mismatch, possible_duplicate, version) VALUES (:m, 0.5, 0.5, 0.4, 0.6, 'flagged', "
            "'[]', :g, :v, 'v1', :t, 0, 0, 1)"
        ),
        {
            "m": member,
            "g": None if gallery is None else json.dumps(gallery),
            "v": None if verification is None else json.dumps(verification),
            "t": utcnow(),
        },
    )
    return conn.scalar(text("SELECT MAX(id) FROM verification_results"))


def test_analyses_move_to_the_side_table_and_back(new_database_url):
    engine = db.make_engine(new_database_url())
    try:
        db.upgrade(engine, "0012")
        now = utcnow()
        with engine.begin() as conn:
            # Plain SQL on purpose: the ORM classes describe the newest schema.
            for member in ("M1", "M2"):
                conn.execute(
                    text(
                        "INSERT INTO members (id, gender, status, created_at, updated_at) "
                        "VALUES (:id, 'F', 'in_review', :t, :t)"
                    ),
                    {"id": member, "t": now},
                )
            both = _result(conn, "M1", GALLERY, SELFIE)
            gallery_only = _result(conn, "M1", GALLERY, None)
            neither = _result(conn, "M2", None, None)
            conn.execute(
                text(
                    "INSERT INTO reviews (result_id, reviewer, decision, same_person, decided_at) "
                    "VALUES (:r, 'kim', 'approve', 1, :t)"
                ),
                {"r": both, "t": now},
            )
            conn.execute(
                text(
                    "INSERT INTO possible_duplicates (result_id, candidate_member_id, similarity) "
                    "VALUES (:r, 'M2', 0.8)"
                ),
                {"r": both},
            )

        db.init_db(engine)

        columns = {c["name"] for c in inspect(engine).get_columns("verification_results")}
        assert "gallery_analysis" not in columns and "verification_analysis" not in columns
        with db.session_factory(engine)() as session:
            side = {a.result_id: (a.gallery, a.verification) for a in session.scalars(select(ResultAnalysis))}
            assert side == {both: (GALLERY, SELFIE), gallery_only: (GALLERY, None)}
            rows = {r.id: r for r in session.scalars(select(ResultRow))}
            assert rows[both].gallery_analysis == GALLERY and rows[both].verification_analysis == SELFIE
            assert rows[gallery_only].verification_analysis is None
            assert rows[neither].gallery_analysis is None and rows[neither].analysis is None
            # The result rows were altered in place, not re-created: their children are still there.
            assert session.scalar(select(Review.result_id)) == both
            assert session.execute(text("SELECT COUNT(*) FROM possible_duplicates")).scalar() == 1

        from alembic import command

        command.downgrade(db.alembic_config(engine), "0012")
        with engine.connect() as conn:
            back = {
                rid: (json.loads(g) if isinstance(g, str) else g, json.loads(v) if isinstance(v, str) else v)
                for rid, g, v in conn.execute(
                    text("SELECT id, gallery_analysis, verification_analysis FROM verification_results")
                )
            }
            assert back == {both: (GALLERY, SELFIE), gallery_only: (GALLERY, None), neither: (None, None)}
            assert conn.execute(text("SELECT COUNT(*) FROM reviews")).scalar() == 1
        db.init_db(engine)  # and up again, on the same data
        with db.session_factory(engine)() as session:
            assert session.get(ResultRow, both).verification_analysis == SELFIE
            assert len(session.scalars(select(ResultAnalysis)).all()) == 2
    finally:
        engine.dispose()
