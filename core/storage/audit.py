"""Audit log: who saw or decided what, and when; tamper-evident by a hash chain.

log() only adds the entry to the caller's session, so it commits (or rolls back) together with the
change it describes: there is never a decision without its audit entry, nor the reverse.

The chain: when a session commits, its new entries get the next sequence numbers and each its
entry_hash = sha256(previous entry's hash + its own content), all under a brief lock on the one
row of audit_chain (taken last, right before the commit, so no transaction waits on it for long
and no deadlock can form around it). An entry changed, removed or slipped in afterwards breaks
the chain at that place:

    verify_chain(session) -> ChainReport      ok, entries checked, the first broken link
    verify_chain(session, from_checkpoint=True)   only the entries after the stored checkpoint
    save_checkpoint(session, report)          an intact report's end, sealed with the audit key
    faceverify audit verify [--url DATABASE_URL]     exit code 0 intact, 1 broken

Keyed: from the head's keyed_from on, each link is HMAC-SHA256 with the audit key, which is kept
outside the database (core.storage.audit_key: AUDIT_KEY or AUDIT_KEY_FILE; a fresh install
generates one). Someone who can write the database but has not the key cannot recompute the links
after a change. Entries before keyed_from (written before there was a key) keep their plain sha256
links and verify as before. The head (seq, hash, keyed_from) is also exported to AUDIT_HEAD_FILE,
when set, at most every HEAD_EXPORT_EVERY_S after a commit, and by export_chain_head(); verify
compares the chain with it, which catches a rewrite even by the key's owner, and a chain whose
keyed part was turned back into plain links.

    export_chain_head(session) -> Path               write the head file now

The chain tells that something was changed. To stop the change in the first place, give the
application a database user that may only add audit entries (README, "Audit log").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import config
from core.storage import audit_key
from core.storage.schema import AuditEntry, utcnow
from core.storage.schema_guards import AuditChainHead, AuditCheckpoint

log_ = logging.getLogger(__name__)
HEAD_EXPORT_EVERY_S = config.declared("AUDIT_HEAD_EVERY_S").default
_HEAD = "audit_head"  # session.info key: the head this commit writes, exported after it
_last_export = 0.0

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


def entry_hash(
    prev: str, seq: int, at, actor, action, target_type, target_id, detail, key: bytes | None = None
) -> str:
    """sha256 (or with a key, HMAC-SHA256) of the previous hash and the entry's content, in a form
    both databases give back."""
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
    message = (prev + content).encode("utf-8")
    if key is not None:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def _hash_of(entry: AuditEntry, prev: str, key: bytes | None = None) -> str:
    return entry_hash(
        prev,
        entry.seq,
        entry.at,
        entry.actor,
        entry.action,
        entry.target_type,
        entry.target_id,
        entry.detail,
        key,
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
    head_seq, prev, keyed_from = session.execute(
        select(AuditChainHead.seq, AuditChainHead.last_hash, AuditChainHead.keyed_from).where(
            AuditChainHead.id == 1
        )
    ).one()
    first = head_seq - len(pending) + 1
    # Once the chain is keyed the key must be there: a new one would make the links unverifiable.
    key = audit_key.audit_key(create=keyed_from is None)
    if key is None:
        raise audit_key.AuditKeyError(
            f"The audit chain is keyed from entry #{keyed_from} but its key ({audit_key.key_file()}) "
            "is missing; restore it (or set AUDIT_KEY) before anything else is recorded."
        )
    if keyed_from is None:
        keyed_from = first  # the switch-over: from here on every link needs the key
    for offset, entry in enumerate(pending):
        entry.seq = first + offset
        entry.at = entry.at.replace(tzinfo=None) if entry.at.tzinfo else entry.at
        prev = entry.entry_hash = _hash_of(entry, prev, key)
        session.add(entry)
    session.execute(
        update(AuditChainHead).where(AuditChainHead.id == 1).values(last_hash=prev, keyed_from=keyed_from)
    )
    session.info[_HEAD] = (head_seq, prev, keyed_from)


@event.listens_for(Session, "after_rollback")
def _forget_head(session: Session) -> None:
    session.info.pop(_HEAD, None)  # that head was never committed


def _database_name(session: Session) -> str:
    return session.get_bind().url.render_as_string(hide_password=True)


@event.listens_for(Session, "after_commit")
def _export_head_now_and_then(session: Session) -> None:
    """The committed head to AUDIT_HEAD_FILE (when set), at most every HEAD_EXPORT_EVERY_S."""
    global _last_export
    head = session.info.pop(_HEAD, None)
    if head is None or not config.setting("AUDIT_HEAD_FILE"):
        return
    every = config.get("AUDIT_HEAD_EVERY_S")
    if time.monotonic() - _last_export < every:
        return
    _last_export = time.monotonic()
    try:
        audit_key.export_head(*head, database=_database_name(session))
    except OSError as exc:  # the record stands in the database; the export is tried again later
        log_.warning("could not export the audit chain head: %s", exc)


def export_chain_head(session: Session, path=None):
    """Write the chain's head (seq, hash, keyed_from) to AUDIT_HEAD_FILE (or path) now."""
    head = session.get(AuditChainHead, 1)
    if head is None:
        return audit_key.export_head(0, GENESIS, None, path, database=_database_name(session))
    return audit_key.export_head(
        head.seq, head.last_hash, head.keyed_from, path, database=_database_name(session)
    )


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
    last_hash: str | None = None  # the newest entry's hash, when intact
    from_seq: int = 0  # entries up to this one were taken from the checkpoint, not walked again

    def summary(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} entries"
        where = f"entry #{self.broken_seq}" + (f" (row id {self.broken_id})" if self.broken_id else "")
        return f"audit chain broken at {where}: {self.problem} ({self.checked} entries before it are intact)"


