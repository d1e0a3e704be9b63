"""Audit log: who saw or decided what, and when.

log() only adds the entry to the caller's session, so it commits (or rolls back) together with the
change it describes: there is never a decision without its audit entry, nor the reverse.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.schema import AuditEntry, utcnow

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
    session.add(entry)
    return entry


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
