"""The audit log's hash chain: intact after normal work, the first broken link found after tampering."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update

from core.storage import audit, audit_key, db
from core.storage.schema import AuditEntry, utcnow
from core.storage.schema_guards import AuditChainHead


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


@pytest.mark.slow  # starts `python -m core` in a fresh process: the full run has it
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
        root = Path(__file__).resolve().parents[2]
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


# --- keyed chain -----------------------------------------------------------------------------


def recompute_plain(session, from_seq: int = 1) -> None:
    """What someone with write access to the database but without the key can do: recompute every
    link from from_seq with plain sha256, and the head, so the chain looks whole."""
    prev = audit.GENESIS
    if from_seq > 1:
        prev = session.scalar(select(AuditEntry.entry_hash).where(AuditEntry.seq == from_seq - 1))
    for entry in session.scalars(
        select(AuditEntry).where(AuditEntry.seq >= from_seq).order_by(AuditEntry.seq)
    ):
        entry.entry_hash = prev = audit.entry_hash(
            prev,
            entry.seq,
            entry.at,
            entry.actor,
            entry.action,
            entry.target_type,
            entry.target_id,
            entry.detail,
        )
    session.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(last_hash=prev))
    session.commit()


@pytest.fixture
def own_key(tmp_path, monkeypatch):
    """A key file of this test's own (and no AUDIT_KEY), as a fresh install has."""
    monkeypatch.delenv("AUDIT_KEY", raising=False)
    monkeypatch.setenv("AUDIT_KEY_FILE", str(tmp_path / "keys" / "audit.key"))
    return tmp_path / "keys" / "audit.key"


def test_a_rewrite_with_recomputed_hashes_and_head_is_caught(session_factory, own_key):
    """The attack: change an entry, recompute every later hash and the head; plain sha256 let
    `audit verify` answer "intact"."""
    write_entries(session_factory, 6)
    with session_factory() as session:
        victim = session.scalar(select(AuditEntry).where(AuditEntry.seq == 3))
        victim.actor = "somebody-else"
        session.commit()
        recompute_plain(session, from_seq=3)
        report = audit.verify_chain(session)
    assert not report.ok and report.broken_seq == 3, report.summary()


def test_a_fresh_install_generates_its_key_with_0600_and_says_so(session_factory, own_key, caplog):
    assert not own_key.exists()
    with caplog.at_level("WARNING"):
        write_entries(session_factory, 2)
    assert own_key.exists() and (own_key.stat().st_mode & 0o777) == 0o600
    assert len(own_key.read_text().strip()) == 64
    assert any(
        "generated one at" in r.getMessage() and str(own_key) in r.getMessage() for r in caplog.records
    )
    with session_factory() as session:
        assert session.get(AuditChainHead, 1).keyed_from == 1
        assert audit.verify_chain(session).ok


def test_older_unkeyed_entries_verify_up_to_the_switch_over(session_factory, own_key):
    write_entries(session_factory, 4)
    with session_factory() as session:  # as an install from before the key wrote them
        session.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(keyed_from=None))
        session.commit()
        recompute_plain(session)
    write_entries(session_factory, 3)
    with session_factory() as session:
        assert session.get(AuditChainHead, 1).keyed_from == 5
        report = audit.verify_chain(session)
        assert report.ok and report.checked == 7, report.summary()
        # Rewriting an old entry means recomputing the keyed ones too, which needs the key.
        old = session.scalar(select(AuditEntry).where(AuditEntry.seq == 2))
        old.detail = {"i": 99}
        session.commit()
        recompute_plain(session, from_seq=2)
        report = audit.verify_chain(session)
    assert not report.ok and report.broken_seq == 5, report.summary()


def test_a_lost_key_stops_new_entries_and_verification_says_why(session_factory, own_key):
    write_entries(session_factory, 2)
    own_key.unlink()
    with session_factory() as session:
        report = audit.verify_chain(session)
        assert not report.ok and "audit key is missing" in report.problem
        audit.log(session, "a", "decide", "result", 1)
        with pytest.raises(audit_key.AuditKeyError, match="restore it"):
            session.commit()
    assert not own_key.exists()  # no new key was made behind the chain's back


