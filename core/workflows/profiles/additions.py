"""A photo added later, checked at once against the member's verified face (the stored selfie).

    add_profile_photo(...)     a new photo at the end of the profile (the API, the pages)
    check_profile_photo(...)   a photo already in the profile that waits unchecked (the import)

Both run the one check (_check: the engine, then _record: the result, the photo's state, the
badge, the 1:N index, the audit): it matches -> shown at once; otherwise it waits in the review
queue and the member's badge drops until a reviewer accepts it. A photo of another member is
flagged with that member named.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

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
from core.workflows import batches, member_photos, profile_rule, search, verification
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
    UnknownProfilePhoto,
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


def _verified_face(session, member_id: str):
    """(selfie photo id, its stored path, the member's gender); NoVerifiedFace when none."""
    member = session.get(Member, member_id)
    if member is None:
        raise verification.UnknownMember(f"There is no member {member_id!r}.", member=member_id)
    selfie_row = member_photos.current_photo(session, member_id, VERIFICATION)
    if selfie_row is None:
        raise NoVerifiedFace(
            f"Member {member_id!r} has no verification selfie yet; verify the member first.",
        )
    return selfie_row.id, selfie_row.stored_path, member.gender


def _read(store: PhotoStoreBackend, path: str, which: str, what: str) -> bytes:
    try:
        return store.read(path)
    except PhotoNotFound:
        raise verification.PhotoMissing(f"{what} is missing from the photo store.", which=which) from None


def _check(engine, run_on_engine: RunOnEngine, selfie_bytes: bytes, data: bytes, position: int, gender):
    """The engine's part: the photo's faces against the selfie by the profile rule, and the pair
    stored for the review queue (the selfie against the photo's member face, so the 1:N search and
    the file checks look at the photo). Nothing stored."""

    def work(engine_now):
        selfie = engine_now.analyze_many([selfie_bytes])[0]
        faces = engine_now.analyze_faces([data])[0]
        checked = rule.check_photo(
            engine_now, selfie, faces, position, gender, profile_rule.rule_for(engine_now)
        )
        return checked, engine_now.compare(selfie, checked.analysis, gender)

    checked, result = run_on_engine(work)
    result.flags = [f for f in result.flags if f.photo != "gallery"]  # the selfie was judged when verified
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
    return checked, result


def _record(
    session,
    engine,
    actor: str,
    member_id: str,
    photo_row: Photo,
    selfie_id: int,
    gender,
    checked,
    result,
    entry: ProfilePhoto | None,
    now,
    via: str,
) -> ProfileAddition:
    """Store the check in the caller's session and commit: the result (the one storing path, with
    its duplicate and file checks), the photo's state (a new entry at the end, or the waiting
    entry), the badge, the member's rows of the 1:N index, the audit."""
    hint = checked.position
    others = other_members(session, result.model_version, checked, member_id, checked_rule(engine, result))
    if others:
        result.flags.append(another_member_flag(hint, others, "verification"))
        result.status = FLAGGED
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
    if entry is None:
        top = max((r.position for r in profile_of(session, member_id)), default=0)
        entry = ProfilePhoto(member_id=member_id, position=top + 1, photo_id=photo_row.id, created_at=now)
        session.add(entry)
    checked.position = entry.position
    checked.reason = checked.reason.replace(f"hoto {hint}", f"hoto {entry.position}")
    _set_state(entry, checked, result.model_version, now)
    shown = row.status == AUTO_APPROVED
    entry.result_id = None if shown else row.id
    session.flush()
    search.refresh_after_commit(session, member_id)  # in the 1:N index if it shows the member
    refresh_badge(session, member_id)
    audit.log(
        session,
        actor,
        ADD_PROFILE_PHOTO,
        "member",
        member_id,
        {
            "photo_id": photo_row.id,
            "position": entry.position,
            "state": entry.state,
            "result_id": row.id,
            "via": via,
        },
    )
    session.commit()
    return ProfileAddition(
        member_id, entry.position, photo_row.id, entry.state, shown, row.id, list(row.flags or []), checked
    )


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
        if session.get(Member, member_id) is None:
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
        selfie_id, selfie_path, gender = _verified_face(session, member_id)
        session.rollback()
    selfie_bytes = _read(store, selfie_path, VERIFICATION, "The member's selfie")
    try:
        path = store.put(photo.data, photo.ext).relative_path
    except OSError:
        raise verification.StoreUnavailable(
            "The photo store cannot save the photo; nothing was stored."
        ) from None

    checked, result = _check(engine, run_on_engine, selfie_bytes, photo.data, len(rows) + 1, gender)

    with session_factory() as session:
        now = utcnow()
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
        return _record(
            session,
            engine,
            actor,
            member_id,
            photo_row,
            selfie_id,
            gender,
            checked,
            result,
            None,
            now,
            source,
        )


def check_profile_photo(
    session_factory: sessionmaker,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    photo_id: int,
    engine,
    *,
    via: str = "import",
    run_on_engine: RunOnEngine | None = None,
) -> ProfileAddition:
    """Check a photo already in the profile that no one checked yet (an imported one) against the
    member's verified face, by the same check as add_profile_photo. Raises NoVerifiedFace,
    UnknownProfilePhoto (not in the profile), PhotoMissing."""
    run_on_engine = run_on_engine or _direct(engine)
    if engine is not None:
        search.register_engine(engine)
    with session_factory() as session:
        selfie_id, selfie_path, gender = _verified_face(session, member_id)
        entry = _profile_entry(session, member_id, photo_id)
        position, photo_path = entry.position, entry.photo.stored_path
        session.rollback()
    selfie_bytes = _read(store, selfie_path, VERIFICATION, "The member's selfie")
    data = _read(store, photo_path, GALLERY, "The profile photo")

    checked, result = _check(engine, run_on_engine, selfie_bytes, data, position, gender)

    with session_factory() as session:
        entry = _profile_entry(session, member_id, photo_id)  # it may have been removed meanwhile
        photo_row = session.get(Photo, photo_id)
        return _record(
            session,
            engine,
            actor,
            member_id,
            photo_row,
            selfie_id,
            gender,
            checked,
            result,
            entry,
            utcnow(),
            via,
        )


def _profile_entry(session: Session, member_id: str, photo_id: int) -> ProfilePhoto:
    entry = session.scalar(
        select(ProfilePhoto).where(ProfilePhoto.member_id == member_id, ProfilePhoto.photo_id == photo_id)
    )
    if entry is None:
        raise UnknownProfilePhoto(f"Photo {photo_id} is not in member {member_id!r}'s profile.")
    return entry
