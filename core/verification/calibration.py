"""How well the similarity means what it says: the probability that two photos show one person.

The Siamese head's similarity is sigmoid(scale * (offset - distance)), a logistic fitted on pairs
of people the tower did not train on (core.training.fitting.calibrate), with as many same-person
as different-person pairs (a prior of one half, like the held-out pairs it is judged on).

    expected_calibration_error(probabilities, labels, bins=15) -> float   0 is perfect
    reliability_table(probabilities, labels, bins=10) -> list[dict]      per bin: mean p, share same
    reliability_plot(probabilities, labels, path, title) -> Path          a PNG of the table
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip((p * bins).astype(int), 0, bins - 1)


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """Mean |predicted - observed| over equal-width bins of the predicted probability, by count."""
    p = np.clip(np.asarray(probabilities, np.float64), 0.0, 1.0)
    y = np.asarray(labels, np.float64)
    if not len(p):
        raise ValueError("No pairs to measure the calibration on.")
    index = _bins(p, bins)
    total = 0.0
    for b in np.unique(index):
        mask = index == b
        total += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    return float(total / len(p))


def reliability_table(probabilities, labels, bins: int = 10) -> list[dict]:
    p = np.clip(np.asarray(probabilities, np.float64), 0.0, 1.0)
    y = np.asarray(labels, np.float64)
    index = _bins(p, bins)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {
                    "bin_low": b / bins,
                    "bin_high": (b + 1) / bins,
                    "n": int(mask.sum()),
                    "mean_similarity": float(p[mask].mean()),
                    "share_same_person": float(y[mask].mean()),
                }
            )
    return rows


def reliability_plot(probabilities, labels, path: Path, title: str = "", bins: int = 10) -> Path:
    """Observed share of same-person pairs against the similarity, per bin, with pair counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reliability_table(probabilities, labels, bins)
    ece = expected_calibration_error(probabilities, labels)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    top.plot(
        [r["mean_similarity"] for r in rows],
        [r["share_same_person"] for r in rows],
        marker="o",
        label=f"model (ECE {100 * ece:.2f}%)",
    )
    top.set_ylabel("share of pairs that are one person")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(title or "Reliability of the similarity")
    bottom.bar([(r["bin_low"] + r["bin_high"]) / 2 for r in rows], [r["n"] for r in rows], width=0.9 / bins)
    bottom.set_yscale("log")
    bottom.set_xlabel("similarity")
    bottom.set_ylabel("pairs")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
