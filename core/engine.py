"""The one path of a verification, whoever calls it (pages, API, batch runner, benchmark, tests).

    photo bytes -> decode -> detect (MediaPipe) -> main face -> align (dlib 5 points) -> chip
    chips (and their mirror images) -> pretrained ResNet in Keras -> embedding
    embedding -> Siamese tower -> projection;  embedding -> gender head -> probabilities
    two projections -> similarity -> rules -> VerificationResult

Engine.load() once per process; then verify(), or analyze_many() + compare() when photos repeat.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from core import faces as face_ops
from core import imaging
from core.errors import ImageError
from core.heads import GENDERS, ModelVersion, load_version, similarity_from_projections
from core.result import (
    AUTO_APPROVED,
    AUTO_REJECTED,
    BAD_IMAGE,
    FLAGGED,
    GENDER_MISMATCH,
    LOW_QUALITY,
    NO_FACE,
    SEVERAL_FACES,
    UNCERTAIN_GENDER,
    UNCERTAIN_SIMILARITY,
    Flag,
    PhotoAnalysis,
    VerificationResult,
)

PhotoInput = bytes | str | Path
# Chips per backbone call in a batch: big enough to amortise the call, small enough for memory.
BATCH_CHIPS = 32


def _read(photo: PhotoInput) -> bytes:
    if isinstance(photo, bytes | bytearray | memoryview):
        return bytes(photo)
    return Path(photo).read_bytes()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Engine:
    """A loaded model version with the pretrained network, ready to verify pairs."""

    def __init__(self, model: ModelVersion):
        import tensorflow as tf

        from core import dlib_resnet

        self.model = model
        backbone = dlib_resnet.load_embedding_model()
        tower = model.tower
        gender = model.gender
        self._offset, self._scale = model.similarity_params()

        # One graph per batch of chips: mirror images ride along in the same call, and the heads
        # run in the same graph, so a pair costs one TensorFlow call.
        @tf.function(input_signature=[tf.TensorSpec([None, 150, 150, 3], tf.uint8)], reduce_retracing=True)
        def photo_graph(chips):
            both = tf.concat([chips, tf.reverse(chips, axis=[2])], axis=0)
            embeddings = backbone(tf.cast(both, tf.float32), training=False)
            n = tf.shape(chips)[0]
            embedding = (embeddings[:n] + embeddings[n:]) / 2.0
            return embedding, tower(embedding, training=False), gender(embedding, training=False)

        self._photo_graph = photo_graph

    @classmethod
    def load(cls, version: str | None = None, models_dir: Path | None = None) -> Engine:
        """Load a model version (default: the one named in models/DEFAULT) and warm it up."""
        engine = cls(load_version(version, models_dir))
        engine._photo_graph(np.zeros((1, 150, 150, 3), np.uint8))
        return engine

    @property
    def model_version(self) -> str:
        return self.model.version

    # -- per photo -------------------------------------------------------------------------

    def _locate(self, data: bytes) -> PhotoAnalysis:
        """Decode, detect and align one photo. Bad input becomes an error and a flag, not a raise."""
        analysis = PhotoAnalysis(sha256=hashlib.sha256(data).hexdigest())
        start = time.perf_counter()
        try:
            decoded = imaging.decode_image(data)
        except ImageError as exc:
            analysis.error = str(exc)
            analysis.flags.append(Flag(BAD_IMAGE, str(exc)))
            analysis.timings_ms["decode"] = _ms(start)
            return analysis
        rgb = decoded.rgb
        analysis.height, analysis.width = rgb.shape[:2]
        analysis.timings_ms["decode"] = _ms(start)

        start = time.perf_counter()
        analysis.faces = face_ops.detect_faces(rgb)
        analysis.main_face = face_ops.main_face_index(analysis.faces, analysis.width, analysis.height)
        analysis.timings_ms["detect"] = _ms(start)
        if analysis.main_face is None:
            analysis.error = "No face was found in the photo."
            analysis.flags.append(Flag(NO_FACE, analysis.error))
            return analysis
        others = face_ops.competing_faces(analysis.faces, analysis.main_face)
        if others:
            analysis.flags.append(
                Flag(
                    SEVERAL_FACES,
                    f"{len(others) + 1} faces in the photo; the largest, most central one was used.",
                )
            )

        start = time.perf_counter()
        aligned = face_ops.align_face(rgb, analysis.faces[analysis.main_face])
        analysis.crop = aligned.chip
        analysis.quality = imaging.image_quality(aligned.chip)
        if analysis.quality < imaging.LOW_QUALITY_THRESHOLD:
            analysis.flags.append(
                Flag(LOW_QUALITY, f"The face is blurred or too dark (quality {analysis.quality:.2f}).")
            )
        analysis.timings_ms["align"] = _ms(start)
        return analysis

    def analyze_many(self, photos: list[PhotoInput]) -> list[PhotoAnalysis]:
        """Analyse photos, all usable faces through the network in one call. Never raises for bad input."""
        analyses = []
        for photo in photos:
            try:
                data = _read(photo)
            except OSError as exc:
                analysis = PhotoAnalysis(sha256="", error=f"The photo cannot be read: {exc.strerror or exc}")
                analysis.flags.append(Flag(BAD_IMAGE, analysis.error))
                analyses.append(analysis)
                continue
            analyses.append(self._locate(data))
        with_face = [a for a in analyses if a.crop is not None]
        for first in range(0, len(with_face), BATCH_CHIPS):
            group = with_face[first : first + BATCH_CHIPS]
            start = time.perf_counter()
            embedding, projection, gender = self._photo_graph(np.stack([a.crop for a in group]))
            embedding, projection, gender = embedding.numpy(), projection.numpy(), gender.numpy()
            per_photo_ms = _ms(start) / len(group)
            for i, analysis in enumerate(group):
                analysis.embedding = embedding[i]
                analysis.projection = projection[i]
                analysis.gender_probs = gender[i]
                analysis.timings_ms["embed"] = per_photo_ms
        return analyses

    def analyze(self, photo: PhotoInput) -> PhotoAnalysis:
        return self.analyze_many([photo])[0]

    # -- per pair --------------------------------------------------------------------------

    def compare(
        self,
        gallery: PhotoAnalysis,
        verification: PhotoAnalysis,
        registered_gender: str | None = None,
    ) -> VerificationResult:
        """Decide one pair from two analysed photos, applying the flagging rules."""
        start = time.perf_counter()
        threshold = self.model.threshold
        low, high = self.model.uncertain_band
        flags = [Flag(f.code, f.reason, "gallery") for f in gallery.flags]
        flags += [Flag(f.code, f.reason, "verification") for f in verification.flags]

        similarity = same_person = None
        if gallery.usable and verification.usable:
            similarity = similarity_from_projections(
                gallery.projection, verification.projection, self._offset, self._scale
            )
            same_person = similarity >= threshold
            if low <= similarity < high:
                flags.append(
                    Flag(
                        UNCERTAIN_SIMILARITY,
                        f"Similarity {similarity:.3f} is in the uncertain band {low:.3f}-{high:.3f}.",
                    )
                )

        predicted_gender = gender_confidence = None
        if verification.gender_probs is not None:
            best = int(np.argmax(verification.gender_probs))
            predicted_gender = GENDERS[best]
            gender_confidence = float(verification.gender_probs[best])
            if registered_gender and gender_confidence < self.model.gender_min_confidence:
                flags.append(
                    Flag(
                        UNCERTAIN_GENDER,
                        f"Gender cannot be confirmed (confidence {gender_confidence:.2f}).",
                        "verification",
                    )
                )
            elif registered_gender and predicted_gender != registered_gender:
                flags.append(
                    Flag(
                        GENDER_MISMATCH,
                        f"Registered gender {registered_gender}, the photo looks {predicted_gender} "
                        f"(confidence {gender_confidence:.2f}).",
                        "verification",
                    )
                )

        if flags or same_person is None:
            status = FLAGGED
        else:
            status = AUTO_APPROVED if same_person else AUTO_REJECTED

        timings: dict[str, float] = {}
        for stage in ("decode", "detect", "align", "embed"):
            timings[stage] = gallery.timings_ms.get(stage, 0.0) + verification.timings_ms.get(stage, 0.0)
        timings["decide"] = _ms(start)
        timings["total"] = sum(timings.values())
        return VerificationResult(
            same_person=same_person,
            similarity=similarity,
            threshold=threshold,
            uncertain_band=(low, high),
            predicted_gender=predicted_gender,
            gender_confidence=gender_confidence,
            registered_gender=registered_gender,
            status=status,
            flags=flags,
            gallery=gallery,
            verification=verification,
            timings_ms=timings,
            model_version=self.model_version,
        )

    def verify(
        self, gallery: PhotoInput, verification: PhotoInput, registered_gender: str | None = None
    ) -> VerificationResult:
        """Verify one pair: both photos through the network together, then the decision."""
        start = time.perf_counter()
        gallery_analysis, verification_analysis = self.analyze_many([gallery, verification])
        result = self.compare(gallery_analysis, verification_analysis, normalise_gender(registered_gender))
        result.timings_ms["total"] = _ms(start)
        return result

    def verify_batch(
        self,
        pairs: Iterable[tuple[PhotoInput, PhotoInput, str | None]],
        progress: Callable[[int], None] | None = None,
        chunk_pairs: int = 16,
        keep_crops: bool = False,
    ) -> Iterator[VerificationResult]:
        """Verify many pairs, analysing each distinct photo once (by content hash).

        Yields results in input order. Crops are dropped after use unless keep_crops, so memory
        stays flat on large batches. progress(n) is called after each result.
        """
        seen: dict[str, PhotoAnalysis] = {}
        pending: list[tuple[bytes, bytes, str | None]] = []
        done = 0

        def flush():
            nonlocal done
            new: dict[str, bytes] = {}
            for g, v, _ in pending:
                for data in (g, v):
                    key = hashlib.sha256(data).hexdigest()
                    if key not in seen:
                        new[key] = data
            for key, analysis in zip(new, self.analyze_many(list(new.values())), strict=True):
                if not keep_crops:
                    analysis.crop = None
                seen[key] = analysis
            for g, v, gender in pending:
                result = self.compare(
                    seen[hashlib.sha256(g).hexdigest()],
                    seen[hashlib.sha256(v).hexdigest()],
                    normalise_gender(gender),
                )
                done += 1
                if progress:
                    progress(done)
                yield result
            pending.clear()

        for gallery, verification, gender in pairs:
            pending.append((_read_or_empty(gallery), _read_or_empty(verification), gender))
            if len(pending) >= chunk_pairs:
                yield from flush()
        if pending:
            yield from flush()


def _read_or_empty(photo: PhotoInput) -> bytes:
    """In a batch a missing file must not stop the others: empty bytes decode to a clear error."""
    try:
        return _read(photo)
    except OSError:
        return b""


def normalise_gender(value: str | None) -> str | None:
    """'M'/'F' from the common forms, None when not given. Raises ValueError for anything else."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text in {"m", "male", "man", "남", "남성", "남자"}:
        return "M"
    if text in {"f", "female", "woman", "여", "여성", "여자"}:
        return "F"
    raise ValueError(f"Unknown gender {value!r}: use M or F (male/female, 남/여).")
