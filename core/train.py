"""Train a model version from an LFW-style folder and write its evaluation.

python -m core.train --images DIR --people PEOPLE.csv --json OUT.json [--promote] [--seed N]

DIR holds NAME_NNNN.jpg photos; PEOPLE.csv has person,gender. People are split into training and
held-out sets (never photos); the heads are trained on the first, the threshold and uncertain band
chosen on the training people, and every reported figure comes from the held-out people.
Without --promote the default model (models/DEFAULT) stays as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import config  # noqa: E402
from core.training import (  # noqa: E402
    TrainParams,
    best_threshold,
    gender_metrics,
    make_pairs,
    split_people,
    train_gender,
    train_siamese,
    uncertain_band,
    verification_metrics,
)

LFW_NAME = re.compile(r"^(?P<person>.+)_\d{4}\.(jpe?g|png)$", re.IGNORECASE)


@dataclass
class FeatureSet:
    """Pretrained features of labelled photos: one row per photo with a usable face."""

    names: np.ndarray  # file names (or photo hashes)
    people: np.ndarray
    genders: np.ndarray  # "M"/"F"
    embeddings: np.ndarray  # N x 128
    gender_logits: np.ndarray  # N
    failed: list[str]


def read_lfw_folder(images: Path, people_csv: Path) -> pd.DataFrame:
    """Rows (path, person, gender) for every photo in images whose person is in people_csv."""
    people = pd.read_csv(people_csv)
    missing = {"person", "gender"} - set(people.columns)
    if missing:
        raise ValueError(f"{people_csv}: missing column(s) {', '.join(sorted(missing))}")
    gender_of = dict(zip(people.person.astype(str), people.gender.astype(str).str.upper(), strict=True))
    bad = sorted({g for g in gender_of.values() if g not in ("M", "F")})
    if bad:
        raise ValueError(f"{people_csv}: gender must be M or F, found {bad}")
    rows = []
    for path in sorted(Path(images).iterdir()):
        match = LFW_NAME.match(path.name)
        if match and match["person"] in gender_of:
            rows.append((path, match["person"], gender_of[match["person"]]))
    return pd.DataFrame(rows, columns=["path", "person", "gender"])


def extract_features(table: pd.DataFrame, progress=None) -> FeatureSet:
    """The product's own feature path (core.features) on every photo, in batches."""
    from core import features

    keep, embeddings, logits, failed = [], [], [], []
    paths = list(table.path)
    for first in range(0, len(paths), features.CHIPS_PER_CALL):
        chunk = paths[first : first + features.CHIPS_PER_CALL]
        for offset, analysis in enumerate(features.extract(chunk)):
            if analysis.embedding is None:
                failed.append(Path(chunk[offset]).name)
                continue
            keep.append(first + offset)
            embeddings.append(analysis.embedding)
            logits.append(analysis.gender_logit)
        if progress:
            progress(min(first + len(chunk), len(paths)), len(paths))
    rows = table.iloc[keep]
    return FeatureSet(
        names=np.array([Path(p).name for p in rows.path]),
        people=rows.person.to_numpy(),
        genders=rows.gender.to_numpy(),
        embeddings=np.array(embeddings, np.float32),
        gender_logits=np.array(logits, np.float32),
        failed=failed,
    )


def check_trainable(data: FeatureSet, params: TrainParams) -> None:
    """Refuse, before any training, data that cannot give an honest held-out evaluation."""
    people = np.unique(data.people)
    counts = pd.Series(data.people).value_counts()
    with_pairs = int((counts >= 2).sum())
    problems = []
    if len(people) < 6:
        problems.append(
            f"only {len(people)} people with a usable face; at least 6 are needed to hold some out"
        )
    if with_pairs < 4:
        problems.append(f"only {with_pairs} people have two or more photos; at least 4 are needed")
    for gender in ("M", "F"):
        if not np.any(data.genders == gender):
            problems.append(f"no photos of gender {gender}: the gender head cannot learn it")
    if problems:
        raise ValueError("Cannot train: " + "; ".join(problems) + ".")


