"""The decision policy: when a machine may approve or reject a pair, and when a person must look.

A genuine member rejected by the machine is a lost member; an impostor approved is fraud. So the
model version stores two operating points chosen on people its Siamese tower never saw:

    approve_at     the lowest similarity at which impostors are approved at most max_fmr of the time
    reject_below   the highest similarity below which genuine pairs fall at most max_fnmr of the time

A pair at or above approve_at is approved automatically, one below reject_below rejected
automatically, and everything between goes to review. The two points are also the "uncertain
band" (low, high) that results, the database and the pages already carry.

    OperatingPoints(reject_below, approve_at, max_fmr, max_fnmr)
    choose_operating_points(similarities, labels, max_fmr, max_fnmr) -> OperatingPoints
    choose_group_operating_points(similarities, labels, groups, ...) -> (OperatingPoints, per group)
                                                      every group meets both targets on its own
    operating_points(metadata) -> OperatingPoints      from a model version's metadata["policy"]
    decide(similarity, points) -> APPROVE | REJECT | REVIEW
    policy_figures(similarities, labels, points) -> dict   automation and errors at the points
    group_figures(similarities, labels, groups, points) -> list[dict]   the same, group by group
    group_table(rows) -> str                             those rows as a plain text table
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MAX_FMR = 0.001  # impostors approved by the machine, of all impostor pairs
MAX_FNMR = 0.001  # genuine pairs rejected by the machine, of all genuine pairs

APPROVE, REJECT, REVIEW = "approve", "reject", "review"


@dataclass(frozen=True)
class OperatingPoints:
    reject_below: float
    approve_at: float
    max_fmr: float = MAX_FMR
    max_fnmr: float = MAX_FNMR

    def to_dict(self) -> dict:
        return asdict(self)


def choose_operating_points(
    similarities, labels, max_fmr: float = MAX_FMR, max_fnmr: float = MAX_FNMR
) -> OperatingPoints:
    """The two points on labelled pairs (1 same person, 0 different), each as strict as its target.

    approve_at sits just above the (k+1)-th most similar impostor, k = floor(max_fmr * impostors),
    so at most k impostors reach it; reject_below at the (j+1)-th least similar genuine pair,
    j = floor(max_fnmr * genuine pairs), so at most j genuine pairs fall below it. When the two
    cross (a weak model) there is no automatic decision at all: both become the higher one.
    """
    s = np.asarray(similarities, np.float64)
    y = np.asarray(labels).astype(int)
    impostors = np.sort(s[y == 0])[::-1]
    genuine = np.sort(s[y == 1])
    if not len(impostors) or not len(genuine):
        raise ValueError("Choosing operating points needs both same-person and different-person pairs.")
    k = int(np.floor(max_fmr * len(impostors)))
    approve_at = float(np.nextafter(impostors[k], np.inf)) if k < len(impostors) else 0.0
    j = int(np.floor(max_fnmr * len(genuine)))
    reject_below = float(genuine[j]) if j < len(genuine) else 1.0
    approve_at = min(max(approve_at, 0.0), 1.0)
    if reject_below > approve_at:
        reject_below = approve_at = max(reject_below, approve_at)
    return OperatingPoints(reject_below, approve_at, float(max_fmr), float(max_fnmr))


def choose_group_operating_points(
    similarities, labels, groups, max_fmr: float = MAX_FMR, max_fnmr: float = MAX_FNMR
) -> tuple[OperatingPoints, dict[str, dict]]:
    """The two points such that every group meets each target on its own: the worst group decides.

    groups: one name per pair (e.g. "eastasian:F"); impostor pairs should lie within one group (same
    population, same gender), as a fraudster picks someone who looks alike. approve_at is the
    highest of the groups' own approve points, reject_below the lowest of their reject points; a
    pooled choice would let a large easy group hide a small hard one. Groups with only one kind of
    pair count for that kind. Returns (points, {group: {"approve_at", "reject_below", "impostors",
    "genuine"}}).
    """
    s = np.asarray(similarities, np.float64)
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups).astype(str)
    if not (y == 0).any() or not (y == 1).any():
        raise ValueError("Choosing operating points needs both same-person and different-person pairs.")
    per_group: dict[str, dict] = {}
    for name in sorted(set(g)):
        mask = g == name
        impostors = np.sort(s[mask & (y == 0)])[::-1]
        genuine = np.sort(s[mask & (y == 1)])
        row: dict = {"impostors": int(len(impostors)), "genuine": int(len(genuine))}
        if len(impostors):
            k = int(np.floor(max_fmr * len(impostors)))
            row["approve_at"] = float(np.nextafter(impostors[k], np.inf)) if k < len(impostors) else 0.0
        if len(genuine):
            j = int(np.floor(max_fnmr * len(genuine)))
            row["reject_below"] = float(genuine[j]) if j < len(genuine) else 1.0
        per_group[name] = row
    approve_at = min(max(max(r["approve_at"] for r in per_group.values() if "approve_at" in r), 0.0), 1.0)
    reject_below = min(r["reject_below"] for r in per_group.values() if "reject_below" in r)
    if reject_below > approve_at:
        reject_below = approve_at = max(reject_below, approve_at)
    return OperatingPoints(reject_below, approve_at, float(max_fmr), float(max_fnmr)), per_group


def operating_points(metadata: dict) -> OperatingPoints:
    """A model version's points: its "policy" entry, or (older versions) its uncertain band."""
    policy = metadata.get("policy")
    if policy:
        return OperatingPoints(
            float(policy["reject_below"]),
            float(policy["approve_at"]),
            float(policy.get("max_fmr", MAX_FMR)),
            float(policy.get("max_fnmr", MAX_FNMR)),
        )
    low, high = metadata["uncertain_band"]
    return OperatingPoints(float(low), float(high), float("nan"), float("nan"))


