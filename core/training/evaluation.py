"""Training both heads and the held-out figures: pooled, group by group (population x gender x age
band), and each saved version on the same held-out set.

    train_and_evaluate(features, params, progress, cohort) -> dict   heads, threshold, band, metrics
    evaluate_version(model, features, evaluation) -> dict            a saved version's figures
    compare(result, features, versions, models_dir) -> dict          the same held-out set, each model
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from core.training import gender as gender_training
from core.training.data import LFW, check_trainable, split_by_source
from core.training.embedding_cache import PhotoRef
from core.training.features import FeatureSet
from core.training.fitting import (
    TrainParams,
    gender_metrics,
    make_pairs,
    train_siamese,
    verification_metrics,
)
from core.training.scoring import cohort_scoring, pair_scores, raw_scoring
from core.verification.calibration import expected_calibration_error
from core.verification.policy import policy_figures

# Held-out pairs are drawn like lfw_dev's pairs.csv, each person weighing about alike: a cap on
# same-person pairs per person keeps one person with hundreds of photos from being most of them.
HELDOUT_POSITIVES_PER_PERSON = 100
LATENCY_PAIRS = 20  # held-out pairs timed per model in a comparison


def train_and_evaluate(
    data: FeatureSet, params: TrainParams, progress=None, cohort: FeatureSet | None = None
) -> dict:
    """Split by person, train both heads, choose threshold and band, evaluate on held-out people.

    Returns {"siamese", "gender", "threshold", "uncertain_band", "metrics", "data", "evaluation"}.
    progress(stage, fraction, logs) is called along the way (it may raise to stop the run).
    """

    params.validate()
    every_photo = data
    data = gender_training.identity_rows(every_photo)  # gender-only photos: the gender head's only
    check_trainable(data, params)
    train, held = split_by_source(data, params)
    # Both genders must be on both sides, or one of the figures is meaningless.
    for side, mask in (("training", train), ("held-out", held)):
        if len(set(data.genders[mask]) - {""}) < 2:
            raise ValueError(
                f"Cannot train: the {side} people are all one gender; add people or change the seed."
            )

    def report(stage, fraction, logs=None):
        if progress:
            progress(stage, fraction, logs or {})

    # Training rows: the training people's photos, then their augmented views.
    train_rows = np.flatnonzero(train)
    aug_train = np.flatnonzero(train[data.aug_of]) if len(data.aug_of) else np.zeros(0, np.int64)
    inputs = data.inputs(params.network_names())
    # Augmented views are dlib's only (TrainParams refuses them with other networks).
    train_embeddings = (
        np.concatenate([inputs[train_rows], data.aug_embeddings[aug_train]])
        if len(aug_train)
        else inputs[train_rows]
    )
    train_people = np.concatenate([data.people[train_rows], data.people[data.aug_of[aug_train]]])
    position = {int(r): k for k, r in enumerate(train_rows)}
    both_train = np.array([train[a] and train[b] for a, b in data.pairs], bool)
    both_held = np.array([held[a] and held[b] for a, b in data.pairs], bool)
    explicit = np.array([(position[int(a)], position[int(b)]) for a, b in data.pairs[both_train]], np.int64)

    report("siamese", 0.0)
    siamese, history = train_siamese(
        train_embeddings,
        train_people,
        params,
        progress=lambda epoch, logs: report("siamese", epoch / params.epochs, logs),
        explicit_pairs=explicit.reshape(-1, 2) if len(explicit) else None,
        explicit_labels=data.pair_labels[both_train] if len(explicit) else None,
    )
    tower = siamese.get_layer("tower")
    layer = siamese.get_layer("similarity")
    if cohort is not None:
        scoring = cohort_scoring(data, params, train, train_rows, inputs, tower, layer, cohort, report)
    else:
        scoring = raw_scoring(data, params, train, train_rows, inputs, tower, layer, report)
    similarities, points, threshold, chosen_on = (
        scoring["similarities"],
        scoring["points"],
        scoring["threshold"],
        scoring["chosen_on"],
    )
    band = (points.reject_below, points.approve_at)

    def person_pairs(mask, seed, per_person):
        index = np.where(mask)[0]
        pairs, labels = make_pairs(data.people[mask], per_person, 1, seed)
        return index[pairs], labels

    report("gender", 0.0)
    # Split alike per source, so the identity photos' people fall on the same side as above.
    gender_train, gender_held = (
        split_by_source(every_photo, params) if every_photo is not data else (train, held)
    )
    fitted = gender_training.fit_gender_head(
        every_photo,
        gender_train,
        gender_held,
        params,
        progress=lambda epoch, logs: report("gender", epoch / params.gender_epochs, {**logs, "epoch": epoch}),
    )

    report("evaluate", 0.0)
    held_pairs, held_labels = person_pairs(held, params.seed + 2, HELDOUT_POSITIVES_PER_PERSON)
    reviewed_held = data.pairs[both_held]
    if len(reviewed_held):
        held_pairs = np.concatenate([held_pairs, reviewed_held])
        held_labels = np.concatenate([held_labels, data.pair_labels[both_held]])
    held_sims = similarities(held_pairs)
    metrics = verification_metrics(held_sims, held_labels, threshold)
    metrics.update(policy_figures(held_sims, held_labels, points))
    metrics["calibration_error"] = expected_calibration_error(held_sims, held_labels)
    metrics.update(fitted["metrics"])
    # Figures group by group (population x gender x age band), impostors within each group.
    from core.training.fitting import group_pairs
    from core.verification.policy import group_figures

    held_index = np.flatnonzero(held)
    groups = data.groups()
    pairs_g, labels_g = group_pairs(
        data.people[held_index], groups[held_index], params.seed + 2, HELDOUT_POSITIVES_PER_PERSON
    )
    pairs_g = held_index[pairs_g]
    by_group = group_figures(similarities(pairs_g), labels_g, groups[pairs_g[:, 0]], points)
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
    if len(data.pairs):
        n_held = len(reviewed_held)
        metrics["n_reviewed_pairs_heldout"] = int(n_held)
        metrics["reviewed_heldout_accuracy"] = (
            float(np.mean((held_sims[-n_held:] >= threshold) == held_labels[-n_held:])) if n_held else None
        )
    report("done", 1.0)
    sources = (
        every_photo.sources if every_photo.sources is not None else np.full(len(every_photo.people), LFW)
    )
    labelled = every_photo.genders != ""
    summary = {
        "n_photos": int(len(every_photo.names)),
        "n_people": int(len(np.unique(data.people))),
        "n_failed_photos": len(every_photo.failed),
        "train_people": sorted(map(str, np.unique(data.people[train]))),
        "heldout_people": sorted(map(str, np.unique(data.people[held]))),
        "photos_by_gender": {g: int(np.sum(every_photo.genders == g)) for g in ("M", "F")},
    }
    if every_photo is not data:
        summary["gender_only_photos"] = int(np.sum(sources == gender_training.GENDER_ONLY))
        summary["gender_only_heldout"] = int(np.sum(gender_held & (sources == gender_training.GENDER_ONLY)))
    if set(sources) != {LFW} or len(data.aug_of) or len(data.pairs):
        summary.update(
            {
                "photos_by_source": {s: int(np.sum(sources == s)) for s in sorted(set(sources))},
                "photos_without_gender": int(np.sum(~labelled)),
                "augmented_views": int(len(data.aug_of)),
                "augmented_views_trained": int(len(aug_train)),
                "reviewed_pairs": int(len(data.pairs)),
                "reviewed_pairs_trained": int(both_train.sum()),
                "reviewed_pairs_heldout": int(both_held.sum()),
                "reviewed_pairs_across_split": int(len(data.pairs) - both_train.sum() - both_held.sum()),
                "reviewed_same": int(np.sum(data.pair_labels == 1)),
                "reviewed_different": int(np.sum(data.pair_labels == 0)),
                "notes": list(data.notes),
            }
        )
    return {
        "siamese": siamese,
        "gender": fitted["model"],
        "gender_min_confidence": fitted["min_confidence"],
        "gender_policy": {
            "min_confidence": fitted["min_confidence"],
            "max_false_flags": params.gender_max_false_flags,
            "chosen_on": fitted["chosen_on"],
            "training_false_flags": fitted["training_false_flags"],
        },
        "threshold": threshold,
        "uncertain_band": band,
        "policy": points,
        "policy_chosen_on": chosen_on,
        "policy_by_group": scoring.get("by_group"),
        "metrics_by_group": by_group,
        "cohort": scoring.get("cohort"),
        "cohort_entry": scoring.get("cohort_entry"),
        "heldout_pairs_by_group": [
            (data.names[a], data.names[b], int(y), str(groups[a]))
            for (a, b), y in zip(pairs_g, labels_g, strict=True)
        ],
        "history": history,
        "metrics": metrics,
        "heldout_pairs": [
            (data.names[a], data.names[b], int(y)) for (a, b), y in zip(held_pairs, held_labels, strict=True)
        ],
        "evaluation": {"pairs": held_pairs, "labels": held_labels, "gender_rows": fitted["gender_rows"]},
        "data": summary,
    }


COMPARED_KEYS = (
    "verification_accuracy",
    "verification_auc",
    "fnmr_at_fmr_0_001",
    "gender_accuracy",
    "gender_balanced_accuracy",
    "latency_p50_ms",
    "latency_p95_ms",
    "n_pairs",
    "n_gender",
    "threshold",
    "calibration_error",
    "automation_rate",
    "automatic_decision_accuracy",
    "auto_approve_fmr",
    "auto_reject_fnmr",
    "approve_at",
    "reject_below",
)


def evaluate_version(model, data: FeatureSet, evaluation: dict) -> dict:
    """A saved model's figures on an evaluation set (held-out pairs and gender rows) of features."""
    from core.verification.features import head_inputs
    from core.verification.heads import GENDERS, similarity_from_projections

    offset, scale = model.similarity_params()
    from core.verification.networks import networks_of

    projections = model.tower(data.inputs(networks_of(model.metadata)), training=False).numpy()
    pairs, labels = evaluation["pairs"], evaluation["labels"]
    if model.cohort_calibration is not None:
        from core.verification import cohort as cohort_ops

        stats = cohort_ops.photo_stats(projections, model.cohort.project(model.tower), model.cohort.top_k)
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        score = pair_scores(projections, pairs, stats[pairs[:, 0]], stats[pairs[:, 1]])
        sims = np.asarray(cohort_ops.probability(score, *model.cohort_calibration)).reshape(-1)
    else:
        sims = np.array(
            [similarity_from_projections(projections[a], projections[b], offset, scale) for a, b in pairs]
        )
    metrics = verification_metrics(sims, labels, model.threshold)
    metrics.update(policy_figures(sims, labels, model.operating_points))
    metrics["calibration_error"] = expected_calibration_error(sims, labels) if len(sims) else None
    rows = evaluation["gender_rows"]
    _, gender_input = head_inputs(data.inputs(networks_of(model.metadata))[rows], data.gender_logits[rows])
    probs = model.gender.predict(gender_input, verbose=0) if len(rows) else np.zeros((0, 2))
    predicted = np.array(GENDERS)[np.argmax(probs, axis=1)] if len(rows) else np.array([])
    metrics.update(gender_metrics(predicted, data.genders[rows]))
    return metrics


