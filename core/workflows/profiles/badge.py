"""The badge, reviews and order: refresh_badge, badge, on_review, on_verification_review,
decide_profile_photo, remove_profile_photo, reorder_profile."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.storage import audit
from core.storage.schema import (
    GALLERY,
    MEMBER_IN_REVIEW,
    MEMBER_VERIFIED,
    PROFILE_PHOTO_APPROVED,
    PROFILE_PHOTO_REJECTED,
    Batch,
    Member,
    Photo,
    ProfilePhoto,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import AUTO_APPROVED
from core.workflows import profile_rows, search, verification
from core.workflows.profile_rows import badge_ok, profile_of
from core.workflows.profiles.common import (
    DECIDE_PROFILE_PHOTO,
    PROFILE_ADDITION_SOURCE,
    PROFILE_PHOTO,
    REMOVE_PROFILE_PHOTO,
    REORDER_PROFILE,
    BadOrder,
    LastPhoto,
    UnknownProfilePhoto,
)

# ----------------------------------------------------------------------------------------------
# The badge, reviews, order


def refresh_badge(session: Session, member_id: str) -> None:
    """A verified member whose public profile has a photo that is not settled waits (in review);
    it is verified again once every photo is. Only between these two states: a member never
    verified, or rejected, is not changed here."""
    member = session.get(Member, member_id)
    if member is None or member.status not in (MEMBER_VERIFIED, MEMBER_IN_REVIEW):
        return
    if member.status == MEMBER_IN_REVIEW and not _last_verification_approved(session, member_id):
        return
    wanted = MEMBER_VERIFIED if badge_ok(session, member_id) else MEMBER_IN_REVIEW
    if member.status != wanted:
        member.status, member.updated_at = wanted, utcnow()


def _last_verification_approved(session: Session, member_id: str) -> bool:
    """The member's newest verification (not a photo added later) was approved."""
    row = session.scalar(
        select(ResultRow)
        .outerjoin(Batch, Batch.id == ResultRow.batch_id)
        .where(ResultRow.member_id == member_id)
        .where((Batch.source.is_(None)) | (Batch.source != PROFILE_ADDITION_SOURCE))
        .order_by(ResultRow.id.desc())
        .limit(1)
    )
    return row is not None and row.status in (AUTO_APPROVED, "approved")


def badge(session: Session, member_id: str) -> bool:
    """Whether the member shows the verified badge: verified, and every public photo is them."""
    member = session.get(Member, member_id)
    return member is not None and member.status == MEMBER_VERIFIED and badge_ok(session, member_id)


def is_profile_addition(session: Session, row: ResultRow) -> bool:
    if row.batch_id is None:
        return False
    return session.scalar(select(Batch.source).where(Batch.id == row.batch_id)) == PROFILE_ADDITION_SOURCE


def on_review(session: Session, row: ResultRow, approve: bool, reviewer: str) -> None:
    """A reviewer decided a photo added later: approved, it is shown; rejected, it leaves the
    public list. The badge follows (in the reviewer's transaction)."""
    entry = session.scalar(
        select(ProfilePhoto).where(
            ProfilePhoto.member_id == row.member_id, ProfilePhoto.photo_id == row.verification_photo_id
        )
    )
    if entry is None:
        return
    _decide(entry, approve, reviewer)
    session.flush()
    _rejected_last(session, row.member_id)
    refresh_badge(session, row.member_id)
    search.refresh_after_commit(session, row.member_id)  # the 1:N index follows the decision


def _rejected_last(session: Session, member_id: str) -> None:
    """Photos a reviewer rejected go after the public ones, so the public list is positions 1..n
    (the numbers a verification and its flags use)."""
    rows = profile_of(session, member_id)
    order = [r.id for r in rows if r.review_decision != PROFILE_PHOTO_REJECTED]
    order += [r.id for r in rows if r.review_decision == PROFILE_PHOTO_REJECTED]
    if order != [r.id for r in rows]:
        profile_rows.renumber(session, member_id, order)
        _make_main(session, member_id)


