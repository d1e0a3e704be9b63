"""A member's profile rows (core.storage.schema.ProfilePhoto): reading, ordering, the main photo.

    max_photos()                                     PROFILE_MAX_PHOTOS (default 9)
    profile_of(session, member_id, public=False)     the rows in the member's order
    ensure_main_photo(session, member_id, photo)     the current gallery photo is position 1
    renumber(session, member_id, order)              positions 1..n in the given order
    settled(row) / settled_sql() / waiting_sql()     whether a photo counts as the member (Python, SQL)
    badge_ok(session, member_id)                     whether the whole public profile does

Kept apart from the use case (core.workflows.profiles) so the photo writers
(core.workflows.member_photos.set_current_photos) can keep the main photo in step without a cycle.
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from core import config
from core.storage.schema import (
    PROFILE_PHOTO_APPROVED,
    PROFILE_PHOTO_REJECTED,
    PROFILE_UNCHECKED,
    Photo,
    ProfilePhoto,
    utcnow,
)
from core.verification.profile import MATCHES


def max_photos() -> int:
    """How many photos a profile holds at most (setting PROFILE_MAX_PHOTOS)."""
    return max(1, config.get("PROFILE_MAX_PHOTOS"))


def profile_of(session: Session, member_id: str, public: bool = False) -> list[ProfilePhoto]:
    """The member's profile photos in order; public: without those a reviewer rejected."""
    stmt = select(ProfilePhoto).where(ProfilePhoto.member_id == member_id)
    if public:
        stmt = stmt.where(
            (ProfilePhoto.review_decision.is_(None))
            | (ProfilePhoto.review_decision != PROFILE_PHOTO_REJECTED)
        )
    return list(session.scalars(stmt.order_by(ProfilePhoto.position)))


def ensure_main_photo(session: Session, member_id: str, photo: Photo) -> ProfilePhoto:
    """The member's current gallery photo is the profile's first photo (a profile of one for a
    member that has none yet). In the caller's transaction."""
    rows = profile_of(session, member_id)
    for row in rows:
        if row.photo_id == photo.id:
            if row.position != 1:
                renumber(session, member_id, [row.id] + [r.id for r in rows if r.id != row.id])
            return row
    if rows and rows[0].position == 1:
        main = rows[0]  # the main photo was replaced: the new one takes its place, unchecked
        main.photo_id, main.state, main.reason, main.similarity = photo.id, PROFILE_UNCHECKED, None, None
        main.face_box = main.model_version = main.checked_at = None
        main.review_decision = main.reviewed_by = main.reviewed_at = main.result_id = None
        session.flush()
        return main
    row = ProfilePhoto(
        member_id=member_id, position=1, photo_id=photo.id, state=PROFILE_UNCHECKED, created_at=utcnow()
    )
    session.add(row)
    session.flush()
    return row


def renumber(session: Session, member_id: str, order: list[int]) -> None:
    """Give the rows (by id) positions 1..n in this order. Two steps, so the unique position per
    member never sees two rows at once."""
    top = session.scalar(select(func.max(ProfilePhoto.position)).where(ProfilePhoto.member_id == member_id))
    offset = (top or 0) + len(order) + 1
    for n, row_id in enumerate(order, start=1):
        session.execute(
            update(ProfilePhoto)
            .where(ProfilePhoto.id == row_id, ProfilePhoto.member_id == member_id)
            .values(position=offset + n)
            .execution_options(synchronize_session=False)
        )
    for n, row_id in enumerate(order, start=1):
        session.execute(
            update(ProfilePhoto)
            .where(ProfilePhoto.id == row_id, ProfilePhoto.member_id == member_id)
            .values(position=n)
            .execution_options(synchronize_session=False)
        )
    session.expire_all()


def settled(row: ProfilePhoto) -> bool:
    """The photo counts as the member: a reviewer approved it, or no reviewer decided it and it
    matched without waiting for one. A photo added later that matched but was sent to the review
    queue anyway (another member's face, a possible duplicate) waits (result_id) and does not
    count until a reviewer accepts it. settled_sql() is the same test in SQL."""
    if row.review_decision is not None:
        return row.review_decision == PROFILE_PHOTO_APPROVED
    return row.state == MATCHES and row.result_id is None


def settled_sql():
    """SQL on profile_photos: settled(row) (the 1:N index's rows, the KPI of verified profiles)."""
    return or_(
        ProfilePhoto.review_decision == PROFILE_PHOTO_APPROVED,
        and_(
            ProfilePhoto.review_decision.is_(None),
            ProfilePhoto.state == MATCHES,
            ProfilePhoto.result_id.is_(None),
        ),
    )


def waiting_sql():
    """SQL on profile_photos: a photo of the public profile that is not settled (no reviewer
    decided it, and it did not match or waits in the review queue): what takes the badge away."""
    return and_(
        ProfilePhoto.review_decision.is_(None),
        or_(ProfilePhoto.state != MATCHES, ProfilePhoto.result_id.is_not(None)),
    )


def badge_ok(session: Session, member_id: str) -> bool:
    """Every photo of the public profile is the member. A member without profile rows (written
    before profiles, or by a path that keeps none) has nothing that speaks against it."""
    return all(settled(r) for r in profile_of(session, member_id, public=True))


# A pair verification's stored status, as the state of the profile's main photo.
_STATE_OF_PAIR = {"auto_approved": MATCHES, "auto_rejected": "does_not_match", "flagged": "review"}


def record_pair_result(session: Session, member_id: str, gallery_photo_id: int | None, row) -> None:
    """A verification of the selfie against the main photo alone (the pair routes, the Verify
    page's pair): the main photo's state follows its result, so a member verified that way keeps
    a true badge. In the caller's transaction."""
    if gallery_photo_id is None:
        return
    entry = session.scalar(
        select(ProfilePhoto).where(
            ProfilePhoto.member_id == member_id, ProfilePhoto.photo_id == gallery_photo_id
        )
    )
    if entry is None or row.status not in _STATE_OF_PAIR:
        return
    analysis = row.gallery_analysis or {}
    faces, main = analysis.get("faces") or [], analysis.get("main_face")
    box = None
    if main is not None and 0 <= main < len(faces):
        face = faces[main]
        box = face.get("box") if isinstance(face, dict) else face
    entry.state = _STATE_OF_PAIR[row.status]
    entry.similarity = row.similarity
    entry.face_box = list(box) if box else None
    entry.model_version, entry.checked_at = row.model_version, utcnow()
    entry.reason = f"Checked with the member's selfie alone (result {row.id})."
