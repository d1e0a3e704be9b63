"""The one path of a verification, whoever calls it (pages, API, batch runner, benchmark, tests).

    photo bytes -> decode -> detect (MediaPipe) -> main face -> align (dlib 5 points) -> chips
    chips (mirrored, rotated) -> dlib's ResNet -> embedding                } core/verification/features.py:
    gender chip (and mirror) -> Cydral's gender CNN -> log-odds            } the Keras ports compiled to
    ArcFace chip -> SFace (when the version uses it) -> embedding          } TF Lite, each photo on its
                                                                           } own locate thread
    embedding -> Siamese tower -> projection; [log-odds, embedding] -> gender head -> probabilities
    projection -> its closest faces of the version's cohort -> (mean, spread)  (versions with a cohort)
    two projections -> similarity (cohort-normalised, calibrated) -> rules -> VerificationResult

Engine.load() once per process; then verify(), or analyze_many() + compare() when photos repeat.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from core import config
from core.errors import ModelError
from core.verification import cohort, features, fraud
from core.verification.features import PhotoInput, read_photo
from core.verification.genders import optional_gender
from core.verification.heads import GENDERS, ModelVersion, load_version, similarity_from_projections
from core.verification.networks import compiled, network, network_class, networks_of
from core.verification.policy import APPROVE, REVIEW, decide
from core.verification.result import (
    AUTO_APPROVED,
    AUTO_REJECTED,
    FLAGGED,
    GENDER_MISMATCH,
    UNCERTAIN_GENDER,
    UNCERTAIN_SIMILARITY,
    Flag,
    PhotoAnalysis,
    VerificationResult,
)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Engine:
    """A loaded model version with the pretrained networks, ready to verify pairs."""

    def __init__(self, model: ModelVersion):
        import tensorflow as tf

        self.networks = networks_of(model.metadata)
        expected = features.features_version(self.networks)
        trained_on = model.metadata.get("features_version")
        if trained_on != expected:
            raise ModelError(
                f"Model {model.version} was trained on features {trained_on!r}, this code computes "
                f"{expected!r} for its networks {list(self.networks)}: retrain it (faceverify train)."
            )
        self.model = model
        tower, gender = model.tower, model.gender
        self._offset, self._scale = model.similarity_params()
        self.embedding_dim = sum(network_class(name).dim for name in self.networks)
        if tower.input_shape[-1] != self.embedding_dim:
            raise ModelError(
                f"Model {model.version}: its tower takes {tower.input_shape[-1]} numbers, its networks "
                f"{list(self.networks)} give {self.embedding_dim}."
            )
        self._gender_dim = int(gender.input_shape[-1])
        # The cohort's faces through this version's tower, once: each photo is then compared with them.
        self._cohort_projections = model.cohort.project(tower) if model.cohort is not None else None
        self._cohort_squares = (
            np.einsum("ij,ij->i", self._cohort_projections, self._cohort_projections)
            if self._cohort_projections is not None
            else None
        )
        self._cohort_calibration = model.cohort_calibration

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, self.embedding_dim], tf.float32),
                tf.TensorSpec([None, self._gender_dim], tf.float32),
            ],
            reduce_retracing=True,
        )
        def heads_graph(embedding, gender_input):
            return tower(embedding, training=False), gender(gender_input, training=False)

        self._heads_graph = heads_graph

    @classmethod
    def load(cls, version: str | None = None, models_dir: Path | None = None) -> Engine:
        """Load a model version (default: the one named in models/DEFAULT) and warm it up."""
        engine = cls(load_version(version, models_dir))
        engine._heads_graph(
            np.zeros((1, engine.embedding_dim), np.float32), np.zeros((1, engine._gender_dim), np.float32)
        )
        for name in engine.networks:
            network(name)  # weights read and checked now, not on the first request
        compiled.warm(engine.networks)  # the networks' compiled copies, one per locate thread
        engine._warm_locate()
        return engine

    def _warm_locate(self) -> None:
        """Verify two shipped sample photos once: each locate thread makes its own detectors, YuNet
        and face mesh on first use (about 250 ms of a pair's 300 ms on a fresh process), and that
        belongs to loading, not to the first member's request."""
        photos = sorted(config.SAMPLE_DIR.glob("images/*.jpg"))[:2]
        if len(photos) == 2:
            self.verify(photos[0], photos[1])

    @property
    def model_version(self) -> str:
        return self.model.version

    # -- per photo -------------------------------------------------------------------------

    def analyze_many(
        self, photos: list[PhotoInput], measure_pose: list[bool] | None = None
    ) -> list[PhotoAnalysis]:
        """Analyse photos: all faces through the networks together. Never raises for bad input.

        measure_pose: per photo, whether to estimate the head pose (for a pose challenge).
        """
        return self._with_heads(features.extract(photos, measure_pose, self.networks))

    def _with_heads(self, analyses: list[PhotoAnalysis]) -> list[PhotoAnalysis]:
        """The trained heads and the cohort statistics of the analyses with an embedding, in one call."""
        ready = [a for a in analyses if a.embedding is not None]
        if ready:
            start = time.perf_counter()
            embedding, gender_input = features.head_inputs(
                np.stack([a.embedding for a in ready]), np.array([a.gender_logit for a in ready])
            )
            projection, gender_probs = (t.numpy() for t in self._heads_graph(embedding, gender_input))
            per_photo = _ms(start) / len(ready)
            stats, cohort_ms = self._cohort_stats(projection)
            for i, analysis in enumerate(ready):
                analysis.projection = projection[i]
                analysis.gender_probs = gender_probs[i]
                analysis.timings_ms["embed"] += per_photo + cohort_ms
                if stats is not None:
                    analysis.cohort_stats = stats[i]
                    analysis.timings_ms["embed_cohort"] = cohort_ms
        return analyses

    def _cohort_stats(self, projections: np.ndarray) -> tuple[np.ndarray | None, float]:
        """Each photo's (mean, spread) against the cohort, and the time it took per photo."""
        if self._cohort_projections is None:
            return None, 0.0
        start = time.perf_counter()
        stats = cohort.photo_stats(
            projections, self._cohort_projections, self.model.cohort.top_k, self._cohort_squares
        )
        return stats, _ms(start) / max(len(projections), 1)

    def pair_similarity(
        self, gallery: PhotoAnalysis, verification: PhotoAnalysis
    ) -> tuple[float, float | None]:
        """(similarity, cohort-normalised score or None) of two analysed photos with usable faces."""
        if self._cohort_calibration is None:
            similarity = similarity_from_projections(
                gallery.projection, verification.projection, self._offset, self._scale
            )
            return similarity, None
        for analysis in (gallery, verification):
            if analysis.cohort_stats is None:  # analysed elsewhere: the statistics are cheap to redo
                analysis.cohort_stats = self._cohort_stats(np.asarray(analysis.projection)[None, :])[0][0]
        raw = -float(np.linalg.norm(np.asarray(gallery.projection, np.float64) - verification.projection))
        score = cohort.normalised_score(raw, gallery.cohort_stats, verification.cohort_stats)
        return cohort.probability(score, *self._cohort_calibration), score

    def analyze(self, photo: PhotoInput) -> PhotoAnalysis:
        return self.analyze_many([photo])[0]

    def analyze_faces(self, photos: list[PhotoInput]) -> list[list[PhotoAnalysis]]:
        """Analyse every candidate face of each photo (group photos: which face is the member),
        through the same networks and heads as analyze_many. Per photo, one analysis per face
        (features.locate_every_face); never raises for bad input."""
        per_photo = features.extract_all_faces(photos, self.networks)
        self._with_heads([a for faces in per_photo for a in faces])
        return per_photo

    # -- per pair --------------------------------------------------------------------------

    def compare(
        self,
        gallery: PhotoAnalysis,
        verification: PhotoAnalysis,
        registered_gender: str | None = None,
        challenge: str | None = None,
    ) -> VerificationResult:
        """Decide one pair from two analysed photos, applying the flagging rules.

        challenge: the pose challenge (core.verification.fraud.CHALLENGES) the verification photo
        must show; its pose must have been measured (analyze_many(..., measure_pose=)).
        """
        start = time.perf_counter()
        threshold = self.model.threshold
        points = self.model.operating_points
        low, high = points.reject_below, points.approve_at
        flags = [Flag(f.code, f.reason, "gallery") for f in gallery.flags]
        flags += [Flag(f.code, f.reason, "verification") for f in verification.flags]

        similarity = same_person = decision = cohort_score = None
        if gallery.usable and verification.usable:
            similarity, cohort_score = self.pair_similarity(gallery, verification)
            same_person = similarity >= threshold
            decision = decide(similarity, points)
            if decision == REVIEW:
                flags.append(
                    Flag(
                        UNCERTAIN_SIMILARITY,
                        f"Similarity {similarity:.3f} is between automatic rejection (below {low:.3f}) "
                        f"and automatic approval (from {high:.3f}).",
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

        # Fraud checks on the pair; the storing step compares with the member's other photos too.
        checks: dict = {}
        limit = fraud.reuse_limit(features.features_version(self.networks))
        matches = fraud.reuse_matches(
            fraud.fingerprint(verification, "verification photo"),
            [fraud.fingerprint(gallery, "gallery photo", kind="gallery")],
            limit,
        )
        checks["reuse"] = fraud.reuse_evidence(matches, limit)
        if matches:
            flags.append(fraud.reuse_flag(matches))
        if challenge:
            challenge_flag, checks["challenge"] = fraud.challenge_flag(challenge, verification.pose)
            if challenge_flag:
                flags.append(challenge_flag)

        if flags or decision is None:
            status = FLAGGED
        else:
            status = AUTO_APPROVED if decision == APPROVE else AUTO_REJECTED

        timings: dict[str, float] = {}
        for stage in ("decode", "detect", "align", "capture", "embed"):
            timings[stage] = gallery.timings_ms.get(stage, 0.0) + verification.timings_ms.get(stage, 0.0)
        timings["decide"] = _ms(start)
        timings["total"] = sum(timings.values())
        # Parts of align and embed (already inside those two, not added to the total): align per
        # network, embed_networks the networks of the photo (both photos of a pair run side by side).
        for part in sorted({k for k in (*gallery.timings_ms, *verification.timings_ms) if "_" in k}):
            timings[part] = gallery.timings_ms.get(part, 0.0) + verification.timings_ms.get(part, 0.0)
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
            checks=checks,
            cohort_score=cohort_score,
        )

    def verify(
        self,
        gallery: PhotoInput,
        verification: PhotoInput,
        registered_gender: str | None = None,
        challenge: str | None = None,
    ) -> VerificationResult:
        """Verify one pair: both photos through the network together, then the decision."""
        start = time.perf_counter()
        gallery_analysis, verification_analysis = self.analyze_many(
            [gallery, verification], measure_pose=[False, challenge is not None]
        )
        result = self.compare(
            gallery_analysis, verification_analysis, optional_gender(registered_gender), challenge
        )
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
                    analysis.crop = analysis.gender_crop = None
                    analysis.chips = {}
                seen[key] = analysis
            for g, v, gender in pending:
                result = self.compare(
                    seen[hashlib.sha256(g).hexdigest()],
                    seen[hashlib.sha256(v).hexdigest()],
                    optional_gender(gender),
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
        return read_photo(photo)
    except OSError:
        return b""