def verify_chain(session: Session, *, head_file=None, from_checkpoint: bool = False) -> ChainReport:
    """Walk the chain in order and report the first broken link (changed, missing or added entry).
    Links from the head's keyed_from on need the audit key; the exported head (AUDIT_HEAD_FILE, or
    head_file), when there is one for this database, must match the chain at its seq.

    from_checkpoint: start at the stored checkpoint (save_checkpoint) instead of the first entry,
    when its seal holds: only the entries after it are read, and the checkpoint's own entry must
    still carry its hash. A full walk (the default) is what catches an edit before the checkpoint."""
    unlinked = session.scalar(
        select(AuditEntry.id).where(AuditEntry.seq.is_(None)).order_by(AuditEntry.id).limit(1)
    )
    head = session.get(AuditChainHead, 1)
    keyed_from = head.keyed_from if head is not None else None
    exported = _exported_head(session, head_file)
    if exported is not None and exported.get("keyed_from") is not None:
        if keyed_from != exported["keyed_from"]:
            return ChainReport(
                False,
                0,
                exported["keyed_from"],
                None,
                f"the chain's keyed part was changed: the exported head says entry "
                f"#{exported['keyed_from']} on are keyed, the database says {keyed_from}",
            )
    key = audit_key.audit_key(create=False) if keyed_from is not None else None
    if keyed_from is not None and key is None:
        return ChainReport(
            False, 0, keyed_from, None, f"the audit key is missing ({audit_key.key_file()}); cannot verify"
        )
    prev, expected, checked = GENESIS, 1, 0
    stmt = select(AuditEntry).order_by(AuditEntry.seq)
    start = _checkpoint(session, key) if from_checkpoint else None
    if start is not None:
        seq, seq_hash = start
        at_checkpoint = session.execute(
            select(AuditEntry.id, AuditEntry.entry_hash).where(AuditEntry.seq == seq)
        ).one_or_none()
        if at_checkpoint is None or at_checkpoint.entry_hash != seq_hash:
            return ChainReport(
                False,
                seq - 1,
                seq,
                at_checkpoint.id if at_checkpoint is not None else None,
                "the entry at the last checkpoint was changed or removed",
            )
        if exported is not None and int(exported.get("seq") or 0) <= seq:
            old = session.scalar(select(AuditEntry.entry_hash).where(AuditEntry.seq == exported.get("seq")))
            if exported.get("seq") and old != exported.get("hash"):
                return ChainReport(
                    False,
                    seq,
                    exported.get("seq"),
                    None,
                    "it differs from the exported head: the chain was rewritten up to here",
                )
        prev, expected, checked = seq_hash, seq + 1, seq
        stmt = stmt.where(AuditEntry.seq > seq)
    rows = session.execute(stmt.execution_options(yield_per=1000))
    for entry in rows.scalars():
        if entry.seq is None:
            continue
        if entry.seq != expected:
            return ChainReport(
                False, checked, expected, None, f"entries #{expected} to #{entry.seq - 1} are missing"
            )
        keyed = keyed_from is not None and entry.seq >= keyed_from
        if entry.entry_hash != _hash_of(entry, prev, key if keyed else None):
            return ChainReport(False, checked, entry.seq, entry.id, "its content or hash was changed")
        if (
            exported is not None
            and entry.seq == exported.get("seq")
            and entry.entry_hash != exported.get("hash")
        ):
            return ChainReport(
                False,
                checked,
                entry.seq,
                entry.id,
                "it differs from the exported head: the chain was rewritten up to here",
            )
        prev, expected, checked = entry.entry_hash, expected + 1, checked + 1
    if unlinked is not None:
        return ChainReport(
            False, checked, None, unlinked, "an entry was written outside the application (no link)"
        )
    if head is not None and (head.seq != checked or head.last_hash != prev):
        return ChainReport(
            False,
            checked,
            checked + 1,
            None,
            f"the newest entries were removed (the head records #{head.seq})",
        )
    if exported is not None and int(exported.get("seq") or 0) > checked:
        return ChainReport(
            False,
            checked,
            checked + 1,
            None,
            f"the newest entries were removed (the exported head records #{exported['seq']})",
        )
    return ChainReport(True, checked, last_hash=prev, from_seq=start[0] if start else 0)


