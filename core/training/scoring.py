"""Scoring held-out pairs the way the final tower will meet new people: calibration, threshold,
operating points and the cohort, all fitted on out-of-fold pairs of the training people.

    out_of_fold_distances(inputs, people, params) -> (distances, labels)     versions without a cohort
    out_of_fold_cohort_scores(...) -> (scores, labels, groups, distances)   versions with a cohort
    shipped_cohort(data, train, cohort, params) -> (Cohort, faces, rows)     the faces a version ships
    raw_scoring(...) / cohort_scoring(...) -> dict   similarities(pairs), threshold, operating points
"""

from __future__ import annotations

import numpy as np

from core.training.data import COHORT
from core.training.features import FeatureSet
from core.training.fitting import (
    TrainParams,
    calibrate,
    make_pairs,
    midpoint_threshold,
    train_siamese,
)
from core.verification.networks import network_class
from core.verification.policy import choose_operating_points

# Training people's photos in the shipped cohort: one each. A person inside the cohort is judged
# against their own photos (their top cohort scores are themselves): with 3 photos each, a genuine
# pair of John Howard (lfw_dev, a training person) fell from 0.99994 to 0.38. Members are never in
# the cohort, but the people the product is tried and shown on are. With none (East Asian cohort
# faces alone), held-out LFW men lost: FNMR at FMR 0.1% 0.57%, 11 impostors at approve_at; with one
# each, 0.25% and none, and every data/sample pair is decided right.
COHORT_PHOTOS_PER_PERSON = 1
# Two cohort files whose SFace embeddings are this alike are one photo twice (copies in the source).
COPY_COSINE = 0.9

CALIBRATION_FOLDS = 5


