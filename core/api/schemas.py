"""Request and response bodies (pydantic), as the OpenAPI description shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.api.settings import MAX_BASE64_CHARS, SHA256_PATTERN


class ErrorOut(BaseModel):
    error: str = Field(
        description="machine-readable code, e.g. invalid_api_key, unknown_member, not_an_image"
    )
    message: str = Field(description="what went wrong and what to do, in one or two sentences")
    details: list[Any] | None = None


class FaceOut(BaseModel):
    box: list[float] = Field(description="x, y, width, height in pixels of the (EXIF-rotated) photo")
    score: float
    keypoints: list[list[float]] = []


class PhotoOut(BaseModel):
    sha256: str
    width: int
    height: int
    faces: list[FaceOut] = []
    main_face: int | None = None
    quality: float | None = None
    error: str | None = None
    timings_ms: dict[str, float] = {}
    capture: dict[str, Any] | None = Field(
        None, description="capture check of the main face: measures and findings (see /v1/photo-checks)"
    )


class FlagOut(BaseModel):
    code: str = Field(
        description="no_face, several_faces, low_quality, bad_image, uncertain_similarity, "
        "gender_mismatch, uncertain_gender, possible_duplicate, reused_photo, stale_photo, "
        "challenge_failed, gallery_photo_differs, or a capture finding (face_mask, hand_over_face, "
        "eyes_covered, eyes_closed, blurry, too_dark, too_bright, backlit, face_too_small, "
        "face_cut_off, head_turned)"
    )
    reason: str
    photo: str | None = Field(None, description="gallery, verification, or null for the pair")
    params: dict | None = Field(None, description="the figures behind the reason (angle, EXIF date, ...)")


class DuplicateOut(BaseModel):
    member_id: str
    similarity: float


class ReviewOut(BaseModel):
    decision: str
    reviewer: str
    decided_at: datetime
    same_person: bool | None = None
    true_gender: str | None = None


class VerificationOut(BaseModel):
    id: int
    member_id: str | None
    batch_id: int | None
    source: str | None = Field(None, description="api, verify_page, page, import ... (who asked)")
    created_at: datetime
    status: str = Field(
        description="auto_approved, auto_rejected, flagged (waits for a reviewer), approved, rejected"
    )
    decided_at: datetime | None = None
    decided_by: str | None = None
    review: ReviewOut | None = None
    same_person: bool | None
    similarity: float | None
    similarity_words: str | None = Field(
        None,
        description="the similarity in words: very_likely_same, likely_same, cannot_tell, "
        "likely_different or very_likely_different",
    )
    threshold: float
    uncertain_band: list[float]
    predicted_gender: str | None
    gender_confidence: float | None
    registered_gender: str | None
    flags: list[FlagOut]
    possible_duplicates: list[DuplicateOut] = Field(
        description="other members whose enrolled face is at or above the duplicate threshold"
    )
    gallery_photo_sha256: str | None = None
    verification_photo_sha256: str | None = None
    gallery: PhotoOut | None = None
    verification: PhotoOut | None = None
    timings_ms: dict[str, float] | None = None
    latency_ms: float | None = None
    model_version: str
    checks: dict | None = Field(
        None,
        description="evidence of the fraud checks: reuse (matching stored photos, hash bits, face "
        "distance), exif (date taken, or why it could not be checked), challenge (kind, measured angles)",
    )


class VerificationSummary(BaseModel):
    id: int
    created_at: datetime
    status: str
    same_person: bool | None
    similarity: float | None
    flags: list[str]
    possible_duplicate: bool
    decided_at: datetime | None = None
    decided_by: str | None = None
    batch_id: int | None
    source: str | None = None
    model_version: str


class MemberHistoryOut(BaseModel):
    member_id: str
    gender: str
    status: str
    total: int
    limit: int
    offset: int
    items: list[VerificationSummary]


class CandidateOut(BaseModel):
    member_id: str
    similarity: float
    possible_duplicate: bool = Field(description="at or above the duplicate threshold")


class SearchOut(BaseModel):
    model_version: str
    duplicate_threshold: float
    enrolled: int = Field(description="enrolled gallery photos searched")
    search_ms: float
    face: PhotoOut
    candidates: list[CandidateOut]


class HealthOut(BaseModel):
    status: str = Field(description="ok, starting or degraded")
    model_loaded: bool
    model_version: str | None = None
    model_error: str | None = None
    database: str
    enrolled: int | None = None
    duplicate_threshold: float | None = None
    api_version: str
    model_reload_error: str | None = Field(None, description="why a newly promoted version is not answering")
    worker_pid: int = Field(
        description="the API worker process that answered (faceverify api serve --workers N)"
    )


MemberId = Annotated[
    str,
    Field(min_length=1, max_length=64, description="the app's member ID (1-64 visible characters)"),
]


class VerificationRequest(BaseModel):
    """The verification selfie is required (verification_base64, or verification_sha256 naming a
    stored photo, which is then flagged as a replay); a gallery photo not given is the member's
    current one. Re-checking the stored photos is POST /v1/members/{member_id}/reverifications."""

    model_config = ConfigDict(extra="forbid")

    member_id: MemberId
    registered_gender: str | None = Field(
        None,
        max_length=16,
        description="M or F (male/female, 남/여 ...): needed to enrol; for an existing member it must be "
        "the registered gender (409 otherwise; PUT /v1/members/{member_id}/gender changes it)",
    )
    enrol: bool = Field(
        False,
        description="true: create the member when the ID is unknown (needs registered_gender and both photos)",
    )
    gallery_base64: str | None = Field(None, max_length=MAX_BASE64_CHARS, description="gallery photo, base64")
    gallery_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="a stored photo of this member, by content hash"
    )
    verification_base64: str | None = Field(
        None,
        max_length=MAX_BASE64_CHARS,
        description="REQUIRED (or verification_sha256): the verification selfie, base64; without it: 422",
    )
    verification_sha256: str | None = Field(
        None,
        pattern=SHA256_PATTERN,
        description="a stored photo of this member as the selfie: a replay, flagged reused_photo",
    )
    challenge_id: str | None = Field(
        None,
        max_length=64,
        description="a pose challenge from POST /v1/challenges for this member: the selfie must show it",
    )

    @model_validator(mode="after")
    def _one_source_per_photo(self):
        for which in ("gallery", "verification"):
            if getattr(self, f"{which}_base64") is not None and getattr(self, f"{which}_sha256") is not None:
                raise ValueError(f"give {which}_base64 or {which}_sha256, not both")
        return self


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photo_base64: str | None = Field(None, max_length=MAX_BASE64_CHARS)
    photo_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN, description="a stored photo, by content hash"
    )
    k: int = Field(10, ge=1, le=50, description="how many members to return")
    exclude_member: str | None = Field(None, max_length=64, description="leave this member out")

    @model_validator(mode="after")
    def _exactly_one_photo(self):
        if (self.photo_base64 is None) == (self.photo_sha256 is None):
            raise ValueError("give exactly one of photo_base64 and photo_sha256")
        return self


class ChallengeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member_id: MemberId


class ChallengeOut(BaseModel):
    challenge_id: str = Field(description="send it back as challenge_id with the verification")
    member_id: str
    kind: str = Field(description="turn_left, turn_right, tilt or chin_up")
    instruction: dict[str, str] = Field(description="what to show the member, by language (ko, en)")
    expires_at: datetime = Field(description="single use, valid until then")


class GalleryPhotoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photo_base64: str = Field(max_length=MAX_BASE64_CHARS, description="the new gallery photo, base64")


class GalleryPhotoOut(BaseModel):
    accepted: bool = Field(
        description="true: it is the member's gallery photo now; false: it waits for review"
    )
    photo_sha256: str
    verification: VerificationOut = Field(description="the comparison with the member's gallery photo")


class PhotoCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    photo_base64: str = Field(max_length=MAX_BASE64_CHARS, description="the photo to check, base64")


class PhotoFindingOut(BaseModel):
    code: str = Field(
        description="face_mask, hand_over_face, eyes_covered, eyes_closed, blurry, too_dark, too_bright, "
        "backlit, face_too_small, face_cut_off, head_turned; or no_face, several_faces, low_quality"
    )
    value: float | None = Field(None, description="what was measured (unit in `unit`)")
    limit: float | None = Field(None, description="the limit it crossed")
    unit: str | None = None
    hides_face: bool = Field(description="part of the face is hidden: never decided automatically")
    instruction: dict[str, str] = Field(description="what the member should do, by language (ko, en)")


class PhotoCheckOut(BaseModel):
    ok: bool = Field(description="no finding: the photo will not be flagged for capture problems")
    submit: bool = Field(description="false when the face is hidden or missing: take the photo again")
    width: int
    height: int
    faces: int
    face_box: list[float] | None = Field(None, description="x, y, width, height of the main face")
    findings: list[PhotoFindingOut]
    measures: dict[str, float]
    timings_ms: dict[str, float]
