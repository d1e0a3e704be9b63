"""Similarity on a model's own scale, and the duplicate threshold a 1:N search flags at.

Scores are the model's: the tower output of two photos, their Euclidean distance, and
PairSimilarity's sigmoid(scale * (offset - distance)), exactly what
core.verification.heads.similarity_from_projections gives the engine for a pair.
"""

from __future__ import annotations

import math

import numpy as np

from core import config

# Setting to override the duplicate threshold (a similarity, 0..1), e.g. after a calibration on
# the customer's own members.
DUPLICATE_THRESHOLD_SETTING = "DUPLICATE_THRESHOLD"


def _similarity_from_sqdist(sqdist: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """PairSimilarity from squared distances (the same +1e-12 as the engine's formula)."""
    distance = np.sqrt(np.maximum(sqdist, 0.0) + 1e-12)
    return 1.0 / (1.0 + np.exp(-scale * (offset - distance)))


def _sqdist_for_similarity(similarity: float, offset: float, scale: float) -> float:
    """The squared distance at which the similarity equals `similarity` (inverse of the above)."""
    similarity = min(max(similarity, 1e-12), 1 - 1e-12)
    distance = offset - math.log(similarity / (1 - similarity)) / scale
    return max(distance, 0.0) ** 2


# In the projection's distance units (dlib-like: same person ~0.4, verification threshold ~0.6).
DUPLICATE_DISTANCE = 0.434


def duplicate_threshold(
    threshold: float,
    band: tuple[float, float],
    metadata: dict | None = None,
    *,
    offset: float | None = None,
    scale: float | None = None,
) -> float:
    """Similarity at or above which another member's face is reported as a possible duplicate.

    Stricter than the verification threshold on purpose. One verification compares two photos, so
    a false match rate p costs p per verification; one 1:N search compares with N members, so it
    raises a false alarm with probability about N * p. The high edge of the model's uncertain band
    is where training found automatic same-person decisions safe enough for one pair (a small
    error rate on the holdout): fine for one pair, far too loose for 100,000.
    The default is a fixed projection distance, DUPLICATE_DISTANCE (similarity 0.999 on the
    shipped heads), so it does not move when training redefines the band: on the 24 sample people
    (6,891 different-person pairs) no different-person pair reaches it while 64% of same-person
    pairs do; the band edge of the first model (distance 0.514) let 12 different-person pairs
    through, 11 of them two East Asian women, where the pretrained network is known to be
    weakest, which matters for a Korean member base. The model may carry its own calibrated value
    as metadata["duplicate_threshold"], and the DUPLICATE_THRESHOLD setting overrides both
    (calibrate it on the customer's own members once there are many).
    """
    override = config.setting(DUPLICATE_THRESHOLD_SETTING)
    if override:
        value = float(override)
        if not 0.0 < value < 1.0:
            raise ValueError(f"{DUPLICATE_THRESHOLD_SETTING} must be between 0 and 1, not {override}")
        return value
    if metadata and metadata.get("duplicate_threshold") is not None:
        return float(metadata["duplicate_threshold"])
    high = min(max(float(threshold), float(band[1])), 1 - 1e-9)
    if offset is None or scale is None or scale <= 0:
        return high + 0.5 * (1.0 - high)  # no scale known: halfway from the band edge to 1
    edge_distance = math.sqrt(_sqdist_for_similarity(high, offset, scale))
    distance = min(DUPLICATE_DISTANCE, edge_distance)  # never looser than the band's own edge
    return float(_similarity_from_sqdist(np.array([distance * distance]), offset, scale)[0])
