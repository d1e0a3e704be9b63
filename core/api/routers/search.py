"""Search enrolled members by photo (1:N), JSON or multipart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from core.api.deps import CallerKey, State, secured
from core.api.errors import error_responses
from core.api.inputs import decode_base64, upload_bytes
from core.api.output import jsonable
from core.api.schemas import (
    SearchOut,
    SearchRequest,
)
from core.api.searching import run_search

router = APIRouter(tags=["search"])


@router.post(
    "/v1/search",
    response_model=SearchOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 503),
)
def search_by_photo(body: SearchRequest, state: State, caller: CallerKey):
    """The enrolled members most similar to the face in a photo (1:N). Stores nothing but an audit entry."""
    data = decode_base64("photo", body.photo_base64) if body.photo_base64 is not None else None
    return JSONResponse(
        jsonable(run_search(state, caller, data, body.photo_sha256, body.k, body.exclude_member))
    )


@router.post(
    "/v1/search/upload",
    response_model=SearchOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 413, 415, 422, 503),
)
def search_by_photo_upload(
    state: State,
    caller: CallerKey,
    photo: Annotated[UploadFile, File(description="the photo to search")],
    k: Annotated[int, Form(ge=1, le=50)] = 10,
    exclude_member: Annotated[str | None, Form(max_length=64)] = None,
):
    """POST /v1/search with the photo as a multipart file."""
    data = upload_bytes("search", photo) or b""
    return JSONResponse(jsonable(run_search(state, caller, data, None, k, exclude_member)))
