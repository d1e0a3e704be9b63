"""What the profile use case's modules share: flag codes, audit action names, errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from core.workflows.verification import VerifyError

PROFILE_ADDITION_SOURCE = "profile-addition"  # Batch.source of a photo added later
PROFILE_PHOTO = "profile_photo"  # flag: one profile photo is not (clearly) the member
# Flag: a profile photo's face is another enrolled member's, more like them than like this member.
PROFILE_PHOTO_OF_ANOTHER = "profile_photo_of_another_member"
OTHER_MEMBERS_SEARCHED = 3
ADD_PROFILE_PHOTO, REMOVE_PROFILE_PHOTO = "add_profile_photo", "remove_profile_photo"
REORDER_PROFILE, DECIDE_PROFILE_PHOTO = "reorder_profile", "decide_profile_photo"

# Runs a function with the engine (the API: on its engine worker; elsewhere: directly).
RunOnEngine = Callable[[Callable[[Any], Any]], Any]


class ProfileError(VerifyError):
    code = "profile_error"


class ProfileFull(ProfileError):
    code = "profile_full"  # params: max


class SamePhotoTwice(ProfileError):
    code = "same_photo_twice"


class AlreadyInProfile(ProfileError):
    code = "already_in_profile"


class UnknownProfilePhoto(ProfileError):
    code = "unknown_profile_photo"


class NoVerifiedFace(ProfileError):
    """A photo added later is checked against the member's selfie; the member has none yet."""

    code = "no_verified_face"


class BadOrder(ProfileError):
    code = "bad_order"


class LastPhoto(ProfileError):
    code = "last_photo"


def _direct(engine) -> RunOnEngine:
    return lambda work: work(engine)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
