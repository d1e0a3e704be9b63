"""A member's profile photos: enrol with several, list, add, remove, reorder, decide one, and a
verification that answers per photo. Thin over core.workflows.profiles."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from core.api import verifying
from core.api.deps import CallerKey, State, secured
from core.api.errors import ApiError, error_responses
from core.api.inputs import checked_gender, checked_member_id, checked_photo, decode_base64
from core.api.output import jsonable, result_out
from core.api.schemas import MAX_BASE64_CHARS, VerificationOut
from core.api.settings import ENGINE_TIMEOUT_S
from core.api.state import EngineJob
from core.storage.schema import GALLERY, VERIFICATION, Member
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches, profiles
from core.workflows.verification import PhotoInput

router = APIRouter(tags=["profile"])

MemberId = Annotated[str, Path(min_length=1, max_length=64)]
Position = Annotated[
    int, Path(ge=1, le=100, description="1-based place in the member's order; 1 is the main photo")
]

# ----------------------------------------------------------------------------------------------
# Schemas


class ProfileVerificationRequest(BaseModel):
    """A selfie against the member's whole profile. A new member (enrol=true) sends its profile
    photos in order; an existing member's stored profile is used (photos other than those in it
    are refused: add them with POST /v1/members/{member_id}/profile-photos)."""

    model_config = ConfigDict(extra="forbid")

    verification_base64: str = Field(max_length=MAX_BASE64_CHARS, description="the selfie, base64 (required)")
    profile_photos_base64: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="the profile photos in the member's order, base64 (a new member only; at most "
        "PROFILE_MAX_PHOTOS, default 9)",
    )
    registered_gender: str | None = Field(None, description="M/F: a new member's registered gender")
    enrol: bool = Field(False, description="create the member if it does not exist")
    challenge_id: str | None = Field(
        None, max_length=64, description="a pose challenge from POST /v1/challenges"
    )


class ProfilePhotoVerdict(BaseModel):
    position: int = Field(description="1-based place in the public profile; 1 is the main photo")
    state: str = Field(description="matches / does_not_match / no_face / review (a person decides)")
    reason: str = Field(description="one sentence for staff, e.g. 'Photo 3 does not show this member ...'")
    similarity: float | None = Field(description="the member's face in it against the selfie, 0..1")
    box: list[int] | None = Field(description="[x, y, width, height] of the face that is the member")
    faces: list[list[int]] = Field(description="every face found in the photo (a group photo has several)")


class ProfileVerificationOut(BaseModel):
    member_id: str
    result_id: int
    status: str = Field(description="the stored result: auto_approved (verified), flagged, auto_rejected")
    profile_status: str = Field(
        description="the profile rule's decision before the duplicate and fraud checks"
    )
    reasons: list[str]
    flagged_photos: list[int] = Field(description="positions of the photos that are not (clearly) the member")
    photos: list[ProfilePhotoVerdict]
    model_version: str
    verification: VerificationOut = Field(
        description="the stored result as GET /v1/verifications/{id} shows it"
    )


class ProfilePhotoOut(BaseModel):
    position: int
    photo_id: int
    sha256: str
    state: str = Field(description="matches / does_not_match / no_face / review / unchecked")
    reason: str | None
    similarity: float | None = Field(description="against the member's selfie when last checked, 0..1")
    box: list[int] | None = Field(description="[x, y, width, height] of the member's face")
    model_version: str | None
    checked_at: str | None
    review_decision: str | None = Field(description="approved / rejected by a reviewer, or null")
    waiting: bool = Field(description="not yet the member: waits for a reviewer (the badge is off meanwhile)")
    result_id: int | None = Field(description="its review-queue result, when it waits")


class ProfileOut(BaseModel):
    member_id: str
    status: str = Field(description="the member's status")
    badge: bool = Field(description="verified, and every public photo is the member")
    max_photos: int
    photos: list[ProfilePhotoOut]


class ProfilePhotoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photo_base64: str = Field(max_length=MAX_BASE64_CHARS, description="the photo to add at the end, base64")


class ProfileAdditionOut(BaseModel):
    position: int
    photo_id: int
    state: str = Field(description="matches / does_not_match / no_face / review")
    shown: bool = Field(description="true: shown at once; false: waits for a reviewer")
    result_id: int = Field(description="the stored comparison (in the review queue when it waits)")
    flags: list[dict] = Field(description="why it waits: profile_photo, profile_photo_of_another_member ...")


class ProfileOrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order: list[int] = Field(
        max_length=100, description="the current positions in the new order, e.g. [3, 1, 2]"
    )


class ProfileDecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"] = Field(description="reject: the photo leaves the public profile")


# ----------------------------------------------------------------------------------------------
# Errors

_STATUS = {
    **verifying._STATUS,
    profiles.ProfileFull: 409,
    profiles.SamePhotoTwice: 422,
    profiles.AlreadyInProfile: 409,
    profiles.UnknownProfilePhoto: 404,
    profiles.NoVerifiedFace: 422,
    profiles.BadOrder: 422,
    profiles.LastPhoto: 409,
}


def _api_error(exc: Exception, member_id: str) -> ApiError:
    return ApiError(
        _STATUS[type(exc)], getattr(exc, "code", "invalid_request"), verifying._message(exc, member_id)
    )


def _on_worker(state: State):
    worker = state.require_engine()
    return lambda work: worker.submit(EngineJob([], call=work)).result(timeout=ENGINE_TIMEOUT_S)


def _profile(state: State, member_id: str) -> dict:
    from core.workflows.profile_rows import max_photos

    with state.factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.")
        return {
            "member_id": member_id,
            "status": member.status,
            "badge": profiles.badge(session, member_id),
            "max_photos": max_photos(),
            "photos": profiles.profile_view(session, member_id),
        }


# ----------------------------------------------------------------------------------------------
# Routes


@router.post(
    "/v1/members/{member_id:path}/profile/verifications",
    response_model=ProfileVerificationOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 410, 413, 415, 422, 503),
)
def verify_profile(body: ProfileVerificationRequest, state: State, caller: CallerKey, member_id: MemberId):
    """Verify a selfie against every photo of the member's profile: one similarity per photo and
    one decision for the member, each photo that is not the member flagged on its own. With
    enrol=true a new member is created with all its profile photos."""
    run = _on_worker(state)
    member_id = checked_member_id(member_id, state.factory)
    selfie = checked_photo(VERIFICATION, decode_base64("verification", body.verification_base64))
    photos = [
        checked_photo(GALLERY, decode_base64(f"profile photo {n}", raw))
        for n, raw in enumerate(body.profile_photos_base64, start=1)
    ]
    try:
        done = profiles.verify_profile_member(
            state.factory,
            state.store,
            caller.actor,
            member_id,
            PhotoInput(VERIFICATION, selfie.data, None, selfie.ext, selfie.width, selfie.height),
            [PhotoInput(GALLERY, p.data, None, p.ext, p.width, p.height) for p in photos],
            state.engine,
            gender=checked_gender(body.registered_gender),
            source=batches.API_SINGLE,
            enrol=body.enrol,
            challenge_token=body.challenge_id,
            storing=state.store_slots,
            run_on_engine=run,
        )
    except tuple(_STATUS) as exc:
        raise _api_error(exc, member_id) from None
    out = profiles.profile_answer(done)
    with state.factory() as session:
        row = session.get(ResultRow, done.result_id)
        out["status"] = row.status  # after the duplicate and fraud checks
        out["verification"] = result_out(session, row)
    return JSONResponse(jsonable(out), status_code=201)


@router.get(
    "/v1/members/{member_id:path}/profile-photos",
    response_model=ProfileOut,
    dependencies=secured,
    responses=error_responses(401, 403, 404, 422),
)
def list_profile_photos(
    state: State,
    caller: CallerKey,
    member_id: MemberId,
    public: Annotated[
        bool, Query(description="only the photos shown (without those a reviewer rejected)")
    ] = False,
):
    """The member's profile photos in order, each with its state, reason, similarity and face box."""
    member_id = checked_member_id(member_id)
    out = _profile(state, member_id)
    if public:
        out["photos"] = [p for p in out["photos"] if p["review_decision"] != "rejected"]
    return JSONResponse(jsonable(out))


