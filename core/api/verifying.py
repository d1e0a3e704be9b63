"""A verification request: resolve the member and photos, run the engine, store everything in one transaction."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.api.errors import ApiError
from core.api.inputs import PhotoIn, checked_gender, checked_member_id
from core.api.keys import Caller
from core.api.output import result_out
from core.api.settings import API_VERIFY, ENGINE_TIMEOUT_S
from core.api.state import AppState, EngineJob
from core.storage import audit, challenges
from core.storage.photostore import PhotoNotFound
from core.storage.retry import with_retry
from core.storage.schema import (
    GALLERY,
    MEMBER_IN_REVIEW,
    MEMBER_PENDING,
    VERIFICATION,
    Member,
    Photo,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import FLAGGED
from core.workflows import batches, gallery, search

log = logging.getLogger(__name__)


@dataclass
class _Resolved:
    member_exists: bool
    gender: str | None
    photos: dict[str, PhotoIn]
    stored: dict[str, tuple[int, str, str]]  # kind -> (photo id, sha256, stored path) for references
    data: dict[str, bytes]


def _resolve(
    state: AppState, member_id: str, gender: str | None, enrol: bool, photos: dict[str, PhotoIn]
) -> _Resolved:
    with state.factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            if not enrol:
                raise ApiError(
                    404,
                    "unknown_member",
                    f"There is no member {member_id!r}. To enrol a new member, send enrol=true with "
                    "registered_gender and both photos.",
                )
            problems = []
            if gender is None:
                problems.append("registered_gender")
            problems += [f"{w} photo (uploaded)" for w in (GALLERY, VERIFICATION) if photos[w].data is None]
            if problems:
                raise ApiError(422, "enrol_incomplete", f"A new member needs {', '.join(problems)}.")
        effective_gender = gender or (member.gender if member else None)
        stored: dict[str, tuple[int, str, str]] = {}
        data: dict[str, bytes] = {}
        if member is not None:
            _check_gallery_kept(session, member_id, photos[GALLERY])
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
                    raise ApiError(
                        404,
                        "unknown_photo",
                        f"Member {member_id!r} has no stored photo {photo.sha256[:12]}….",
                    )
            else:
                row = session.scalar(
                    select(Photo)
                    .where(Photo.member_id == member_id, Photo.kind == which, Photo.current.is_(True))
                    .order_by(Photo.id.desc())
                )
                if row is None:
                    raise ApiError(
                        422,
                        "photo_required",
                        f"Member {member_id!r} has no stored {which} photo; upload one.",
                    )
            try:
                data[which] = state.store.read(row.stored_path)
            except PhotoNotFound as exc:
                log.warning("%s", exc)  # names the store's location: for the log, not the caller
                raise ApiError(
                    404, "photo_missing", f"The stored {which} photo is missing from the photo store."
                ) from None
            stored[which] = (row.id, row.sha256, row.stored_path)
        session.rollback()
    return _Resolved(member is not None, effective_gender, photos, stored, data)


def _check_gallery_kept(session: Session, member_id: str, photo: PhotoIn) -> None:
    """An existing member is verified against the gallery photo it has: never a new one (issue 12)."""
    if photo.data is None and photo.sha256 is None:
        return  # the stored one
    sha = photo.sha256 or hashlib.sha256(photo.data).hexdigest()
    if (
        photo.sha256 is not None
        and session.scalar(select(Photo.id).where(Photo.member_id == member_id, Photo.sha256 == sha).limit(1))
        is None
    ):
        return  # not a photo of this member at all: the lookup below says so (404)
    try:
        gallery.check_not_replaced(session, member_id, sha)
    except gallery.GalleryLocked as exc:
        session.rollback()
        raise ApiError(409, exc.code, str(exc)) from None


def _attach_photo(
    session: Session, member_id: str, photo: PhotoIn, stored_path: str, now
) -> tuple[Photo, bool]:
    """Make the uploaded photo the member's current one of its kind (importer semantics)."""
    sha = hashlib.sha256(photo.data).hexdigest()
    current = session.scalars(
        select(Photo).where(Photo.member_id == member_id, Photo.kind == photo.which, Photo.current.is_(True))
    ).all()
    if any(p.sha256 == sha for p in current):
        return next(p for p in current if p.sha256 == sha), False
    for p in current:
        p.current = False
    again = session.scalar(
        select(Photo).where(Photo.member_id == member_id, Photo.kind == photo.which, Photo.sha256 == sha)
    )
    if again is not None:
        again.current = True
        return again, True
    row = Photo(
        member_id=member_id,
        kind=photo.which,
        sha256=sha,
        stored_path=stored_path,
        size_bytes=len(photo.data),
        source="api",
        current=True,
        created_at=now,
        width=photo.width,
        height=photo.height,
    )
    session.add(row)
    return row, True


