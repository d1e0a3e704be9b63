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


# The duplicate threshold is set on the model's calibrated scale, in log-odds: similarity is
# sigmoid(scale * (offset - distance)) with offset and scale fitted on pairs of people the tower
# did not see, so log-odds mean the same evidence whatever units a retrained tower's distances
# have. (A fixed distance does not: a tower retrained on other data put same-person pairs near
# 1.2 and the old fixed 0.434 at a similarity of 1 - 4e-12, which no real pair reached.)
DUPLICATE_MARGIN_LOGODDS = 6.0  # e^6 ~ 400 times the odds at which one pair is approved automatically
DUPLICATE_FLOOR = 0.99  # a 1:N alert is never looser than this, whatever the model's approve_at
DUPLICATE_CEILING = 0.99999  # and never stricter: past it the similarity is saturated and unreadable


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def duplicate_threshold(
    threshold: float,
    band: tuple[float, float],
    metadata: dict | None = None,
    *,
    offset: float | None = None,
    scale: float | None = None,
) -> float:
    """Similarity at or above which another member's face is reported as a possible duplicate.

    Stricter than automatic approval on purpose. One verification compares two photos, so a false
    match rate p costs p per verification; one 1:N search compares with N members, so it raises a
    false alarm with probability about N * p. So the threshold starts at the model's own operating
    point for automatic approval (approve_at, the band's high edge, or the verification threshold
    if higher) and asks DUPLICATE_MARGIN_LOGODDS more evidence on the calibrated scale, kept
    between DUPLICATE_FLOOR and DUPLICATE_CEILING. Because it is read from the model's operating
    points and calibration, a retrained model gets a threshold on its own scale.

    On the 24 sample people (6,891 different-person pairs): the first model (approve_at 0.709)
    gets 0.99899, reached by 61% of same-person pairs and no different-person pair; a model
    retrained on lfw_dev (approve_at 0.700, distances in other units) gets 0.99894, reached by 92%
    and none; a small model retrained on the sample gets 0.99956, reached by 71% of its held-out
    people's same-person pairs and none of their 336 different-person pairs.

    A model may carry a calibrated value as metadata["duplicate_threshold"] (kept, but never above
    DUPLICATE_CEILING); the DUPLICATE_THRESHOLD setting overrides both (calibrate it on the
    customer's own members once there are many). offset and scale are not needed: the rule works
    on the calibrated similarity itself.
    """
    override = config.setting(DUPLICATE_THRESHOLD_SETTING)
    if override:
        value = float(override)
        if not 0.0 < value < 1.0:
            raise ValueError(f"{DUPLICATE_THRESHOLD_SETTING} must be between 0 and 1, not {override}")
        return value
    if metadata and metadata.get("duplicate_threshold") is not None:
        return min(float(metadata["duplicate_threshold"]), DUPLICATE_CEILING)
    approve_at = max(float(threshold), float(band[1]))
    chosen = 1.0 / (1.0 + math.exp(-(_logit(approve_at) + DUPLICATE_MARGIN_LOGODDS)))
    return float(min(max(chosen, DUPLICATE_FLOOR), DUPLICATE_CEILING))
