"""The pretrained half of the path: photo bytes -> located face -> embedding and gender log-odds.

Used by the engine (which adds the trained heads) and by training (which needs the same features
without any heads). Nothing here is trained by the project: dlib's ResNet (ported to Keras) and
Cydral's gender network (ported to Keras), both read from files shipped in packages or models/.

FEATURES_VERSION names this recipe; a model version records the one it was trained on and the
embedding cache is keyed by it, so changing the recipe cannot silently mix features.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from core.errors import ImageError
from core.verification import capture, fraud, imaging, quality
from core.verification import faces as face_ops
from core.verification.networks import DEFAULT_NETWORKS, compiled, network, network_class
from core.verification.networks.dlib_resnet import TTA_ROTATIONS
from core.verification.result import BAD_IMAGE, LOW_QUALITY, NO_FACE, SEVERAL_FACES, Flag, PhotoAnalysis

FEATURES_VERSION = "dlib-rn-v1+cydral-gender-v1/boxfit/mirror"

PhotoInput = bytes | str | Path


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def read_photo(photo: PhotoInput) -> bytes:
    if isinstance(photo, bytes | bytearray | memoryview):
        return bytes(photo)
    return Path(photo).read_bytes()


def _rotations(chip: np.ndarray) -> list[np.ndarray]:
    size = chip.shape[0]
    out = []
    for angle in TTA_ROTATIONS:
        if angle == 0:
            out.append(chip)
            continue
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        out.append(
            cv2.warpAffine(chip, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        )
    return out


def features_version(networks: tuple[str, ...] = DEFAULT_NETWORKS) -> str:
    """The recipe of the features a model version on these identity networks takes.

    dlib alone keeps the name it always had, so earlier versions and cached rows stay valid.
    """
    extra = [network_class(name).recipe for name in networks if name != "dlib"]
    return "+".join([FEATURES_VERSION, *extra])


def _decode(data: bytes) -> tuple[PhotoAnalysis, imaging.DecodedImage | None]:
    """The first steps of locate() and locate_every_face(): the photo's analysis with its size,
    EXIF date and decode time, and the decoded image; None with the error and flag set when the
    bytes are not a usable photo."""
    analysis = PhotoAnalysis(sha256=hashlib.sha256(data).hexdigest())
    start = time.perf_counter()
    try:
        decoded = imaging.decode_image(data)
    except ImageError as exc:
        analysis.error = str(exc)
        analysis.flags.append(Flag(BAD_IMAGE, str(exc)))
        analysis.timings_ms["decode"] = _ms(start)
        return analysis, None
    analysis.height, analysis.width = decoded.rgb.shape[:2]
    taken_at = fraud.exif_taken_at(data)
    analysis.taken_at = taken_at.isoformat() if taken_at else None
    analysis.timings_ms["decode"] = _ms(start)
    return analysis, decoded


def _align(
    analysis: PhotoAnalysis, rgb: np.ndarray, face: face_ops.Face, networks: tuple[str, ...]
) -> face_ops.AlignedFace:
    """Align one face into the analysis: dlib's chip and the gender chip, quality (flagged when low),
    the perceptual hashes, and a chip for each identity network besides dlib."""
    start = time.perf_counter()
    aligned = face_ops.align_face(rgb, face)
    analysis.crop, analysis.gender_crop = aligned.chip, aligned.gender_chip
    analysis.quality = quality.image_quality(aligned.chip)
    analysis.hashes, analysis.hashes_mirror = fraud.photo_hashes(rgb, face.box, aligned.chip)
    if analysis.quality < quality.LOW_QUALITY_THRESHOLD:
        analysis.flags.append(
            Flag(LOW_QUALITY, f"The face is blurred, dark or flat (quality {analysis.quality:.2f}).")
        )
    analysis.timings_ms["align"] = _ms(start)
    for name in networks:
        if name == "dlib":
            continue
        start = time.perf_counter()
        analysis.chips[name] = network(name).chip(rgb, face)
        analysis.timings_ms[f"align_{name}"] = _ms(start)
        analysis.timings_ms["align"] += analysis.timings_ms[f"align_{name}"]
    return aligned


def locate(
    data: bytes,
    measure_pose: bool = False,
    check_capture: bool = True,
    networks: tuple[str, ...] = DEFAULT_NETWORKS,
    run: compiled.Runner | None = None,
) -> PhotoAnalysis:
    """Decode, detect and align one photo, with a chip for each identity network besides dlib, then
    the capture check (unless told not to: training only needs the features). Bad input becomes an
    error and a flag, never a raise.

    measure_pose: also estimate the head pose (FaceMesh, ~15 ms), for a pose challenge.
    run: the interpreters this thread holds (for the capture check's occlusion network); one is
    borrowed for the check when not given.
    """
    analysis, decoded = _decode(data)
    if decoded is None:
        return analysis
    rgb = decoded.rgb
    start = time.perf_counter()
    analysis.faces = face_ops.detect_faces(rgb)
    analysis.main_face = face_ops.main_face_index(analysis.faces, analysis.width, analysis.height)
    analysis.timings_ms["detect"] = _ms(start)
    if analysis.main_face is None:
        analysis.error = "No face was found in the photo."
        analysis.flags.append(Flag(NO_FACE, analysis.error))
        return analysis
    others = face_ops.competing_faces(analysis.faces, analysis.main_face, analysis.width, analysis.height)
    if others:
        analysis.flags.append(
            Flag(
                SEVERAL_FACES,
                f"{len(others) + 1} faces in the photo; the largest, most central one was used.",
            )
        )

    aligned = _align(analysis, rgb, analysis.faces[analysis.main_face], networks)
    if measure_pose:
        start = time.perf_counter()
        mesh = face_ops.face_mesh(rgb, analysis.faces[analysis.main_face])
        analysis.pose = None if mesh is None else fraud.head_pose(mesh).as_dict()
        analysis.timings_ms["pose"] = _ms(start)
    if not check_capture:
        return analysis

    # What the member should fix (mask, sunglasses, light, distance, ...): each finding but the
    # advisory ones (closed eyes) is a flag, so the pair goes to review; the measures and
    # instructions travel with the analysis.
    face = analysis.faces[analysis.main_face]
    with contextlib.nullcontext(run) if run else compiled.runner(networks) as held:
        analysis.capture = capture.check_capture(
            rgb, face.box, face.keypoints, aligned.chip, decoded.scale, held.occlusion
        )
    analysis.flags += [
        Flag(f.code, capture.reason(f))
        for f in analysis.capture.findings
        if f.code not in capture.ADVISORY_CODES
    ]
    analysis.timings_ms["capture"] = analysis.capture.time_ms
    return analysis


def pretrained_features(
    run: compiled.Runner, chip: np.ndarray, gender_chip: np.ndarray
) -> tuple[np.ndarray, float]:
    """(dlib's 128-d embedding, gender log-odds) of one face: dlib on the chip's views (each
    rotation and its mirror image) averaged, the gender network on its chip and mirror, the
    log-odds averaged. What the engine and the embedding cache both compute."""
    rotated = _rotations(chip)
    views = np.stack([*rotated, *(np.ascontiguousarray(r[:, ::-1]) for r in rotated)])
    embedding = run.dlib(views).mean(axis=0)
    probs = run.gender(np.stack([gender_chip, gender_chip[:, ::-1]]))  # [female, male]
    log_odds = np.log(probs[:, 1] + np.float32(1e-7)) - np.log(probs[:, 0] + np.float32(1e-7))
    return embedding.astype(np.float32), float(log_odds.mean())


def network_embedding(run: compiled.Runner, name: str, chip: np.ndarray) -> np.ndarray:
    """An extra identity network's embedding of its chip (e.g. SFace's, unit length)."""
    return network(name).finish(run.embed(name, chip))[0]


def embed_one(analysis: PhotoAnalysis, networks: tuple[str, ...], run: compiled.Runner) -> None:
    """Fill .embedding (the networks' embeddings concatenated, dlib first) and .gender_logit of a
    located analysis, on this thread (each locate thread runs its own photo's networks)."""
    if analysis.crop is None or not all(n in analysis.chips for n in networks[1:]):
        return
    start = time.perf_counter()
    embedding, analysis.gender_logit = pretrained_features(run, analysis.crop, analysis.gender_crop)
    parts = [embedding, *(network_embedding(run, name, analysis.chips[name]) for name in networks[1:])]
    analysis.embedding = np.concatenate(parts).astype(np.float32)
    analysis.timings_ms["embed_networks"] = analysis.timings_ms["embed"] = _ms(start)


# locate() of the photos of one call runs on this many threads: decoding, MediaPipe, YuNet, dlib's
# landmarks and the capture check are mostly one core each and release the GIL, so on the 2-core
# machine the two photos of a pair are located side by side, each thread with its own detectors and
# interpreters (core.verification.lending).
LOCATE_THREADS = 2
# OpenCV works on the thread that calls it: its own pool of one worker per core made the two
# photos wait on each other (quiet, 200 held-out pairs: pair p95 46 -> 34 ms, YuNet's stage in
# the slowest pairs 9.8 -> 4.4 ms, same CPU time). Same results.
cv2.setNumThreads(1)
_locate_pool: tuple[int, ThreadPoolExecutor] | None = None  # (process id, pool)
_pool_lock = threading.Lock()


def locate_pool() -> ThreadPoolExecutor:
    """The process's locate threads (a new pool in a forked child: its parent's threads are gone)."""
    global _locate_pool
    with _pool_lock:
        if _locate_pool is None or _locate_pool[0] != os.getpid():
            _locate_pool = (os.getpid(), ThreadPoolExecutor(LOCATE_THREADS, thread_name_prefix="locate"))
        return _locate_pool[1]


def _analyse(photo: PhotoInput, pose: bool, networks: tuple[str, ...]) -> PhotoAnalysis:
    try:
        data = read_photo(photo)
    except OSError as exc:
        analysis = PhotoAnalysis(sha256="", error=f"The photo cannot be read: {exc.strerror or exc}")
        analysis.flags.append(Flag(BAD_IMAGE, analysis.error))
        return analysis
    with compiled.runner(networks) as run:
        analysis = locate(data, measure_pose=pose, networks=networks, run=run)
        embed_one(analysis, networks, run)
    return analysis


def extract(
    photos: list[PhotoInput],
    measure_pose: list[bool] | None = None,
    networks: tuple[str, ...] = DEFAULT_NETWORKS,
) -> list[PhotoAnalysis]:
    """locate() and embed_one() each photo, the photos side by side on LOCATE_THREADS (one core
    each). Unreadable files become flagged analyses.

    measure_pose: per photo, whether to estimate its head pose (default: none).
    """
    poses = [bool(p) for p in (measure_pose or [False] * len(photos))]
    if len(poses) != len(photos):
        raise ValueError("measure_pose needs one entry per photo")
    if len(photos) == 1 or threading.current_thread().name.startswith("locate"):
        return [_analyse(photo, pose, networks) for photo, pose in zip(photos, poses, strict=True)]
    return list(locate_pool().map(_analyse, photos, poses, [networks] * len(photos)))


def locate_every_face(
    data: bytes, networks: tuple[str, ...] = DEFAULT_NETWORKS, run: compiled.Runner | None = None
) -> list[PhotoAnalysis]:
    """Decode a photo once and analyse each candidate face (faces.detect_every_face) the way
    locate() analyses the main one: aligned chips for every network, quality, hashes, and the
    embedding when run is given. One analysis per face, its .main_face the index of that face in
    .faces (which every one of them shares); a photo without a usable face gives one analysis with
    the error and flag. No capture check: that is for the selfie, not for photos a member shows.
    """
    photo, decoded = _decode(data)
    if decoded is None:
        return [photo]
    rgb = decoded.rgb
    start = time.perf_counter()
    photo.faces = face_ops.detect_every_face(rgb)
    photo.timings_ms["detect"] = _ms(start)
    if not photo.faces:
        photo.error = "No face was found in the photo."
        photo.flags.append(Flag(NO_FACE, photo.error))
        return [photo]

    out = []
    for index, face in enumerate(photo.faces):
        analysis = PhotoAnalysis(
            sha256=photo.sha256,
            width=photo.width,
            height=photo.height,
            faces=photo.faces,
            main_face=index,
            taken_at=photo.taken_at,
            timings_ms=dict(photo.timings_ms) if index == 0 else {},
        )
        _align(analysis, rgb, face, networks)
        if run is not None:
            embed_one(analysis, networks, run)
        out.append(analysis)
    return out


def _analyse_every_face(photo: PhotoInput, networks: tuple[str, ...]) -> list[PhotoAnalysis]:
    try:
        data = read_photo(photo)
    except OSError as exc:
        analysis = PhotoAnalysis(sha256="", error=f"The photo cannot be read: {exc.strerror or exc}")
        analysis.flags.append(Flag(BAD_IMAGE, analysis.error))
        return [analysis]
    with compiled.runner(networks) as run:
        return locate_every_face(data, networks, run)


def extract_all_faces(
    photos: list[PhotoInput], networks: tuple[str, ...] = DEFAULT_NETWORKS
) -> list[list[PhotoAnalysis]]:
    """locate_every_face() with embeddings for each photo, the photos side by side on
    LOCATE_THREADS as in extract(). Per photo, one analysis per candidate face."""
    if len(photos) == 1 or threading.current_thread().name.startswith("locate"):
        return [_analyse_every_face(photo, networks) for photo in photos]
    return list(locate_pool().map(_analyse_every_face, photos, [networks] * len(photos)))


def head_inputs(embedding: np.ndarray, gender_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the heads take: the Siamese tower the whole embedding (every network's), the gender
    head [log-odds, the whole embedding] too. SFace's part helps the gender head on East Asian
    faces (core.training.gender); versions whose head was trained on [log-odds, dlib's part] alone
    take their part of this (core.verification.heads.load_version)."""
    embedding = np.asarray(embedding, np.float32)
    embedding = embedding.reshape(-1, embedding.shape[-1] if embedding.ndim else 128)
    gender_logit = np.asarray(gender_logit, np.float32).reshape(-1, 1)
    return embedding, np.concatenate([gender_logit, embedding], axis=1)
