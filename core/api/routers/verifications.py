"""Verifications: submit one (JSON or multipart), re-check a member's stored photos, read one back;
and the registered gender, which only its own request changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from core.api.deps import CallerKey, State, secured
from core.api.errors import ApiError, error_responses
from core.api.inputs import (
    PhotoIn,
    checked_gender,
    checked_member_id,
    checked_photo,
    decode_base64,
    upload_bytes,
)
from core.api.output import jsonable, result_out
from core.api.schemas import (
    VerificationOut,
    VerificationRequest,
)
from core.api.settings import SHA256_PATTERN
from core.api.verifying import reverify_request, verify_request
from core.storage.schema import GALLERY, VERIFICATION
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import verification as use_case

router = APIRouter(tags=["verifications"])


@router.post(
    "/v1/verifications",
    response_model=VerificationOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
)
def submit_verification(body: VerificationRequest, state: State, caller: CallerKey):
    """Verify a member: gallery photo vs. the verification selfie sent with the request.

    The selfie is required (verification_base64, or verification_sha256 naming a stored one, which
    is then a replay: flagged reused_photo); without it the answer is 422. A gallery photo not
    given is the member's current one. Stored like a dashboard verification (the day's batch of
    single verifications, source "api"); flagged results go to the review queue. To re-check the
    stored photos, POST /v1/members/{member_id}/reverifications."""
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
    member_id: Annotated[str, Form(min_length=1, max_length=64, description="the member's id")],
    registered_gender: Annotated[
        str | None,
        Form(
            max_length=16,
            description="M or F: required to enrol a new member; for an existing member it must match "
            "the registered gender (409 otherwise: a verification never changes it)",
        ),
    ] = None,
    enrol: Annotated[
        bool, Form(description="true: create the member when the id is unknown (gender and both photos)")
    ] = False,
    gallery: Annotated[
        UploadFile | None,
        File(description="gallery photo (JPEG/PNG/WebP); default: the member's current gallery photo"),
    ] = None,
    verification: Annotated[
        UploadFile | None,
        File(
            description="REQUIRED: the verification selfie, in the file field named exactly 'verification' "
            "(or give verification_sha256). A request without it is refused with 422; any other field "
            "name (selfie, photo) is not read."
        ),
    ] = None,
    gallery_sha256: Annotated[
        str | None, Form(pattern=SHA256_PATTERN, description="a stored photo of this member as the gallery")
    ] = None,
    verification_sha256: Annotated[
        str | None,
        Form(
            pattern=SHA256_PATTERN, description="a stored photo as the selfie: a replay, flagged reused_photo"
        ),
    ] = None,
    challenge_id: Annotated[
        str | None,
        Form(max_length=64, description="the pose challenge (POST /v1/challenges) the selfie must show"),
    ] = None,
):
    """The same as POST /v1/verifications with the photos as multipart files.

    Fields: member_id, the file 'verification' (required), and optionally the file 'gallery',
    gallery_sha256 / verification_sha256, registered_gender, enrol, challenge_id. Without a
    verification photo the answer is 422 (code verification_photo_required): the stored selfie is
    never re-checked silently (that is POST /v1/members/{member_id}/reverifications)."""
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


@router.post(
    "/v1/members/{member_id}/reverifications",
    response_model=VerificationOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
)
def reverify_member(
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Path(min_length=1, max_length=64)],
    challenge_id: str | None = None,
):
    """Re-check a member's stored current photos (gallery vs. verification) on the current model.

    The explicit request for what a verification without a selfie never does. Stored like any
    verification (source "api"), with the same checks; the stored selfie is not new, so it is not
    judged a replay."""
    out = reverify_request(state, caller, member_id, challenge_id)
    return JSONResponse(
        jsonable(out), status_code=201, headers={"Location": f"/v1/verifications/{out['id']}"}
    )


class GenderChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    registered_gender: str = Field(..., max_length=16, description="M or F (male/female, 남/여 ...)")
    reason: str | None = Field(None, max_length=500, description="why, kept in the audit log")


class GenderOut(BaseModel):
    member_id: str
    registered_gender: str
    status: str


@router.put(
    "/v1/members/{member_id}/gender",
    response_model=GenderOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 503),
)
def change_registered_gender(
    body: GenderChange,
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Path(min_length=1, max_length=64)],
):
    """Change a member's registered gender: the only way it changes (a verification never does).

    Audited (change_gender, old and new value, reason); a member whose gender changed is pending
    again, since its last verification checked the other one."""
    member_id = checked_member_id(member_id)
    gender = checked_gender(body.registered_gender)
    if gender is None:
        raise ApiError(422, "bad_gender", "registered_gender: give M or F.")
    try:
        member = use_case.change_gender(state.factory, caller.actor, member_id, gender, body.reason)
    except use_case.UnknownMember:
        raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.") from None
    return JSONResponse(
        jsonable({"member_id": member.id, "registered_gender": member.gender, "status": member.status})
    )
