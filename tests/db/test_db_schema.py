"""Schema creation, Alembic upgrades in place, and backend settings, on SQLite and MariaDB."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from core.storage import db
from core.storage.schema import Base, Member, Photo, utcnow


def test_init_db_creates_head_and_models_match_migrations(db_engine):
    assert db.current_revision(db_engine) == db.head_revision()
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "ORM classes and Alembic revisions disagree; add a revision"
    tables = set(inspect(db_engine).get_table_names())
    for required in (
        "members",
        "photos",
        "batches",
        "batch_items",
        "verification_results",
        "possible_duplicates",
        "reviews",
        "model_versions",
        "training_runs",
        "users",
        "audit_log",
        "embeddings",
        "api_keys",
    ):
        assert required in tables


def test_init_db_is_idempotent(db_engine):
    db.init_db(db_engine)
    db.init_db(db_engine)
    assert db.current_revision(db_engine) == db.head_revision()


def test_head_read_from_the_files_is_alembics_and_an_up_to_date_database_needs_no_alembic(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    assert db._head_in_files() == db.head_revision()
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    db.init_db(db.make_engine(url)).dispose()
    # A fresh process, as the dashboard's first page is: at head, alembic is never imported.
    code = (
        "import sys; from core.storage import db; "
        f"db.init_db(db.make_engine({url!r})); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


def test_a_database_behind_head_is_still_upgraded(new_database_url):
    from alembic import command

    engine = db.make_engine(new_database_url())
    try:
        db.init_db(engine)
        command.downgrade(db.alembic_config(engine), "0006")
        assert db._stored_revision(engine) == "0006"
        db.init_db(engine)
        assert db._stored_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_upgrade_in_place_keeps_data(new_database_url):
    url = new_database_url()
    engine = db.make_engine(url)
    try:
        db.upgrade(engine, "0001")
        assert db.current_revision(engine) == "0001"
        columns = {c["name"] for c in inspect(engine).get_columns("photos")}
        assert "width" not in columns  # added by 0002
        with engine.begin() as conn:
            # Plain SQL on purpose: the ORM classes describe the newest schema, not 0001.
            conn.execute(
                text(
                    "INSERT INTO members (id, gender, status, created_at, updated_at) "
                    "VALUES (:id, :g, 'pending', :t, :t)"
                ),
                [{"id": "M-OLD-1", "g": "F", "t": utcnow()}, {"id": "회원-2", "g": "M", "t": utcnow()}],
            )
            conn.execute(
                text(
                    "INSERT INTO photos (member_id, kind, sha256, stored_path, size_bytes, source, "
                    "current, created_at) VALUES ('M-OLD-1', 'gallery', :sha, 'ab/cd/x.jpg', 10, "
                    "'https://example.com/a.jpg', 1, :t)"
                ),
                {"sha": "ab" * 32, "t": utcnow()},
            )

        db.init_db(engine)

        assert db.current_revision(engine) == db.head_revision()
        columns = {c["name"] for c in inspect(engine).get_columns("photos")}
        assert {"width", "height"} <= columns
        assert "embeddings" in inspect(engine).get_table_names()
        with db.session_factory(engine)() as session:
            members = {m.id: m.gender for m in session.scalars(select(Member))}
            assert members == {"M-OLD-1": "F", "회원-2": "M"}
            photo = session.scalars(select(Photo)).one()
            assert (photo.member_id, photo.sha256, photo.source) == (
                "M-OLD-1",
                "ab" * 32,
                "https://example.com/a.jpg",
            )
            assert photo.width is None and photo.current is True
    finally:
        engine.dispose()


def test_downgrade_to_0001_and_back(new_database_url):
    from alembic import command

    engine = db.make_engine(new_database_url())
    try:
        db.init_db(engine)
        command.downgrade(db.alembic_config(engine), "0001")
        assert "embeddings" not in inspect(engine).get_table_names()
        db.init_db(engine)
        assert "embeddings" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_tables_without_alembic_version_are_refused(new_database_url):
    engine = db.make_engine(new_database_url())
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE members (id VARCHAR(64) PRIMARY KEY)"))
        with pytest.raises(db.SchemaError, match="no alembic_version"):
            db.init_db(engine)
    finally:
        engine.dispose()


def test_sqlite_pragmas(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.sqlite3'}")  # folder created on demand
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()


def test_mysql_url_gets_utf8mb4_and_pre_ping():
    engine = db.make_engine("mysql+pymysql://user:p%40ss@db.example/faceverify")
    assert engine.url.query["charset"] == "utf8mb4"
    assert engine.pool._pre_ping
    assert engine.url.password == "p@ss"
    engine.dispose()


def test_default_url_is_sqlite_under_data(monkeypatch):
    from core import config

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(config, "_secrets", lambda: {})
    assert config.database_url().startswith("sqlite:///")
    assert "data" in config.database_url()


@pytest.mark.mysql
def test_mysql_tables_are_innodb_utf8mb4(request):
    url = request.getfixturevalue("mysql_migrated_url")
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT table_name, engine, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()"
                )
            ).all()
        assert rows
        for name, engine_name, collation in rows:
            assert engine_name == "InnoDB", name
            assert collation.startswith("utf8mb4"), name
    finally:
        engine.dispose()


def test_scale_indexes_upgrade_a_database_with_data_and_are_used(new_database_url, backend):
    """Revision 0011 adds its indexes to a filled database, keeps every row, and the
    newest-result-per-member query is answered from its index."""
    from alembic import command

    from core.workflows import reverification

    engine = db.make_engine(new_database_url())
    try:
        db.upgrade(engine, "0010")
        now = utcnow()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO members (id, gender, status, created_at, updated_at) "
                    "VALUES (:id, 'F', 'pending', :t, :t)"
                ),
                [{"id": f"M-{i}", "t": now} for i in range(3)],
            )
            conn.execute(
                text(
                    "INSERT INTO photos (member_id, kind, sha256, stored_path, size_bytes, current, "
                    "created_at) VALUES (:m, :k, :sha, 'x.jpg', 10, 1, :t)"
                ),
                [
                    {"m": f"M-{i}", "k": kind, "sha": f"{i}{kind[0]}".ljust(64, "0"), "t": now}
                    for i in range(3)
                    for kind in ("gallery", "verification")
                ],
            )
            results = [
                ("M-0", "v1", "auto_approved", 0.9, None, None),
                ("M-0", "v2", "flagged", 0.5, "anna", 1),
                ("M-1", "v1", "auto_rejected", 0.1, "bo", 0),
                ("M-2", "v2", "auto_approved", 0.8, None, None),
            ]
            conn.execute(
                text(
                    "INSERT INTO verification_results (member_id, similarity, threshold, band_low, "
                    "band_high, status, flags, model_version, decided_by, ground_truth_same, "
                    "created_at, gender_mismatch, possible_duplicate, version) VALUES (:m, :s, 0.5, "
                    "0.4, 0.6, :st, '[]', :v, :by, :gt, :t, 0, 0, 1)"
                ),
                [
                    {"m": m, "v": v, "st": st, "s": s, "by": by, "gt": gt, "t": now}
                    for m, v, st, s, by, gt in results
                ],
            )
            conn.execute(
                text("INSERT INTO audit_log (at, actor, action) VALUES (:t, 'anna', 'login')"), {"t": now}
            )

        db.init_db(engine)
        assert db.current_revision(engine) == db.head_revision()
        indexes = {
            table: {i["name"]: i["column_names"] for i in inspect(engine).get_indexes(table)}
            for table in ("verification_results", "photos", "audit_log")
        }
        assert indexes["verification_results"]["ix_verification_results_member_newest"] == [
            "member_id",
            "id",
            "model_version",
            "status",
            "similarity",
        ]
        assert indexes["verification_results"]["ix_verification_results_reviewed"][:2] == [
            "decided_by",
            "ground_truth_same",
        ]
        assert indexes["audit_log"]["ix_audit_log_action_at"] == ["action", "at"]
        assert indexes["photos"]["ix_photos_kind_current_sha256"] == ["kind", "current", "sha256"]

        with db.session_factory(engine)() as session:
            latest = reverification._latest_per_member(session)
            assert {m: (st, v) for m, (st, _s, v) in latest.items()} == {
                "M-0": ("flagged", "v2"),
                "M-1": ("auto_rejected", "v1"),
                "M-2": ("auto_approved", "v2"),
            }
            assert set(reverification._latest_per_member(session, "v1")) == {"M-0", "M-1"}
            with engine.connect() as conn:
                if backend == "mysql":
                    plan = conn.execute(
                        text(
                            "EXPLAIN SELECT member_id, max(id) FROM verification_results "
                            "FORCE INDEX (ix_verification_results_member_newest) "
                            "WHERE model_version = 'v1' GROUP BY member_id"
                        )
                    ).all()
                    assert "Using index" in str(plan)
                else:
                    plan = conn.execute(
                        text(
                            "EXPLAIN QUERY PLAN SELECT count(*) FROM verification_results "
                            "WHERE decided_by IS NOT NULL AND ground_truth_same IS NOT NULL"
                        )
                    ).all()
                    assert "ix_verification_results_reviewed" in str(plan)

        command.downgrade(db.alembic_config(engine), "0010")
        assert "ix_audit_log_action_at" not in {i["name"] for i in inspect(engine).get_indexes("audit_log")}
        db.init_db(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM verification_results")).scalar() == 4
    finally:
        engine.dispose()
