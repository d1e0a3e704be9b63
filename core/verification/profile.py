"""A selfie against a member's whole profile: every photo the member shows is checked, one by one.

    selfie -> analysed once (capture check, gender)                         Engine.analyze_many
    each distinct profile photo (by sha256) -> every face analysed         Engine.analyze_faces
    each face against the selfie -> the face that matches best is the member's (not the largest)
    per photo: matches / does not match / no face / review, with the reason and the face's box
    the member: verified only when every photo matches the selfie; a photo that is a confident
    non-match is flagged on its own ("photo 3 does not show this member"); the member is rejected
    only when the selfie matches none of the photos and the main one is a confident non-match.

The rule: a face at or above approve_at (PROFILE_APPROVE_AT or the model version's own, the
stricter) is the member, a best face below the version's reject_below is not, and in between a
person decides. Corroboration (a photo in between accepted because it also matches a matching
profile photo) is available but off: on training people it let strangers' photos through.

verify_profile() analyses and decides; decide_profile() decides from analyses (the benchmark reuses
analyses across profiles).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field

from core.verification.features import PhotoInput, read_photo
from core.verification.genders import optional_gender
from core.verification.result import (
    AUTO_APPROVED,
    AUTO_REJECTED,
    BAD_IMAGE,
    FLAGGED,
    REUSED_PHOTO,
    Flag,
    PhotoAnalysis,
)

# The states of one profile photo.
MATCHES = "matches"
DOES_NOT_MATCH = "does_not_match"
NO_FACE = "no_face"
REVIEW = "review"  # cannot tell: a person decides
PHOTO_STATES = (MATCHES, DOES_NOT_MATCH, NO_FACE, REVIEW)

# A member shows at most this many photos (the product's setting overrides it).
MAX_PROFILE_PHOTOS = 9

# The product's rule (see ProfileRule): None leaves a photo between the two operating points to a
# person; a number accepts it when corroborated (chosen on training people, core.benchmarks.profiles).
CORROBORATE_FROM: float | None = None
# A profile photo is the member from this similarity (or the model version's approve_at, whichever
# is stricter). The version's approve_at lets 0.1% of impostor pairs through; a profile of several
# photos, each a chance for a stranger's face and group photos with several, needs fewer.
# Chosen on the training people of v20261201-102216 (core.benchmarks.profiles --set train: 691
# strangers' photos, the highest at 0.802, the next 0.527; 0.85 approves none of them and leaves
# 0.7% of the members' own photos to a person); a new model version is re-checked the same way.
PROFILE_APPROVE_AT: float | None = 0.85
# A best face below this (or below the version's reject_below, whichever is higher) is a confident
# non-match. The profile rule was measured with this reject point (v20261201-102216's, a calibrated
# probability of one person of 1.25%); a version chosen for the pair decision with a far lower one
# (the cohort-normalised versions: 0.00015) would send every stranger's photo to a person instead.
PROFILE_REJECT_BELOW = 0.0125
_DEFAULT = object()

# Flags about the selfie that stop an automatic verification, whatever the photos show.
SELFIE_PHOTO = "verification"


@dataclass
class ProfileRule:
    """The thresholds of a profile verification, on the engine's similarity (0..1)."""

    approve_at: float  # a face at or above this is the member
    reject_below: float  # a best face below this is a confident non-match
    # A photo between the two, its best face at or above this against the selfie, is accepted when
    # that face matches another photo that matches the selfie, at approve_at. None: never.
    corroborate_from: float | None = None

    @classmethod
    def of(cls, engine, corroborate_from=_DEFAULT, approve_at=_DEFAULT) -> ProfileRule:
        """The rule on this engine's operating points; corroborate_from and approve_at (None: the
        version's own) are the product's unless given."""
        points = engine.model.operating_points
        chosen = CORROBORATE_FROM if corroborate_from is _DEFAULT else corroborate_from
        floor = PROFILE_APPROVE_AT if approve_at is _DEFAULT else approve_at
        reject = max(points.reject_below, PROFILE_REJECT_BELOW)
        return cls(max(points.approve_at, floor or 0.0), min(reject, points.approve_at), chosen)


