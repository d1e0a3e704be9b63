"""Self-measurement statistics: the Clopper-Pearson bound, the similarity scale, the summary of a
finished measurement and the alert status it raises."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.workflows.self_measurement.settings import CONFIDENCE, GENDERS, TAIL_THRESHOLDS, fmr_target

# ----------------------------------------------------------------------------------------------
# Statistics


def clopper_pearson_upper(k: int, n: int, confidence: float = CONFIDENCE) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n: the rate is at most this
    with the given confidence. None when nothing was compared (n = 0)."""
    if n <= 0:
        return None
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


def pairs_needed(target: float, confidence: float = CONFIDENCE) -> int:
    """Pairs that must be compared (with none matching) before the bound can reach the target."""
    return int(math.ceil(math.log(1 - confidence) / math.log(1 - target)))


def _rate(k: int, n: int) -> dict:
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "upper": clopper_pearson_upper(k, n)}


# ----------------------------------------------------------------------------------------------
# Similarity on the model's scale


@dataclass(frozen=True)
class Scale:
    """PairSimilarity's offset and scale: similarity = sigmoid(scale * (offset - distance))."""

    offset: float
    scale: float

    def similarity(self, sqdist: np.ndarray) -> np.ndarray:
        distance = np.sqrt(np.maximum(np.asarray(sqdist, np.float64), 0.0) + 1e-12)
        return 1.0 / (1.0 + np.exp(-self.scale * (self.offset - distance)))

    def sqdist(self, similarity: float) -> float:
        """The squared distance at which the similarity equals `similarity`."""
        s = min(max(similarity, 1e-12), 1 - 1e-12)
        distance = self.offset - math.log(s / (1 - s)) / self.scale
        return max(distance, 0.0) ** 2


def summarise(counts, photo_set, approve_at, reject_below, floor, near_from, fnmr, version) -> dict:
    """The figures of a finished measurement (JSON-able), with the alert they raise."""
    target = fmr_target()
    genders = {}
    total_k = total_n = total_near = 0
    for g in GENDERS:
        n = int(counts["compared"]["genders"][g])
        k = int(counts["genders"][g]["at_approve"])
        genders[g] = {
            "compared": n,
            "at_approve": _rate(k, n),
            "near": int(counts["genders"][g]["near"]),
            "tail": dict(zip([f"{t:g}" for t in TAIL_THRESHOLDS], counts["genders"][g]["tail"], strict=True)),
            "members": int(len(np.unique(photo_set.member_index[photo_set.gender == GENDERS.index(g)]))),
            "photos": int((photo_set.gender == GENDERS.index(g)).sum()),
        }
        total_k, total_n, total_near = (
            total_k + k,
            total_n + n,
            total_near + int(counts["genders"][g]["near"]),
        )
    bands = {}
    for key, n in counts["compared"]["bands"].items():
        got = counts["bands"].get(key, {"at_approve": 0, "near": 0})
        bands[key] = {"compared": int(n), "at_approve": _rate(got["at_approve"], n), "near": int(got["near"])}
    overall = _rate(total_k, total_n)
    summary = {
        "model_version": version,
        "approve_at": approve_at,
        "reject_below": reject_below,
        "floor": floor,
        "near_from": near_from,
        "target": target,
        "pairs_needed": pairs_needed(target),
        "photos": len(photo_set),
        "members": len(photo_set.members),
        "excluded_member_pairs": int(len(photo_set.excluded)),
        "above_floor": int(counts["above_floor"]),
        "all": {"compared": total_n, "at_approve": overall, "near": total_near},
        "genders": genders,
        "age_bands": bands,
        "fnmr": {**fnmr, "reject_below": reject_below},
    }
    summary["alert"] = _alert_status(overall, genders, target)
    return summary


OK, ABOVE_TARGET, TOO_FEW, NOT_MEASURED = "ok", "above_target", "too_few_pairs", "not_measured"


def _alert_status(overall: dict, genders: dict, target: float) -> str:
    """above_target when a gender with enough pairs has its 95% bound above the target; else
    too_few_pairs when a gender has fewer pairs than any bound under the target needs; else ok."""
    needed = pairs_needed(target)
    measured = [g for g in genders.values() if g["compared"]]
    if any(g["compared"] >= needed and g["at_approve"]["upper"] > target for g in measured):
        return ABOVE_TARGET
    if not measured or len(measured) < len(genders) or any(g["compared"] < needed for g in measured):
        return TOO_FEW
    return OK
