"""Failed sign-ins and API key attempts: slow down, then lock for a while; an administrator unlocks.

One row per (kind, subject) in auth_throttle, in the database so that every process (dashboard
sessions, API workers) sees the same count and an administrator's unlock reaches all of them.

    check(session, kind, subject)                      raises Throttled(retry_after) while waiting
    record_failure(session, kind, subject, actor)      counts; the LOCK_AFTER-th failure locks
    record_success(session, kind, subject)             forgets the failures
    locked(session) -> list[AuthThrottle]              what is locked now (admin view)
    unlock(session, kind, subject, actor)              an administrator's unlock

    unlock_user(session, username, actor) -> int        an administrator lets a user sign in now

Kinds:
- USER_CLIENT: a user name (whether it exists or not, so the answer tells nothing) from one
  address, subject "name|address". Delays only, growing to MAX_DELAY_S[USER_CLIENT]; never a
  lock, so failures from elsewhere cannot keep the real user out for long, and never at all from
  another address.
- CLIENT: the address a sign-in came from (any names): delays, then a lock.
- API_CLIENT: the address sending wrong API keys; API_KEY_PREFIX: the key prefix a wrong key
  presented. Both only ever refuse wrong keys (core.api.guard).
- USER: a name from anywhere; no longer counted, kept so that old rows can be read and unlocked.

The rule: the first FREE_FAILURES failures cost nothing; after that each failure makes the next
attempt wait 1, 2, 4 ... up to the kind's MAX_DELAY_S seconds (refused meanwhile, not slept on, so
no server thread is held); for kinds with a LOCK_AFTER, that many failures within WINDOW lock the
subject for LOCK_FOR. The lock, its end (noticed at the next attempt after it ran out) and an
unlock are written to the audit log. Callers commit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import utcnow
from core.storage.schema_guards import AuthThrottle

USER, CLIENT, API_CLIENT = "user", "client", "api_client"
USER_CLIENT, API_KEY_PREFIX = "user_client", "api_key_prefix"
KINDS = (USER, USER_CLIENT, CLIENT, API_CLIENT, API_KEY_PREFIX)
FREE_FAILURES = 3
# The longest wait between attempts. A name at one address waits up to 5 minutes, never locked.
MAX_DELAY_S = {USER: 30, USER_CLIENT: 300, CLIENT: 30, API_CLIENT: 30, API_KEY_PREFIX: 30}
# Failures within WINDOW that lock the subject; None: delays only. A shared office address
# fails more often than one person.
LOCK_AFTER = {USER: 10, USER_CLIENT: None, CLIENT: 30, API_CLIENT: 20, API_KEY_PREFIX: 20}
WINDOW = timedelta(minutes=15)
LOCK_FOR = timedelta(minutes=15)

LOCKED, LOCK_ENDED, UNLOCKED = "throttle_locked", "throttle_lock_ended", "throttle_unlocked"


class Throttled(FaceVerifyError):
    """Too many failures: try again after retry_after seconds."""

    code = "throttled"

    def __init__(self, retry_after: int, locked: bool):
        self.retry_after = max(1, int(retry_after))
        self.locked = locked
        if locked:
            minutes = math.ceil(self.retry_after / 60)
            text = f"Too many failed attempts: locked for about {minutes} more minute(s)."
        else:
            text = f"Too many failed attempts: wait {self.retry_after} s before trying again."
        super().__init__(text)


@dataclass(frozen=True)
class _Key:
    kind: str
    subject: str


def _key(kind: str, subject: str) -> _Key:
    if kind not in KINDS:
        raise ValueError(f"unknown throttle kind {kind!r}")
    return _Key(kind, (subject or "unknown")[:128])


def _row(session: Session, key: _Key) -> AuthThrottle | None:
    return session.scalar(
        select(AuthThrottle).where(AuthThrottle.kind == key.kind, AuthThrottle.subject == key.subject)
    )


def _delay(kind: str, failures: int) -> float:
    if failures <= FREE_FAILURES:
        return 0.0
    return float(min(MAX_DELAY_S[kind], 2 ** min(30, failures - FREE_FAILURES - 1)))


def user_subject(username: str, client: str | None) -> str:
    """The USER_CLIENT subject of a name signing in from an address (or an unknown one)."""
    return f"{username}|{client or 'unknown'}"


def check(session: Session, kind: str, subject: str, *, now: datetime | None = None) -> None:
    """Raise Throttled while the subject is locked or must still wait; audit a lock that ran out."""
    key, now = _key(kind, subject), now or utcnow()
    row = _row(session, key)
    if row is None:
        return
    if row.locked_until is not None:
        if row.locked_until > now:
            raise Throttled((row.locked_until - now).total_seconds(), locked=True)
        audit.log(session, "system", LOCK_ENDED, key.kind, key.subject, {"failures": row.failures})
        session.delete(row)
        return
    if row.last_failed_at < now - WINDOW:
        session.delete(row)  # old failures are forgiven
        return
    wait = (row.last_failed_at + timedelta(seconds=_delay(key.kind, row.failures)) - now).total_seconds()
    if wait > 0:
        raise Throttled(math.ceil(wait), locked=False)


def record_failure(
    session: Session, kind: str, subject: str, actor: str, *, now: datetime | None = None
) -> None:
    key, now = _key(kind, subject), now or utcnow()
    row = _row(session, key)
    if row is None:
        row = AuthThrottle(
            kind=key.kind, subject=key.subject, failures=0, first_failed_at=now, last_failed_at=now
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # another attempt created it at the same moment
            row = _row(session, key)
    elif row.last_failed_at < now - WINDOW:
        row.failures, row.first_failed_at, row.locked_until = 0, now, None
    row.failures += 1
    row.last_failed_at = now
    lock_after = LOCK_AFTER[key.kind]
    if lock_after is not None and row.failures >= lock_after and row.locked_until is None:
        row.locked_until = now + LOCK_FOR
        audit.log(
            session,
            actor,
            LOCKED,
            key.kind,
            key.subject,
            {"failures": row.failures, "until": row.locked_until.isoformat(timespec="seconds")},
        )


def record_success(session: Session, kind: str, subject: str) -> None:
    key = _key(kind, subject)
    session.execute(
        delete(AuthThrottle).where(AuthThrottle.kind == key.kind, AuthThrottle.subject == key.subject)
    )


def locked(session: Session, *, now: datetime | None = None) -> list[AuthThrottle]:
    now = now or utcnow()
    return list(
        session.scalars(
            select(AuthThrottle)
            .where(AuthThrottle.locked_until > now)
            .order_by(AuthThrottle.locked_until.desc())
        )
    )


def unlock(session: Session, kind: str, subject: str, actor: str) -> bool:
    """An administrator's unlock (audited). True when there was something to unlock."""
    key = _key(kind, subject)
    row = _row(session, key)
    if row is None:
        return False
    audit.log(session, actor, UNLOCKED, key.kind, key.subject, {"failures": row.failures})
    session.delete(row)
    return True


