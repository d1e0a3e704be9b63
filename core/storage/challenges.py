"""Pose challenges: issued at random, used once, valid for a short while (CHALLENGE_MINUTES, default 3).

    issue(session, member_id, actor) -> Challenge            random kind, random token; commits.
        One open challenge per member: a new one cancels the member's open ones, so poses cannot
        be shopped for. Issuing is rate-limited per member (CHALLENGES_PER_MEMBER_PER_HOUR,
        default 5) and per caller (CHALLENGES_PER_CALLER_PER_HOUR, default 300): ChallengeRateLimited
    consume(session, token, member_id) -> Challenge          marks it used, or raises; commits
    attach_result(session, token, result_id)                 which verification used it (caller commits)

A challenge is consumed with one conditional UPDATE (unused and not expired), so two requests
with the same token cannot both pass, on SQLite or MariaDB.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core import config
from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import utcnow
from core.storage.schema_guards import Challenge
from core.verification.fraud import CHALLENGES

MINUTES_SETTING = "CHALLENGE_MINUTES"
DEFAULT_MINUTES = 3
PER_MEMBER_SETTING, DEFAULT_PER_MEMBER = "CHALLENGES_PER_MEMBER_PER_HOUR", 5
PER_CALLER_SETTING, DEFAULT_PER_CALLER = "CHALLENGES_PER_CALLER_PER_HOUR", 300
RATE_WINDOW = timedelta(hours=1)
ISSUE_CHALLENGE, USE_CHALLENGE = "issue_challenge", "use_challenge"


class ChallengeError(FaceVerifyError):
    code = "challenge_error"


class UnknownChallenge(ChallengeError):
    code = "unknown_challenge"


class ChallengeUsed(ChallengeError):
    code = "challenge_used"


class ChallengeExpired(ChallengeError):
    code = "challenge_expired"


class ChallengeForAnotherMember(ChallengeError):
    code = "challenge_member_mismatch"


class ChallengeRateLimited(ChallengeError):
    """Too many challenges issued for this member, or by this caller, in the last hour."""

    code = "challenge_rate_limited"

    def __init__(self, message: str, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(message)


def _limit(name: str, default: int) -> int:
    raw = config.setting(name)
    try:
        return max(int(raw), 1) if raw else default
    except ValueError:
        return default


def _check_rate(session: Session, member_id: str, actor: str, now) -> None:
    since = now - RATE_WINDOW
    for column, value, name, default, whose in (
        (Challenge.member_id, member_id, PER_MEMBER_SETTING, DEFAULT_PER_MEMBER, f"member {member_id!r}"),
        (Challenge.created_by, actor, PER_CALLER_SETTING, DEFAULT_PER_CALLER, "this caller"),
    ):
        limit = _limit(name, default)
        recent = session.execute(
            select(func.count(), func.min(Challenge.created_at)).where(
                column == value, Challenge.created_at > since
            )
        ).one()
        if recent[0] >= limit:
            session.rollback()
            retry = max(int((recent[1] + RATE_WINDOW - now).total_seconds()) + 1, 1)
            raise ChallengeRateLimited(
                f"{limit} challenges were issued for {whose} in the last hour, the most allowed; "
                f"try again in {retry} s.",
                retry,
            )


def lifetime() -> timedelta:
    raw = config.setting(MINUTES_SETTING)
    try:
        minutes = float(raw) if raw else DEFAULT_MINUTES
    except ValueError:
        minutes = DEFAULT_MINUTES
    return timedelta(minutes=max(minutes, 0.0))


def issue(session: Session, member_id: str, actor: str) -> Challenge:
    """A new challenge for a member (who may not be enrolled yet); the member's open ones are
    cancelled. Raises ChallengeRateLimited. Commits."""
    now = utcnow()
    _check_rate(session, member_id, actor, now)
    session.execute(  # one open challenge per member: the older ones end now
        update(Challenge)
        .where(Challenge.member_id == member_id, Challenge.used_at.is_(None), Challenge.expires_at > now)
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    challenge = Challenge(
        token=secrets.token_urlsafe(24),
        member_id=member_id,
        kind=secrets.choice(CHALLENGES),
        created_at=now,
        created_by=actor,
        expires_at=now + lifetime(),
    )
    session.add(challenge)
    session.flush()
    audit.log(session, actor, ISSUE_CHALLENGE, "member", member_id, {"kind": challenge.kind})
    session.commit()
    return challenge


def consume(session: Session, token: str, member_id: str, actor: str) -> Challenge:
    """Use a challenge up, once. Raises UnknownChallenge, ChallengeForAnotherMember,
    ChallengeUsed or ChallengeExpired (nothing changes then). Commits."""
    now = utcnow()
    challenge = session.scalar(select(Challenge).where(Challenge.token == token))
    if challenge is None:
        session.rollback()
        raise UnknownChallenge("There is no such challenge; ask for a new one (POST /v1/challenges).")
    if challenge.member_id != member_id:
        session.rollback()
        raise ChallengeForAnotherMember(
            f"This challenge was issued for member {challenge.member_id!r}, not {member_id!r}; ask for one "
            "for this member."
        )
    claimed = session.execute(
        update(Challenge)
        .where(Challenge.id == challenge.id, Challenge.used_at.is_(None), Challenge.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        session.rollback()
        again = session.get(Challenge, challenge.id, populate_existing=True)
        session.rollback()
        if again.used_at is not None:
            raise ChallengeUsed(
                f"This challenge was already used at {again.used_at:%Y-%m-%d %H:%M:%S} UTC; a challenge "
                "is good for one verification. Ask for a new one."
            )
        newer = session.scalar(
            select(Challenge.id).where(Challenge.member_id == member_id, Challenge.id > challenge.id).limit(1)
        )
        session.rollback()
        if newer is not None:
            raise ChallengeExpired(
                "This challenge was replaced by a newer one for the same member (one open challenge per "
                "member); use the newest."
            )
        raise ChallengeExpired(
            f"This challenge expired at {again.expires_at:%Y-%m-%d %H:%M:%S} UTC (challenges last "
            f"{int(lifetime().total_seconds() // 60)} minutes). Ask for a new one."
        )
    audit.log(session, actor, USE_CHALLENGE, "member", member_id, {"kind": challenge.kind})
    session.commit()
    return session.get(Challenge, challenge.id, populate_existing=True)


def attach_result(session: Session, challenge_id: int, result_id: int) -> None:
    """Record which verification used the challenge (in the caller's transaction)."""
    session.execute(
        update(Challenge)
        .where(Challenge.id == challenge_id)
        .values(result_id=result_id)
        .execution_options(synchronize_session=False)
    )
