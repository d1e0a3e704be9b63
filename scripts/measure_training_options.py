"""Measure, by person, whether each augmentation or preprocessing option helps the trained heads.

    DATABASE_URL=sqlite:////tmp/cache.sqlite3 .venv/bin/python scripts/measure_training_options.py \
        --images ../shared/data/lfw_dev/images --people ../shared/data/lfw_dev/people.csv \
        --json artifacts/training_options.json [--splits 5]

Features (and every augmented view) come from the embedding cache in DATABASE_URL, computed once.
Each option is trained and evaluated on the same --splits random splits of people (held-out
people never seen in training; seeds 1..N), and the held-out figures are averaged. "gray_both"
is the seed's preprocessing applied to every photo, training and held-out (what serving would
see if the product preprocessed), the others are training-time views only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.storage.db import init_db, session_factory  # noqa: E402
from core.training import pipeline  # noqa: E402
from core.training.fitting import TrainParams  # noqa: E402

KEYS = (
    "verification_accuracy",
    "verification_auc",
    "fnmr_at_fmr_0_001",
    "gender_accuracy",
    "gender_balanced_accuracy",
)
OPTIONS = {
    "none": "",
    "blur": "blur",
    "jitter": "jitter",
    "gray": "gray",
    "blur+jitter+gray": "blur,jitter,gray",
}


def subset(feats: pipeline.FeatureSet, kinds: list[str], view_of: np.ndarray) -> pipeline.FeatureSet:
    keep = np.isin(view_of, kinds) if kinds else np.zeros(len(view_of), bool)
    return replace(
        feats,
        aug_of=feats.aug_of[keep],
        aug_embeddings=feats.aug_embeddings[keep],
        aug_logits=feats.aug_logits[keep],
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args()

    factory = session_factory(init_db())  # the embedding cache
    data = pipeline.collect(pipeline.DataChoice(args.images, args.people), factory)
    all_views = TrainParams(augment="blur,jitter,gray")
    start = time.perf_counter()
    feats = pipeline.build_features(
        data,
        all_views,
        factory,
        progress=lambda d, t: sys.stderr.write(f"\rfeatures {d}/{t}"),
    )
    sys.stderr.write(f"\nfeatures: {time.perf_counter() - start:.1f} s\n")
    # Which kind each augmented row is (build_features lays views out kind by kind).
    n = len(feats.names)
    view_of = np.repeat([name.split(".")[0] for name in all_views.view_names()], n)[: len(feats.aug_of)]

    gray_rows = view_of == "gray"
    gray_both = replace(
        feats,
        embeddings=feats.aug_embeddings[gray_rows][np.argsort(feats.aug_of[gray_rows])],
        gender_logits=feats.aug_logits[gray_rows][np.argsort(feats.aug_of[gray_rows])],
        aug_of=np.zeros(0, np.int64),
        aug_embeddings=np.zeros((0, 128), np.float32),
        aug_logits=np.zeros(0, np.float32),
    )
    configs = {
        name: subset(feats, [k for k in kinds.split(",") if k], view_of) for name, kinds in OPTIONS.items()
    }
    configs["gray_both"] = gray_both

    results = {}
    for name, fs in configs.items():
        runs = []
        for seed in range(1, args.splits + 1):
            start = time.perf_counter()
            out = pipeline.train_and_evaluate(fs, TrainParams(seed=seed))
            runs.append({k: out["metrics"][k] for k in KEYS} | {"seconds": time.perf_counter() - start})
            sys.stderr.write(f"{name} seed {seed}: {runs[-1]}\n")
        results[name] = {
            "mean": {k: float(np.mean([r[k] for r in runs])) for k in (*KEYS, "seconds")},
            "sd": {k: float(np.std([r[k] for r in runs])) for k in KEYS},
            "runs": runs,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"{'option':<18}" + "".join(f"{k:>26}" for k in KEYS))
    for name, r in results.items():
        cells = "".join(f"{r['mean'][k]:>18.4f} ±{r['sd'][k]:.4f}" for k in KEYS)
        print(f"{name:<18}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