def _store_verification(
    state: AppState,
    caller: Caller,
    member_id: str,
    resolved: _Resolved,
    result,
    paths: dict[str, str],
    challenge_row_id: int | None = None,
) -> int:
    """Member, photos, the day's API batch item, result, duplicates and audit: one transaction. Returns the result id."""
    with state.factory() as session:
        now = utcnow()
        member = session.get(Member, member_id)
        changes: list[str] = []
        if member is None:
            member = Member(
                id=member_id, gender=resolved.gender, created_at=now, updated_at=now, source="api"
            )
            session.add(member)
            changes.append("new member")
        elif resolved.gender and member.gender != resolved.gender:
            changes.append(f"gender {member.gender} → {resolved.gender}")
            member.gender = resolved.gender
        photo_ids: dict[str, int] = {}
        for which in (GALLERY, VERIFICATION):
            if which in resolved.stored:
                photo_ids[which] = resolved.stored[which][0]
                continue
            row, changed = _attach_photo(session, member_id, resolved.photos[which], paths[which], now)
            if changed:
                changes.append(f"new {which} photo")
            session.flush()
            photo_ids[which] = row.id
        if changes:
            member.updated_at = now
            member.source = "api"
            member.status = MEMBER_PENDING  # new photos: the earlier verification no longer speaks for them
            audit.log(
                session,
                caller.actor,
                audit.IMPORT_MEMBER,
                "member",
                member_id,
                {"source": "api", "changes": changes},
            )

        item = batches.add_single_item(
            session,
            caller.actor,
            batches.API_SINGLE,
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
            latency_ms=result.timings_ms.get("total"),
        )
        if not search.was_checked(row):
            # core.workflows.batches.store_result does not call the duplicate hook (yet): call it here.
            search.flag_possible_duplicates(session, row, result)
            if row.status == FLAGGED:
                session.execute(update(Member).where(Member.id == member_id).values(status=MEMBER_IN_REVIEW))
        session.flush()
        if challenge_row_id is not None:
            challenges.attach_result(session, challenge_row_id, row.id)
        audit.log(
            session,
            caller.actor,
            API_VERIFY,
            "result",
            row.id,
            {"member_id": member_id, "status": row.status, "batch_id": item.batch_id},
        )
        session.commit()
        return row.id


_CHALLENGE_STATUS = {
    challenges.UnknownChallenge: 404,
    challenges.ChallengeForAnotherMember: 422,
    challenges.ChallengeUsed: 409,
    challenges.ChallengeExpired: 410,
}


def _use_challenge(state: AppState, caller: Caller, member_id: str, token: str):
    """Consume the caller's pose challenge (once), or refuse the request with a clear error."""
    with state.factory() as session:
        try:
            return challenges.consume(session, token, member_id, caller.actor)
        except challenges.ChallengeError as exc:
            raise ApiError(_CHALLENGE_STATUS.get(type(exc), 422), exc.code, str(exc)) from None


def verify_request(
    state: AppState,
    caller: Caller,
    member_id: str,
    gender: str | None,
    enrol: bool,
    photos: dict,
    challenge_id: str | None = None,
) -> dict:
    worker = state.require_engine()
    member_id = checked_member_id(member_id, state.factory)  # look-alikes of members refused
    gender = checked_gender(gender)
    resolved = _resolve(state, member_id, gender, enrol, photos)
    # After the request is known to be usable, so a bad photo does not cost the member its challenge.
    challenge = _use_challenge(state, caller, member_id, challenge_id) if challenge_id else None
    # Files first (idempotent, content-addressed); the database rows come in one transaction after.
    paths = {}
    for which, photo in photos.items():
        if photo.data is not None:
            try:
                paths[which] = state.store.put(photo.data, photo.ext).relative_path
            except OSError as exc:
                log.warning("photo store write failed: %s", exc)
                raise ApiError(
                    503,
                    "photo_store_unavailable",
                    "The photo store cannot save the photo; nothing was stored. Try again.",
                ) from None
    future = worker.submit(
        EngineJob(
            [resolved.data[GALLERY], resolved.data[VERIFICATION]],
            resolved.gender,
            challenge=challenge.kind if challenge else None,
        )
    )
    result = future.result(timeout=ENGINE_TIMEOUT_S)
    with state.store_slots:
        for attempt in (1, 2, 3):
            try:
                # Deadlocks and lock waits: retried with backoff to a deadline, then 503 database_busy.
                result_id = with_retry(
                    lambda: _store_verification(
                        state, caller, member_id, resolved, result, paths, challenge.id if challenge else None
                    )
                )
                break
            except IntegrityError as exc:
                # Another request changed the same member at the same moment: try again once more.
                if attempt == 3:
                    raise ApiError(
                        409, "conflict", "The member was changed by another request at the same time; retry."
                    ) from exc
        with state.factory() as session:
            return result_out(session, session.get(ResultRow, result_id))
