"""The result objects of one verification: plain dataclasses, JSON-ready through to_dict().

Everyone reads these: the pages render them, the data layer stores them, the API returns them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from core.verification.capture import CaptureCheck

# Flag codes. The photo a flag is about is given separately ("gallery" / "verification").
NO_FACE = "no_face"
SEVERAL_FACES = "several_faces"
LOW_QUALITY = "low_quality"
BAD_IMAGE = "bad_image"
UNCERTAIN_SIMILARITY = "uncertain_similarity"
GENDER_MISMATCH = "gender_mismatch"
UNCERTAIN_GENDER = "uncertain_gender"
POSSIBLE_DUPLICATE = "possible_duplicate"
# Fraud checks (core.verification.fraud): the verification photo copies one of the member's photos,
# EXIF dates it before the upload window, or it does not show the pose challenge asked for.
REUSED_PHOTO = "reused_photo"
STALE_PHOTO = "stale_photo"
CHALLENGE_FAILED = "challenge_failed"
# A gallery photo added to an existing member that does not clearly show the same person.
GALLERY_PHOTO_DIFFERS = "gallery_photo_differs"
# Flags that suggest someone is cheating: a reviewer must approve these against the machine explicitly.
FRAUD_FLAGS = (POSSIBLE_DUPLICATE, REUSED_PHOTO, STALE_PHOTO, CHALLENGE_FAILED, GALLERY_PHOTO_DIFFERS)

# Statuses of a stored result. auto_* are decided without a person; flagged waits for review.
AUTO_APPROVED = "auto_approved"
AUTO_REJECTED = "auto_rejected"
FLAGGED = "flagged"
APPROVED = "approved"
REJECTED = "rejected"
STATUSES = (AUTO_APPROVED, AUTO_REJECTED, FLAGGED, APPROVED, REJECTED)


@dataclass
class Flag:
    code: str
    reason: str  # one sentence for the reviewer, English; pages translate by code
    photo: str | None = None  # "gallery", "verification" or None for the pair
    params: dict | None = None  # the figures behind the reason, so pages can word it in any language


@dataclass
class Face:
    """One detected face, in the pixel coordinates of the decoded (EXIF-rotated) photo."""

    box: tuple[int, int, int, int]  # x, y, width, height
    score: float  # detector confidence 0..1
    keypoints: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class PhotoAnalysis:
    """What the pipeline learned about one photo; reused when a photo appears in several pairs."""

    sha256: str
    width: int = 0
    height: int = 0
    faces: list[Face] = field(default_factory=list)
    main_face: int | None = None  # index into faces of the face used
    crop: np.ndarray | None = None  # aligned face chip, uint8 RGB (150x150)
    gender_crop: np.ndarray | None = None  # the gender network's chip (32x32), same landmarks
    chips: dict[str, np.ndarray] = field(default_factory=dict)  # other identity networks' chips, by name
    embedding: np.ndarray | None = None  # pretrained 128-d embedding (face and mirror averaged)
    projection: np.ndarray | None = None  # the Siamese tower's output for this face
    gender_logit: float | None = None  # pretrained gender network: log-odds of male over female
    gender_probs: np.ndarray | None = (
        None  # gender head output, in the order of core.verification.heads.GENDERS
    )
    quality: float | None = None  # 0..1, higher is better (sharpness and size)
    hashes: str | None = None  # perceptual hashes "chip:whole:region" (core.verification.fraud)
    hashes_mirror: str | None = None  # the same of the mirror image: a mirrored copy matches it
    taken_at: str | None = None  # EXIF DateTimeOriginal, ISO format; None when the photo has none
    pose: dict | None = None  # yaw, pitch, roll in degrees, measured only when a challenge asks
    # (mean, spread) of the photo's closest cohort scores (core.verification.cohort), when the model
    # version normalises its scores against a cohort
    cohort_stats: np.ndarray | None = None
    flags: list[Flag] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # message when the photo could not be used at all
    capture: CaptureCheck | None = None  # measures and findings of the capture check

    @property
    def usable(self) -> bool:
        return self.embedding is not None


# The calibrated probability of one person, in words staff can read (keys of core/i18n), from the
# most likely down: (lowest probability of the band, key). The words say how likely, the decision
# (status) says what the machine did with it; at even odds of same and different pairs.
SIMILARITY_WORDS = (
    (0.99, "similarity.very_likely_same"),
    (0.90, "similarity.likely_same"),
    (0.10, "similarity.cannot_tell"),
    (0.01, "similarity.likely_different"),
    (0.0, "similarity.very_likely_different"),
)


def similarity_words(probability: float | None) -> str | None:
    """The i18n key of the words for a calibrated probability (None when there is none)."""
    if probability is None:
        return None
    for lowest, key in SIMILARITY_WORDS:
        if probability >= lowest:
            return key
    return SIMILARITY_WORDS[-1][1]


@dataclass
class VerificationResult:
    same_person: bool | None  # None when no decision could be made (no face, bad image)
    similarity: float | None  # 0..1
    threshold: float
    uncertain_band: tuple[float, float]
    predicted_gender: str | None  # "M" / "F"
    gender_confidence: float | None  # 0.5..1
    registered_gender: str | None
    status: str  # one of STATUSES (auto_approved, auto_rejected or flagged here)
    flags: list[Flag]
    gallery: PhotoAnalysis
    verification: PhotoAnalysis
    timings_ms: dict[str, float]  # per stage, plus "total"
    model_version: str
    # Evidence of the fraud checks: "reuse" (matches, thresholds), "exif", "challenge".
    checks: dict = field(default_factory=dict)
    # The pair's score normalised against the model's cohort of other faces (core.verification.cohort);
    # similarity is its calibrated probability. None for versions without a cohort.
    cohort_score: float | None = None

    @property
    def similarity_words(self) -> str | None:
        """The i18n key of the similarity in words ("similarity.likely_same", ...)."""
        return similarity_words(self.similarity)

    @property
    def flagged(self) -> bool:
        return self.status == FLAGGED

    def to_dict(self, include_crops: bool = False) -> dict:
        """JSON-ready dict. Crops and embeddings are left out unless asked (they are large)."""

        def photo(p: PhotoAnalysis) -> dict:
            d = {
                "sha256": p.sha256,
                "width": p.width,
                "height": p.height,
                "faces": [asdict(f) for f in p.faces],
                "main_face": p.main_face,
                "quality": p.quality,
                "hashes": p.hashes,
                "taken_at": p.taken_at,
                "pose": p.pose,
                "error": p.error,
                "capture": p.capture.to_dict() if p.capture else None,
                "timings_ms": p.timings_ms,
            }
            if include_crops and p.crop is not None:
                d["crop"] = p.crop.tolist()
            return d

        return {
            "same_person": self.same_person,
            "similarity": self.similarity,
            # an i18n key (core/i18n catalogs): the pages and the API word it in the reader's language
            "similarity_words": self.similarity_words,
            "cohort_score": self.cohort_score,
            "threshold": self.threshold,
            "uncertain_band": list(self.uncertain_band),
            "predicted_gender": self.predicted_gender,
            "gender_confidence": self.gender_confidence,
            "registered_gender": self.registered_gender,
            "status": self.status,
            "flags": [asdict(f) for f in self.flags],
            "gallery": photo(self.gallery),
            "verification": photo(self.verification),
            "timings_ms": self.timings_ms,
            "model_version": self.model_version,
            "checks": self.checks,
        }