def _latency(engines: dict, refs: list[tuple[PhotoRef, PhotoRef]]) -> dict[str, list[float]]:
    """Per-pair latency (photo bytes to decision) of each engine, interleaved pair by pair."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    photos = [(a.load(), b.load()) for a, b in refs]
    for engine in engines.values():  # warm-up: graphs traced, detectors initialised
        engine.verify(*photos[0])
    for g, v in photos:
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.verify(g, v)
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def compare(result: dict, data: FeatureSet, versions: dict[str, str], models_dir: Path | None = None) -> dict:
    """Each named model version (e.g. {"new": v, "active": a}) on the same held-out evaluation set.

    Figures per model: the benchmark's keys (accuracy, AUC, FNMR at FMR 0.1%, gender accuracy and
    balanced accuracy, latency p50/p95 per pair from photo bytes, timed interleaved). Also says
    how many held-out people a model was trained on (then its figures flatter it).
    """
    from core.errors import ModelError
    from core.verification.engine import Engine

    heldout = set(result["data"]["heldout_people"])
    engines, out = {}, {}
    for name, version in versions.items():
        try:
            engines[name] = Engine.load(version, models_dir)
        except (ModelError, OSError, ValueError) as exc:
            out[name] = {"model_version": version, "error": str(exc)}
            continue
        model = engines[name].model
        figures = evaluate_version(model, data, result["evaluation"])
        trained_on = set(model.metadata.get("data", {}).get("train_people", []))
        figures["heldout_people_seen_in_training"] = len(heldout & trained_on)
        out[name] = {"model_version": version, **figures}
    pairs = result["evaluation"]["pairs"]
    if engines and len(pairs) and data.refs is not None:
        rng = np.random.default_rng(0)
        chosen = rng.choice(len(pairs), size=min(LATENCY_PAIRS, len(pairs)), replace=False)
        refs = [(data.refs[pairs[k][0]], data.refs[pairs[k][1]]) for k in sorted(chosen)]
        try:
            for name, times in _latency(engines, refs).items():
                out[name]["latency_p50_ms"] = float(np.percentile(times, 50))
                out[name]["latency_p95_ms"] = float(np.percentile(times, 95))
                out[name]["latency_pairs"] = len(times)
        except Exception as exc:  # latency is a nice-to-have; the accuracy figures stand
            for name in engines:
                out[name]["latency_error"] = str(exc)
    return out
