"""Pose challenges: one random instruction per request, single use, valid for CHALLENGE_MINUTES;
one open per member, issued at a limited rate."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core.api.deps import CallerKey, State, secured
from core.api.errors import ApiError, error_responses
from core.api.inputs import checked_member_id
from core.api.output import jsonable
from core.api.schemas import ChallengeOut, ChallengeRequest
from core.i18n import LANGUAGES, t
from core.storage import challenges

router = APIRouter(tags=["challenges"])


@router.post(
    "/v1/challenges",
    response_model=ChallengeOut,
    status_code=201,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 422, 429, 503),
)
def new_challenge(body: ChallengeRequest, state: State, caller: CallerKey):
    """A random pose the member's next selfie must show (turn left or right, tilt, chin up).

    Send its challenge_id with the verification; the selfie's head pose is measured and the pair is
    flagged challenge_failed (with the measured angle) when it does not show it. A challenge is
    used up by one verification and expires after CHALLENGE_MINUTES (default 3); a reused or expired
    one is refused (409 / 410). A new challenge cancels the member's open one (410 when it is sent).
    Issuing is limited per member and per API key in an hour (429 with Retry-After).
    Without a passed challenge, an API verification is never approved automatically
    (CHALLENGE_REQUIRED_API, on by default): it is flagged no_challenge for review."""
    member_id = checked_member_id(body.member_id)
    with state.factory() as session:
        try:
            challenge = challenges.issue(session, member_id, caller.actor)
        except challenges.ChallengeRateLimited as exc:
            raise ApiError(429, exc.code, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        out = {
            "challenge_id": challenge.token,
            "member_id": challenge.member_id,
            "kind": challenge.kind,
            "instruction": {lang: t(f"challenge.{challenge.kind}", lang) for lang in LANGUAGES},
            "expires_at": challenge.expires_at,
        }
    return JSONResponse(jsonable(out), status_code=201)
