"""Study rules for approve_at on the training people only, folds by person; judge one rule on held-out.

    DATABASE_URL=sqlite:////tmp/cache.sqlite3 .venv/bin/python scripts/study_approve_rules.py \
        --json artifacts/approve_rules.json [--judge gauss:0.0003]

The data are the shipped default's (lfw_dev, eastasian_dev with its people held out alike, the
UTKFace chips as cohort). Scores are what the training command fits its operating points on:
cohort-normalised scores of pairs of the training people, each scored by a tower trained without
its person (core.training.scoring's folds), plus pairs of two cohort faces of one group.

Each rule sets a threshold per group (population x gender x age band) from impostor scores, and
the highest decides (as core.verification.policy.choose_group_operating_points):

    observed        above the floor(max_fmr x n)+1-th highest impostor (the shipped rule)
    gauss:P         the higher of observed and mean + z(P) sd of the group's impostors
    exp:P           the higher of observed and an exponential tail over the top 10% at FMR P
    margin:M        observed + M sd of the group's impostors

Checked by the same folds: the threshold chosen on the other folds' pairs, the impostors and the
genuine pairs of the left-out fold counted against it. --judge NAME:PAR scores the held-out
people's pairs (the final tower) once at that rule's threshold on every training pair.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from core.storage.db import init_db, session_factory  # noqa: E402
from core.training import gender as gender_training  # noqa: E402
from core.training import scoring  # noqa: E402
from core.training.data import DataChoice, TrainingData, cohort_photos, collect, split_by_source  # noqa: E402
from core.training.evaluation import HELDOUT_POSITIVES_PER_PERSON  # noqa: E402
from core.training.features import build_features  # noqa: E402
from core.training.fitting import TrainParams, calibrate_scores, group_pairs, train_siamese  # noqa: E402

RULES = (
    [("observed", None)]
    + [("gauss", p) for p in (5e-4, 3e-4, 2e-4, 1e-4, 5e-5)]
    + [("exp", p) for p in (5e-4, 3e-4, 2e-4, 1e-4)]
    + [("margin", m) for m in (0.5, 0.75, 1.0)]
)


def group_threshold(impostors: np.ndarray, rule: str, par: float | None, max_fmr: float) -> float:
    imp = np.sort(impostors)[::-1]
    k = int(np.floor(max_fmr * len(imp)))
    base = float(np.nextafter(imp[k], np.inf)) if k < len(imp) else -np.inf
    if rule == "observed":
        return base
    if rule == "gauss":
        return max(base, float(imp.mean() + norm.isf(par) * imp.std()))
    if rule == "exp":
        m = min(len(imp), max(10, int(0.1 * len(imp))))
        u, share = imp[m - 1], m / len(imp)
        rate = 1 / max(float(np.mean(imp[:m] - u)), 1e-9)
        return max(base, float(u + np.log(share / par) / rate)) if par < share else base
    if rule == "margin":
        return base + par * float(imp.std())
    raise ValueError(rule)


def threshold(scores, labels, groups, rule, par, max_fmr) -> tuple[float, str]:
    found = {
        g: group_threshold(scores[(groups == g) & (labels == 0)], rule, par, max_fmr)
        for g in sorted(set(groups[labels == 0]))
    }
    worst = max(found, key=found.get)
    return found[worst], worst


def training_scores(params: TrainParams, choice: DataChoice):
    """Out-of-fold scores of the training people (with their fold) and the cohort's impostor pairs
    (with a seeded fold per face), the final tower's held-out scores, and the calibration."""
    factory = session_factory(init_db())  # the embedding cache
    networks = params.network_names()
    every = build_features(collect(choice, factory), params, factory, networks=networks)
    cohort = build_features(
        TrainingData(cohort_photos(choice.cohort, choice.cohort_labels), []),
        params,
        factory,
        networks=networks,
    )
    data = gender_training.identity_rows(every)
    train, held = split_by_source(data, params)
    rows, inputs, groups = np.flatnonzero(train), data.inputs(networks), data.groups()
    tower = train_siamese(inputs[rows], data.people[rows], params)[0].get_layer("tower")
    shipped, faces, _ = scoring.shipped_cohort(data, train, cohort, params)
    people, pgroups, pinputs = data.people[rows], groups[rows], inputs[rows]
    unique = np.unique(people)
    folds = min(scoring.CALIBRATION_FOLDS, len(unique) // 3)
    rng = np.random.default_rng(params.seed + 3)  # the training command's own folds
    parts = []
    for k, fold in enumerate(np.array_split(rng.permutation(unique), folds)):
        inside = np.isin(people, fold)
        fold_tower = train_siamese(pinputs[~inside], people[~inside], params)[0].get_layer("tower")
        r = np.flatnonzero(inside)
        pairs, labels = group_pairs(people[r], pgroups[r], params.seed + 1)
        projections = fold_tower(pinputs[r], training=False).numpy()
        stats = scoring.cohort_stats_of(
            projections,
            people[r],
            fold_tower(shipped.embeddings, training=False).numpy(),
            shipped.people,
            params.cohort_top_k,
        )
        s = scoring.pair_scores(projections, pairs, stats[pairs[:, 0]], stats[pairs[:, 1]])
        parts.append((s, labels, pgroups[r][pairs[:, 0]], np.full(len(s), k)))
        print(f"fold {k + 1} of {folds}", file=sys.stderr)
    s, y, g, f = (np.concatenate(x) for x in zip(*parts, strict=True))
    cs, _, cg = scoring.cohort_impostor_scores(tower, cohort, faces, shipped, params)
    cpairs, clabels = group_pairs(cohort.people[faces].astype(str), cohort.groups()[faces], params.seed + 5)
    cpairs = cpairs[clabels == 0]
    face_fold = np.random.default_rng(99).integers(0, folds, len(faces))
    slope, intercept = calibrate_scores(np.concatenate([s, cs]), np.concatenate([y, np.zeros(len(cs))]))
    projections = tower(inputs, training=False).numpy()
    stats = scoring.cohort_stats_of(
        projections, data.people, shipped.project(tower), shipped.people, params.cohort_top_k
    )
    h = np.flatnonzero(held)
    hpairs, hlabels = group_pairs(data.people[h], groups[h], params.seed + 2, HELDOUT_POSITIVES_PER_PERSON)
    hpairs = h[hpairs]
    hs = scoring.pair_scores(projections, hpairs, stats[hpairs[:, 0]], stats[hpairs[:, 1]])
    return {
        "train": (s, y.astype(int), g.astype(str), f),
        "cohort": (cs, cg.astype(str), face_fold[cpairs[:, 0]], face_fold[cpairs[:, 1]]),
        "held": (hs, hlabels.astype(int), groups[hpairs[:, 0]].astype(str)),
        "calibration": (slope, intercept),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--judge", help="NAME:PAR of the rule to judge on held-out people (once)")
    args = parser.parse_args()
    shared = config.SHARED_LFW_DEV_DIR.parent
    east = shared / "eastasian_dev"
    choice = DataChoice(
        shared / "lfw_dev" / "images",
        shared / "lfw_dev" / "people.csv",
        gender_only=east / "gender_only.csv",
        sets=[(east / "images", east / "people.csv")],
        cohort=[east / "gender_only"],
        cohort_labels=[east / "gender_only.csv"],
    )
    params = TrainParams()
    found = training_scores(params, choice)
    s, y, g, f = found["train"]
    cs, cg, cf, cf2 = found["cohort"]
    slope, intercept = found["calibration"]

    def probability(x):
        return float(1 / (1 + np.exp(-(slope * x + intercept))))

    all_s, all_y = np.concatenate([s, cs]), np.concatenate([y, np.zeros(len(cs), int)])
    all_g = np.concatenate([g, cg])
    names = sorted(set(g))
    out = {"rules": []}
    for rule, par in RULES:
        false_matches = {name: 0 for name in [*names, "cohort"]}
        genuine_auto = genuine = 0
        for k in range(int(f.max()) + 1):
            use = np.concatenate([f != k, (cf != k) & (cf2 != k)])
            t, _ = threshold(all_s[use], all_y[use], all_g[use], rule, par, params.max_auto_fmr)
            left = f == k
            for name in names:
                false_matches[name] += int(np.sum(s[left & (g == name) & (y == 0)] >= t))
            false_matches["cohort"] += int(np.sum(cs[(cf == k) & (cf2 == k)] >= t))
            genuine_auto += int(np.sum(s[left & (y == 1)] >= t))
            genuine += int(np.sum(left & (y == 1)))
        t, worst = threshold(all_s, all_y, all_g, rule, par, params.max_auto_fmr)
        row = {
            "rule": f"{rule}:{par}",
            "fold_false_matches": false_matches,
            "fold_impostors": {n: int(np.sum((g == n) & (y == 0))) for n in names},
            "fold_genuine_approved": genuine_auto / genuine,
            "approve_at": probability(t),
            "decided_by": worst,
        }
        out["rules"].append(row)
        print(json.dumps(row), file=sys.stderr)
    if args.judge:
        rule, par = args.judge.split(":")
        par = None if par == "None" else float(par)
        t, _ = threshold(all_s, all_y, all_g, rule, par, params.max_auto_fmr)
        hs, hy, hg = found["held"]
        out["judged"] = {
            "rule": args.judge,
            "approve_at": probability(t),
            "by_group": {
                name: {
                    "impostors_at_approve": int(np.sum(hs[(hg == name) & (hy == 0)] >= t)),
                    "impostors": int(np.sum((hg == name) & (hy == 0))),
                    "genuine_approved": float(np.mean(hs[(hg == name) & (hy == 1)] >= t)),
                }
                for name in sorted(set(hg))
            },
        }
        print(json.dumps(out["judged"]), file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