@router.post(
    "/v1/members/{member_id:path}/profile-photos",
    response_model=ProfileAdditionOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
)
def add_profile_photo(body: ProfilePhotoRequest, state: State, caller: CallerKey, member_id: MemberId):
    """Add a photo at the end of the profile. It is checked at once against the member's verified
    face (the stored selfie): the member -> shown at once; otherwise it waits for a reviewer and
    the member's badge is off until it is accepted. A photo that is another member's face is
    flagged with that member named."""
    run = _on_worker(state)
    member_id = checked_member_id(member_id)
    photo = checked_photo(GALLERY, decode_base64("photo", body.photo_base64))
    try:
        added = profiles.add_profile_photo(
            state.factory,
            state.store,
            caller.actor,
            member_id,
            PhotoInput(GALLERY, photo.data, None, photo.ext, photo.width, photo.height),
            state.engine,
            source="api",
            run_on_engine=run,
        )
    except tuple(_STATUS) as exc:
        raise _api_error(exc, member_id) from None
    out = {
        "position": added.position,
        "photo_id": added.photo_id,
        "state": added.state,
        "shown": added.shown,
        "result_id": added.result_id,
        "flags": added.flags,
    }
    return JSONResponse(jsonable(out), status_code=201)


@router.delete(
    "/v1/members/{member_id:path}/profile-photos/{position}",
    response_model=ProfileOut,
    dependencies=secured,
    responses=error_responses(401, 403, 404, 409, 422),
)
def remove_profile_photo(state: State, caller: CallerKey, member_id: MemberId, position: Position):
    """Take a photo out of the profile; the ones after it move up. The last photo stays."""
    member_id = checked_member_id(member_id)
    try:
        profiles.remove_profile_photo(state.factory, caller.actor, member_id, position)
    except tuple(_STATUS) as exc:
        raise _api_error(exc, member_id) from None
    return JSONResponse(jsonable(_profile(state, member_id)))


@router.put(
    "/v1/members/{member_id:path}/profile-photos/order",
    response_model=ProfileOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 413, 415, 422),
)
def reorder_profile_photos(body: ProfileOrderRequest, state: State, caller: CallerKey, member_id: MemberId):
    """Put the photos in a new order (each current position once); the first is the main photo."""
    member_id = checked_member_id(member_id)
    try:
        profiles.reorder_profile(state.factory, caller.actor, member_id, body.order)
    except tuple(_STATUS) as exc:
        raise _api_error(exc, member_id) from None
    return JSONResponse(jsonable(_profile(state, member_id)))


@router.post(
    "/v1/members/{member_id:path}/profile-photos/{position}/decision",
    response_model=ProfileOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 404, 413, 415, 422),
)
def decide_profile_photo(
    body: ProfileDecisionRequest, state: State, caller: CallerKey, member_id: MemberId, position: Position
):
    """A reviewer's decision on one profile photo: rejected, it leaves the public profile (and
    goes last); the badge follows."""
    member_id = checked_member_id(member_id)
    try:
        profiles.decide_profile_photo(
            state.factory, caller.actor, member_id, position, body.decision == "approve"
        )
    except tuple(_STATUS) as exc:
        raise _api_error(exc, member_id) from None
    return JSONResponse(jsonable(_profile(state, member_id)))
