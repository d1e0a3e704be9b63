"""Cohort score normalisation (adaptive S-norm): a pair's score judged against many other faces.

A raw fused distance means different things for different people: dlib's ResNet puts East Asian
women much closer together than Western men, so one threshold approves far more impostors in one
group than another. Each photo is therefore also compared with a cohort of faces of many other
people (East Asian ones included; no labels needed, each cohort face just has to be someone else),
and the pair's raw score is expressed in units of how close each photo's most similar cohort
faces are (Linghu et al., "Score Normalization for Demographic Fairness in Face Recognition",
IJCB 2024: a same-group cohort is what helps at strict operating points; the top-k nearest
faces give one without labelling anyone's ethnicity):

    raw      = -||projection_a - projection_b||           (the Siamese tower's space)
    mu, sd   = mean and spread of a photo's top_k highest raw scores against the cohort
    score    = ((raw - mu_a) / sd_a + (raw - mu_b) / sd_b) / 2
    p(same)  = sigmoid(slope * score + intercept)         (fitted on pairs of training people)

For two fixed photos the score rises with the raw score (monotone) and the same inputs always give
the same output (no sampling; np.partition is exact). Cost: one matrix product of each photo with
the cohort (N x d) and a partial sort, well under a millisecond a photo for N of about a thousand.

    Cohort(embeddings, people, top_k)             the cohort faces, in the networks' embedding space
    Cohort.load(directory) / Cohort.save(directory)
    cohort.project(tower)                         the faces through a tower (once per loaded version)
    photo_stats(projections, cohort_projections, top_k) -> N x 2 (mu, sd)
    normalised_score(raw, stats_a, stats_b) -> float | array
    probability(score, slope, intercept) -> float | array
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

COHORT_FILE = "cohort.npz"
DEFAULT_TOP_K = 100
MIN_SPREAD = 1e-4  # a photo whose top cohort scores are all equal must not divide by zero


@dataclass
class Cohort:
    """Faces of other people: their pretrained embeddings (the tower's input) and a person id each
    (so that training can leave a person's own photos out of their statistics)."""

    embeddings: np.ndarray  # N x d float32, the networks' embeddings side by side
    people: np.ndarray  # N person ids (strings); not needed at serving
    top_k: int = DEFAULT_TOP_K

    def __post_init__(self):
        self.embeddings = np.asarray(self.embeddings, np.float32)
        self.people = np.asarray(self.people).astype(str)
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.people):
            raise ValueError("A cohort needs one embedding row and one person id per face.")
        if not 1 <= self.top_k <= len(self.embeddings):
            raise ValueError(f"top_k must be between 1 and the cohort's {len(self.embeddings)} faces.")

    def __len__(self) -> int:
        return len(self.embeddings)

    def project(self, tower) -> np.ndarray:
        return np.asarray(tower(self.embeddings, training=False), np.float64)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / COHORT_FILE
        # float16 halves the file; the statistics it gives differ from float32's by < 1e-3 of sd.
        np.savez_compressed(
            path, embeddings=self.embeddings.astype(np.float16), people=self.people, top_k=self.top_k
        )
        return path

    @classmethod
    def load(cls, directory: Path) -> Cohort:
        with np.load(Path(directory) / COHORT_FILE, allow_pickle=False) as data:
            return cls(data["embeddings"].astype(np.float32), data["people"], int(data["top_k"]))


def raw_scores(
    projections: np.ndarray, cohort_projections: np.ndarray, cohort_squares: np.ndarray | None = None
) -> np.ndarray:
    """-distance of each photo (rows) to each cohort face (columns), in float64.

    cohort_squares: the cohort's squared norms, when the caller keeps them. The product runs in
    einsum's own loop, not BLAS: for a photo or two, BLAS's threads cost more than the sums
    (measured here under load: 13 ms a pair through BLAS, 2 ms through einsum), and one fixed order
    of summation keeps the result bit for bit the same whatever the threads.
    """
    p = np.asarray(projections, np.float64)
    c = np.asarray(cohort_projections, np.float64)
    if cohort_squares is None:
        cohort_squares = np.einsum("ij,ij->i", c, c)
    squared = (
        np.einsum("ij,ij->i", p, p)[:, None] + cohort_squares[None, :] - 2.0 * np.einsum("ij,kj->ik", p, c)
    )
    return -np.sqrt(np.maximum(squared, 0.0))


def top_stats(scores: np.ndarray, top_k: int) -> np.ndarray:
    """N x 2: mean and standard deviation of each row's top_k highest scores (-inf left out)."""
    scores = np.asarray(scores, np.float64)
    k = min(top_k, scores.shape[1])
    top = -np.partition(-scores, k - 1, axis=1)[:, :k]
    top = np.sort(top, axis=1)  # a fixed order of summation: the same numbers give the same stats
    finite = np.isfinite(top)
    count = np.maximum(finite.sum(1), 1)
    filled = np.where(finite, top, 0.0)
    mean = filled.sum(1) / count
    spread = np.sqrt(np.where(finite, (filled - mean[:, None]) ** 2, 0.0).sum(1) / count)
    return np.stack([mean, np.maximum(spread, MIN_SPREAD)], axis=1)


def photo_stats(
    projections: np.ndarray,
    cohort_projections: np.ndarray,
    top_k: int,
    cohort_squares: np.ndarray | None = None,
) -> np.ndarray:
    """Each photo's (mu, sd) against the cohort: what the engine keeps per analysed photo."""
    return top_stats(raw_scores(projections, cohort_projections, cohort_squares), top_k)


def normalised_score(raw, stats_a, stats_b):
    """The symmetric S-norm of raw scores given both photos' (mu, sd); arrays or scalars."""
    stats_a, stats_b = np.asarray(stats_a, np.float64), np.asarray(stats_b, np.float64)
    raw = np.asarray(raw, np.float64)
    score = 0.5 * ((raw - stats_a[..., 0]) / stats_a[..., 1] + (raw - stats_b[..., 0]) / stats_b[..., 1])
    return float(score) if score.ndim == 0 else score


def probability(score, slope: float, intercept: float):
    """The calibrated probability of one person from the normalised score (logistic)."""
    value = 1.0 / (1.0 + np.exp(-(slope * np.asarray(score, np.float64) + intercept)))
    return float(value) if np.ndim(value) == 0 else value


def pair_stats_leaving_out(
    scores: np.ndarray, top_k: int, pairs: np.ndarray, cohort_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Training only: (stats of a, stats of b) per pair, each photo's statistics leaving out the other
    photo of the pair when that photo is itself a cohort face (cohort_index[i] its column, else -1).

    A member's impostor is never in the shipped cohort; a pair of two cohort faces must not have
    the one inside the other's top_k, or the closest impostor pairs would look less alike than they
    would at serving.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    base = top_stats(scores, top_k)
    out = [base[pairs[:, 0]].copy(), base[pairs[:, 1]].copy()]
    for side in (0, 1):
        me, other = pairs[:, side], pairs[:, 1 - side]
        column = cohort_index[other]
        affected = np.flatnonzero(column >= 0)
        if not len(affected):
            continue
        # Only where the other photo's score is among my top_k does leaving it out change anything.
        kth = -np.partition(-scores[me[affected]], top_k - 1, axis=1)[:, top_k - 1]
        inside = scores[me[affected], column[affected]] >= kth
        for row in affected[inside]:
            values = scores[me[row]].copy()
            values[column[row]] = -np.inf
            out[side][row] = top_stats(values[None, :], top_k)[0]
    return out[0], out[1]