@dataclass
class ProfilePhotoResult:
    position: int  # 1-based, in the member's order; 1 is the main photo
    sha256: str
    state: str  # one of PHOTO_STATES
    reason: str  # one sentence for the reviewer, English
    similarity: float | None  # the best face against the selfie, 0..1
    face: int | None  # index into faces of the member's face (the best match), None if none
    box: tuple[int, int, int, int] | None  # that face's box (x, y, width, height), for the outline
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)  # every candidate face's box
    face_similarities: list[float] = field(default_factory=list)  # each candidate face against the selfie
    corroborated_by: int | None = None  # position of the photo that confirmed it
    flags: list[Flag] = field(default_factory=list)
    analysis: PhotoAnalysis | None = None  # the member's face's analysis (or the photo's, without one)

    @property
    def flagged(self) -> bool:
        return self.state != MATCHES

    def to_dict(self) -> dict:
        return {
            "position": self.position,
            "sha256": self.sha256,
            "state": self.state,
            "reason": self.reason,
            "similarity": self.similarity,
            "face": self.face,
            "box": list(self.box) if self.box else None,
            "faces": [list(b) for b in self.faces],
            "face_similarities": self.face_similarities,
            "corroborated_by": self.corroborated_by,
            "flags": [asdict(f) for f in self.flags],
        }


@dataclass
class ProfileVerification:
    status: str  # AUTO_APPROVED (verified), FLAGGED (a person decides) or AUTO_REJECTED
    reasons: list[str]  # why, one sentence each; empty when verified
    photos: list[ProfilePhotoResult]
    selfie: PhotoAnalysis
    selfie_flags: list[Flag]
    predicted_gender: str | None
    gender_confidence: float | None
    registered_gender: str | None
    rule: ProfileRule
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.status == AUTO_APPROVED

    @property
    def flagged_photos(self) -> list[int]:
        return [p.position for p in self.photos if p.flagged]

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "reasons": self.reasons,
            "photos": [p.to_dict() for p in self.photos],
            "flagged_photos": self.flagged_photos,
            "selfie": {
                "sha256": self.selfie.sha256,
                "faces": [list(f.box) for f in self.selfie.faces],
                "main_face": self.selfie.main_face,
                "error": self.selfie.error,
                "capture": self.selfie.capture.to_dict() if self.selfie.capture else None,
            },
            "selfie_flags": [asdict(f) for f in self.selfie_flags],
            "predicted_gender": self.predicted_gender,
            "gender_confidence": self.gender_confidence,
            "registered_gender": self.registered_gender,
            "rule": asdict(self.rule),
            "model_version": self.model_version,
            "timings_ms": self.timings_ms,
        }


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _photo_word(position: int, faces: int) -> str:
    return f"photo {position}" + (f" ({faces} faces)" if faces > 1 else "")


def _judge_photo(
    position: int, faces: list[PhotoAnalysis], results: list, rule: ProfileRule
) -> ProfilePhotoResult:
    """One photo's state from its faces' comparisons with the selfie (results[i] for faces[i])."""
    first = faces[0]
    boxes = [f.box for f in first.faces]
    usable = [i for i, a in enumerate(faces) if a.usable]
    if not usable:
        bad = any(f.code == BAD_IMAGE for f in first.flags)
        reason = first.error or "No face was found in the photo."
        return ProfilePhotoResult(
            position=position,
            sha256=first.sha256,
            state=REVIEW if bad else NO_FACE,
            reason=f"Photo {position}: {reason}",
            similarity=None,
            face=None,
            box=None,
            faces=boxes,
            flags=list(first.flags),
            analysis=first,
        )
    sims = [results[i].similarity if results[i] is not None else None for i in range(len(faces))]
    best = max(usable, key=lambda i: sims[i])
    similarity = float(sims[best])
    analysis = faces[best]
    face_index = analysis.main_face
    word = _photo_word(position, len(boxes))
    flags = [Flag(f.code, f.reason, "profile") for f in analysis.flags]
    if similarity >= rule.approve_at:
        state = MATCHES
        reason = f"{word.capitalize()} shows this member (similarity {similarity:.3f})."
    elif similarity < rule.reject_below:
        state = DOES_NOT_MATCH
        who = "none of its faces is" if len(boxes) > 1 else "it does not show"
        reason = (
            f"{word.capitalize()} does not show this member: {who} this member "
            f"(best similarity {similarity:.3f}, below {rule.reject_below:.3f})."
        )
    else:
        state = REVIEW
        reason = (
            f"{word.capitalize()}: cannot tell whether it shows this member (similarity {similarity:.3f}, "
            f"between {rule.reject_below:.3f} and {rule.approve_at:.3f})."
        )
    return ProfilePhotoResult(
        position=position,
        sha256=first.sha256,
        state=state,
        reason=reason,
        similarity=similarity,
        face=face_index,
        box=tuple(boxes[face_index]) if face_index is not None else None,
        faces=boxes,
        face_similarities=[float(s) if s is not None else float("nan") for s in sims],
        flags=flags,
        analysis=analysis,
    )


