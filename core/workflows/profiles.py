"""A member's profile: several ordered photos, each checked against the member's verified face.

    verify_profile_member(...) -> ProfileVerified
        a selfie against every photo of the profile (core.verification.profile): one similarity
        per photo, one decision for the member, each photo that is not the member flagged on its
        own. Stored through core.workflows.verification.verify_member (the same batch item,
        result, duplicate and fraud checks, audit); this module adds each photo's state.
        A new member is enrolled with all its photos at once.
    add_profile_photo(...) -> ProfileAddition
        a photo added later, compared at once with the member's verified face (the stored
        selfie): it matches -> shown at once; otherwise it waits in the review queue and the
        member's badge drops until a reviewer accepts it. Its face is searched in the 1:N index
        and its file among other members' photos (core.workflows.batches.store_result): a photo of
        another member is flagged with that member named.
    remove_profile_photo, reorder_profile, decide_profile_photo
    on_review(session, row, approve, reviewer)   a reviewer decided a photo added later
    badge(session, member_id)                     the member is verified and every public photo is them

A member is verified (the badge) when its last verification was approved and every photo of the
public profile matches or was accepted by a reviewer; photos a reviewer rejected leave the public
list and no longer count.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.storage import audit
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import (
    GALLERY,
    MEMBER_ERASED,
    MEMBER_IN_REVIEW,
    MEMBER_VERIFIED,
    PROFILE_PHOTO_APPROVED,
    PROFILE_PHOTO_REJECTED,
    VERIFICATION,
    Batch,
    Member,
    Photo,
    ProfilePhoto,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification import profile as rule
from core.verification.result import AUTO_APPROVED, AUTO_REJECTED, FLAGGED, Flag, VerificationResult
from core.workflows import batches, profile_rows, search, verification
from core.workflows.profile_rows import badge_ok, max_photos, profile_of
from core.workflows.verification import PhotoInput, VerifyError

PROFILE_ADDITION_SOURCE = "profile-addition"  # Batch.source of a photo added later
PROFILE_PHOTO = "profile_photo"  # flag: one profile photo is not (clearly) the member
# Flag: a profile photo's face is another enrolled member's, more like them than like this member.
PROFILE_PHOTO_OF_ANOTHER = "profile_photo_of_another_member"
OTHER_MEMBERS_SEARCHED = 3
ADD_PROFILE_PHOTO, REMOVE_PROFILE_PHOTO = "add_profile_photo", "remove_profile_photo"
REORDER_PROFILE, DECIDE_PROFILE_PHOTO = "reorder_profile", "decide_profile_photo"

# Runs a function with the engine (the API: on its engine worker; elsewhere: directly).
RunOnEngine = Callable[[Callable[[Any], Any]], Any]


class ProfileError(VerifyError):
    code = "profile_error"


class ProfileFull(ProfileError):
    code = "profile_full"  # params: max


class SamePhotoTwice(ProfileError):
    code = "same_photo_twice"


class AlreadyInProfile(ProfileError):
    code = "already_in_profile"


class UnknownProfilePhoto(ProfileError):
    code = "unknown_profile_photo"


class NoVerifiedFace(ProfileError):
    """A photo added later is checked against the member's selfie; the member has none yet."""

    code = "no_verified_face"


class BadOrder(ProfileError):
    code = "bad_order"


class LastPhoto(ProfileError):
    code = "last_photo"


@dataclass
class ProfileVerified:
    profile: rule.ProfileVerification
    verified: verification.Verified
    member_id: str

    @property
    def result_id(self) -> int:
        return self.verified.result_id


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


def checked_rule(engine, result: VerificationResult) -> float:
    """The approval point of the profile rule for the engine that computed the result."""
    if engine is not None and getattr(engine, "model_version", None) == result.model_version:
        return rule.ProfileRule.of(engine).approve_at
    return max(result.uncertain_band[1], rule.PROFILE_APPROVE_AT or 0.0)


def _direct(engine) -> RunOnEngine:
    return lambda work: work(engine)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    live = set(
        session.scalars(
            select(Member.id).where(
                Member.id.in_([c.member_id for c in found]), Member.status != MEMBER_ERASED
            )
        )
    )
    return [(c.member_id, round(float(c.similarity), 4)) for c in found if c.member_id in live]


