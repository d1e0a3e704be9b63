"""The audit log's hash chain: intact after normal work, the first broken link found after tampering."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import delete, func, select, text, update

from core.storage import audit, db
from core.storage.schema import AuditChainHead, AuditEntry, utcnow


def write_entries(session_factory, n: int, actor: str = "tester") -> None:
    for i in range(n):
        with session_factory() as session:
            audit.log(session, actor, "view_member", "member", f"M{i}", {"i": i, "name": "김민수", "x": 0.25})
            session.commit()


def test_entries_are_chained_in_commit_order_and_verify(session_factory):
    write_entries(session_factory, 5)
    with session_factory() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert all(len(r.entry_hash) == 64 for r in rows)
        assert len({r.entry_hash for r in rows}) == 5
        report = audit.verify_chain(session)
    assert report.ok and report.checked == 5, report


def test_rolled_back_or_closed_sessions_write_nothing(session_factory):
    with session_factory() as session:
        audit.log(session, "a", "decide", "result", 1)
        session.rollback()
        session.commit()
    with session_factory() as session:
        audit.log(session, "a", "decide", "result", 2)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0
        assert audit.verify_chain(session).ok


def test_changed_entry_is_the_first_broken_link(session_factory):
    write_entries(session_factory, 6)
    with session_factory() as session:
        victim = session.scalar(select(AuditEntry).where(AuditEntry.seq == 4))
        # What someone with the app's own credentials could do with plain SQL.
        session.execute(update(AuditEntry).where(AuditEntry.id == victim.id).values(actor="somebody-else"))
        session.commit()
        report = audit.verify_chain(session)
    assert not report.ok
    assert report.broken_seq == 4 and report.broken_id == victim.id and report.checked == 3
    assert "changed" in report.summary()


def test_deleted_entry_and_removed_tail_are_found(session_factory):
    write_entries(session_factory, 6)
    with session_factory() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 2))
        session.commit()
        report = audit.verify_chain(session)
        assert not report.ok and report.broken_seq == 2 and "missing" in report.problem
    with session_factory() as session:
        session.execute(delete(AuditEntry))  # start again: 3 entries, then the newest removed
        session.execute(delete(AuditChainHead))
        session.commit()
    write_entries(session_factory, 3)
    with session_factory() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 3))
        session.commit()
        report = audit.verify_chain(session)
    assert not report.ok and report.broken_seq == 3 and "newest entries were removed" in report.problem


def test_entry_slipped_in_with_plain_sql_is_found(session_factory):
    write_entries(session_factory, 2)
    with session_factory() as session:
        session.execute(
            text("INSERT INTO audit_log (at, actor, action) VALUES (:at, 'intruder', 'decide')"),
            {"at": utcnow()},
        )
        session.commit()
        report = audit.verify_chain(session)
    assert not report.ok and "outside the application" in report.problem


def test_concurrent_writers_never_fork_the_chain(session_factory):
    write_entries(session_factory, 1)  # the head row, as the migration makes it
    errors = []

    def work(k):
        try:
            write_entries(session_factory, 10, actor=f"t{k}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with session_factory() as session:
        report = audit.verify_chain(session)
    assert report.ok and report.checked == 61, report.summary()


def test_upgrade_backfills_existing_rows_and_the_command_verifies(new_database_url):
    url = new_database_url()
    engine = db.make_engine(url)
    try:
        db.upgrade(engine, "0004")
        with engine.begin() as conn:
            for i in range(3):
                conn.execute(
                    text(
                        "INSERT INTO audit_log (at, actor, action, target_type, target_id) VALUES (:at, 'old', 'login', 'user', :u)"
                    ),
                    {"at": utcnow(), "u": f"user{i}"},
                )
        db.upgrade(engine, "head")
        root = Path(__file__).resolve().parent.parent
        done = subprocess.run(
            [sys.executable, "-m", "core", "audit", "verify", "--url", url],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "intact: 3 entries" in done.stdout
        with engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET target_id = 'root' WHERE target_id = 'user1'"))
        done = subprocess.run(
            [sys.executable, "-m", "core", "audit", "verify", "--url", url],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
        )
        assert done.returncode == 1 and "broken at entry #2" in done.stdout, done.stdout
    finally:
        engine.dispose()