def on_verification_review(session: Session, row: ResultRow, approve: bool, reviewer: str) -> None:
    """A reviewer approved a profile verification: the profile's photos it flagged and that no
    reviewer decided yet are accepted with it (photos the reviewer does not accept are rejected on
    their own first, decide_profile_photo). The badge follows."""
    flagged = [
        f.get("params", {}).get("position")
        for f in (row.flags or [])
        if isinstance(f, dict) and f.get("code") == PROFILE_PHOTO
    ]
    if approve and flagged:
        for entry in profile_of(session, row.member_id, public=True):
            if entry.position in flagged and entry.review_decision is None:
                _decide(entry, True, reviewer)
        session.flush()
    elif approve and not (row.checks or {}).get("profile"):
        # A pair (the selfie against the main photo alone), approved: that photo is the member.
        for entry in profile_of(session, row.member_id, public=True):
            if entry.photo_id == row.gallery_photo_id and not profile_rows.settled(entry):
                _decide(entry, True, reviewer)
        session.flush()
    refresh_badge(session, row.member_id)
    search.refresh_after_commit(session, row.member_id)  # the 1:N index follows the decision


def _decide(entry: ProfilePhoto, approve: bool, reviewer: str) -> None:
    entry.review_decision = PROFILE_PHOTO_APPROVED if approve else PROFILE_PHOTO_REJECTED
    entry.reviewed_by, entry.reviewed_at = reviewer, utcnow()


def decide_profile_photo(
    session_factory: sessionmaker, actor: str, member_id: str, position: int, approve: bool
) -> ProfilePhoto:
    """A reviewer's decision on one profile photo (any position). Commits."""
    with session_factory() as session:
        entry = _entry(session, member_id, position)
        _decide(entry, approve, actor)
        session.flush()
        _rejected_last(session, member_id)
        refresh_badge(session, member_id)
        search.refresh_after_commit(session, member_id)
        audit.log(
            session,
            actor,
            DECIDE_PROFILE_PHOTO,
            "member",
            member_id,
            {"position": position, "photo_id": entry.photo_id, "decision": entry.review_decision},
        )
        session.commit()
        session.refresh(entry)
        session.expunge(entry)
        return entry  # its position may have changed: a rejected photo goes last


def _entry(session: Session, member_id: str, position: int) -> ProfilePhoto:
    if session.get(Member, member_id) is None:
        raise verification.UnknownMember(f"There is no member {member_id!r}.", member=member_id)
    entry = session.scalar(
        select(ProfilePhoto).where(ProfilePhoto.member_id == member_id, ProfilePhoto.position == position)
    )
    if entry is None:
        raise UnknownProfilePhoto(f"Member {member_id!r} has no profile photo {position}.")
    return entry


def remove_profile_photo(session_factory: sessionmaker, actor: str, member_id: str, position: int) -> None:
    """Take a photo out of the profile (its file and row stay for the history, as replaced photos
    do; erasure removes them). The main photo goes only when another one takes its place."""
    with session_factory() as session:
        entry = _entry(session, member_id, position)
        rows = profile_of(session, member_id)
        if len(rows) == 1:
            raise LastPhoto("A profile keeps at least one photo; add another before removing this one.")
        photo_id = entry.photo_id
        session.delete(entry)
        session.flush()
        rest = [r.id for r in rows if r.id != entry.id]
        profile_rows.renumber(session, member_id, rest)
        if position == 1:
            _make_main(session, member_id)
        refresh_badge(session, member_id)
        search.refresh_after_commit(session, member_id)
        audit.log(
            session,
            actor,
            REMOVE_PROFILE_PHOTO,
            "member",
            member_id,
            {"position": position, "photo_id": photo_id},
        )
        session.commit()


def reorder_profile(session_factory: sessionmaker, actor: str, member_id: str, order: list[int]) -> None:
    """New order by current positions: order=[3, 1, 2] puts photo 3 first. Every position once."""
    with session_factory() as session:
        if session.get(Member, member_id) is None:
            raise verification.UnknownMember(f"There is no member {member_id!r}.", member=member_id)
        rows = {r.position: r for r in profile_of(session, member_id)}
        if sorted(order) != sorted(rows):
            raise BadOrder(
                f"The order must name each of the positions {sorted(rows)} once; it named {order}."
            )
        profile_rows.renumber(session, member_id, [rows[p].id for p in order])
        if order[0] != 1:
            _make_main(session, member_id)
            search.refresh_after_commit(session, member_id)  # the main row is another photo
        audit.log(session, actor, REORDER_PROFILE, "member", member_id, {"order": order})
        session.commit()


def _make_main(session: Session, member_id: str) -> None:
    """The photo now at position 1 becomes the member's current gallery photo."""
    first = session.scalar(
        select(ProfilePhoto).where(ProfilePhoto.member_id == member_id, ProfilePhoto.position == 1)
    )
    if first is None:
        return
    for photo in session.scalars(select(Photo).where(Photo.member_id == member_id, Photo.kind == GALLERY)):
        photo.current = photo.id == first.photo_id
    session.flush()
