"""A verification request: the API's adapter over core.workflows.verification.verify_member.

It checks the request's values, runs the engine on the API's engine worker (admission, timeout),
and turns the use case's typed errors into API errors; the use case decides and writes.
"""

from __future__ import annotations

from core.api.errors import ApiError
from core.api.inputs import PhotoIn, checked_gender, checked_member_id
from core.api.keys import Caller
from core.api.output import result_out
from core.api.settings import ENGINE_TIMEOUT_S
from core.api.state import AppState, EngineJob
from core.storage import challenges
from core.storage.schema import GALLERY, VERIFICATION
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches, verification

# The use case's errors: (status, the message the API gives; None: the use case's own).
_STATUS = {
    verification.UnknownMember: 404,
    verification.BadMemberId: 422,
    verification.EnrolIncomplete: 422,
    verification.SelfieRequired: 422,
    verification.PhotoRequired: 422,
    verification.UnknownPhoto: 404,
    verification.PhotoMissing: 404,
    verification.GenderDiffers: 409,
    verification.StoreUnavailable: 503,
    verification.Conflict: 409,
    verification.GalleryLocked: 409,
    challenges.UnknownChallenge: 404,
    challenges.ChallengeForAnotherMember: 422,
    challenges.ChallengeUsed: 409,
    challenges.ChallengeExpired: 410,
}


def _message(exc: Exception, member_id: str) -> str:
    if isinstance(exc, verification.UnknownMember):
        return (
            f"There is no member {member_id!r}. To enrol a new member, send enrol=true with "
            "registered_gender and both photos."
        )
    if isinstance(exc, verification.EnrolIncomplete):
        names = [m if m == "registered_gender" else f"{m} photo (uploaded)" for m in exc.params["missing"]]
        return f"A new member needs {', '.join(names)}."
    if isinstance(exc, verification.SelfieRequired):
        return (
            "The verification photo is required: send it as the file field 'verification' (multipart) "
            "or as verification_base64 (JSON). A verification never re-checks a stored selfie; to "
            f"re-check the stored photos, POST /v1/members/{member_id}/reverifications."
        )
    if isinstance(exc, verification.PhotoRequired):
        return f"Member {member_id!r} has no stored {exc.params['which']} photo; upload one."
    if isinstance(exc, verification.GenderDiffers):
        return (
            f"Member {member_id!r} is registered as {exc.params['registered']}, not {exc.params['given']}. "
            "A verification never changes the registered gender: change it with "
            f"PUT /v1/members/{member_id}/gender first, or leave registered_gender out."
        )
    if isinstance(exc, verification.StoreUnavailable):
        return "The photo store cannot save the photo; nothing was stored. Try again."
    return str(exc)


def run(
    state: AppState,
    caller: Caller,
    member_id: str,
    photos: dict[str, PhotoIn],
    *,
    gender: str | None = None,
    enrol: bool = False,
    challenge_id: str | None = None,
    recheck_stored: bool = False,
) -> dict:
    """Verify through the use case; the stored result as the API shows it."""
    worker = state.require_engine()
    member_id = checked_member_id(member_id, state.factory)  # look-alikes of members refused
    gender = checked_gender(gender)

    def run_engine(gallery_bytes, verification_bytes, registered_gender, challenge_kind):
        future = worker.submit(
            EngineJob([gallery_bytes, verification_bytes], registered_gender, challenge=challenge_kind)
        )
        return future.result(timeout=ENGINE_TIMEOUT_S)

    inputs = {
        which: verification.PhotoInput(which, p.data, p.sha256, p.ext, p.width, p.height)
        for which, p in photos.items()
    }
    try:
        done = verification.verify_member(
            state.factory,
            state.store,
            caller.actor,
            member_id,
            inputs,
            run_engine,
            gender=gender,
            source=batches.API_SINGLE,
            enrol=enrol,
            recheck_stored=recheck_stored,
            challenge_token=challenge_id,
            storing=state.store_slots,
        )
    except tuple(_STATUS) as exc:
        code = getattr(exc, "code", "invalid_request")
        raise ApiError(_STATUS[type(exc)], code, _message(exc, member_id)) from None
    with state.factory() as session:
        return result_out(session, session.get(ResultRow, done.result_id))


def verify_request(
    state: AppState,
    caller: Caller,
    member_id: str,
    gender: str | None,
    enrol: bool,
    photos: dict,
    challenge_id: str | None = None,
) -> dict:
    """A verification of a sent selfie (JSON or multipart); the stored gallery photo when none is sent."""
    return run(state, caller, member_id, photos, gender=gender, enrol=enrol, challenge_id=challenge_id)


def reverify_request(
    state: AppState, caller: Caller, member_id: str, challenge_id: str | None = None
) -> dict:
    """The explicit re-check of a member's stored current photos."""
    photos = {w: PhotoIn(w) for w in (GALLERY, VERIFICATION)}
    return run(state, caller, member_id, photos, challenge_id=challenge_id, recheck_stored=True)