def _seal(key: bytes, seq: int, entry_hash_: str) -> str:
    return hmac.new(key, f"audit checkpoint:{seq}:{entry_hash_}".encode(), hashlib.sha256).hexdigest()


def _checkpoint(session: Session, key: bytes | None) -> tuple[int, str] | None:
    """(seq, hash) of the stored checkpoint when its seal holds with the audit key; else None."""
    row = session.get(AuditCheckpoint, 1)
    if row is None or key is None or row.seq <= 0:
        return None
    if not hmac.compare_digest(row.seal, _seal(key, row.seq, row.entry_hash)):
        log_.warning("the audit checkpoint's seal does not hold: checking the whole chain")
        return None
    return row.seq, row.entry_hash


def save_checkpoint(session: Session, report: ChainReport) -> bool:
    """Store an intact report's end as the checkpoint (sealed with the audit key); the caller
    commits. False when there is nothing to store (broken, empty, or no key to seal it with)."""
    key = audit_key.audit_key(create=False)
    if not report.ok or not report.checked or report.last_hash is None or key is None:
        return False
    row = session.get(AuditCheckpoint, 1)
    if row is None:
        row = AuditCheckpoint(id=1)
        session.add(row)
    row.seq, row.entry_hash = report.checked, report.last_hash
    row.seal, row.verified_at = _seal(key, report.checked, report.last_hash), utcnow()
    return True


def _exported_head(session: Session, head_file) -> dict | None:
    """The exported head for this database, if one is configured and written."""
    if head_file is None and not config.setting("AUDIT_HEAD_FILE"):
        return None
    exported = audit_key.read_head(head_file)
    if exported is None or exported.get("database") != _database_name(session):
        return None
    return exported


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