def _corroborate(engine, photos: list[ProfilePhotoResult], rule: ProfileRule) -> None:
    """A photo left for review whose member face is close to the selfie (corroborate_from) and
    matches the face of a photo that itself matches the selfie, at approve_at, matches too."""
    if rule.corroborate_from is None:
        return
    anchors = [p for p in photos if p.state == MATCHES and p.corroborated_by is None]
    for photo in photos:
        if photo.state != REVIEW or photo.similarity is None or photo.similarity < rule.corroborate_from:
            continue
        for anchor in anchors:
            if anchor.sha256 == photo.sha256:
                continue
            similarity = engine.compare(anchor.analysis, photo.analysis).similarity
            if similarity is not None and similarity >= rule.approve_at:
                photo.state, photo.corroborated_by = MATCHES, anchor.position
                photo.reason = (
                    f"Photo {photo.position} shows this member: similarity {photo.similarity:.3f} to the "
                    f"selfie, and {similarity:.3f} to photo {anchor.position}, which matches the selfie."
                )
                break


def decide_profile(
    engine,
    selfie: PhotoAnalysis,
    photo_faces: list[list[PhotoAnalysis]],
    registered_gender: str | None = None,
    rule: ProfileRule | None = None,
    challenge: str | None = None,
) -> ProfileVerification:
    """Decide a profile from analyses: the selfie (Engine.analyze_many) and, per photo in the
    member's order, its faces (Engine.analyze_faces)."""
    rule = rule or ProfileRule.of(engine)
    registered_gender = optional_gender(registered_gender)
    selfie_flags: list[Flag] = [Flag(f.code, f.reason, SELFIE_PHOTO) for f in selfie.flags]
    predicted_gender = gender_confidence = None
    photos: list[ProfilePhotoResult] = []
    selfie_checked = False
    for position, faces in enumerate(photo_faces, start=1):
        results = [
            engine.compare(a, selfie, registered_gender, challenge) if a.usable and selfie.usable else None
            for a in faces
        ]
        for result in results:
            if result is None:
                continue
            if not selfie_checked:
                # The selfie's own flags (capture, gender, pose challenge) are the same in every pair.
                selfie_checked = True
                predicted_gender, gender_confidence = result.predicted_gender, result.gender_confidence
                selfie_flags += [
                    f
                    for f in result.flags
                    if f.photo == SELFIE_PHOTO and f.code not in {g.code for g in selfie_flags}
                ]
        reused = next((f for r in results if r is not None for f in r.flags if f.code == REUSED_PHOTO), None)
        if reused:
            selfie_flags.append(
                Flag(reused.code, f"Photo {position}: {reused.reason}", SELFIE_PHOTO, reused.params)
            )
        if selfie.usable:
            photos.append(_judge_photo(position, faces, results, rule))
        else:
            photos.append(
                ProfilePhotoResult(
                    position=position,
                    sha256=faces[0].sha256,
                    state=REVIEW,
                    reason=f"Photo {position}: cannot be compared, the selfie shows no usable face.",
                    similarity=None,
                    face=None,
                    box=None,
                    faces=[f.box for f in faces[0].faces],
                    analysis=faces[0],
                )
            )
    _corroborate(engine, photos, rule)

    reasons = [f.reason for f in selfie_flags]
    if not selfie.usable and not reasons:
        reasons.append(selfie.error or "The selfie shows no usable face.")
    reasons += [p.reason for p in photos if p.flagged]
    if not photos:
        reasons.append("The profile has no photo.")
    main_rejected = bool(photos) and photos[0].state == DOES_NOT_MATCH
    if selfie.usable and main_rejected and not any(p.state == MATCHES for p in photos) and not selfie_flags:
        status = AUTO_REJECTED
        reasons.insert(0, "The selfie matches none of the profile's photos.")
    elif reasons:
        status = FLAGGED
    else:
        status = AUTO_APPROVED
    return ProfileVerification(
        status=status,
        reasons=reasons,
        photos=photos,
        selfie=selfie,
        selfie_flags=selfie_flags,
        predicted_gender=predicted_gender,
        gender_confidence=gender_confidence,
        registered_gender=registered_gender,
        rule=rule,
        model_version=engine.model_version,
    )


