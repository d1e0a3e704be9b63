"""A member's photos (every download audited), the export of a member's data, and its erasure."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from starlette.background import BackgroundTask

from core.api.deps import CallerKey, State, secured
from core.api.errors import ApiError, error_responses, hidden
from core.api.inputs import checked_member_id
from core.api.keys import BACKEND
from core.storage.photostore import PhotoNotFound
from core.storage.schema import Member, Photo
from core.workflows import privacy

router = APIRouter(tags=["privacy"])

MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
PHOTO_ENDPOINT = "GET /v1/members/{member_id}/photos/{kind}"


class RemovedOut(BaseModel):
    photos: int
    files: int
    files_kept_shared: int
    embeddings: int
    results: int


class ErasureOut(BaseModel):
    member_id: str
    already_erased: bool
    removed: RemovedOut
    erasure_id: int
    at: datetime


@router.get(
    "/v1/members/{member_id:path}/photos/{kind}",
    dependencies=secured,
    response_class=Response,
    responses={
        200: {"content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}, "description": "the photo"},
        **error_responses(401, 403, 404, 422, 503),
    },
)
def member_photo(
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Path(min_length=1, max_length=64)],
    kind: Annotated[str, Path(pattern="^(gallery|verification)$")],
):
    """The member's current gallery or verification photo, for the backend key only. Each
    download is in the audit log (who, when, this endpoint) and in the member's access history."""
    if caller.role != BACKEND:
        raise ApiError(
            403, "forbidden", f"The key {caller.name!r} has the role {caller.role!r}; photos need 'backend'."
        )
    member_id = checked_member_id(member_id)
    with state.factory() as session:
        if session.get(Member, member_id) is None:
            raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.")
        photo = session.scalars(
            select(Photo)
            .where(Photo.member_id == member_id, Photo.kind == kind, Photo.current.is_(True))
            .order_by(Photo.id.desc())
            .limit(1)
        ).first()
        if photo is None:
            raise ApiError(404, "no_photo", f"Member {member_id!r} has no {kind} photo.")
        try:
            data = state.store.read(photo.stored_path)
        except PhotoNotFound as exc:
            raise hidden(
                404, "photo_missing", "The stored photo is missing from the photo store.", exc
            ) from None
        privacy.record_photo_view(
            session, caller.actor, photo, f"api:{PHOTO_ENDPOINT}", action=privacy.DOWNLOAD_PHOTO, repeat_s=0
        )
    media_type = MEDIA_TYPES.get(photo.stored_path.rsplit(".", 1)[-1], "image/jpeg")
    return Response(data, media_type=media_type, headers={"Cache-Control": "no-store"})


@router.get(
    "/v1/members/{member_id:path}/export",
    dependencies=secured,
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the member's data as a ZIP"},
        **error_responses(401, 403, 404, 409, 422, 503),
    },
)
def export_member(
    state: State, caller: CallerKey, member_id: Annotated[str, Path(min_length=1, max_length=64)]
):
    """The member's data as a ZIP (member.json, photos/, decisions.json, views.csv, audit.json),
    for the backend key only; recorded in the audit log and the member's access history. Built on
    disk photo by photo and sent from there; larger than PRIVACY_EXPORT_MAX_MB answers 409
    export_too_large."""
    if caller.role != BACKEND:
        raise ApiError(
            403, "forbidden", f"The key {caller.name!r} has the role {caller.role!r}; exports need 'backend'."
        )
    member_id = checked_member_id(member_id)
    with state.factory() as session:
        try:
            path = privacy.export_member_file(session, state.store, member_id, caller.actor, why="api")
        except privacy.UnknownMember:
            raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.") from None
        except privacy.ExportTooLarge as exc:
            raise ApiError(409, "export_too_large", str(exc)) from None
    # Sent from disk in chunks; the file is removed once the answer is sent (or the client left).
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"member-{member_id}.zip",
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.delete(
    "/v1/members/{member_id:path}",
    response_model=ErasureOut,
    dependencies=secured,
    responses=error_responses(401, 403, 404, 422, 503),
)
def erase_member(
    state: State, caller: CallerKey, member_id: Annotated[str, Path(min_length=1, max_length=64)]
):
    """Erase the member's biometric data on request: photos, embeddings, 1:N index rows (in every
    process), the analyses in their results. Decisions and the audit log are kept, the erasure is
    recorded. Erasing an erased member again answers 200 with already_erased true."""
    member_id = checked_member_id(member_id)
    try:
        report = privacy.erase_member(state.factory, state.store, member_id, actor=caller.actor, via="api")
    except privacy.UnknownMember:
        raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.") from None
    return JSONResponse(report.to_dict())