def out_of_fold_distances(inputs: np.ndarray, people: np.ndarray, params: TrainParams, progress=None):
    """(distances, labels) of pairs of the training people, each pair scored by a tower trained
    without its person (CALIBRATION_FOLDS folds by person), or None with too few people to fold.

    The similarity's calibration, the threshold and the two operating points are fitted on these:
    the final tower meets new people the way each fold's tower met its fold. The folds train on
    the person-based pairs only (reviewed pairs go into the final tower).
    """
    unique = np.unique(people)
    folds = min(CALIBRATION_FOLDS, len(unique) // 3)
    if folds < 2:
        return None
    rng = np.random.default_rng(params.seed + 3)
    distances, labels = [], []
    for k, group in enumerate(np.array_split(rng.permutation(unique), folds)):
        inside = np.isin(people, group)
        fold_tower = train_siamese(inputs[~inside], people[~inside], params)[0].get_layer("tower")
        rows = np.flatnonzero(inside)
        pairs, y = make_pairs(people[rows], 200, 1, params.seed + 1)
        if not len(pairs) or len(set(y)) < 2:
            continue
        projections = fold_tower(inputs[rows], training=False).numpy()
        distances.append(np.linalg.norm(projections[pairs[:, 0]] - projections[pairs[:, 1]], axis=1))
        labels.append(y)
        if progress:
            progress(k + 1)
    if not labels or len(set(np.concatenate(labels))) < 2:
        return None
    return np.concatenate(distances), np.concatenate(labels)


def merge_copies(data: FeatureSet) -> np.ndarray:
    """Row indices of a cohort's faces keeping one of each set of copies of a photo (some sources
    hold one photo under two names); each kept face's person becomes its copies' first name."""
    sface = next((v for n, v in data.others.items() if network_class(n).family == "sface"), None)
    if sface is not None:
        vectors = sface / np.linalg.norm(sface, axis=1, keepdims=True)
    else:
        vectors = data.embeddings / np.linalg.norm(data.embeddings, axis=1, keepdims=True)
    keep = []
    for row in range(len(vectors)):
        if not keep or float(np.max(vectors[keep] @ vectors[row])) < COPY_COSINE:
            keep.append(row)
    return np.array(keep, np.int64)


def shipped_cohort(data: FeatureSet, train: np.ndarray, cohort: FeatureSet, params: TrainParams):
    """The cohort a version ships: the cohort faces (copies merged) and up to
    COHORT_PHOTOS_PER_PERSON photos of each training person (seeded).

    Returns (Cohort, rows of cohort kept, rows of data used)."""
    from core.verification.cohort import Cohort

    faces = merge_copies(cohort)
    rng = np.random.default_rng(params.seed + 11)
    people_rows = []
    for person in np.unique(data.people[train]) if COHORT_PHOTOS_PER_PERSON else []:
        rows = np.flatnonzero(train & (data.people == person))
        take = min(COHORT_PHOTOS_PER_PERSON, len(rows))
        people_rows += sorted(rng.choice(rows, take, replace=False).tolist())
    people_rows = np.array(people_rows, np.int64).reshape(-1)
    networks = params.network_names()
    embeddings = np.concatenate([cohort.inputs(networks)[faces], data.inputs(networks)[people_rows]])
    people = np.concatenate([cohort.people[faces], data.people[people_rows]]).astype(str)
    return Cohort(embeddings, people, params.cohort_top_k), faces, people_rows


def cohort_stats_of(projections, people, cohort_projections, cohort_people, top_k) -> np.ndarray:
    """Photos' (mean, spread) against the cohort, leaving each photo's own person out of it."""
    from core.verification import cohort as cohort_ops

    scores = cohort_ops.raw_scores(projections, cohort_projections)
    scores[
        np.asarray(people).astype(str)[:, None] == np.asarray(cohort_people).astype(str)[None, :]
    ] = -np.inf
    return cohort_ops.top_stats(scores, top_k)


def pair_scores(projections, pairs, stats_a, stats_b) -> np.ndarray:
    from core.verification import cohort as cohort_ops

    p = np.asarray(projections, np.float64)
    raw = -np.linalg.norm(p[pairs[:, 0]] - p[pairs[:, 1]], axis=1)
    return cohort_ops.normalised_score(raw, stats_a, stats_b)


def out_of_fold_cohort_scores(
    inputs, people, groups, params: TrainParams, cohort_embeddings, cohort_people, progress=None
):
    """Cohort-normalised scores of pairs of the training people, each scored by a tower trained
    without its person (CALIBRATION_FOLDS folds by person), impostors within each group
    (fitting.group_pairs). Returns (scores, labels, groups, distances) or None with too few people."""
    from core.training.fitting import group_pairs

    unique = np.unique(people)
    folds = min(CALIBRATION_FOLDS, len(unique) // 3)
    if folds < 2:
        return None
    rng = np.random.default_rng(params.seed + 3)
    found = []
    for k, fold in enumerate(np.array_split(rng.permutation(unique), folds)):
        inside = np.isin(people, fold)
        fold_tower = train_siamese(inputs[~inside], people[~inside], params)[0].get_layer("tower")
        rows = np.flatnonzero(inside)
        pairs, labels = group_pairs(people[rows], groups[rows], params.seed + 1)
        if not len(pairs) or len(set(labels)) < 2:
            continue
        projections = fold_tower(inputs[rows], training=False).numpy()
        cohort_projections = fold_tower(cohort_embeddings, training=False).numpy()
        stats = cohort_stats_of(
            projections, people[rows], cohort_projections, cohort_people, params.cohort_top_k
        )
        scores = pair_scores(projections, pairs, stats[pairs[:, 0]], stats[pairs[:, 1]])
        distances = np.linalg.norm(projections[pairs[:, 0]] - projections[pairs[:, 1]], axis=1)
        found.append((scores, labels, groups[rows][pairs[:, 0]], distances))
        if progress:
            progress(k + 1)
    if not found:
        return None
    scores, labels, pair_groups, distances = (np.concatenate(part) for part in zip(*found, strict=True))
    if len(set(labels)) < 2:
        return None
    return scores, labels, pair_groups, distances


def cohort_impostor_scores(tower, cohort: FeatureSet, faces: np.ndarray, shipped, params: TrainParams):
    """Scores of pairs of two cohort faces of one group (all impostors: each face is someone else),
    each face's statistics leaving out itself and the other face of the pair."""
    from core.training.fitting import group_pairs
    from core.verification import cohort as cohort_ops

    groups = cohort.groups()[faces]
    people = cohort.people[faces].astype(str)
    pairs, labels = group_pairs(people, groups, params.seed + 5)
    pairs = pairs[labels == 0]
    if not len(pairs):
        return np.zeros(0), np.zeros(0), np.zeros(0, str)
    projections = tower(cohort.inputs(params.network_names())[faces], training=False).numpy()
    cohort_projections = shipped.project(tower)
    scores = cohort_ops.raw_scores(projections, cohort_projections)
    scores[people[:, None] == shipped.people[None, :]] = -np.inf  # itself (and its copies)
    column = np.full(len(faces), -1, np.int64)
    column[: len(faces)] = np.arange(len(faces))  # the shipped cohort starts with these faces, in order
    stats_a, stats_b = cohort_ops.pair_stats_leaving_out(scores, params.cohort_top_k, pairs, column)
    return pair_scores(projections, pairs, stats_a, stats_b), np.zeros(len(pairs)), groups[pairs[:, 0]]


def raw_scoring(data, params, train, train_rows, inputs, tower, layer, report) -> dict:
    """The similarity of versions without a cohort: the tower's distance through a logistic."""
    from core.verification.heads import similarity_from_projections

    # Calibration, threshold and operating points from towers that did not see the people they score.
    unseen = out_of_fold_distances(
        inputs[train_rows], data.people[train_rows], params, lambda f: report("siamese", 1.0, {"fold": f})
    )
    if unseen is not None:
        offset, scale = calibrate(*unseen)
        layer.offset.assign(offset)
        layer.scale.assign(scale)
    offset, scale = float(layer.offset.numpy()), float(layer.scale.numpy())
    projections = tower(inputs, training=False).numpy()

    def similarities(pairs):
        return np.array(
            [similarity_from_projections(projections[a], projections[b], offset, scale) for a, b in pairs]
        )

    if unseen is not None:
        chosen_on = f"out-of-fold pairs of the training people ({CALIBRATION_FOLDS} folds by person)"
        train_labels = unseen[1]
        train_sims = 1.0 / (1.0 + np.exp(-scale * (offset - unseen[0])))
    else:  # too few people to fold: the training people's pairs, seen by the tower
        chosen_on = "pairs of the training people"
        index = np.where(train)[0]
        pairs, train_labels = make_pairs(data.people[train], 200, 1, params.seed + 1)
        train_sims = similarities(index[pairs])
    return {
        "similarities": similarities,
        "threshold": midpoint_threshold(train_sims, train_labels),
        "points": choose_operating_points(
            train_sims, train_labels, params.max_auto_fmr, params.max_auto_fnmr
        ),
        "chosen_on": chosen_on,
    }


def cohort_scoring(data, params, train, train_rows, inputs, tower, layer, cohort, report) -> dict:
    """The similarity of versions with a cohort: the cohort-normalised score through a logistic,
    both fitted on pairs the scoring tower did not train on; operating points the worst group's."""
    from core.training.fitting import calibrate_scores
    from core.verification import cohort as cohort_ops
    from core.verification.policy import choose_group_operating_points

    shipped, faces, _ = shipped_cohort(data, train, cohort, params)
    groups = data.groups()
    unseen = out_of_fold_cohort_scores(
        inputs[train_rows],
        data.people[train_rows],
        groups[train_rows],
        params,
        shipped.embeddings,
        shipped.people,
        lambda f: report("siamese", 1.0, {"fold": f}),
    )
    if unseen is None:
        raise ValueError("Cannot normalise against a cohort: too few training people to fold (at least 6).")
    scores, labels, pair_groups, distances = unseen
    # The plain similarity (1:N search and earlier readers use it): balanced pairs, as before.
    rng = np.random.default_rng(params.seed + 7)
    genuine, impostors = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    balanced = np.concatenate(
        [genuine, rng.choice(impostors, min(len(impostors), len(genuine)), replace=False)]
    )
    offset, scale = calibrate(distances[balanced], labels[balanced])
    layer.offset.assign(offset)
    layer.scale.assign(scale)
    cohort_scores, cohort_labels, cohort_groups = cohort_impostor_scores(
        tower, cohort, faces, shipped, params
    )
    all_scores = np.concatenate([scores, cohort_scores])
    all_labels = np.concatenate([labels, cohort_labels])
    all_groups = np.concatenate([pair_groups, cohort_groups]).astype(str)
    slope, intercept = calibrate_scores(all_scores, all_labels)
    train_sims = cohort_ops.probability(all_scores, slope, intercept)
    points, by_group = choose_group_operating_points(
        train_sims, all_labels, all_groups, params.max_auto_fmr, params.max_auto_fnmr
    )
    projections = tower(inputs, training=False).numpy()
    stats = cohort_stats_of(
        projections, data.people, shipped.project(tower), shipped.people, params.cohort_top_k
    )

    def similarities(pairs):
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        if not len(pairs):
            return np.zeros(0)
        score = pair_scores(projections, pairs, stats[pairs[:, 0]], stats[pairs[:, 1]])
        return cohort_ops.probability(score, slope, intercept)

    from_cohort = int(sum(person.startswith(f"{COHORT}:") for person in shipped.people))
    sources = {"cohort faces": from_cohort, "training people's photos": len(shipped) - from_cohort}
    entry = {
        "file": cohort_ops.COHORT_FILE,
        "faces": len(shipped),
        "top_k": shipped.top_k,
        "slope": slope,
        "intercept": intercept,
        "score": "adaptive S-norm of -distance in the tower's space, top_k closest cohort faces",
        "faces_by_source": sources,
        "copies_merged": int(len(cohort.names) - len(faces)),
        "chosen_on": (
            f"out-of-fold pairs of the training people ({CALIBRATION_FOLDS} folds by person) and pairs "
            "of two cohort faces of one group"
        ),
    }
    return {
        "similarities": similarities,
        "threshold": 0.5,  # even odds: the probability is calibrated on both kinds of pair weighted alike
        "points": points,
        "by_group": by_group,
        "chosen_on": entry["chosen_on"] + "; every group meets each target on its own (the worst decides)",
        "cohort": shipped,
        "cohort_entry": entry,
    }
