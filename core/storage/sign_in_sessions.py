"""Server-side dashboard sign-ins that outlive a browser reload.

At sign-in the dashboard starts one (start): a random token goes to the browser as a cookie and only
its sha256 is stored here, with the user, the creation time, the last activity and an absolute
expiry. A new browser connection that presents the token is signed in again (restore) while the
row is neither ended nor expired, nor idle longer than the idle limit, and the user is still
active. Sign-out ends the row (end); a password change, an administrator's reset or a deactivation
ends every row of the user (end_all_for_user), so a copied cookie dies with them.

start(session, user, hours) -> (row id, token)                the token is shown once, never stored
restore(session, token, idle_minutes) -> (row, user) | None  audited as "session_restore"
restore_quietly(...)                                         the same check, not audited
alive(session, row_id, idle_minutes) -> bool                 each run; refreshes last_seen_at
end(session, row_id, reason) / end_all_for_user(session, user_id, reason, keep=None)

Each function commits its own transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.storage import audit
from core.storage.schema import User, utcnow
from core.storage.sign_in_rows import SignInSession

RESTORE = "session_restore"
TOKEN_BYTES = 32
TOUCH_EVERY_S = 60  # last_seen_at is written at most this often (one UPDATE a minute, not a run)

# Why a sign-in ended (end_reason).
SIGNED_OUT = "signed_out"
EXPIRED = "expired"
IDLE = "idle"
PASSWORD_CHANGED = "password_changed"
DEACTIVATED = "deactivated"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def start(session: Session, user: User, hours: float, now: datetime | None = None) -> tuple[int, str]:
    """A new sign-in of `user` lasting at most `hours`: its row id and the token for the browser."""
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = SignInSession(
        token_hash=token_hash(token),
        user_id=user.id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=hours),
    )
    session.add(row)
    session.commit()
    return row.id, token


def _why_over(row: SignInSession, user: User | None, idle_minutes: float, now: datetime) -> str | None:
    if row.ended_at is not None:
        return row.end_reason or SIGNED_OUT
    if user is None or not user.active:
        return DEACTIVATED
    if row.expires_at <= now:
        return EXPIRED
    if row.last_seen_at + timedelta(minutes=idle_minutes) < now:
        return IDLE
    return None


def _end(row: SignInSession, reason: str, now: datetime) -> None:
    if row.ended_at is None:
        row.ended_at = now
        row.end_reason = reason


def restore_quietly(
    session: Session, token: str, idle_minutes: float, now: datetime | None = None
) -> tuple[SignInSession, User] | None:
    """The sign-in and its user for a token a browser presented, or None (unknown, ended, expired,
    idle, or the user deactivated; a row found over is ended with its reason). Not audited, and its
    activity is not refreshed: for a request made from a page already signed in (a download)."""
    if not token or len(token) > 200:
        return None
    now = now or utcnow()
    row = session.scalar(select(SignInSession).where(SignInSession.token_hash == token_hash(token)))
    if row is None:
        return None
    user = session.get(User, row.user_id)
    reason = _why_over(row, user, idle_minutes, now)
    if reason is not None:
        if row.ended_at is None:
            _end(row, reason, now)
            session.commit()
        return None
    return row, user


def restore(
    session: Session, token: str, idle_minutes: float, now: datetime | None = None
) -> tuple[SignInSession, User] | None:
    """restore_quietly for a new browser connection (a reload, a new tab): its activity refreshed
    and the restore audited."""
    now = now or utcnow()
    found = restore_quietly(session, token, idle_minutes, now)
    if found is None:
        return None
    row, user = found
    row.last_seen_at = now
    audit.log(session, user.username, RESTORE, "user", user.username, {"sign_in": row.id})
    session.commit()
    return row, user


def alive(session: Session, row_id: int, idle_minutes: float, now: datetime | None = None) -> bool:
    """Whether the sign-in still holds (checked on every run: an administrator's reset or a
    deactivation elsewhere ends it here too); its last activity is refreshed once a minute."""
    now = now or utcnow()
    row = session.get(SignInSession, row_id)
    if row is None:
        return False
    reason = _why_over(row, session.get(User, row.user_id), idle_minutes, now)
    if reason is not None:
        if row.ended_at is None:
            _end(row, reason, now)
            session.commit()
        return False
    if (now - row.last_seen_at).total_seconds() >= TOUCH_EVERY_S:
        row.last_seen_at = now
        session.commit()
    return True


def end(session: Session, row_id: int | None, reason: str = SIGNED_OUT) -> None:
    """End one sign-in (its token no longer restores anything)."""
    if row_id is None:
        return
    row = session.get(SignInSession, row_id)
    if row is not None and row.ended_at is None:
        _end(row, reason, utcnow())
        session.commit()


def end_all_for_user(session: Session, user_id: int, reason: str, keep: int | None = None) -> int:
    """End every open sign-in of a user (but `keep`, the one making the change); the number ended.
    Does not commit: it belongs to the change that causes it."""
    query = update(SignInSession).where(SignInSession.user_id == user_id, SignInSession.ended_at.is_(None))
    if keep is not None:
        query = query.where(SignInSession.id != keep)
    return session.execute(query.values(ended_at=utcnow(), end_reason=reason)).rowcount or 0