def another_member_flag(position: int, others: list[tuple[str, float]], photo: str) -> Flag:
    names = ", ".join(f"member {m} (similarity {sim:.3f})" for m, sim in others)
    return Flag(
        PROFILE_PHOTO_OF_ANOTHER,
        f"Photo {position} shows another member's face: {names}, more like them than this member.",
        photo,
        params={"position": position, "candidates": [[m, sim] for m, sim in others]},
    )


# ----------------------------------------------------------------------------------------------
# A selfie against the whole profile


def verify_profile_member(
    session_factory: sessionmaker,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    selfie: PhotoInput,
    profile_photos: list[PhotoInput],
    engine,
    *,
    gender: str | None = None,
    source: str = batches.API_SINGLE,
    enrol: bool = True,
    challenge_token: str | None = None,
    storing=None,
    run_on_engine: RunOnEngine | None = None,
) -> ProfileVerified:
    """Verify a selfie against the member's profile and store it (see the module's docstring).

    profile_photos: a new member's photos, in order (the first is the main photo); for an
    existing member, leave it empty (its stored profile is used) or send photos already in it.
    Raises the use case's VerifyError kinds (nothing stored), ProfileFull, SamePhotoTwice.
    """
    run_on_engine = run_on_engine or _direct(engine)
    if engine is not None:
        search.register_engine(engine)
    limit = max_photos()
    with session_factory() as session:
        exists = session.get(Member, member_id) is not None
        stored_rows = profile_of(session, member_id, public=True) if exists else []
        if exists and not stored_rows:
            main_photo = verification._current_photo(session, member_id, GALLERY)
            if main_photo is not None:
                stored_rows = [profile_rows.ensure_main_photo(session, member_id, main_photo)]
                session.commit()
        stored = [(r.photo.sha256, r.photo.stored_path) for r in stored_rows]
        session.rollback()
    if exists:
        known = {sha for sha, _ in stored}
        for photo in profile_photos:
            sha = photo.sha256 or (hashlib.sha256(photo.data).hexdigest() if photo.data is not None else None)
            if sha is not None and sha not in known:
                raise verification.GalleryLocked(
                    f"Member {member_id!r} already exists, so its profile is not replaced by a verification: "
                    f"add a photo on its own (API: POST /v1/members/{member_id}/profile-photos); it is "
                    "checked against the member's verified face."
                )
        if not stored:
            raise verification.PhotoRequired(f"Member {member_id!r} has no profile photo.", which=GALLERY)
        main = PhotoInput(GALLERY, sha256=stored[0][0])
        others: list[bytes] = []
        for _sha, path in stored[1:]:
            try:
                others.append(store.read(path))
            except PhotoNotFound:
                raise verification.PhotoMissing(
                    "A stored profile photo is missing from the photo store.", which=GALLERY
                ) from None
        new_photos: list[PhotoInput] = []
    else:
        if len(profile_photos) > limit:
            raise ProfileFull(
                f"A profile holds at most {limit} photos; {len(profile_photos)} were given.", max=limit
            )
        shas = [hashlib.sha256(p.data).hexdigest() for p in profile_photos if p.data is not None]
        if len(set(shas)) != len(shas):
            raise SamePhotoTwice("The same photo was given twice for the profile.")
        main = profile_photos[0] if profile_photos else PhotoInput(GALLERY)
        main.which = GALLERY
        new_photos = list(profile_photos[1:])
        others = [p.data for p in new_photos if p.data is not None]
        for photo in new_photos:
            if photo.data is None:
                raise verification.PhotoRequired(
                    "A new member's profile photos must be uploaded.", which=GALLERY
                )

    holder: dict[str, rule.ProfileVerification] = {}

    def run_engine(gallery_bytes, selfie_bytes, registered_gender, challenge):
        def work(engine_now):
            checked = rule.verify_profile(
                engine_now,
                selfie_bytes,
                [gallery_bytes, *others],
                registered_gender,
                challenge=challenge,
                max_photos=limit,
            )
            holder["profile"] = checked
            return member_result(engine_now, checked, registered_gender, challenge)

        return run_on_engine(work)

    # The other photos' files first (content-addressed, idempotent), their rows with the result.
    paths: list[tuple[PhotoInput, str]] = []
    for photo in new_photos:
        try:
            paths.append((photo, store.put(photo.data, photo.ext).relative_path))
        except OSError:
            raise verification.StoreUnavailable(
                "The photo store cannot save the photo; nothing was stored."
            ) from None

    def on_store(session: Session, member, photo_ids: dict[str, int], row) -> None:
        now = utcnow()
        if paths:  # a new member: the other photos join the profile after the main one
            for position, (photo, path) in enumerate(paths, start=2):
                sha = hashlib.sha256(photo.data).hexdigest()
                photo_row = Photo(
                    member_id=member_id,
                    kind=GALLERY,
                    sha256=sha,
                    stored_path=path,
                    size_bytes=len(photo.data),
                    source=source,
                    current=False,  # the member's current gallery photo is the main one
                    created_at=now,
                    width=photo.width,
                    height=photo.height,
                )
                session.add(photo_row)
                session.flush()
                session.add(
                    ProfilePhoto(
                        member_id=member_id, position=position, photo_id=photo_row.id, created_at=now
                    )
                )
            session.flush()
        checked = holder["profile"]
        _store_states(session, member_id, checked, now)
        extra = []
        for photo in checked.photos:
            others = other_members(session, checked.model_version, photo, member_id, checked.rule.approve_at)
            if others:
                flag = another_member_flag(photo.position, others, "gallery")
                extra.append(
                    {"code": flag.code, "reason": flag.reason, "photo": flag.photo, "params": flag.params}
                )
        if extra:
            row.flags = list(row.flags or []) + extra
            if row.status == AUTO_APPROVED:
                row.status = FLAGGED
                session.execute(
                    update(Member)
                    .where(Member.id == member_id, Member.status == MEMBER_VERIFIED)
                    .values(status=MEMBER_IN_REVIEW)
                )
        session.flush()

    done = verification.verify_member(
        session_factory,
        store,
        actor,
        member_id,
        {GALLERY: main, VERIFICATION: selfie},
        run_engine,
        gender=gender,
        source=source,
        enrol=enrol,
        challenge_token=challenge_token,
        storing=storing,
        on_store=on_store,
    )
    return ProfileVerified(holder["profile"], done, member_id)


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
        checked = rule.check_photo(engine_now, selfie, faces, position_hint, gender)
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


