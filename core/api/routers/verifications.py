"""Verifications: submit one (JSON or multipart), read one back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile
from fastapi.responses import JSONResponse

from core.api.deps import CallerKey, State, secured
from core.api.errors import ApiError, error_responses
from core.api.inputs import PhotoIn, checked_photo, decode_base64, upload_bytes
from core.api.output import jsonable, result_out
from core.api.schemas import (
    VerificationOut,
    VerificationRequest,
)
from core.api.settings import SHA256_PATTERN
from core.api.verifying import verify_request
from core.storage.schema import GALLERY, VERIFICATION
from core.storage.schema import VerificationResult as ResultRow

router = APIRouter(tags=["verifications"])


@router.post(
    "/v1/verifications",
    response_model=VerificationOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
)
def submit_verification(body: VerificationRequest, state: State, caller: CallerKey):
    """Verify a member: gallery photo vs. verification selfie (base64 or stored sha256 references).

    Stored like a dashboard verification (a batch of one, source "api"); flagged results go to
    the review queue. Photos not given are the member's current stored photos."""
    photos = {}
    for which in (GALLERY, VERIFICATION):
        raw = getattr(body, f"{which}_base64")
        if raw is not None:
            photos[which] = checked_photo(which, decode_base64(which, raw))
        else:
            photos[which] = PhotoIn(which, sha256=getattr(body, f"{which}_sha256"))
    out = verify_request(
        state, caller, body.member_id, body.registered_gender, body.enrol, photos, body.challenge_id
    )
    return JSONResponse(
        jsonable(out), status_code=201, headers={"Location": f"/v1/verifications/{out['id']}"}
    )


@router.post(
    "/v1/verifications/upload",
    response_model=VerificationOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
)
def submit_verification_upload(
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Form(min_length=1, max_length=64)],
    registered_gender: Annotated[str | None, Form(max_length=16)] = None,
    enrol: Annotated[bool, Form()] = False,
    gallery: Annotated[UploadFile | None, File(description="gallery photo")] = None,
    verification: Annotated[UploadFile | None, File(description="verification selfie")] = None,
    gallery_sha256: Annotated[str | None, Form(pattern=SHA256_PATTERN)] = None,
    verification_sha256: Annotated[str | None, Form(pattern=SHA256_PATTERN)] = None,
    challenge_id: Annotated[str | None, Form(max_length=64)] = None,
):
    """The same as POST /v1/verifications with the photos as multipart files."""
    photos = {}
    for which, upload, sha in (
        (GALLERY, gallery, gallery_sha256),
        (VERIFICATION, verification, verification_sha256),
    ):
        data = upload_bytes(which, upload)
        if data is not None and sha is not None:
            raise ApiError(
                422,
                "invalid_request",
                f"Give the {which} photo as a file or as {which}_sha256, not both.",
            )
        photos[which] = checked_photo(which, data) if data is not None else PhotoIn(which, sha256=sha)
    out = verify_request(state, caller, member_id, registered_gender, enrol, photos, challenge_id)
    return JSONResponse(
        jsonable(out), status_code=201, headers={"Location": f"/v1/verifications/{out['id']}"}
    )


@router.get(
    "/v1/verifications/{result_id}",
    response_model=VerificationOut,
    dependencies=secured,
    responses=error_responses(401, 403, 404, 503),
)
def get_verification(state: State, caller: CallerKey, result_id: Annotated[int, Path(ge=1, le=2**62)]):
    """One stored verification with its current status (a reviewer may have decided it since)."""
    with state.factory() as session:
        row = session.get(ResultRow, result_id)
        if row is None:
            raise ApiError(404, "unknown_verification", f"There is no verification {result_id}.")
        return JSONResponse(jsonable(result_out(session, row)))
