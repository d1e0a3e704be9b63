"""Each profile photo's result: the member's stored result from the profile's, the photos' states,
and another member's face found in a profile photo (the 1:N index)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.schema import (
    MEMBER_ERASED,
    Member,
    Photo,
    ProfilePhoto,
)
from core.verification import profile as rule
from core.verification.result import AUTO_APPROVED, AUTO_REJECTED, FLAGGED, Flag, VerificationResult
from core.workflows import profile_rule, search
from core.workflows.profile_rows import profile_of
from core.workflows.profiles.common import (
    OTHER_MEMBERS_SEARCHED,
    PROFILE_PHOTO,
    PROFILE_PHOTO_OF_ANOTHER,
    _json_safe,
)


def checked_rule(engine, result: VerificationResult) -> float:
    """The approval point of the profile rule for the engine that computed the result."""
    return profile_rule.approval_point(engine, result.model_version, result.uncertain_band[1])


# ----------------------------------------------------------------------------------------------
# The member's result from the profile's


def member_result(engine, checked: rule.ProfileVerification, gender, challenge) -> VerificationResult:
    """The stored result: the main photo's pair (selfie against the member's face in it), with the
    profile's decision and one flag per photo that is not (clearly) the member."""
    main = checked.photos[0]
    result = engine.compare(main.analysis, checked.selfie, gender, challenge)
    for photo in checked.photos:
        if photo.flagged:
            result.flags.append(
                Flag(
                    PROFILE_PHOTO,
                    photo.reason,
                    "gallery",
                    params={"position": photo.position, "state": photo.state, "similarity": photo.similarity},
                )
            )
    if checked.status == AUTO_REJECTED:
        result.status = AUTO_REJECTED
    elif checked.status == AUTO_APPROVED and result.status == AUTO_APPROVED:
        result.status = AUTO_APPROVED
    else:
        result.status = FLAGGED
    result.checks = {**(result.checks or {}), "profile": _json_safe(checked.to_dict())}
    result.timings_ms = {**result.timings_ms, **{f"profile_{k}": v for k, v in checked.timings_ms.items()}}
    return result


def _store_states(session: Session, member_id: str, checked: rule.ProfileVerification, now) -> None:
    rows = {r.position: r for r in profile_of(session, member_id, public=True)}
    public = [rows[p] for p in sorted(rows)]
    for photo, row in zip(checked.photos, public, strict=False):
        _set_state(row, photo, checked.model_version, now)


def _set_state(row: ProfilePhoto, photo: rule.ProfilePhotoResult, model_version: str, now) -> None:
    row.state, row.reason = photo.state, photo.reason
    row.similarity = photo.similarity
    row.face_box = list(photo.box) if photo.box else None
    row.model_version, row.checked_at = model_version, now


# ----------------------------------------------------------------------------------------------
# Another member's face in a profile photo


def other_members(
    session: Session, model_version: str, photo: rule.ProfilePhotoResult, member_id: str, approve_at: float
) -> list[tuple[str, float]]:
    """Enrolled members (1:N index) whose face the photo's member face matches at the profile's
    approval point and more closely than it matches this member's selfie: (member, similarity).

    The index's duplicate threshold is for "the same person under two accounts" over every
    member; a profile photo is judged against the member itself, so a photo that looks more like
    another member than like the member is what gives a lifted photo away."""
    analysis = photo.analysis
    if analysis is None or getattr(analysis, "projection", None) is None:
        return []
    index = search.index_for(session.get_bind(), model_version)
    found = index.search_candidates(
        analysis.projection, OTHER_MEMBERS_SEARCHED, exclude_member=member_id, min_similarity=approve_at
    )
    own = photo.similarity or 0.0
    found = [c for c in found if c.similarity > own]
    if not found:
        return []
    # Named only while that photo is still one of the member's enrolled photos (never a stale row).
    live = set(
        session.execute(
            select(Photo.id, Photo.member_id)
            .join(Member, Member.id == Photo.member_id)
            .where(
                Photo.id.in_([c.photo_id for c in found if c.photo_id]),
                search.enrolled_photo(),
                Member.status != MEMBER_ERASED,
            )
        ).all()
    )
    return [(c.member_id, round(float(c.similarity), 4)) for c in found if (c.photo_id, c.member_id) in live]


def another_member_flag(position: int, others: list[tuple[str, float]], photo: str) -> Flag:
    names = ", ".join(f"member {m} (similarity {sim:.3f})" for m, sim in others)
    return Flag(
        PROFILE_PHOTO_OF_ANOTHER,
        f"Photo {position} shows another member's face: {names}, more like them than this member.",
        photo,
        params={"position": position, "candidates": [[m, sim] for m, sim in others]},
    )
