"""A photo added later: add_profile_photo, checked at once against the member's verified face."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core.storage import audit
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import (
    GALLERY,
    VERIFICATION,
    Member,
    Photo,
    ProfilePhoto,
    utcnow,
)
from core.verification import profile as rule
from core.verification.result import AUTO_APPROVED, FLAGGED, Flag
from core.workflows import batches, profile_rule, search, verification
from core.workflows.profile_rows import max_photos, profile_of
from core.workflows.profiles.badge import refresh_badge
from core.workflows.profiles.checks import (
    _set_state,
    another_member_flag,
    checked_rule,
    other_members,
)
from core.workflows.profiles.common import (
    ADD_PROFILE_PHOTO,
    PROFILE_ADDITION_SOURCE,
    PROFILE_PHOTO,
    AlreadyInProfile,
    NoVerifiedFace,
    ProfileFull,
    RunOnEngine,
    _direct,
    _json_safe,
)
from core.workflows.verification import PhotoInput


@dataclass
class ProfileAddition:
    member_id: str
    position: int
    photo_id: int
    state: str
    shown: bool  # in the profile at once (matched, nothing flagged)
    result_id: int
    flags: list[dict] = field(default_factory=list)
    photo: rule.ProfilePhotoResult | None = None


# ----------------------------------------------------------------------------------------------
# A photo added later


def add_profile_photo(
    session_factory: sessionmaker,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    photo: PhotoInput,
    engine,
    *,
    source: str = "api",
    run_on_engine: RunOnEngine | None = None,
) -> ProfileAddition:
    """Add a photo at the end of the profile, checked at once against the member's verified face."""
    run_on_engine = run_on_engine or _direct(engine)
    if engine is not None:
        search.register_engine(engine)
    if photo.data is None:
        raise verification.PhotoRequired("The photo to add must be uploaded.", which=GALLERY)
    sha = hashlib.sha256(photo.data).hexdigest()
    with session_factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise verification.UnknownMember(f"There is no member {member_id!r}.", member=member_id)
        rows = profile_of(session, member_id)
        if len(rows) >= max_photos():
            raise ProfileFull(
                f"Member {member_id!r}'s profile already holds {len(rows)} photos (at most {max_photos()}); "
                "remove one first.",
                max=max_photos(),
            )
        if any(r.photo.sha256 == sha for r in rows):
            raise AlreadyInProfile(f"This photo is already in member {member_id!r}'s profile.")
        selfie_row = verification._current_photo(session, member_id, VERIFICATION)
        if selfie_row is None:
            raise NoVerifiedFace(
                f"Member {member_id!r} has no verification selfie yet; verify the member first.",
            )
        selfie_id, selfie_path, gender = selfie_row.id, selfie_row.stored_path, member.gender
        session.rollback()
    try:
        selfie_bytes = store.read(selfie_path)
    except PhotoNotFound:
        raise verification.PhotoMissing(
            "The member's selfie is missing from the photo store.", which=VERIFICATION
        ) from None
    try:
        path = store.put(photo.data, photo.ext).relative_path
    except OSError:
        raise verification.StoreUnavailable(
            "The photo store cannot save the photo; nothing was stored."
        ) from None

    position_hint = len(rows) + 1

    def work(engine_now):
        selfie = engine_now.analyze_many([selfie_bytes])[0]
        faces = engine_now.analyze_faces([photo.data])[0]
        checked = rule.check_photo(
            engine_now, selfie, faces, position_hint, gender, profile_rule.rule_for(engine_now)
        )
        # The pair stored for the queue: the selfie against the new photo's member face, so the
        # 1:N search and the file checks look at the new photo.
        result = engine_now.compare(selfie, checked.analysis, gender)
        return checked, result

    checked, result = run_on_engine(work)
    result.flags = [f for f in result.flags if f.photo != "gallery"]  # the selfie was judged when verified
    rule_now = checked_rule(engine, result)
    if checked.flagged:
        result.flags.append(
            Flag(
                PROFILE_PHOTO,
                checked.reason,
                "verification",
                params={
                    "position": checked.position,
                    "state": checked.state,
                    "similarity": checked.similarity,
                },
            )
        )
    result.status = AUTO_APPROVED if checked.state == rule.MATCHES and not result.flags else FLAGGED
    result.checks = {**(result.checks or {}), "profile_photo": _json_safe(checked.to_dict())}

    with session_factory() as session:
        now = utcnow()
        others = other_members(session, result.model_version, checked, member_id, rule_now)
        if others:
            result.flags.append(another_member_flag(position_hint, others, "verification"))
            result.status = FLAGGED
        if any(r.photo.sha256 == sha for r in profile_of(session, member_id)):
            raise AlreadyInProfile(f"This photo is already in member {member_id!r}'s profile.")
        photo_row = session.scalar(
            select(Photo).where(Photo.member_id == member_id, Photo.kind == GALLERY, Photo.sha256 == sha)
        )
        if photo_row is None:  # a photo replaced earlier comes back on its old row
            photo_row = Photo(
                member_id=member_id,
                kind=GALLERY,
                sha256=sha,
                stored_path=path,
                size_bytes=len(photo.data),
                source=source[:2048],
                current=False,
                created_at=now,
                width=photo.width,
                height=photo.height,
            )
            session.add(photo_row)
            session.flush()
        item = batches.add_single_item(
            session,
            actor,
            PROFILE_ADDITION_SOURCE,
            result.model_version,
            member_id,
            selfie_id,
            photo_row.id,
            gender,
            now=now,
        )
        # No gallery photo id while storing: the selfie must not join the 1:N index as the member.
        row = batches.store_result(
            session,
            result,
            batch_id=item.batch_id,
            batch_item_id=item.id,
            member_id=member_id,
            gallery_photo_id=None,
            verification_photo_id=photo_row.id,
            update_member=False,
            verification_photo_checks=False,
        )
        session.flush()
        row.gallery_photo_id = selfie_id
        top = max((r.position for r in profile_of(session, member_id)), default=0)
        checked.position = top + 1
        checked.reason = checked.reason.replace(f"hoto {position_hint}", f"hoto {top + 1}")
        entry = ProfilePhoto(member_id=member_id, position=top + 1, photo_id=photo_row.id, created_at=now)
        _set_state(entry, checked, result.model_version, now)
        shown = row.status == AUTO_APPROVED
        if not shown:
            entry.result_id = row.id
        session.add(entry)
        session.flush()
        search.refresh_after_commit(session, member_id)  # in the 1:N index if it shows the member
        refresh_badge(session, member_id)
        audit.log(
            session,
            actor,
            ADD_PROFILE_PHOTO,
            "member",
            member_id,
            {"photo_id": photo_row.id, "position": entry.position, "state": entry.state, "result_id": row.id},
        )
        session.commit()
        return ProfileAddition(
            member_id,
            entry.position,
            photo_row.id,
            entry.state,
            shown,
            row.id,
            list(row.flags or []),
            checked,
        )
