"""The Users page (administrators): accounts with their roles, created, deactivated and reactivated,
passwords reset to a temporary one that must be changed at the next sign-in, roles changed.

Every change is audited by core.storage.users (who, when, what); none may leave the service
without an active administrator (LastAdministrator).

    users_frame(session) -> DataFrame;  create(...), reset_password(...) -> temporary password
    change_role(...), set_active(...);  error_text(exc, lang)
"""

from __future__ import annotations

import secrets

import pandas as pd
from sqlalchemy.orm import Session

from core.dashboard.formatting import local_time
from core.i18n import t
from core.storage import users
from core.storage.users import AuthError

USER_COLUMNS = [
    "username",
    "display_name",
    "role",
    "active",
    "must_change_password",
    "created_at",
    "last_login_at",
]


def users_frame(session: Session) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "username": u.username,
                "display_name": u.display_name or "",
                "role": u.role,
                "active": bool(u.active),
                "must_change_password": bool(u.must_change_password),
                "created_at": local_time(u.created_at),
                "last_login_at": local_time(u.last_login_at),
            }
            for u in users.list_users(session)
        ],
        columns=USER_COLUMNS,
    )


def temporary_password() -> str:
    """12 characters from a cryptographic source; shown once to the administrator."""
    return secrets.token_urlsafe(9)


def create(session: Session, actor: str, username: str, role: str, display_name: str | None = None) -> str:
    """A new active user with a temporary password (returned) to change at the first sign-in."""
    password = temporary_password()
    users.create_user(
        session,
        username,
        password,
        role,
        display_name=(display_name or "").strip() or None,
        actor=actor,
        must_change_password=True,
    )
    return password


def reset_password(session: Session, actor: str, username: str) -> str:
    password = temporary_password()
    users.set_password(session, username, password, actor, must_change=True)
    return password


def change_role(session: Session, actor: str, username: str, role: str) -> None:
    users.set_role(session, username, role, actor)


def set_active(session: Session, actor: str, username: str, active: bool) -> None:
    users.set_active(session, username, active, actor)


def error_text(exc: AuthError, lang: str) -> str:
    """A user-management refusal in the page's language (the storage layer speaks English)."""
    return t(f"users.error.{exc.code}", lang, detail=str(exc))


def audit_chain(session: Session, *, full: bool = False):
    """The audit log's hash chain (ok, checked, from_seq, summary()): by default only the entries
    after the stored checkpoint, full=True from the first entry. An intact chain moves the
    checkpoint to its newest entry, so each visit walks only what was written since."""
    from core.storage import audit

    report = audit.verify_chain(session, from_checkpoint=not full)
    if audit.save_checkpoint(session, report):
        session.commit()
    return report


def sign_in_locks(session: Session) -> list[tuple[str, str, int, object]]:
    """(kind, subject, failures, locked_until) of each sign-in or API key lock in force."""
    from core.storage import throttle

    return [(row.kind, row.subject, row.failures, row.locked_until) for row in throttle.locked(session)]


def unlock(session: Session, kind: str, subject: str, actor: str) -> None:
    """An administrator lifts a lock (audited)."""
    from core.storage import throttle

    throttle.unlock(session, kind, subject, actor=actor)
    session.commit()
