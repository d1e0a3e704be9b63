"""Re-fit of approve_at on the members' own impostor distribution, written as a new model version."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from core import config
from core.storage import audit
from core.storage.schema import SelfMeasurement, utcnow
from core.workflows.self_measurement.photos import model_scale
from core.workflows.self_measurement.settings import (
    COMPLETED,
    HISTOGRAM_BINS,
    REFIT,
    SelfMeasurementError,
    fmr_target,
)
from core.workflows.self_measurement.stats import Scale, clopper_pearson_upper, pairs_needed

# ----------------------------------------------------------------------------------------------
# Re-fit of approve_at on the members' own impostors


def _refit_edge(summary_counts: dict, target: float, compared: int) -> tuple[int | None, np.ndarray]:
    """(the last histogram bin whose pairs, with every closer one, keep the 95% bound at or under
    the target, or None; the pairs at or closer than each bin's upper edge)."""
    hist = np.sum([np.asarray(h, np.int64) for h in summary_counts["histogram"].values()], axis=0)
    at_or_closer = np.cumsum(hist)  # pairs with distance below each bin's upper edge
    best = None
    for b in range(HISTOGRAM_BINS):
        upper = clopper_pearson_upper(int(at_or_closer[b]), compared)
        if upper is None or upper > target:
            break
        # Pairs up to bin b's upper edge are allowed: approve from the edge's similarity on.
        best = b
    return best, at_or_closer


def _edge_similarity(best: int, floor: float, scale: Scale) -> float:
    edge_distance = (best + 1) / HISTOGRAM_BINS * math.sqrt(scale.sqdist(floor))
    # Just above the edge's similarity: a pair exactly at the edge (the next bin) is not approved.
    return float(np.nextafter(scale.similarity(np.array([edge_distance**2]))[0], 1.0))


def refit_point(
    summary_counts: dict, floor: float, scale: Scale, target: float, compared: int
) -> float | None:
    """The lowest similarity (a histogram edge) at which the 95% bound of the measured rate, over
    both genders' pairs, stays at or under the target; None when no edge does (too few pairs)."""
    best, _at_or_closer = _refit_edge(summary_counts, target, compared)
    return None if best is None else _edge_similarity(best, floor, scale)


@functools.lru_cache(maxsize=8)
def _scale_of(version: str, models_dir: str) -> Scale:
    """The version's similarity scale (its networks loaded once per process: the page asks often)."""
    from core.verification.heads import load_version

    return model_scale(load_version(version, Path(models_dir)))


def _parent_metadata(models_dir: Path, parent: str) -> dict:
    meta_path = models_dir / parent / "metadata.json"
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise SelfMeasurementError(f"Model version {parent} cannot be read from {meta_path}: {exc}") from exc


def _completed(session: Session, run_id: int) -> SelfMeasurement:
    row = session.get(SelfMeasurement, run_id)
    if row is None or row.status != COMPLETED:
        raise SelfMeasurementError(f"There is no completed measurement {run_id}.")
    return row


def refit_plan(session: Session, run_id: int, models_dir: Path | None = None) -> dict:
    """What a re-fit on measurement run_id would do, nothing written: approve_at before and after,
    and the measured cross-member pairs at or above each (k of compared, with the 95% bound).

    approve_at_after is None when the pairs are too few for any point to bound the rate under the
    target. k_after is counted from the measured distances (the histogram the point is fitted on),
    so it is what the same members give at the new point."""
    row = _completed(session, run_id)
    models_dir = Path(models_dir or config.models_dir())
    parent = row.model_version
    metadata = _parent_metadata(models_dir, parent)
    policy = dict(metadata.get("policy") or {})
    band = metadata.get("uncertain_band") or [0, 1]
    reject_below = float(policy.get("reject_below", band[0]))
    target = fmr_target()
    compared = int(row.summary["all"]["compared"])
    at_approve = row.summary["all"]["at_approve"]
    plan = {
        "run_id": run_id,
        "parent": parent,
        "measured_on": row.measured_on,
        "target": target,
        "compared": compared,
        "pairs_needed": pairs_needed(target),
        "reject_below": reject_below,
        "approve_at_before": float(policy.get("approve_at", band[1])),
        "k_before": int(at_approve["k"]),
        "upper_before": at_approve["upper"],
        "approve_at_after": None,
        "k_after": None,
        "upper_after": None,
    }
    best, at_or_closer = _refit_edge(row.counts, target, compared)
    if best is None:
        return plan
    scale = _scale_of(parent, str(models_dir))
    point = _edge_similarity(best, row.floor, scale)
    k_after = int(at_or_closer[best])
    if point < reject_below:  # never approve below the reject point: fewer pairs reach it
        point = reject_below
        last = int(math.sqrt(scale.sqdist(point)) / math.sqrt(scale.sqdist(row.floor)) * HISTOGRAM_BINS)
        k_after = int(at_or_closer[last - 1]) if last > 0 else 0
    plan.update(approve_at_after=point, k_after=k_after, upper_after=clopper_pearson_upper(k_after, compared))
    return plan


def write_refit_version(
    session: Session,
    run_id: int,
    actor: str,
    models_dir: Path | None = None,
    new_version: str | None = None,
) -> str:
    """Write a new model version folder: its parent's files and every figure of its parent, with
    approve_at re-fitted to the measured impostor distribution (audited). The caller registers it
    (core.dashboard.self_measurement.refit_approve_at); promotion and rollback go through the
    registry like any version. Returns the new version's name."""
    models_dir = Path(models_dir or config.models_dir())
    plan = refit_plan(session, run_id, models_dir)
    parent, target, compared = plan["parent"], plan["target"], plan["compared"]
    point = plan["approve_at_after"]
    if point is None:
        raise SelfMeasurementError(
            f"{compared:,} cross-member pairs are too few to re-fit the approve point to a false-match "
            f"rate of {target:g} (at least {pairs_needed(target):,} are needed)."
        )
    metadata = _parent_metadata(models_dir, parent)
    policy = dict(metadata.get("policy") or {})
    reject_below, old = plan["reject_below"], plan["approve_at_before"]
    name = new_version or f"{parent[:40]}-refit{utcnow():%Y%m%d%H%M%S}"
    target_dir = models_dir / name
    if target_dir.exists():
        raise SelfMeasurementError(f"Model version {name} exists already.")
    shutil.copytree(models_dir / parent, target_dir)
    policy["approve_at"] = point
    metadata["policy"] = policy
    band = list(metadata.get("uncertain_band") or [reject_below, old])
    band[1] = point
    metadata["uncertain_band"] = band
    metadata["version"] = name
    metadata["refit"] = {
        "parent": parent,
        "measurement_id": run_id,
        "measured_on": plan["measured_on"],
        "approve_at_before": old,
        "approve_at_after": point,
        "target": target,
        "compared_pairs": compared,
        "at_approve_before": plan["k_before"],
        "at_approve_after": plan["k_after"],
        "by": actor,
        "at": utcnow().isoformat(),
    }
    (target_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    audit.log(
        session,
        actor,
        REFIT,
        "model_version",
        name,
        {k: v for k, v in metadata["refit"].items() if k != "at"},
    )
    session.commit()
    return name


def score_automation(session: Session, version: str, approve_at: float, reject_below: float) -> dict:
    """Of the version's stored results with a score, how many the score alone decides at these
    points (at or above approve_at, or under reject_below): {"n", "automatic", "rate"}. Other
    checks (gender, duplicates, photo quality) send some to review whatever the score."""
    from sqlalchemy import func, or_, select

    from core.storage.schema import VerificationResult

    scored = select(func.count()).where(
        VerificationResult.model_version == version, VerificationResult.similarity.is_not(None)
    )
    n = int(session.scalar(scored) or 0)
    automatic = int(
        session.scalar(
            scored.where(
                or_(
                    VerificationResult.similarity >= approve_at,
                    VerificationResult.similarity < reject_below,
                )
            )
        )
        or 0
    )
    return {"n": n, "automatic": automatic, "rate": automatic / n if n else None}