def decide(similarity: float, points: OperatingPoints) -> str:
    if similarity >= points.approve_at:
        return APPROVE
    if similarity < points.reject_below:
        return REJECT
    return REVIEW


def policy_figures(similarities, labels, points: OperatingPoints) -> dict:
    """What the policy does on labelled pairs: automation, and how often each automatic call errs.

    automation_rate: share decided by the machine; automatic_decision_accuracy: share of those
    right; auto_approve_fmr: impostors approved / impostors; auto_reject_fnmr: genuine pairs
    rejected / genuine pairs (the two rates the points were chosen for).
    """
    s = np.asarray(similarities, np.float64)
    y = np.asarray(labels).astype(int)
    approve = s >= points.approve_at
    reject = (s < points.reject_below) & ~approve
    automatic = approve | reject
    right = (approve & (y == 1)) | (reject & (y == 0))
    impostors, genuine = max(int((y == 0).sum()), 1), max(int((y == 1).sum()), 1)
    return {
        "automation_rate": float(automatic.mean()) if len(s) else None,
        "automatic_decision_accuracy": float(right[automatic].mean()) if automatic.any() else None,
        "auto_approved_rate": float(approve.mean()) if len(s) else None,
        "auto_rejected_rate": float(reject.mean()) if len(s) else None,
        "auto_approve_fmr": float((approve & (y == 0)).sum() / impostors),
        "auto_reject_fnmr": float((reject & (y == 1)).sum() / genuine),
        "approve_at": points.approve_at,
        "reject_below": points.reject_below,
    }


def group_figures(similarities, labels, groups, points: OperatingPoints) -> list[dict]:
    """Figures of each group on its own, in the manner of NIST FRVT's demographic reports.

    groups: one name per pair; a pair counts in its group only (impostor pairs of two groups, e.g.
    two genders, are better left out or named apart by the caller). Per group: pairs of each kind,
    false matches at approve_at (count and rate among the group's impostor pairs), false non-matches
    at reject_below (count and rate among its genuine pairs), ROC AUC and FNMR at FMR 0.1% within
    the group, and the calibration error (ECE) of the similarity. A last row "all" pools every pair.
    """
    from sklearn.metrics import roc_auc_score

    from core.verification.calibration import expected_calibration_error

    s = np.asarray(similarities, np.float64)
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups).astype(str)
    rows = []
    for name in [*sorted(set(g)), "all"]:
        mask = np.ones(len(g), bool) if name == "all" else g == name
        x, t = s[mask], y[mask]
        impostors, genuine = int((t == 0).sum()), int((t == 1).sum())
        false_matches = int(((x >= points.approve_at) & (t == 0)).sum())
        false_rejects = int(((x < points.reject_below) & (t == 1)).sum())
        reviewed = int(((x < points.approve_at) & (t == 1)).sum())
        row = {
            "group": name,
            "genuine_pairs": genuine,
            "impostor_pairs": impostors,
            "false_matches_at_approve": false_matches,
            "fmr_at_approve": false_matches / impostors if impostors else None,
            "false_rejects_at_reject": false_rejects,
            "fnmr_at_reject": false_rejects / genuine if genuine else None,
            # genuine pairs the machine does not approve (they go to review, or are rejected)
            "genuine_below_approve": reviewed / genuine if genuine else None,
            "auc": float(roc_auc_score(t, x)) if impostors and genuine else None,
            "fnmr_at_fmr_0_001": _fnmr_at_fmr(x, t, 0.001) if impostors and genuine else None,
            "calibration_error": float(expected_calibration_error(x, t)) if len(t) else None,
        }
        rows.append(row)
    return rows


def _fnmr_at_fmr(scores: np.ndarray, labels: np.ndarray, fmr: float) -> float:
    """Genuine pairs below the lowest threshold that lets through at most fmr of the impostors."""
    impostors = np.sort(scores[labels == 0])[::-1]
    k = int(np.floor(fmr * len(impostors)))
    cut = np.nextafter(impostors[k], np.inf) if k < len(impostors) else -np.inf
    return float(np.mean(scores[labels == 1] < cut))


GROUP_COLUMNS = (
    ("group", "group", "{}"),
    ("genuine_pairs", "genuine", "{}"),
    ("impostor_pairs", "impostors", "{}"),
    ("false_matches_at_approve", "FM@approve", "{}"),
    ("fmr_at_approve", "FMR@approve", "{:.4%}"),
    ("false_rejects_at_reject", "FNM@reject", "{}"),
    ("fnmr_at_reject", "FNMR@reject", "{:.3%}"),
    ("genuine_below_approve", "gen<approve", "{:.2%}"),
    ("auc", "AUC", "{:.5f}"),
    ("fnmr_at_fmr_0_001", "FNMR@FMR0.1%", "{:.2%}"),
    ("calibration_error", "ECE", "{:.2%}"),
    ("gender_accuracy", "gender acc", "{:.2%}"),
)


def group_table(rows: list[dict], title: str = "") -> str:
    """The group rows as a plain text table (a column only where some row has it)."""
    columns = [c for c in GROUP_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    cells = [[label for _, label, _ in columns]]
    for row in rows:
        cells.append([fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title] if title else []
    for k, line in enumerate(cells):
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
