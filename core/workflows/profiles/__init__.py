"""A member's profile: several ordered photos, each checked against the member's verified face.

    verify_profile_member(...) -> ProfileVerified
        a selfie against every photo of the profile (core.verification.profile): one similarity
        per photo, one decision for the member, each photo that is not the member flagged on its
        own. Stored through core.workflows.verification.verify_member (the same batch item,
        result, duplicate and fraud checks, audit); this module adds each photo's state.
        A new member is enrolled with all its photos at once. Photos checked before are not
        analysed again (their stored embedding, box, hashes and flags are reused); the selfie and
        the photos never seen are analysed once each, side by side (core.workflows.profiles.analyse).
    add_profile_photo(...) -> ProfileAddition / check_profile_photo(...) (an imported photo)
        a photo added later, compared at once with the member's verified face (the stored
        selfie): it matches -> shown at once; otherwise it waits in the review queue and the
        member's badge drops until a reviewer accepts it. Its face is searched in the 1:N index
        and its file among other members' photos (core.workflows.batches.store_result): a photo of
        another member is flagged with that member named.
    remove_profile_photo, reorder_profile, decide_profile_photo
    on_review(session, row, approve, reviewer)   a reviewer decided a photo added later
    badge(session, member_id)                     the member is verified and every public photo is them

A member is verified (the badge) when its last verification was approved and every photo of the
public profile matches or was accepted by a reviewer; photos a reviewer rejected leave the public
list and no longer count.
"""

from core.workflows.profiles.additions import ProfileAddition, add_profile_photo, check_profile_photo
from core.workflows.profiles.badge import (
    badge,
    decide_profile_photo,
    is_profile_addition,
    on_review,
    on_verification_review,
    refresh_badge,
    remove_profile_photo,
    reorder_profile,
)
from core.workflows.profiles.checks import another_member_flag, checked_rule, member_result, other_members
from core.workflows.profiles.common import (
    ADD_PROFILE_PHOTO,
    DECIDE_PROFILE_PHOTO,
    OTHER_MEMBERS_SEARCHED,
    PROFILE_ADDITION_SOURCE,
    PROFILE_PHOTO,
    PROFILE_PHOTO_OF_ANOTHER,
    REMOVE_PROFILE_PHOTO,
    REORDER_PROFILE,
    AlreadyInProfile,
    BadOrder,
    LastPhoto,
    NoVerifiedFace,
    ProfileError,
    ProfileFull,
    RunOnEngine,
    SamePhotoTwice,
    UnknownProfilePhoto,
)
from core.workflows.profiles.verify import ProfileVerified, verify_profile_member
from core.workflows.profiles.views import profile_answer, profile_view

__all__ = [
    "ADD_PROFILE_PHOTO",
    "DECIDE_PROFILE_PHOTO",
    "OTHER_MEMBERS_SEARCHED",
    "PROFILE_ADDITION_SOURCE",
    "PROFILE_PHOTO",
    "PROFILE_PHOTO_OF_ANOTHER",
    "REMOVE_PROFILE_PHOTO",
    "REORDER_PROFILE",
    "AlreadyInProfile",
    "BadOrder",
    "LastPhoto",
    "NoVerifiedFace",
    "ProfileAddition",
    "ProfileError",
    "ProfileFull",
    "ProfileVerified",
    "RunOnEngine",
    "SamePhotoTwice",
    "UnknownProfilePhoto",
    "add_profile_photo",
    "another_member_flag",
    "badge",
    "check_profile_photo",
    "checked_rule",
    "decide_profile_photo",
    "is_profile_addition",
    "member_result",
    "on_review",
    "on_verification_review",
    "other_members",
    "profile_answer",
    "profile_view",
    "refresh_badge",
    "remove_profile_photo",
    "reorder_profile",
    "verify_profile_member",
]
