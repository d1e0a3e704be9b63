"""Model versions on disk: the version folder (heads, cohort, metadata, held-out pairs, MODEL_CARD.md)
and the DEFAULT file.

    save_trained(result, params, source, models_dir) -> version
    promote_default(version, models_dir)             models/DEFAULT names it
    active_networks(session_factory, models_dir)     the identity networks of the active version
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from core import config
from core.training import gender as gender_training
from core.training.data import LFW
from core.training.fitting import TrainParams


def new_version_name(models_dir: Path) -> str:
    created = datetime.now(UTC)
    version = f"v{created:%Y%m%d-%H%M%S}"
    suffix = 1
    while (Path(models_dir) / version).exists():
        suffix += 1
        version = f"v{created:%Y%m%d-%H%M%S}-{suffix}"
    return version


def save_trained(
    result: dict, params: TrainParams, source: str, models_dir: Path | None = None, extra: dict | None = None
) -> str:
    """Write the model version folder with its metadata; returns the version name."""
    from core.verification import features
    from core.verification.heads import save_version
    from core.verification.networks import dlib_resnet, gender_cydral, network

    networks = params.network_names()
    models_dir = Path(models_dir or config.models_dir())
    version = new_version_name(models_dir)
    metadata = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features_version": features.features_version(networks),
        "networks": list(networks),
        "pretrained": {
            "dlib_resnet_sha256": dlib_resnet.dlib_model_sha256(),
            "gender_network_sha256": gender_cydral.gender_weights_sha256(),
            **{f"{name}_sha256": network(name).weights_sha256() for name in networks if name != "dlib"},
        },
        "threshold": result["threshold"],
        "uncertain_band": list(result["uncertain_band"]),
        "policy": {**result["policy"].to_dict(), "chosen_on": result["policy_chosen_on"]},
        # The engine reads it from here: the gender_mismatch flag's confidence (core.training.gender).
        "gender_min_confidence": result.get("gender_min_confidence", gender_training.MIN_CONFIDENCE_FLOOR),
        **({"gender_policy": result["gender_policy"]} if "gender_policy" in result else {}),
        "metrics": result["metrics"],
        "params": params.to_dict(),
        "data": {**result["data"], "source": source},
        "history": result["history"],
        **(extra or {}),
    }
    if result.get("policy_by_group"):
        metadata["policy"]["by_group"] = result["policy_by_group"]
    if result.get("metrics_by_group"):
        metadata["metrics_by_group"] = result["metrics_by_group"]
    if result.get("cohort_entry"):
        metadata["cohort"] = result["cohort_entry"]
    directory = save_version(
        models_dir, version, result["siamese"], result["gender"], metadata, cohort=result.get("cohort")
    )
    pd.DataFrame(result["heldout_pairs"], columns=["file_x", "file_y", "Decision"]).replace(
        {"Decision": {1: "Yes", 0: "No"}}
    ).to_csv(directory / "heldout_pairs.csv", index=False)
    if result.get("heldout_pairs_by_group"):
        # Held-out pairs of each set apart (impostors within a group), for the benchmark's --set.
        by_group = pd.DataFrame(
            result["heldout_pairs_by_group"], columns=["file_x", "file_y", "Decision", "group"]
        )
        by_group["Decision"] = by_group["Decision"].map({1: "Yes", 0: "No"})
        for name, part in by_group.groupby(by_group["group"].str.split(":").str[0]):
            if name != LFW:  # LFW's held-out people are judged on heldout_pairs.csv, as before
                part.to_csv(directory / f"heldout_pairs_{name}.csv", index=False)
    from core.training.model_card import write_model_card

    write_model_card(directory, {**metadata, "version": version})
    return version


def promote_default(version: str, models_dir: Path | None = None) -> None:
    path = Path(models_dir or config.models_dir()) / "DEFAULT"
    path.write_text(version + "\n")


def active_networks(session_factory, models_dir: Path) -> tuple[str, ...]:
    """The identity networks of the active (or default) model version; () when there is none."""
    from core.errors import ModelError
    from core.training import registry
    from core.verification.heads import default_version
    from core.verification.networks import networks_of

    try:
        active = None
        if session_factory is not None:
            with session_factory() as session:
                active = registry.active_version(session, models_dir)
        active = active or default_version(models_dir)
        return networks_of(json.loads((Path(models_dir) / active / "metadata.json").read_text()))
    except (ModelError, OSError, ValueError):
        return ()