def train_and_evaluate(data: FeatureSet, params: TrainParams, progress=None) -> dict:
    """Split by person, train both heads, choose threshold and band, evaluate on held-out people.

    Returns {"siamese", "gender", "threshold", "uncertain_band", "metrics", "data"}.
    progress(stage, fraction, logs) is called along the way.
    """
    from core.features import head_inputs
    from core.heads import GENDERS, similarity_from_projections

    params.validate()
    check_trainable(data, params)
    train, held = split_people(data.people, params.holdout_fraction, params.seed)
    # Both genders must be on both sides, or one of the figures is meaningless.
    for side, mask in (("training", train), ("held-out", held)):
        if len(set(data.genders[mask])) < 2:
            raise ValueError(
                f"Cannot train: the {side} people are all one gender; add people or change the seed."
            )

    def report(stage, fraction, logs=None):
        if progress:
            progress(stage, fraction, logs or {})

    report("siamese", 0.0)
    siamese, history = train_siamese(
        data.embeddings[train],
        data.people[train],
        params,
        progress=lambda epoch, logs: report("siamese", epoch / params.epochs, logs),
    )
    tower = siamese.get_layer("tower")
    layer = siamese.get_layer("similarity")
    offset, scale = float(layer.offset.numpy()), float(layer.scale.numpy())
    projections = tower(data.embeddings, training=False).numpy()

    def similarities(mask, seed, per_person):
        index = np.where(mask)[0]
        pairs, labels = make_pairs(data.people[mask], per_person, 1, seed)
        sims = np.array(
            [
                similarity_from_projections(projections[index[a]], projections[index[b]], offset, scale)
                for a, b in pairs
            ]
        )
        return sims, labels, index[pairs]

    train_sims, train_labels, _ = similarities(train, params.seed + 1, 200)
    threshold = best_threshold(train_sims, train_labels)
    band = uncertain_band(train_sims, train_labels, threshold, params.target_fmr_outside_band)

    report("gender", 0.0)
    _, gender_input = head_inputs(data.embeddings, data.gender_logits)
    gender = train_gender(
        gender_input[train],
        data.genders[train],
        data.people[train],
        params,
        progress=lambda epoch, logs: report("gender", epoch / params.gender_epochs, logs),
    )

    report("evaluate", 0.0)
    held_sims, held_labels, held_pairs = similarities(held, params.seed + 2, 1000)
    metrics = verification_metrics(held_sims, held_labels, threshold)
    in_band = (held_sims >= band[0]) & (held_sims < band[1])
    outside = ~in_band
    metrics["automation_rate"] = float(outside.mean())
    metrics["accuracy_outside_band"] = (
        float(np.mean((held_sims[outside] >= threshold) == held_labels[outside])) if outside.any() else None
    )
    probs = gender.predict(gender_input[held], verbose=0)
    predicted = np.array(GENDERS)[np.argmax(probs, axis=1)]
    metrics.update(gender_metrics(predicted, data.genders[held]))
    pretrained_pred = np.where(data.gender_logits[held] > 0, "M", "F")
    metrics["pretrained_gender_accuracy"] = gender_metrics(pretrained_pred, data.genders[held])[
        "gender_accuracy"
    ]
    metrics["baseline_raw_distance_accuracy_at_0_6"] = float(
        np.mean(
            (
                np.linalg.norm(
                    data.embeddings[held_pairs[:, 0]] - data.embeddings[held_pairs[:, 1]],
                    axis=1,
                )
                < 0.6
            )
            == held_labels
        )
    )
    report("done", 1.0)
    return {
        "siamese": siamese,
        "gender": gender,
        "threshold": threshold,
        "uncertain_band": band,
        "history": history,
        "metrics": metrics,
        "heldout_pairs": [
            (data.names[a], data.names[b], int(y)) for (a, b), y in zip(held_pairs, held_labels, strict=True)
        ],
        "data": {
            "n_photos": int(len(data.names)),
            "n_people": int(len(np.unique(data.people))),
            "n_failed_photos": len(data.failed),
            "train_people": sorted(map(str, np.unique(data.people[train]))),
            "heldout_people": sorted(map(str, np.unique(data.people[held]))),
            "photos_by_gender": {g: int(np.sum(data.genders == g)) for g in ("M", "F")},
        },
    }


def save_trained(result: dict, params: TrainParams, source: str, models_dir: Path | None = None) -> str:
    """Write the model version folder with its metadata; returns the version name."""
    from core import dlib_resnet, features, gender_net
    from core.heads import save_version

    created = datetime.now(UTC)
    version = f"v{created:%Y%m%d-%H%M%S}"
    metadata = {
        "created_at": created.isoformat(timespec="seconds"),
        "features_version": features.FEATURES_VERSION,
        "pretrained": {
            "dlib_resnet_sha256": dlib_resnet.dlib_model_sha256(),
            "gender_network_sha256": gender_net.gender_weights_sha256(),
        },
        "threshold": result["threshold"],
        "uncertain_band": list(result["uncertain_band"]),
        "gender_min_confidence": 0.9,
        "metrics": result["metrics"],
        "params": params.to_dict(),
        "data": {**result["data"], "source": source},
        "history": result["history"],
    }
    directory = save_version(
        models_dir or config.models_dir(), version, result["siamese"], result["gender"], metadata
    )
    pd.DataFrame(result["heldout_pairs"], columns=["file_x", "file_y", "Decision"]).replace(
        {"Decision": {1: "Yes", 0: "No"}}
    ).to_csv(directory / "heldout_pairs.csv", index=False)
    return version


def promote_default(version: str, models_dir: Path | None = None) -> None:
    path = Path(models_dir or config.models_dir()) / "DEFAULT"
    path.write_text(version + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.train", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--promote", action="store_true", help="make the new version the default")
    parser.add_argument("--seed", type=int, default=TrainParams.seed)
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs)
    parser.add_argument("--loss", choices=["contrastive", "triplet"], default=TrainParams.loss)
    args = parser.parse_args(argv)
    params = TrainParams(seed=args.seed, epochs=args.epochs, loss=args.loss)
    try:
        params.validate()
        table = read_lfw_folder(args.images, args.people)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))

    def show(done, total):
        sys.stderr.write(f"\rfeatures {done}/{total}")
        if done == total:
            sys.stderr.write("\n")

    start = time.perf_counter()
    data = extract_features(table, progress=show)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        result = train_and_evaluate(data, params)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    train_s = time.perf_counter() - start
    version = save_trained(result, params, source=str(args.images))
    if args.promote:
        promote_default(version)
    out = {
        "model_version": version,
        "promoted": args.promote,
        **result["metrics"],
        "threshold": result["threshold"],
        "uncertain_band": list(result["uncertain_band"]),
        "features_seconds": round(features_s, 1),
        "training_seconds": round(train_s, 1),
        "data": {k: v for k, v in result["data"].items() if not k.endswith("_people")},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
