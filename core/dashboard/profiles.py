"""Profile photos on the pages: the Verify page's several gallery photos, the review queue's
strip, the Members page's profile and the KPI of members whose whole profile is verified.

    verify_profile(...) -> dict          the same answer as the API's (core.workflows.profiles)
    profile_strip(session, store, member_id, viewer, why) -> [StripPhoto]   each photo with its
        verdict and the member's face outlined; every photo shown is an audited view
    question_position(session, row) -> int | None   the photo a review-queue item is about
    verified_profile_share(session) -> (verified, members)
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.dashboard.verify import PairInputError, _check_photo, _page_error
from core.errors import ImageError
from core.storage import challenges
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import (
    GALLERY,
    MEMBER_ERASED,
    MEMBER_VERIFIED,
    VERIFICATION,
    Member,
    Photo,
    ProfilePhoto,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.imaging import decode_image
from core.workflows import batches, privacy, profile_rows, profiles, verification
from core.workflows.profile_rows import profile_of
from core.workflows.verification import PhotoInput

PAGE_SOURCE = batches.PAGE_SINGLE
MEMBER_BOX = (0, 200, 80)  # the member's face
OTHER_BOX = (230, 60, 40)


@dataclass
class StripPhoto:
    position: int
    state: str
    reason: str | None
    similarity: float | None
    review_decision: str | None
    image: Image.Image | None  # with the member's face outlined; None when the file is gone


def verify_profile(
    session_factory: sessionmaker,
    engine,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    *,
    registered_gender: str | None = None,
    selfie_bytes: bytes | None = None,
    profile_bytes: list[bytes] | None = None,
    challenge_token: str | None = None,
) -> dict:
    """A selfie against the member's whole profile, stored (the use case the API's
    POST /v1/members/{id}/profile/verifications runs). Raises PairInputError (nothing saved)."""
    member_id = (member_id or "").strip()
    if not member_id:
        raise PairInputError("verify.need_member")
    if selfie_bytes is None:
        raise PairInputError("verify.need_photo", which=VERIFICATION)
    _check_photo(selfie_bytes, VERIFICATION)
    for data in profile_bytes or []:
        _check_photo(data, GALLERY)
    try:
        done = profiles.verify_profile_member(
            session_factory,
            store,
            actor,
            member_id,
            PhotoInput(VERIFICATION, selfie_bytes),
            [PhotoInput(GALLERY, d) for d in profile_bytes or []],
            engine,
            gender=registered_gender or None,
            source=PAGE_SOURCE,
            enrol=True,
            challenge_token=challenge_token or None,
        )
    except (verification.VerifyError, verification.GalleryLocked, challenges.ChallengeError) as exc:
        raise _page_error(exc, member_id) from None
    out = profiles.profile_answer(done)
    with session_factory() as session:
        out["status"] = session.get(ResultRow, done.result_id).status  # after the duplicate checks
    return out


def outlined(data: bytes, box: list[int] | None, faces: list[list[int]] | None = None) -> Image.Image | None:
    """The photo as the engine saw it, the member's face outlined (other faces thin)."""
    try:
        decoded = decode_image(data)
    except ImageError:
        return None
    image = Image.fromarray(decoded.rgb)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 150))
    for other in faces or []:
        if box is None or list(other) != list(box):
            x, y, w, h = other
            draw.rectangle([x, y, x + w, y + h], outline=OTHER_BOX, width=max(1, width // 2))
    if box:
        x, y, w, h = box
        draw.rectangle([x, y, x + w, y + h], outline=MEMBER_BOX, width=width)
    return image


def profile_strip(
    session: Session, store: PhotoStoreBackend, member_id: str, viewer: str, why: str, public: bool = False
) -> list[StripPhoto]:
    """The member's profile, each photo with its verdict and the member's face outlined."""
    out = []
    for row in profile_of(session, member_id, public=public):
        photo = session.get(Photo, row.photo_id)
        try:
            data = privacy.show_photo(session, store, photo, viewer, why)
            image = outlined(data, row.face_box)
        except PhotoNotFound:
            image = None
        out.append(
            StripPhoto(row.position, row.state, row.reason, row.similarity, row.review_decision, image)
        )
    return out


def question_position(session: Session, row: ResultRow) -> int | None:
    """Which profile photo a review-queue item is about: the photo added later, or the first
    photo a profile verification flagged; None for an item that is not about the profile."""
    if row.member_id is None:
        return None
    if profiles.is_profile_addition(session, row):
        return session.scalar(
            select(ProfilePhoto.position).where(
                ProfilePhoto.member_id == row.member_id, ProfilePhoto.photo_id == row.verification_photo_id
            )
        )
    flagged = [
        f.get("params", {}).get("position")
        for f in (row.flags or [])
        if isinstance(f, dict)
        and f.get("code") in (profiles.PROFILE_PHOTO, profiles.PROFILE_PHOTO_OF_ANOTHER)
    ]
    flagged = [p for p in flagged if p is not None]
    if flagged:
        return min(flagged)
    return 1 if (row.checks or {}).get("profile") else None


def verified_profile_share(session: Session) -> tuple[int, int]:
    """(members with the badge: verified and every public profile photo the member, members with a
    profile). Erased members are not counted."""
    members = session.scalar(
        select(func.count(func.distinct(ProfilePhoto.member_id)))
        .join(Member, Member.id == ProfilePhoto.member_id)
        .where(Member.status != MEMBER_ERASED)
    )
    # A photo of the public profile that does not count as the member yet (profile_rows.settled).
    unsettled = select(ProfilePhoto.member_id).where(profile_rows.waiting_sql()).distinct()
    verified = session.scalar(
        select(func.count(Member.id)).where(
            Member.status == MEMBER_VERIFIED,
            Member.id.in_(select(ProfilePhoto.member_id)),
            Member.id.not_in(unsettled),
        )
    )
    return int(verified or 0), int(members or 0)


def review_profile(
    session: Session, store: PhotoStoreBackend, row: ResultRow, viewer: str, why: str
) -> tuple[list[StripPhoto], int | None]:
    """For a review-queue item about the profile: the member's whole profile as a strip and the
    position of the photo in question (shown large); ([], None) for other items."""
    position = question_position(session, row)
    if position is None or row.member_id is None:
        return [], None
    return profile_strip(session, store, row.member_id, viewer, why), position


def member_exists(session: Session, member_id: str) -> bool:
    from core.storage.schema import Member

    return session.get(Member, member_id) is not None
