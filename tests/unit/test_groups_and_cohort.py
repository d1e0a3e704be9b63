"""Figures by group, operating points the worst group decides, cohort score normalisation (monotone,
deterministic, shipped with the version and trained by the project's own command), the similarity in
words, and an earlier version that still loads. Real photos: data/sample, and the East Asian
development set from the checkout's ../shared where it is present."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_DIR, SAMPLE_IMAGES

from core.i18n import EN, KO
from core.training import pipeline
from core.training.fitting import TrainParams
from core.verification import cohort as cohort_ops
from core.verification import policy
from core.verification.result import SIMILARITY_WORDS, similarity_words

PREVIOUS_VERSION = "v20261201-102216"  # the version before cohort normalisation: the rollback
EAST_ASIAN_DEV = ROOT.parent / "shared" / "data" / "eastasian_dev"


# ----------------------------------------------------------------------------------------------
# Figures by group (no networks)


def test_group_figures_on_a_hand_made_case():
    similarities = [0.99, 0.20, 0.95, 0.80, 0.10, 0.60, 0.97, 0.92]
    labels = [1, 0, 1, 0, 0, 1, 1, 0]
    groups = ["lfw:F", "lfw:F", "lfw:F", "lfw:F", "ea:M", "ea:M", "ea:M", "ea:M"]
    points = policy.OperatingPoints(reject_below=0.5, approve_at=0.9)
    rows = {r["group"]: r for r in policy.group_figures(similarities, labels, groups, points)}
    assert list(rows) == ["ea:M", "lfw:F", "all"]

    women = rows["lfw:F"]  # genuine 0.99, 0.95; impostors 0.20, 0.80
    assert (women["genuine_pairs"], women["impostor_pairs"]) == (2, 2)
    assert women["false_matches_at_approve"] == 0 and women["fmr_at_approve"] == 0.0
    assert women["false_rejects_at_reject"] == 0 and women["genuine_below_approve"] == 0.0
    assert women["auc"] == 1.0

    men = rows["ea:M"]  # genuine 0.60, 0.97; impostors 0.10, 0.92
    assert men["false_matches_at_approve"] == 1 and men["fmr_at_approve"] == 0.5
    assert men["false_rejects_at_reject"] == 0 and men["fnmr_at_reject"] == 0.0
    assert men["genuine_below_approve"] == 0.5  # 0.60 goes to review
    assert men["auc"] == pytest.approx(0.75)  # 3 of the 4 genuine-impostor orderings right
    assert men["fnmr_at_fmr_0_001"] == 0.5  # above the highest impostor: only 0.97

    everyone = rows["all"]
    assert (everyone["genuine_pairs"], everyone["impostor_pairs"]) == (4, 4)
    assert everyone["false_matches_at_approve"] == 1 and everyone["fmr_at_approve"] == 0.25

    table = policy.group_table(list(rows.values()), "hand-made")
    assert "ea:M" in table and "FMR@approve" in table and "50.0000%" in table


def test_the_worst_group_decides_approval_where_the_pooled_choice_hides_it():
    rng = np.random.default_rng(3)
    easy = rng.uniform(0.0, 0.5, 2000)  # a large group whose impostors look unalike
    hard = np.array([0.55, 0.6, 0.85])  # a small group with a close impostor
    genuine = rng.uniform(0.3, 1.0, 200)
    sims = np.concatenate([easy, hard, genuine])
    labels = np.concatenate([np.zeros(len(easy) + len(hard)), np.ones(len(genuine))])
    groups = ["lfw:M"] * len(easy) + ["ea:F"] * len(hard) + ["lfw:M"] * 100 + ["ea:F"] * 100
    pooled = policy.choose_operating_points(sims, labels)
    points, by_group = policy.choose_group_operating_points(sims, labels, groups)
    assert pooled.approve_at <= 0.6  # 2 of 2,003 impostors may pass: 0.85 and 0.6 do
    assert points.approve_at > 0.85 and by_group["ea:F"]["approve_at"] == points.approve_at
    assert by_group["lfw:M"]["approve_at"] < 0.6
    for name in ("lfw:M", "ea:F"):
        mask = (np.array(groups) == name) & (labels == 0)
        assert np.sum(sims[mask] >= points.approve_at) <= np.floor(0.001 * mask.sum())


def test_similarity_words_cover_every_probability_in_both_languages():
    assert similarity_words(None) is None
    assert similarity_words(0.999) == "similarity.very_likely_same"
    assert similarity_words(0.95) == "similarity.likely_same"
    assert similarity_words(0.5) == "similarity.cannot_tell"
    assert similarity_words(0.05) == "similarity.likely_different"
    assert similarity_words(0.0) == "similarity.very_likely_different"
    for _, key in SIMILARITY_WORDS:
        assert EN[key] and KO[key] and EN[key] != KO[key]


# ----------------------------------------------------------------------------------------------
# Cohort normalisation on real photos


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


@pytest.fixture(scope="module")
def sample_pair(engine):
    same = engine.analyze_many(
        [SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", SAMPLE_IMAGES / "Adrien_Brody_0002.jpg"]
    )
    other = engine.analyze(SAMPLE_IMAGES / "Nicole_Kidman_0015.jpg")
    assert all(a.usable for a in (*same, other))
    return same[0], same[1], other


def test_the_default_version_ships_its_cohort(engine):
    entry = engine.model.metadata["cohort"]
    assert engine.model.cohort is not None and len(engine.model.cohort) == entry["faces"] >= 500
    assert engine.model.cohort.top_k == entry["top_k"] and entry["slope"] > 0
    assert (ROOT / "models" / engine.model_version / "MODEL_CARD.md").is_file()


def test_cohort_normalisation_is_deterministic(engine, sample_pair):
    gallery, verification, _ = sample_pair
    first = engine.pair_similarity(gallery, verification)
    again = engine.analyze_many(
        [SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", SAMPLE_IMAGES / "Adrien_Brody_0002.jpg"]
    )
    assert np.array_equal(again[0].cohort_stats, gallery.cohort_stats)
    assert engine.pair_similarity(*again) == first
    assert engine.pair_similarity(verification, gallery) == first  # symmetric
    # The statistics do not depend on the order of the cohort's faces.
    projections = engine._cohort_projections
    order = np.random.default_rng(0).permutation(len(projections))
    stats = cohort_ops.photo_stats(np.stack([gallery.projection]), projections, engine.model.cohort.top_k)
    shuffled = cohort_ops.photo_stats(
        np.stack([gallery.projection]), projections[order], engine.model.cohort.top_k
    )
    assert np.array_equal(stats, shuffled)


def test_cohort_similarity_rises_as_two_faces_come_closer(engine, sample_pair):
    gallery, _, other = sample_pair
    start = np.array(other.projection)
    moved = pipeline_copy(other)
    similarities, scores = [], []
    for t in np.linspace(0.0, 1.0, 21):
        moved.projection = (1 - t) * start + t * gallery.projection
        similarity, score = engine.pair_similarity(gallery, moved)
        similarities.append(similarity)
        scores.append(score)
    assert np.all(np.diff(scores) > 0)
    assert np.all(np.diff(similarities) >= 0) and similarities[-1] > 0.99 > similarities[0]


def pipeline_copy(analysis):
    """A copy of an analysis keeping its cohort statistics, to move its projection alone."""
    import copy

    return copy.copy(analysis)


def test_result_carries_the_normalised_score_and_words(engine):
    result = engine.verify(SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", SAMPLE_IMAGES / "Adrien_Brody_0002.jpg")
    out = result.to_dict()
    assert isinstance(out["cohort_score"], float) and out["cohort_score"] == result.cohort_score
    assert out["similarity_words"] == similarity_words(result.similarity)
    assert out["similarity_words"] in KO and out["similarity_words"] in EN
    assert result.timings_ms["embed_cohort"] >= 0
    json.dumps(out)
    different = engine.verify(
        SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", SAMPLE_IMAGES / "Nicole_Kidman_0015.jpg"
    )
    assert different.cohort_score < result.cohort_score and different.similarity < result.similarity


def test_the_previous_version_still_loads_and_verifies():
    from core.verification.engine import Engine

    previous = Engine.load(PREVIOUS_VERSION)
    assert previous.model.cohort is None and previous.model.cohort_calibration is None
    result = previous.verify(SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", SAMPLE_IMAGES / "Adrien_Brody_0002.jpg")
    assert result.cohort_score is None and result.model_version == PREVIOUS_VERSION
    assert result.similarity >= previous.model.operating_points.approve_at  # as it decided before
    assert result.to_dict()["similarity_words"] == "similarity.very_likely_same"


@pytest.mark.skipif(
    not (EAST_ASIAN_DEV / "images").is_dir(),
    reason="the East Asian development set (../shared/data/eastasian_dev) is not on this machine; its "
    "terms do not allow copying its photos into the repository",
)
def test_east_asian_people_the_default_never_saw(engine):
    held_out = EAST_ASIAN_DEV.name
    pairs_file = ROOT / "models" / engine.model_version / f"heldout_pairs_{held_out}.csv"
    pairs = pd.read_csv(pairs_file)
    trained_on = set(engine.model.metadata["data"]["train_people"])
    assert not {p.rsplit("_", 1)[0] for p in pd.concat([pairs.file_x, pairs.file_y])} & trained_on
    chosen = pd.concat([part.sample(6, random_state=1) for _, part in pairs.groupby(["Decision", "group"])])
    results = [
        engine.verify(EAST_ASIAN_DEV / "images" / r.file_x, EAST_ASIAN_DEV / "images" / r.file_y)
        for r in chosen.itertuples()
    ]
    sims = np.array([r.similarity if r.similarity is not None else 0.0 for r in results])
    same = (chosen.Decision == "Yes").to_numpy()
    assert all(r.cohort_score is not None for r in results if r.similarity is not None)
    assert sims[same].min() > sims[~same].max()  # every genuine pair above every impostor here
    assert np.all(sims[~same] < engine.model.operating_points.approve_at)


# ----------------------------------------------------------------------------------------------
# The training command with a cohort


@pytest.fixture(scope="module")
def sample_features(warm_cache, tmp_path_factory):
    from core.storage.db import init_db, session_factory

    factory = session_factory(init_db(f"sqlite:///{tmp_path_factory.mktemp('cohort') / 'cache.sqlite3'}"))
    warm_cache(factory)
    photos = pipeline.lfw_photos(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    return pipeline.build_features(pipeline.TrainingData(photos, []), TrainParams(), factory)


def _rows(features: pipeline.FeatureSet, rows: np.ndarray, **changes) -> pipeline.FeatureSet:
    return pipeline.FeatureSet(
        names=features.names[rows],
        people=changes.get("people", features.people[rows]),
        genders=features.genders[rows],
        embeddings=features.embeddings[rows],
        gender_logits=features.gender_logits[rows],
        failed=[],
        sources=changes.get("sources", features.sources[rows]),
        age_bands=np.full(len(rows), ""),
        others={name: values[rows] for name, values in features.others.items()},
    )


def test_training_with_a_cohort_ships_it_and_the_engine_uses_it(sample_features, tmp_path):
    from core.verification.engine import Engine

    people = np.unique(sample_features.people)
    cohort_people = people[::3]  # a third of the sample's people: faces of "other people"
    in_cohort = np.isin(sample_features.people, cohort_people)
    data = _rows(sample_features, np.flatnonzero(~in_cohort))
    rows = np.flatnonzero(in_cohort)
    cohort = _rows(
        sample_features,
        rows,
        people=np.array([f"cohort:{n}" for n in sample_features.names[rows]]),
        sources=np.full(len(rows), pipeline.COHORT),
    )
    params = TrainParams(epochs=3, gender_epochs=15, positives_per_person=20, cohort_top_k=10)
    result = pipeline.train_and_evaluate(data, params, cohort=cohort)
    assert result["cohort"] is not None and len(result["cohort"]) > len(np.unique(cohort.people)) // 2
    assert result["policy_by_group"] and all(
        g.startswith(("lfw:", "cohort:")) for g in result["policy_by_group"]
    )
    assert any(r["group"] == "all" for r in result["metrics_by_group"])
    models = tmp_path / "models"
    models.mkdir()
    version = pipeline.save_trained(result, params, str(SAMPLE_IMAGES), models)
    folder = models / version
    assert (folder / cohort_ops.COHORT_FILE).is_file() and (folder / "MODEL_CARD.md").is_file()
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["cohort"]["faces"] == len(result["cohort"]) and metadata["cohort"]["top_k"] == 10
    assert "by_group" in metadata["policy"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Cohort score normalisation" in card and "research and internal evaluation only" in card
    engine = Engine(pipeline_version(version, models))
    analyses = engine.analyze_many(
        [SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", SAMPLE_IMAGES / "Adrien_Brody_0002.jpg"]
    )
    similarity, score = engine.pair_similarity(*analyses)
    assert score is not None and 0.0 <= similarity <= 1.0


def pipeline_version(version, models):
    from core.verification.heads import load_version

    return load_version(version, models)
