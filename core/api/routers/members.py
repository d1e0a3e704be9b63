"""A member's verification history, and adding a gallery photo to a member (its own, checked call)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from core.api.deps import CallerKey, State, secured
from core.api.errors import PHOTO_STORE_DOWN, ApiError, error_responses, hidden
from core.api.inputs import checked_member_id, checked_photo, decode_base64
from core.api.output import jsonable, result_out
from core.api.schemas import GalleryPhotoOut, GalleryPhotoRequest, MemberHistoryOut
from core.api.settings import ENGINE_TIMEOUT_S
from core.api.state import EngineJob
from core.storage.photostore import PhotoNotFound
from core.storage.schema import GALLERY, Batch, Member, Photo
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import gallery

router = APIRouter(tags=["members"])


@router.get(
    "/v1/members/{member_id:path}/verifications",
    response_model=MemberHistoryOut,
    dependencies=secured,
    responses=error_responses(401, 403, 404, 422, 503),
)
def member_verifications(
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Path(min_length=1, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
):
    """A member's verifications, newest first."""
    member_id = checked_member_id(member_id)
    with state.factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.")
        total = session.scalar(select(func.count(ResultRow.id)).where(ResultRow.member_id == member_id)) or 0
        rows = session.execute(
            select(ResultRow, Batch.source)
            .outerjoin(Batch, Batch.id == ResultRow.batch_id)
            .where(ResultRow.member_id == member_id)
            .order_by(ResultRow.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        items = [
            {
                "id": r.id,
                "created_at": r.created_at,
                "status": r.status,
                "same_person": r.same_person,
                "similarity": r.similarity,
                "flags": [f.get("code", "") for f in (r.flags or [])],
                "possible_duplicate": bool(r.possible_duplicate),
                "decided_at": r.decided_at,
                "decided_by": r.decided_by,
                "batch_id": r.batch_id,
                "source": source,
                "model_version": r.model_version,
            }
            for r, source in rows
        ]
        out = {
            "member_id": member.id,
            "gender": member.gender,
            "status": member.status,
            "total": total,
            "limit": limit,
            "offset": offset,
            "items": items,
        }
        return JSONResponse(jsonable(out))


@router.post(
    "/v1/members/{member_id:path}/gallery-photos",
    response_model=GalleryPhotoOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
def add_gallery_photo(
    body: GalleryPhotoRequest,
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Path(min_length=1, max_length=64)],
):
    """Add a gallery photo to an existing member. It is compared with the member's gallery photo:
    the same person with nothing flagged, it becomes the member's gallery photo at once; otherwise
    it waits in the review queue (gallery_photo_differs) and counts only once a reviewer approves.
    The member's status does not change either way."""
    worker = state.require_engine()
    member_id = checked_member_id(member_id)
    photo = checked_photo(GALLERY, decode_base64("photo", body.photo_base64))
    with state.factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.")
        current = gallery.current_gallery(session, member_id)
        if current is None:
            raise ApiError(
                422,
                "no_gallery",
                f"Member {member_id!r} has no gallery photo yet; enrol it with a verification.",
            )
        gender, current_id, current_path = member.gender, current.id, current.stored_path
        session.rollback()
    try:
        current_bytes = state.store.read(current_path)
        stored = state.store.put(photo.data, photo.ext)
    except PhotoNotFound as exc:
        raise hidden(
            404, "photo_missing", "The member's gallery photo is missing from the photo store.", exc
        ) from None
    except OSError as exc:
        raise hidden(503, "photo_store_unavailable", PHOTO_STORE_DOWN, exc, {"Retry-After": "2"}) from None
    result = worker.submit(EngineJob([current_bytes, photo.data], gender)).result(timeout=ENGINE_TIMEOUT_S)
    new = gallery.NewPhoto(
        sha256=stored.sha256,
        stored_path=stored.relative_path,
        size_bytes=len(photo.data),
        width=photo.width,
        height=photo.height,
    )
    with state.store_slots, state.factory() as session:
        try:
            row = gallery.store_addition(
                session, caller.actor, member_id, new, result, session.get(Photo, current_id)
            )
        except gallery.AlreadyInGallery as exc:
            raise ApiError(409, exc.code, str(exc)) from None
        out = {
            "accepted": row.status == "auto_approved",
            "photo_sha256": new.sha256,
            "verification": result_out(session, row),
        }
    return JSONResponse(jsonable(out), status_code=201)