def check_photo(
    engine,
    selfie: PhotoAnalysis,
    faces: list[PhotoAnalysis],
    position: int,
    registered_gender: str | None = None,
    rule: ProfileRule | None = None,
) -> ProfilePhotoResult:
    """One photo added later (its faces, Engine.analyze_faces) against the member's verified
    selfie, by the same rule as a whole profile's photos."""
    rule = rule or ProfileRule.of(engine)
    if not selfie.usable:
        return ProfilePhotoResult(
            position=position,
            sha256=faces[0].sha256,
            state=REVIEW,
            reason=f"Photo {position}: cannot be compared, the member's selfie shows no usable face.",
            similarity=None,
            face=None,
            box=None,
            faces=[f.box for f in faces[0].faces],
            analysis=faces[0],
        )
    gender = optional_gender(registered_gender)
    results = [engine.compare(a, selfie, gender) if a.usable else None for a in faces]
    return _judge_photo(position, faces, results, rule)


def _read_or_empty(photo: PhotoInput) -> bytes:
    """An unreadable photo must not stop the others: empty bytes decode to a clear error."""
    try:
        return read_photo(photo)
    except OSError:
        return b""


def verify_profile(
    engine,
    selfie: PhotoInput,
    photos: list[PhotoInput],
    registered_gender: str | None = None,
    rule: ProfileRule | None = None,
    challenge: str | None = None,
    max_photos: int = MAX_PROFILE_PHOTOS,
) -> ProfileVerification:
    """Verify a selfie against a member's profile photos (in the member's order, the first the
    main one). Each distinct photo is analysed once. Never raises for bad photos; raises
    ValueError for a profile of more than max_photos photos."""
    if len(photos) > max_photos:
        raise ValueError(f"A profile holds at most {max_photos} photos; {len(photos)} were given.")
    start = time.perf_counter()
    datas = [_read_or_empty(p) for p in photos]
    keys = [hashlib.sha256(d).hexdigest() for d in datas]
    distinct = dict(zip(keys, datas, strict=True))
    stage = time.perf_counter()
    selfie_analysis = engine.analyze_many([selfie], measure_pose=[challenge is not None])[0]
    timings = {"selfie": _ms(stage)}
    stage = time.perf_counter()
    analysed = dict(zip(distinct, engine.analyze_faces(list(distinct.values())), strict=True))
    timings["photos"] = _ms(stage)
    stage = time.perf_counter()
    result = decide_profile(
        engine, selfie_analysis, [analysed[k] for k in keys], registered_gender, rule, challenge
    )
    timings["decide"] = _ms(stage)
    timings["total"] = _ms(start)
    result.timings_ms = timings
    return result


__all__ = [
    "DOES_NOT_MATCH",
    "CORROBORATE_FROM",
    "MATCHES",
    "MAX_PROFILE_PHOTOS",
    "NO_FACE",
    "PHOTO_STATES",
    "PROFILE_APPROVE_AT",
    "REVIEW",
    "ProfilePhotoResult",
    "ProfileRule",
    "ProfileVerification",
    "check_photo",
    "decide_profile",
    "verify_profile",
]