def unlock_user(session: Session, username: str, actor: str) -> int:
    """An administrator's unlock of a user name: forgets its failures from every address (and any
    old lock of the name), audited. The number of rows cleared. Callers commit."""
    rows = list(
        session.scalars(
            select(AuthThrottle).where(
                (
                    (AuthThrottle.kind == USER_CLIENT)
                    & AuthThrottle.subject.startswith(f"{username}|", autoescape=True)
                )
                | ((AuthThrottle.kind == USER) & (AuthThrottle.subject == username))
            )
        )
    )
    if rows:
        audit.log(session, actor, UNLOCKED, "user", username, {"failures": sum(r.failures for r in rows)})
    for row in rows:
        session.delete(row)
    return len(rows)


def waiting(session: Session, *, now: datetime | None = None) -> list[AuthThrottle]:
    """Subjects that must wait or are locked now (the administrator's view): locks and delays."""
    now = now or utcnow()
    rows = session.scalars(
        select(AuthThrottle)
        .where(AuthThrottle.last_failed_at >= now - WINDOW)
        .order_by(AuthThrottle.last_failed_at.desc())
    )
    return [
        r
        for r in rows
        if (r.locked_until is not None and r.locked_until > now)
        or r.last_failed_at + timedelta(seconds=_delay(r.kind, r.failures)) > now
    ]
