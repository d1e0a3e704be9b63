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
    operating_points(metadata) -> OperatingPoints      from a model version's metadata["policy"]
    decide(similarity, points) -> APPROVE | REJECT | REVIEW
    policy_figures(similarities, labels, points) -> dict   automation and errors at the points
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
