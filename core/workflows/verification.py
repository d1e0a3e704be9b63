"""Verifying a member: the one use case behind the Verify page and the API's verification routes.

    verify_member(session_factory, store, actor, member_id, photos, run_engine, ...) -> Verified
        resolve the photos (uploaded, a stored one by its sha256, or the member's current ones when
        the caller asks to re-check them), keep the gallery locked, use up the pose challenge,
        run the engine, then store member, photos, the day's batch item, the result (duplicate and
        fraud checks included) and the audit entry in one transaction; the photos become the
        member's current ones through core.workflows.member_photos.set_current_photos
    change_gender(session_factory, actor, member_id, gender, reason) -> Member

Typed errors (VerifyError and its kinds, GalleryLocked, the challenge errors) say what was wrong;
nothing is stored when one is raised. The adapters (core.api, core.dashboard) turn them into a
status code or a sentence in the reader's language.

A verification never changes the member's registered gender: a request that names another one
is refused (GenderDiffers); the gender changes only through change_gender, audited.
A selfie whose file is already on file (this member's or anyone's, whichever row it maps to) is
a replay: flagged reused_photo, never approved automatically.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core import config
from core.errors import FaceVerifyError
from core.i18n.notes import Note
from core.storage import audit, challenges
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.retry import with_retry
from core.storage.schema import GALLERY, MEMBER_PENDING, VERIFICATION, Member, Photo, utcnow
from core.verification.genders import normalise_gender
from core.verification.result import AUTO_APPROVED, FLAGGED, Flag, VerificationResult
from core.workflows import batches, gallery, member_ids, profile_rows
from core.workflows.gallery import GalleryLocked
from core.workflows.member_photos import NewPhoto, current_photo, set_current_photos

log = logging.getLogger(__name__)

VERIFY_MEMBER, CHANGE_GENDER = "verify_member", "change_gender"
NO_CHALLENGE = "no_challenge"  # flag: automatic approval needs a passed pose challenge, none was used
# Whether a passed pose challenge is needed before an automatic approval, per source of the request.
CHALLENGE_REQUIRED_SETTINGS = {
    batches.API_SINGLE: "CHALLENGE_REQUIRED_API",
    batches.PAGE_SINGLE: "CHALLENGE_REQUIRED_PAGE",
}

RunEngine = Callable[[bytes, bytes, str | None, str | None], VerificationResult]
# Called in the storing transaction, after the result is added: (session, member id, photo ids by
# kind, the result row). The profile use case stores each profile photo's state with it.
OnStore = Callable[[Session, str, dict[str, int], object], None]


class VerifyError(FaceVerifyError):
    """The request cannot be verified as given; nothing was stored. `params` for the message."""

    code = "verify_error"

    def __init__(self, message: str, **params):
        self.params = params
        super().__init__(message)


class UnknownMember(VerifyError):
    code = "unknown_member"


class BadMemberId(VerifyError):
    """A new member's id is malformed or looks like an existing member's (core.workflows.member_ids)."""

    code = "bad_member_id"


class EnrolIncomplete(VerifyError):
    code = "enrol_incomplete"  # params: missing=[registered_gender, gallery, verification]


class SelfieRequired(VerifyError):
    """No verification photo was sent: a verification never silently re-checks the stored one."""

    code = "verification_photo_required"


class PhotoRequired(VerifyError):
    code = "photo_required"  # params: which


class UnknownPhoto(VerifyError):
    code = "unknown_photo"  # params: which, sha256


class PhotoMissing(VerifyError):
    code = "photo_missing"  # params: which (the store lost the file)


class GenderDiffers(VerifyError):
    code = "gender_differs"  # params: registered, given


class StoreUnavailable(VerifyError):
    code = "photo_store_unavailable"


class Conflict(VerifyError):
    code = "conflict"


@dataclass
class PhotoInput:
    """One photo of a request: uploaded bytes, or a stored photo of the member by sha256, or
    neither (the member's current photo of that kind, where the caller allows it)."""

    which: str
    data: bytes | None = None
    sha256: str | None = None
    ext: str = ".jpg"
    width: int | None = None
    height: int | None = None


@dataclass
class Verified:
    result: VerificationResult
    result_id: int
    batch_id: int
    member_id: str
    gallery_bytes: bytes
    verification_bytes: bytes
    seconds: float
    warnings: list[Note] = field(default_factory=list)  # what the photos' change warns of


# ----------------------------------------------------------------------------------------------
# The request's photos


@dataclass
class _Resolved:
    is_new: bool
    gender: str | None
    data: dict[str, bytes]
    stored: dict[str, int]  # kind -> photo id, for photos taken from the store
    replayed: list[tuple[int, str]]  # (photo id, member) rows holding the selfie's file already


def _resolve(
    session: Session,
    store: PhotoStoreBackend,
    member_id: str,
    gender: str | None,
    photos: dict[str, PhotoInput],
    enrol: bool,
    recheck_stored: bool,
) -> _Resolved:
    member = session.get(Member, member_id)
    if member is None:
        if not enrol:
            raise UnknownMember(f"There is no member {member_id!r}.", member=member_id)
        try:
            member_ids.check_new_member_id(session, member_id)
        except ValueError as exc:
            raise BadMemberId(f"{exc}.", member=member_id) from None
        missing = [] if gender else ["registered_gender"]
        missing += [w for w in (GALLERY, VERIFICATION) if photos[w].data is None]
        if missing:
            raise EnrolIncomplete(
                f"A new member needs {', '.join(missing)}.", missing=missing, member=member_id
            )
    elif gender and gender != member.gender:
        raise GenderDiffers(
            f"Member {member_id!r} is registered as {member.gender}, not {gender}; a verification does "
            "not change the registered gender (change it on its own first).",
            registered=member.gender,
            given=gender,
            member=member_id,
        )
    verification = photos[VERIFICATION]

    if member is not None:
        given = photos[GALLERY]
        sha = given.sha256 or (hashlib.sha256(given.data).hexdigest() if given.data is not None else None)
        known = given.sha256 is None or session.scalar(
            select(Photo.id).where(Photo.member_id == member_id, Photo.sha256 == sha).limit(1)
        )
        if known:  # an unknown reference is answered below (UnknownPhoto)
            gallery.check_not_replaced(session, member_id, sha)

    data: dict[str, bytes] = {}
    stored: dict[str, int] = {}
    for which in (GALLERY, VERIFICATION):
        photo = photos[which]
        if photo.data is not None:
            data[which] = photo.data
            continue
        if photo.sha256 is not None:
            row = session.scalar(
                select(Photo)
                .where(Photo.member_id == member_id, Photo.sha256 == photo.sha256)
                .order_by(Photo.current.desc(), Photo.id.desc())
            )
            if row is None:
                raise UnknownPhoto(
                    f"Member {member_id!r} has no stored photo {photo.sha256[:12]}….",
                    which=which,
                    sha256=photo.sha256,
                )
        elif which == VERIFICATION and not recheck_stored:
            raise SelfieRequired("No verification photo was sent.", which=VERIFICATION)
        else:
            row = current_photo(session, member_id, which) if member is not None else None
            if row is None:
                raise PhotoRequired(f"Member {member_id!r} has no stored {which} photo.", which=which)
        try:
            data[which] = store.read(row.stored_path)
        except PhotoNotFound as exc:
            log.warning("%s", exc)  # names the store's location: for the log, not the caller
            raise PhotoMissing(
                f"The stored {which} photo is missing from the photo store.", which=which
            ) from None
        stored[which] = row.id

    replayed: list[tuple[int, str]] = []
    if verification.data is not None or verification.sha256 is not None:
        # A selfie sent (or named) as new whose file is on file already: a replay, whoever has it.
        sha = verification.sha256 or hashlib.sha256(verification.data).hexdigest()
        replayed = [
            (pid, owner)
            for pid, owner in session.execute(
                select(Photo.id, Photo.member_id).where(Photo.sha256 == sha).order_by(Photo.id).limit(20)
            )
        ]
    return _Resolved(member is None, gender or (member.gender if member else None), data, stored, replayed)


# ----------------------------------------------------------------------------------------------
# Challenges


def challenge_required(source: str) -> bool:
    """Must a pose challenge be passed before a result of this source is approved automatically?"""
    name = CHALLENGE_REQUIRED_SETTINGS.get(source)
    return bool(config.get(name)) if name else False  # imports of historical photos: never


def _note_challenge(result: VerificationResult, challenge, required: bool) -> None:
    """Say on the result whether a challenge was used; without one, hold back an approval if required."""
    checks = dict(result.checks or {})
    checks["challenge_used"] = challenge is not None
    checks["challenge_required"] = required
    result.checks = checks
    if challenge is None and required and result.status == AUTO_APPROVED:
        result.flags.append(
            Flag(
                NO_CHALLENGE,
                "No pose challenge was used; an automatic approval needs one (ask POST /v1/challenges "
                "and send its challenge_id with the selfie).",
                "verification",
            )
        )
        result.status = FLAGGED


def _replay_matches(replayed: list[tuple[int, str]], member_id: str) -> list:
    """The rows that hold the selfie's file already, as reuse matches (photo_checks flags them)."""
    from core.verification import fraud

    return [
        fraud.ReuseMatch(
            label=(f"photo {pid}" if owner == member_id else f"photo {pid} of member {owner}"),
            photo_id=pid,
            kind=None,
            how="same_file",
            hash_bits=None,
            embedding_distance=None,
        )
        for pid, owner in replayed
    ]


# ----------------------------------------------------------------------------------------------
# The use case


def verify_member(
    session_factory: sessionmaker,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    photos: dict[str, PhotoInput],
    run_engine: RunEngine,
    *,
    gender: str | None = None,
    source: str = batches.API_SINGLE,
    enrol: bool = True,
    recheck_stored: bool = False,
    challenge_token: str | None = None,
    storing: AbstractContextManager | None = None,
    on_store: OnStore | None = None,
) -> Verified:
    """Verify the member's pair and store everything; see the module's docstring.

    photos: {GALLERY: PhotoInput, VERIFICATION: PhotoInput}. enrol: an unknown member may be
    created (needs the gender and both photos uploaded). recheck_stored: the verification photo
    may be the member's current stored one (an explicit re-check); otherwise it must be sent.
    run_engine(gallery bytes, verification bytes, gender, challenge kind) -> VerificationResult.
    storing: held around the database transaction (the API's bound on concurrent writers).
    on_store: more rows to write in the same transaction (core.workflows.profiles).
    """
    started = time.perf_counter()
    if gender:
        gender = normalise_gender(gender)
    with session_factory() as session:
        try:
            resolved = _resolve(session, store, member_id, gender, photos, enrol, recheck_stored)
        finally:
            session.rollback()
    # Only once the request is known to be usable, so a bad photo does not cost the member its challenge.
    challenge = None
    if challenge_token:
        with session_factory() as session:
            challenge = challenges.consume(session, challenge_token, member_id, actor)
    paths: dict[str, str] = {}  # files first (content-addressed, idempotent); rows in one transaction after
    for which, photo in photos.items():
        if photo.data is not None:
            try:
                paths[which] = store.put(photo.data, photo.ext).relative_path
            except OSError as exc:
                log.warning("photo store write failed: %s", exc)
                raise StoreUnavailable("The photo store cannot save the photo; nothing was stored.") from None
    result = run_engine(
        resolved.data[GALLERY],
        resolved.data[VERIFICATION],
        resolved.gender,
        challenge.kind if challenge else None,
    )
    _note_challenge(result, challenge, challenge_required(source))

    with storing or nullcontext():
        stored = _store_with_retry(
            session_factory, actor, member_id, photos, resolved, paths, result, source, challenge, on_store
        )
    batch_id, result_id, warnings = stored
    return Verified(
        result,
        result_id,
        batch_id,
        member_id,
        resolved.data[GALLERY],
        resolved.data[VERIFICATION],
        time.perf_counter() - started,
        warnings,
    )


def _store_with_retry(
    session_factory, actor, member_id, photos, resolved, paths, result, source, challenge, on_store=None
):
    for attempt in (1, 2, 3):
        try:
            # Deadlocks and lock waits: retried with backoff to a deadline (core.storage.retry).
            stored = with_retry(
                lambda: _store(
                    session_factory,
                    actor,
                    member_id,
                    photos,
                    resolved,
                    paths,
                    result,
                    source,
                    challenge,
                    on_store,
                )
            )
            break
        except IntegrityError as exc:  # another request changed the same member at the same moment
            if attempt == 3:
                raise Conflict("The member was changed by another request at the same time; retry.") from exc
    return stored


def _store(
    session_factory: sessionmaker,
    actor: str,
    member_id: str,
    photos: dict[str, PhotoInput],
    resolved: _Resolved,
    paths: dict[str, str],
    result: VerificationResult,
    source: str,
    challenge,
    on_store: OnStore | None = None,
) -> tuple[int, int, list[str]]:
    """Member, photos, the day's batch item, result and audit: one transaction."""
    with session_factory() as session:
        now = utcnow()
        member = session.get(Member, member_id)
        is_new = member is None
        if is_new:
            member = Member(
                id=member_id, gender=resolved.gender, created_at=now, updated_at=now, source=source
            )
            session.add(member)
            session.flush()
        uploaded = [
            NewPhoto(
                which,
                hashlib.sha256(photos[which].data).hexdigest(),
                paths[which],
                len(photos[which].data),
                source,
                photos[which].width,
                photos[which].height,
            )
            for which in (GALLERY, VERIFICATION)
            if which in paths
        ]
        done = set_current_photos(session, member_id, uploaded, now, is_new=is_new)
        photo_ids = {
            which: resolved.stored.get(which) or done.photos[which].id for which in (GALLERY, VERIFICATION)
        }
        changes = (["new member"] if is_new else []) + [str(c) for c in done.changes]
        if changes:
            member.updated_at = now
            member.source = source
            member.status = MEMBER_PENDING  # new photos: the earlier verification no longer speaks for them
            audit.log(
                session,
                actor,
                audit.IMPORT_MEMBER,
                "member",
                member_id,
                {"source": source, "changes": changes},
            )
        item = batches.add_single_item(
            session,
            actor,
            source,
            result.model_version,
            member_id,
            photo_ids[GALLERY],
            photo_ids[VERIFICATION],
            resolved.gender,
            now=now,
        )
        row = batches.store_result(
            session,
            result,
            batch_id=item.batch_id,
            batch_item_id=item.id,
            member_id=member_id,
            gallery_photo_id=photo_ids[GALLERY],
            verification_photo_id=photo_ids[VERIFICATION],
            replayed=_replay_matches(resolved.replayed, member_id),
        )
        session.flush()
        if on_store is not None:
            on_store(session, member_id, photo_ids, row)
        else:  # the selfie against the main photo alone: its state follows the result
            profile_rows.record_pair_result(session, member_id, photo_ids[GALLERY], row)
        if challenge is not None:
            challenges.attach_result(session, challenge.id, row.id)
        audit.log(
            session,
            actor,
            VERIFY_MEMBER,
            "result",
            row.id,
            {"member_id": member_id, "status": row.status, "batch_id": item.batch_id, "source": source},
        )
        session.commit()
        return item.batch_id, row.id, done.warnings


# ----------------------------------------------------------------------------------------------
# The registered gender, changed only on its own


def change_gender(
    session_factory: sessionmaker, actor: str, member_id: str, gender: str, reason: str | None = None
) -> Member:
    """Change a member's registered gender (audited, with the old and new value). The member goes
    back to pending: the earlier verification checked the other gender. Raises UnknownMember."""
    gender = normalise_gender(gender)
    with session_factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise UnknownMember(f"There is no member {member_id!r}.", member=member_id)
        old = member.gender
        if old != gender:
            now = utcnow()
            member.gender = gender
            member.updated_at = now
            member.status = MEMBER_PENDING
            audit.log(
                session,
                actor,
                CHANGE_GENDER,
                "member",
                member_id,
                {"from": old, "to": gender, "reason": reason},
            )
            session.commit()
            session.refresh(member)
        session.expunge(member)
        return member


__all__ = [
    "GalleryLocked",
    "verify_member",
    "change_gender",
]