def test_the_exported_head_catches_a_chain_turned_back_to_plain_links(
    session_factory, own_key, tmp_path, monkeypatch
):
    head_file = tmp_path / "elsewhere" / "audit-head.json"
    monkeypatch.setenv("AUDIT_HEAD_FILE", str(head_file))
    monkeypatch.setenv("AUDIT_HEAD_EVERY_S", "0")
    write_entries(session_factory, 5)
    exported = json.loads(head_file.read_text())
    assert exported["seq"] == 5 and exported["keyed_from"] == 1 and len(exported["hash"]) == 64
    with session_factory() as session:
        assert audit.verify_chain(session).ok
        # Without the key, make the whole chain plain again and forget it was ever keyed.
        session.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(keyed_from=None))
        session.commit()
        recompute_plain(session)
        report = audit.verify_chain(session)
    assert not report.ok and "keyed part was changed" in report.problem
    with session_factory() as session:  # and the newest entries removed, head row and all
        session.execute(delete(AuditEntry).where(AuditEntry.seq >= 4))
        session.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(seq=3, keyed_from=1))
        session.commit()
        audit.export_chain_head(session, tmp_path / "other.json")  # a manual export elsewhere
        assert json.loads((tmp_path / "other.json").read_text())["seq"] == 3
        report = audit.verify_chain(session)
    assert not report.ok, report.summary()


def test_the_incremental_check_walks_from_the_checkpoint_and_catches_an_edit_after_it(
    session_factory, own_key
):
    from core.storage.schema_guards import AuditCheckpoint

    write_entries(session_factory, 5)
    with session_factory() as session:
        full = audit.verify_chain(session)
        assert full.ok and full.checked == 5 and full.from_seq == 0
        assert audit.save_checkpoint(session, full)
        session.commit()
    write_entries(session_factory, 4, actor="later")
    with session_factory() as session:
        since = audit.verify_chain(session, from_checkpoint=True)
        assert since.ok and since.checked == 9 and since.from_seq == 5, since.summary()
        # An entry after the checkpoint changed with plain SQL: caught where it is.
        victim = session.scalar(select(AuditEntry).where(AuditEntry.seq == 7))
        session.execute(update(AuditEntry).where(AuditEntry.id == victim.id).values(target_id="other"))
        session.commit()
        report = audit.verify_chain(session, from_checkpoint=True)
        assert not report.ok and report.broken_seq == 7 and report.broken_id == victim.id, report.summary()
        assert not audit.save_checkpoint(session, report)  # a broken chain never moves the checkpoint
        # An edit before the checkpoint is the full walk's to find.
        session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(actor="x"))
        session.commit()
        assert audit.verify_chain(session).broken_seq == 2
        # The checkpoint's own entry rewritten: the incremental check refuses to start from it.
        session.execute(update(AuditEntry).where(AuditEntry.seq == 5).values(entry_hash="0" * 64))
        session.commit()
        report = audit.verify_chain(session, from_checkpoint=True)
        assert not report.ok and report.broken_seq == 5
        # A checkpoint moved by someone without the key fails its seal: the whole chain is walked.
        session.execute(update(AuditCheckpoint).values(seq=8, entry_hash=victim.entry_hash))
        session.commit()
        assert audit.verify_chain(session, from_checkpoint=True).broken_seq == 2


def test_the_users_page_check_moves_the_checkpoint(session_factory, own_key):
    from core.dashboard import users

    write_entries(session_factory, 3)
    with session_factory() as session:
        first = users.audit_chain(session)
        assert first.ok and first.from_seq == 0
    write_entries(session_factory, 2)
    with session_factory() as session:
        second = users.audit_chain(session)
        assert second.ok and second.checked == 5 and second.from_seq == 3
        assert users.audit_chain(session, full=True).from_seq == 0


def test_the_command_line_check_stores_the_checkpoint_the_users_page_starts_from(
    db_url, session_factory, own_key, capsys
):
    """After an upgrade of a large database, `audit verify` walks the chain once; the Users page
    then reads only what was written since."""
    import argparse

    from core.cli import audit as audit_cli
    from core.storage.schema_guards import AuditCheckpoint

    write_entries(session_factory, 5)
    assert audit_cli.run(argparse.Namespace(url=db_url)) == 0
    assert "intact" in capsys.readouterr().out
    write_entries(session_factory, 2)
    with session_factory() as session:
        assert session.get(AuditCheckpoint, 1).seq == 5
        report = audit.verify_chain(session, from_checkpoint=True)
    assert report.ok and report.from_seq == 5, report.summary()
