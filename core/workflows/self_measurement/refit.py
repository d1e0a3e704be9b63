"""Re-fit of approve_at on the members' own impostor distribution, written as a new model version."""

from __future__ import annotations

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


def refit_point(
    summary_counts: dict, floor: float, scale: Scale, target: float, compared: int
) -> float | None:
    """The lowest similarity (a histogram edge) at which the 95% bound of the measured rate, over
    both genders' pairs, stays at or under the target; None when no edge does (too few pairs)."""
    floor_distance = math.sqrt(scale.sqdist(floor))
    hist = np.sum([np.asarray(h, np.int64) for h in summary_counts["histogram"].values()], axis=0)
    at_or_closer = np.cumsum(hist)  # pairs with distance below each bin's upper edge
    best = None
    for b in range(HISTOGRAM_BINS):
        upper = clopper_pearson_upper(int(at_or_closer[b]), compared)
        if upper is None or upper > target:
            break
        # Pairs up to bin b's upper edge are allowed: approve from the edge's similarity on.
        best = b
    if best is None:
        return None
    edge_distance = (best + 1) / HISTOGRAM_BINS * floor_distance
    # Just above the edge's similarity: a pair exactly at the edge (the next bin) is not approved.
    return float(np.nextafter(scale.similarity(np.array([edge_distance**2]))[0], 1.0))


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
    row = session.get(SelfMeasurement, run_id)
    if row is None or row.status != COMPLETED:
        raise SelfMeasurementError(f"There is no completed measurement {run_id}.")
    models_dir = Path(models_dir or config.models_dir())
    parent = row.model_version
    meta_path = models_dir / parent / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise SelfMeasurementError(f"Model version {parent} cannot be read from {meta_path}: {exc}") from exc
    from core.verification.heads import load_version

    scale = model_scale(load_version(parent, models_dir))
    target = fmr_target()
    compared = int(row.summary["all"]["compared"])
    point = refit_point(row.counts, row.floor, scale, target, compared)
    if point is None:
        raise SelfMeasurementError(
            f"{compared:,} cross-member pairs are too few to re-fit the approve point to a false-match "
            f"rate of {target:g} (at least {pairs_needed(target):,} are needed)."
        )
    policy = dict(metadata.get("policy") or {})
    reject_below = float(policy.get("reject_below", (metadata.get("uncertain_band") or [0, 0])[0]))
    point = max(point, reject_below)
    old = float(policy.get("approve_at", (metadata.get("uncertain_band") or [0, 1])[1]))
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
        "measured_on": row.measured_on,
        "approve_at_before": old,
        "approve_at_after": point,
        "target": target,
        "compared_pairs": compared,
        "at_approve_before": row.summary["all"]["at_approve"]["k"],
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
