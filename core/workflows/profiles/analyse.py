"""A profile verification's analyses: the selfie and each distinct photo never seen analysed once,
side by side on the engine's locate threads; photos whose check is stored are not analysed again.

    verify_photos(engine, selfie, keys, new, stored, ...) -> (ProfileVerification, counts)
        keys: the photos' content hashes in the member's order; new: {hash: bytes} of the photos to
        analyse; stored: {hash: [PhotoAnalysis]} rebuilt from what was stored (stored_analyses).
        The decision is core.verification.profile.decide_profile's, the same as verify_profile's.
    StoredFace / stored_analyses(engine, faces)
        a photo checked before, as it was stored: the member's face's pretrained embedding (the
        embeddings table), its box, perceptual hashes and flags; the tower gives the projection
        again (the same numbers the engine's heads give, to float rounding).

A group photo is reused when its last check found the member in it: a new selfie is compared
with the member's face alone (the face that matched the verified selfie), never with the other
people in it. That is never more lenient than analysing it afresh, which takes the best of every
face; a group photo where the member was not found is analysed again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from core.verification import features
from core.verification import profile as rule
from core.verification.result import Face, Flag, PhotoAnalysis


@dataclass
class StoredFace:
    """A profile photo's check as stored: enough to compare a new selfie with it again."""

    sha256: str
    box: tuple[int, int, int, int]
    embedding: np.ndarray  # the pretrained embedding of the member's face (float32)
    hashes: str | None  # its perceptual hashes (the reuse check)
    flags: list[tuple[str, str]] = field(default_factory=list)  # (code, reason) of the face
    width: int = 0
    height: int = 0
    quality: float | None = None
    taken_at: str | None = None
    faces: list[Face] | None = None  # the detector's faces when stored (else the box alone)
    main_face: int = 0  # which of faces is the member's


def reusable(face_count: int, state: str | None) -> bool:
    """Whether a photo's stored check can stand for it again (see the module's docstring): it had
    one face, or it is a group photo the member was found in."""
    return face_count == 1 or (face_count > 1 and state == rule.MATCHES)


def stored_analyses(engine, faces: list[StoredFace]) -> dict[str, list[PhotoAnalysis]]:
    """{hash: [the face's analysis]} for stored checks, their projections in one tower call."""
    if not faces:
        return {}
    projections = np.asarray(
        engine.model.tower(np.stack([np.asarray(f.embedding, np.float32) for f in faces]), training=False)
    )
    out = {}
    for face, projection in zip(faces, projections, strict=True):
        out[face.sha256] = [
            PhotoAnalysis(
                sha256=face.sha256,
                width=face.width,
                height=face.height,
                faces=list(face.faces) if face.faces else [Face(tuple(face.box), 0.0)],
                main_face=face.main_face if face.faces else 0,
                embedding=np.asarray(face.embedding, np.float32),
                projection=projection,
                quality=face.quality,
                hashes=face.hashes,
                taken_at=face.taken_at,
                flags=[Flag(code, reason) for code, reason in face.flags],
            )
        ]
    return out


def _analyse(engine, selfie: bytes, new: list[bytes], challenge: str | None):
    """(selfie's analysis, each new photo's faces): the selfie on a locate thread while the photos
    take the others (the engine's pool, features.extract_all_faces), not one after the other."""
    pose = [challenge is not None]
    if not new:
        return engine.analyze_many([selfie], measure_pose=pose)[0], []
    if threading.current_thread().name.startswith("locate"):
        return engine.analyze_many([selfie], measure_pose=pose)[0], engine.analyze_faces(new)
    pending = features.locate_pool().submit(engine.analyze_many, [selfie], pose)
    try:
        photos = engine.analyze_faces(new)
    finally:
        selfie_analysis = pending.result()[0]
    return selfie_analysis, photos


def verify_photos(
    engine,
    selfie: bytes,
    keys: list[str],
    new: dict[str, bytes],
    stored: dict[str, list[PhotoAnalysis]],
    registered_gender: str | None = None,
    profile_rule: rule.ProfileRule | None = None,
    challenge: str | None = None,
    max_photos: int = rule.MAX_PROFILE_PHOTOS,
) -> tuple[rule.ProfileVerification, dict[str, int]]:
    """A selfie against the profile whose photos are `keys` (in order): the photos in `stored`
    reused, the others (their bytes in `new`) analysed once each beside the selfie. Returns the
    verification and how many distinct photos were analysed and reused."""
    if len(keys) > max_photos:
        raise ValueError(f"A profile holds at most {max_photos} photos; {len(keys)} were given.")
    start = time.perf_counter()
    todo = {k: new[k] for k in dict.fromkeys(keys) if k not in stored}
    selfie_analysis, faces = _analyse(engine, selfie, list(todo.values()), challenge)
    analysed = {**stored, **dict(zip(todo, faces, strict=True))}
    timings = {"analyse": (time.perf_counter() - start) * 1000.0}
    stage = time.perf_counter()
    result = rule.decide_profile(
        engine, selfie_analysis, [analysed[k] for k in keys], registered_gender, profile_rule, challenge
    )
    timings["decide"] = (time.perf_counter() - stage) * 1000.0
    timings["total"] = (time.perf_counter() - start) * 1000.0
    result.timings_ms = timings
    return result, {"analysed": len(todo), "reused": len([k for k in dict.fromkeys(keys) if k in stored])}
