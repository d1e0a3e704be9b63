"""Audit log: who saw or decided what, and when; tamper-evident by a hash chain.

log() only adds the entry to the caller's session, so it commits (or rolls back) together with the
change it describes: there is never a decision without its audit entry, nor the reverse.

The chain: when a session commits, its new entries get the next sequence numbers and each its
entry_hash = sha256(previous entry's hash + its own content), all under a brief lock on the one
row of audit_chain (taken last, right before the commit, so no transaction waits on it for long
and no deadlock can form around it). An entry changed, removed or slipped in afterwards breaks
the chain at that place:

    verify_chain(session) -> ChainReport      ok, entries checked, the first broken link
    faceverify audit verify [--url DATABASE_URL]     exit code 0 intact, 1 broken

The chain tells that something was changed. To stop the change in the first place, give the
application a database user that may only add audit entries (README, "Audit log").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.storage.schema import AuditChainHead, AuditEntry, utcnow

GENESIS = "0" * 64  # the "previous hash" of the first entry
_PENDING = "audit_pending"  # session.info key: entries waiting for their link

# Actions used across the core; pages may add their own (e.g. "view_member").
VIEW_MEMBER = "view_member"
VIEW_RESULT = "view_result"
DECIDE = "decide"
IMPORT_MEMBER = "import_member"
IMPORT_FILE = "import_file"
CREATE_BATCH = "create_batch"
RUN_BATCH = "run_batch"
LOGIN = "login"
LOGIN_FAILED = "login_failed"
CREATE_USER = "create_user"
CHANGE_PASSWORD = "change_password"
CHANGE_ROLE = "change_role"


def log(
    session: Session,
    actor: str,
    action: str,
    target_type: str | None = None,
    target_id: str | int | None = None,
    detail: dict | None = None,
    *,
    at: datetime | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=at or utcnow(),
        actor=(actor or "unknown")[:64],
        action=action[:64],
        target_type=target_type,
        target_id=None if target_id is None else str(target_id)[:64],
        detail=detail,
    )
    # Written when the session commits, with its link in the chain (see _link_pending).
    session.connection()  # begin the transaction now, so commit() has one to commit
    session.info.setdefault(_PENDING, []).append(entry)
    return entry


def entry_hash(prev: str, seq: int, at, actor, action, target_type, target_id, detail) -> str:
    """sha256 of the previous hash and the entry's content, in a form both databases give back."""
    if isinstance(at, str):  # SQLite through plain SQL (the migration) gives text
        at = datetime.fromisoformat(at)
    content = json.dumps(
        [
            seq,
            at.isoformat(timespec="microseconds") if at is not None else None,
            actor,
            action,
            target_type,
            target_id,
            detail,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256((prev + content).encode("utf-8")).hexdigest()


def _hash_of(entry: AuditEntry, prev: str) -> str:
    return entry_hash(
        prev, entry.seq, entry.at, entry.actor, entry.action, entry.target_type, entry.target_id, entry.detail
    )


@event.listens_for(Session, "before_commit")
def _link_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    # UPDATE first: it takes the write lock (a row lock on MySQL, the database's on SQLite) before
    # the head is read, so two committing sessions can never take the same sequence numbers.
    advance = (
        update(AuditChainHead).where(AuditChainHead.id == 1).values(seq=AuditChainHead.seq + len(pending))
    )
    if not session.execute(advance).rowcount:
        # No head row (a database emptied by hand or by tests): make it; a concurrent writer may
        # make it first, then its insert wins and ours is a duplicate.
        try:
            with session.begin_nested():
                session.execute(insert(AuditChainHead).values(id=1, seq=0, last_hash=GENESIS))
        except IntegrityError:
            pass
        session.execute(advance)
    head_seq, prev = session.execute(
        select(AuditChainHead.seq, AuditChainHead.last_hash).where(AuditChainHead.id == 1)
    ).one()
    first = head_seq - len(pending) + 1
    for offset, entry in enumerate(pending):
        entry.seq = first + offset
        entry.at = entry.at.replace(tzinfo=None) if entry.at.tzinfo else entry.at
        prev = entry.entry_hash = _hash_of(entry, prev)
        session.add(entry)
    session.execute(update(AuditChainHead).where(AuditChainHead.id == 1).values(last_hash=prev))


@event.listens_for(Session, "after_transaction_end")
def _drop_pending(session: Session, transaction) -> None:
    """Rolled back or closed without a commit: the entries go, as rows added to the session would."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


@dataclass
class ChainReport:
    ok: bool
    checked: int
    broken_seq: int | None = None  # where the chain breaks (the seq expected there)
    broken_id: int | None = None  # the audit_log row at fault, when there is one
    problem: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} entries"
        where = f"entry #{self.broken_seq}" + (f" (row id {self.broken_id})" if self.broken_id else "")
        return f"audit chain broken at {where}: {self.problem} ({self.checked} entries before it are intact)"


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain in order and report the first broken link (changed, missing or added entry)."""
    unlinked = session.scalar(
        select(AuditEntry.id).where(AuditEntry.seq.is_(None)).order_by(AuditEntry.id).limit(1)
    )
    prev, expected, checked = GENESIS, 1, 0
    rows = session.execute(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000))
    for entry in rows.scalars():
        if entry.seq is None:
            continue
        if entry.seq != expected:
            return ChainReport(
                False, checked, expected, None, f"entries #{expected} to #{entry.seq - 1} are missing"
            )
        if entry.entry_hash != _hash_of(entry, prev):
            return ChainReport(False, checked, entry.seq, entry.id, "its content or hash was changed")
        prev, expected, checked = entry.entry_hash, expected + 1, checked + 1
    if unlinked is not None:
        return ChainReport(
            False, checked, None, unlinked, "an entry was written outside the application (no link)"
        )
    head = session.get(AuditChainHead, 1)
    if head is not None and (head.seq != checked or head.last_hash != prev):
        return ChainReport(
            False,
            checked,
            checked + 1,
            None,
            f"the newest entries were removed (the head records #{head.seq})",
        )
    return ChainReport(True, checked)


def entries_for(
    session: Session, target_type: str, target_id: str | int, limit: int = 200
) -> list[AuditEntry]:
    stmt = (
        select(AuditEntry)
        .where(AuditEntry.target_type == target_type, AuditEntry.target_id == str(target_id))
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def recent(session: Session, *, actor: str | None = None, limit: int = 200) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    return list(session.scalars(stmt))
