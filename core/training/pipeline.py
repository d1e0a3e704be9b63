"""The training pipeline: choose data, features (cached), train both heads, evaluate by person, register.

`python -m core train` (core.cli.train) is its command line: --images DIR --people PEOPLE.csv
--json OUT.json [--promote] [--seed N] [--reviewed] [--augment blur,jitter,gray] [--no-cache]
[--no-compare] [--gender-only GENDER.csv [--gender-only-images DIR]] [--gender-balance source]
[--set IMAGES PEOPLE.csv]... [--cohort DIR [--cohort-labels CSV]]...

--set adds another labelled set (e.g. East Asian people; its own share of people held out,
set_holdout_fraction). --cohort gives faces of other people (one face each; copies of one photo
are merged) that the version's scores are normalised against (core.verification.cohort): the
version then ships them (cohort.npz), its operating points are chosen so that every group
(population x gender, and age band where known) meets its targets on its own, and the cohort's
own pairs (labels: file,gender,age) count as impostors in choosing approve_at. MODEL_CARD.md is
written beside the version.

DIR holds NAME_NNNN.jpg photos (flat, or NAME/NAME_NNNN.jpg as LFW ships them); PEOPLE.csv has
person,gender. --gender-only adds a set of face photos labelled with a gender only (file,gender;
each photo its own person) to the gender head's data (core.training.gender). --reviewed adds the
reviewers' decisions from the database (approved: same person, rejected: different people, the
reviewer's gender for the verification photo). People are split into training and held-out sets
(never photos); the heads are trained on the first, the threshold and uncertain band chosen on the
training people, and every reported figure comes from the held-out people. The new version is
written under MODELS_DIR and registered in the database as a candidate; without --promote the
active model stays as it is. With --promote it becomes the active version (core.training.registry) and
models/DEFAULT names it.

Where each step lives (a reader's map; every name is also importable from here):

    core.training.data        DataChoice, collect, preflight, check_trainable, split_by_source
    core.training.features    FeatureSet, build_features (the embedding cache)
    core.training.scoring     out-of-fold calibration, cohort, operating points
    core.training.evaluation  train_and_evaluate, held-out figures by group, compare
    core.training.versions    save_trained (version folder, metadata, model card), promote_default

    run(choice, params, ...) -> TrainOutcome         all of them, as the page's worker runs it
    train_version(choice, params, ...) -> dict       run, promote if asked: the command's JSON
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from core import config  # noqa: E402
from core.training.data import (  # noqa: E402,F401  (re-exported: the pipeline's public names)
    COHORT,
    DB,
    LFW,
    LFW_NAME,
    MIN_PEOPLE,
    MIN_PEOPLE_WITH_PAIRS,
    OLDER_AGE,
    DataChoice,
    LabelledPhoto,
    Problem,
    ReviewedPair,
    TrainingData,
    _file_ref,
    check_sources,
    check_trainable,
    cohort_photos,
    collect,
    data_problems,
    default_choice,
    group_of,
    lfw_dev_dir,
    lfw_photo_files,
    lfw_photos,
    preflight,
    read_lfw_folder,
    reviewed_data,
    set_name,
    split_by_source,
)
from core.training.evaluation import (  # noqa: E402,F401
    COMPARED_KEYS,
    HELDOUT_POSITIVES_PER_PERSON,
    LATENCY_PAIRS,
    compare,
    evaluate_version,
    train_and_evaluate,
)
from core.training.features import FeatureSet, build_features, extract_features  # noqa: E402,F401
from core.training.fitting import TrainParams  # noqa: E402
from core.training.scoring import (  # noqa: E402,F401
    CALIBRATION_FOLDS,
    COHORT_PHOTOS_PER_PERSON,
    COPY_COSINE,
    shipped_cohort,
)
from core.training.versions import (  # noqa: E402,F401
    active_networks,
    new_version_name,
    promote_default,
    save_trained,
)


class Cancelled(Exception):
    """The run was asked to stop; nothing was registered."""


@dataclass
class TrainOutcome:
    version: str
    result: dict
    features: FeatureSet
    comparison: dict
    timings: dict


def run(
    choice: DataChoice,
    params: TrainParams,
    *,
    session_factory=None,
    store=None,
    models_dir: Path | None = None,
    actor: str = "cli",
    progress: Callable[[str, float, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    register: bool = True,
    compare_with_active: bool = True,
) -> TrainOutcome:
    """Collect, featurise, check, train, evaluate, save, register (inactive), compare.

    progress(stage, fraction, logs); should_stop() is asked between chunks and epochs and stops the
    run with Cancelled. Any failure removes the half-written version folder: a run never touches the
    active model (promotion is its own, confirmed action: core.training.registry.promote).
    """
    from core.training import embedding_cache, registry

    models_dir = Path(models_dir or config.models_dir())

    def report(stage, fraction, logs=None):
        if should_stop and should_stop():
            raise Cancelled()
        if progress:
            progress(stage, fraction, logs or {})

    total_start = time.perf_counter()
    params.validate()
    report("data", 0.0)
    data = collect(choice, session_factory, store)
    report("features", 0.0, {"photos": len(data.photos), "reviewed_pairs": len(data.pairs)})
    start = time.perf_counter()
    networks = params.network_names()
    if compare_with_active:  # the active model is compared on the same photos: its networks too
        networks += tuple(n for n in active_networks(session_factory, models_dir) if n not in networks)
    try:
        feats = build_features(
            data,
            params,
            session_factory,
            progress=lambda done, total: report(
                "features", done / max(total, 1), {"done": done, "total": total}
            ),
            should_stop=should_stop,
            networks=networks,
        )
    except embedding_cache.Stopped:
        raise Cancelled() from None
    cohort_feats = None
    if choice.cohort:
        try:
            cohort_feats = build_features(
                TrainingData(cohort_photos(choice.cohort, choice.cohort_labels), []),
                params,
                session_factory,
                progress=lambda done, total: report(
                    "features", done / max(total, 1), {"done": done, "total": total, "cohort": True}
                ),
                should_stop=should_stop,
                networks=params.network_names(),
            )
        except embedding_cache.Stopped:
            raise Cancelled() from None
    features_s = time.perf_counter() - start
    check_trainable(feats, params)
    start = time.perf_counter()
    # Its own "done" is not the run's: saving and comparing come after.
    result = train_and_evaluate(
        feats, params, progress=lambda s, f, logs: s != "done" and report(s, f, logs), cohort=cohort_feats
    )
    training_s = time.perf_counter() - start
    timings = {
        "features_seconds": round(features_s, 1),
        "training_seconds": round(training_s, 1),
        "photos_computed": feats.computed,
        "photos_cached": feats.cached,
    }
    report("save", 0.0)
    version = save_trained(result, params, choice.describe(), models_dir, extra={"timings": timings})
    try:
        active = None
        if session_factory is not None:
            with session_factory() as session:
                if register:
                    registry.register(session, version, actor, models_dir=models_dir)
                active = registry.active_version(session, models_dir)
        comparison = {}
        compare_s = 0.0
        if compare_with_active:
            report("compare", 0.0)
            start = time.perf_counter()
            versions = {"new": version}
            if active is None:
                from core.errors import ModelError
                from core.verification.heads import default_version

                try:
                    active = default_version(models_dir)
                except ModelError:
                    active = None
            if active and active != version:
                versions["active"] = active
            comparison = compare(result, feats, versions, models_dir)
            compare_s = time.perf_counter() - start
        timings.update(
            compare_seconds=round(compare_s, 1), total_seconds=round(time.perf_counter() - total_start, 1)
        )
    except BaseException:
        if session_factory is not None and register:
            with session_factory() as session:
                registry.forget(session, version)
        shutil.rmtree(models_dir / version, ignore_errors=True)
        raise
    report("done", 1.0)
    return TrainOutcome(version, result, feats, comparison, timings)


def train_version(
    choice: DataChoice,
    params: TrainParams,
    *,
    session_factory=None,
    promote: bool = False,
    compare_with_active: bool = True,
    progress: Callable[[str, float, dict], None] | None = None,
) -> tuple[TrainOutcome, dict]:
    """The training command's work: run, then promote when asked (registry and models/DEFAULT).

    Returns the outcome and the command's JSON summary (held-out figures, by group where there are
    groups, timings, the comparison with the active version)."""
    outcome = run(
        choice,
        params,
        session_factory=session_factory,
        actor="cli",
        progress=progress,
        compare_with_active=compare_with_active,
    )
    promoted = False
    if promote:
        if session_factory is not None:
            from core.training import registry

            with session_factory() as session:
                registry.promote(session, outcome.version, "cli")
        promote_default(outcome.version)
        promoted = True
    new = outcome.comparison.get("new", {})
    summary = {
        "model_version": outcome.version,
        "promoted": promoted,
        **outcome.result["metrics"],
        "threshold": outcome.result["threshold"],
        "uncertain_band": list(outcome.result["uncertain_band"]),
        **{k: new[k] for k in ("latency_p50_ms", "latency_p95_ms") if k in new},
        **outcome.timings,
        "comparison": outcome.comparison,
        "data": {k: v for k, v in outcome.result["data"].items() if not k.endswith("_people")},
    }
    if outcome.result.get("metrics_by_group"):
        summary["by_group"] = outcome.result["metrics_by_group"]
    return outcome, summary