# ----------------------------------------------------------------------------------------------
# Reading


def profile_view(session: Session, member_id: str, public: bool = False) -> list[dict]:
    """The profile as the API and the pages show it, in order."""
    return [
        {
            "position": r.position,
            "photo_id": r.photo_id,
            "sha256": r.photo.sha256,
            "state": r.state,
            "reason": r.reason,
            "similarity": r.similarity,
            "box": r.face_box,
            "model_version": r.model_version,
            "checked_at": r.checked_at.isoformat() if r.checked_at else None,
            "review_decision": r.review_decision,
            "waiting": not profile_rows.settled(r) and r.review_decision is None,
            "result_id": r.result_id,
        }
        for r in profile_of(session, member_id, public=public)
    ]


def profile_answer(done: ProfileVerified) -> dict:
    """The per-photo answer of a verification (the API and the page give the same)."""
    return {
        "member_id": done.member_id,
        "result_id": done.result_id,
        "status": done.verified.result.status,
        "profile_status": done.profile.status,
        "reasons": done.profile.reasons,
        "flagged_photos": done.profile.flagged_photos,
        "photos": [
            {
                "position": p.position,
                "state": p.state,
                "reason": p.reason,
                "similarity": p.similarity,
                "box": list(p.box) if p.box else None,
                "faces": [list(b) for b in p.faces],
            }
            for p in done.profile.photos
        ],
        "model_version": done.profile.model_version,
    }


__all__ = [
    "PROFILE_ADDITION_SOURCE",
    "PROFILE_PHOTO",
    "ProfileAddition",
    "ProfileVerified",
    "add_profile_photo",
    "badge",
    "decide_profile_photo",
    "member_result",
    "on_review",
    "profile_answer",
    "profile_view",
    "remove_profile_photo",
    "reorder_profile",
    "verify_profile_member",
]
