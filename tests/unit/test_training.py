"""The training pipeline on real photos: data/sample (24 people, 120 photos) plus reviewed decisions
in a test database, small epochs. Determinism, the embedding cache, bad input before any training,
augmented views, and the background worker (refusal of a second run, cancel, crash, dead worker).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import SAMPLE_DIR, SAMPLE_IMAGES, jpeg_bytes
from sqlalchemy import func, select

from core import jobs
from core.storage.schema import AuditEntry, Embedding, Photo, TrainingRun
from core.storage.schema import ModelVersion as VersionRow
from core.storage.schema import VerificationResult as ResultRow
from core.training import augment, embedding_cache, pipeline, registry, worker
from core.training.fitting import TrainParams

FAST = {"epochs": 3, "gender_epochs": 15, "positives_per_person": 20}
SAMPLE_CHOICE = pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv", reviewed=True)


def fast(**changes) -> TrainParams:
    return TrainParams(**{**FAST, **changes})


def weights_of(result) -> list[np.ndarray]:
    return [w.numpy() for w in result["siamese"].weights] + [w.numpy() for w in result["gender"].weights]


# ----------------------------------------------------------------------------------------------
# A real model from sample photos and reviewed decisions


def test_train_from_sample_photos_and_reviewed_decisions(
    session_factory, photo_store, models_copy, add_reviewed, warm_cache
):
    add_reviewed(session_factory, photo_store)
    # One more reviewed pair whose verification photo has no face: reported and skipped.
    with session_factory() as session:
        first = session.scalar(select(ResultRow).order_by(ResultRow.id).limit(1))
        blob = photo_store.put(jpeg_bytes(4242))
        blank = Photo(
            member_id=first.member_id,
            kind="verification",
            sha256=blob.sha256,
            stored_path=blob.relative_path,
            size_bytes=blob.size_bytes,
            current=False,
        )
        session.add(blank)
        session.flush()
        session.add(
            ResultRow(
                member_id=first.member_id,
                gallery_photo_id=first.gallery_photo_id,
                verification_photo_id=blank.id,
                threshold=0.4,
                band_low=0.1,
                band_high=0.9,
                status="rejected",
                flags=[],
                model_version="test",
                ground_truth_same=False,
                decided_by="staff_user",
            )
        )
        session.commit()
        noface_id = session.scalar(select(func.max(ResultRow.id)))
        active_before = registry.active_version(session, models_copy)
    warm_cache(session_factory)

    stages = []
    outcome = pipeline.run(
        SAMPLE_CHOICE,
        fast(),
        session_factory=session_factory,
        store=photo_store,
        models_dir=models_copy,
        actor="ds_user",
        progress=lambda stage, fraction, logs: stages.append(stage),
    )

    # Only the face-less photo went through the networks: everything else came from the cache.
    assert outcome.features.computed == 1 and outcome.features.cached == 120
    assert any(f"Reviewed result {noface_id}" in n and "no usable face" in n for n in outcome.features.notes)
    summary = outcome.result["data"]
    assert summary["reviewed_pairs"] == 20
    # Both photos of a reviewed pair are on the same side of the split: none is lost.
    assert summary["reviewed_pairs_trained"] + summary["reviewed_pairs_heldout"] == 20
    assert summary["reviewed_pairs_across_split"] == 0 and summary["reviewed_pairs_trained"] > 10
    assert summary["reviewed_different"] == 6
    assert [
        s
        for s in ("data", "features", "siamese", "gender", "evaluate", "save", "compare", "done")
        if s in stages
    ]
    metrics = outcome.result["metrics"]
    assert metrics["verification_accuracy"] > 0.8 and metrics["gender_accuracy"] > 0.8
    # A candidate, registered, not active; the comparison ran both models on the same pairs.
    with session_factory() as session:
        row = session.scalar(select(VersionRow).where(VersionRow.version == outcome.version))
        assert row is not None and not row.active and row.created_by == "ds_user"
        assert registry.active_version(session, models_copy) == active_before
        assert (models_copy / "DEFAULT").read_text().strip() == active_before
    comparison = outcome.comparison
    assert comparison["new"]["n_pairs"] == comparison["active"]["n_pairs"] == metrics["n_pairs"]
    for key in pipeline.COMPARED_KEYS:
        assert key in comparison["new"], key
    assert comparison["new"]["verification_accuracy"] == pytest.approx(metrics["verification_accuracy"])
    # The new version verifies a pair through the one engine path.
    from core.verification.engine import Engine

    engine = Engine.load(outcome.version, models_copy)
    result = engine.verify(SAMPLE_IMAGES / "Kofi_Annan_0026.jpg", SAMPLE_IMAGES / "Kofi_Annan_0014.jpg")
    assert result.same_person and result.model_version == outcome.version


def test_cache_holds_exactly_what_the_serving_path_computes(session_factory):
    from core.verification import features

    path = SAMPLE_IMAGES / "Norah_Jones_0004.jpg"
    analysis = features.extract([path])[0]
    ref = embedding_cache.PhotoRef(analysis.sha256, path.name, path.read_bytes)
    cached = embedding_cache.featurise([ref]).vectors[""][analysis.sha256]
    assert np.array_equal(cached[:128], analysis.embedding)
    assert cached[128] == np.float32(analysis.gender_logit)
    # Stored and read back bit for bit, with a no-face photo remembered as such.
    with session_factory() as session:
        key = embedding_cache.model_id("")
        embedding_cache.store(
            session, {analysis.sha256: cached, "f" * 64: "No face was found in the photo."}, key
        )
        session.commit()
        again = embedding_cache.store(session, {analysis.sha256: cached}, key)  # insert-or-ignore
        session.commit()
        found = embedding_cache.lookup(session, [analysis.sha256, "f" * 64, "0" * 64], key)
        assert again == 1 and session.scalar(select(func.count()).select_from(Embedding)) == 2
    assert np.array_equal(found[analysis.sha256], cached)
    assert found["f" * 64] == "No face was found in the photo."
    assert "0" * 64 not in found
    assert len(embedding_cache.model_id("blur.s7.0")) <= 64


def test_second_run_reads_the_cache_and_views_are_cached_too(tmp_path, monkeypatch):
    from core.storage.db import init_db, session_factory

    factory = session_factory(init_db(f"sqlite:///{tmp_path / 'cache.sqlite3'}"))
    photos = pipeline.lfw_photos(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")[:6]
    data = pipeline.TrainingData(photos, [])
    params = TrainParams(augment="blur,gray", networks="dlib")
    first = pipeline.build_features(data, params, factory)
    assert first.computed == 6 and first.cached == 0 and len(first.aug_of) == 12
    second = pipeline.build_features(data, params, factory)
    assert second.computed == 0 and second.cached == 6
    assert np.array_equal(first.embeddings, second.embeddings)
    assert np.array_equal(first.aug_embeddings, second.aug_embeddings)
    # A view is another sample of the same face: near, but not equal.
    distance = np.linalg.norm(first.aug_embeddings[:6] - first.embeddings, axis=1)
    assert np.all(distance > 1e-4) and np.all(distance < 0.6)
    # Only a new view is computed when the settings ask for one more.
    third = pipeline.build_features(data, TrainParams(augment="blur,gray,jitter", networks="dlib"), factory)
    assert third.computed == 6 and len(third.aug_of) == 18


def test_views_are_deterministic_and_blur_stays_on_its_part():
    from core.verification.faces import CHIP_PADDING

    rng = np.random.default_rng(0)
    chip = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
    gender_chip = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for kind in augment.VIEW_KINDS:
        name = augment.view_name(kind, 7, 0)
        a = augment.make_view(kind, chip, gender_chip, augment.view_rng("ab" * 32, name))
        b = augment.make_view(kind, chip, gender_chip, augment.view_rng("ab" * 32, name))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert a[0].shape == chip.shape and a[1].shape == gender_chip.shape
        assert not np.array_equal(a[0], chip)
    blurred = augment.blur_part(chip, "mouth", CHIP_PADDING)
    x0, y0, x1, y1 = augment.region_box("mouth", 150, CHIP_PADDING)
    assert np.array_equal(blurred[: y0 - 15], chip[: y0 - 15])  # the eyes are untouched
    assert (
        np.abs(
            blurred[y0 + 5 : y1 - 5, x0 + 5 : x1 - 5].astype(int) - chip[y0 + 5 : y1 - 5, x0 + 5 : x1 - 5]
        ).mean()
        > 20
    )
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.view_name("sharpen", 7, 0)


# ----------------------------------------------------------------------------------------------
# Determinism


@pytest.fixture(scope="module")
def sample_features(warm_cache, tmp_path_factory):
    """The sample's FeatureSet, read from a cache database warmed with the session's features."""
    from core.storage.db import init_db, session_factory

    factory = session_factory(init_db(f"sqlite:///{tmp_path_factory.mktemp('features') / 'cache.sqlite3'}"))
    warm_cache(factory)
    photos = pipeline.lfw_photos(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    feats = pipeline.build_features(pipeline.TrainingData(photos, []), TrainParams(), factory)
    assert feats.computed == 0
    return feats


def test_same_data_settings_and_seed_give_the_same_model(sample_features):
    # Two reviewed-style explicit pairs too, so the mixed path is covered.
    sample_features.pairs = np.array([[0, 1], [0, 30]], np.int64)
    sample_features.pair_labels = np.array(
        [float(sample_features.people[0] == sample_features.people[1]), 0.0], np.float32
    )
    try:
        a = pipeline.train_and_evaluate(sample_features, fast(seed=11))
        b = pipeline.train_and_evaluate(sample_features, fast(seed=11))
        c = pipeline.train_and_evaluate(sample_features, fast(seed=12))
        t = pipeline.train_and_evaluate(sample_features, fast(seed=11, loss="triplet"))
    finally:
        sample_features.pairs = np.zeros((0, 2), np.int64)
        sample_features.pair_labels = np.zeros(0, np.float32)
    for x, y in zip(weights_of(a), weights_of(b), strict=True):
        assert np.array_equal(x, y)
    assert a["threshold"] == b["threshold"] and a["metrics"] == b["metrics"]
    assert a["data"]["heldout_people"] == b["data"]["heldout_people"]
    assert a["data"]["heldout_people"] != c["data"]["heldout_people"]
    assert any(not np.array_equal(x, y) for x, y in zip(weights_of(a), weights_of(c), strict=True))
    assert t["metrics"]["verification_accuracy"] > 0.7


# ----------------------------------------------------------------------------------------------
# Bad input: a clear message before any training


def test_too_few_people_or_one_gender_refused_before_training(sample_features, tmp_path):
    keep = np.isin(sample_features.people, np.unique(sample_features.people)[:4])
    from dataclasses import replace

    few = replace(
        sample_features,
        names=sample_features.names[keep],
        people=sample_features.people[keep],
        genders=sample_features.genders[keep],
        embeddings=sample_features.embeddings[keep],
        gender_logits=sample_features.gender_logits[keep],
        sources=sample_features.sources[keep],
    )
    with pytest.raises(ValueError, match="only 4 people with a usable face; at least 6"):
        pipeline.train_and_evaluate(few, fast())

    men_only = tmp_path / "people.csv"
    lines = (SAMPLE_DIR / "people.csv").read_text().splitlines()
    men_only.write_text("\n".join([lines[0], *[x for x in lines[1:] if ",M," in x]]) + "\n")
    problems = pipeline.preflight(pipeline.DataChoice(SAMPLE_IMAGES, men_only), fast())
    assert problems and "no photos of women (gender F)" in problems[0]
    assert pipeline.preflight(pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv"), fast()) == []


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs must be between 1 and 500"),
        ({"learning_rate": 5.0}, "learning_rate must be between"),
        ({"holdout_fraction": 0.9}, "holdout_fraction must be between 0.05 and 0.5"),
        ({"augment": "blur,sharpen"}, "augment must be a comma-separated subset"),
        ({"loss": "hinge"}, "loss must be 'contrastive' or 'triplet'"),
        ({"reviewed_weight": 0}, "reviewed_weight must be 1..50"),
    ],
)
def test_settings_out_of_range(values, message):
    problems = pipeline.preflight(
        pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv"), fast(**values)
    )
    assert len(problems) == 1 and message in problems[0]


def test_unknown_setting_and_no_data_refused():
    with pytest.raises(ValueError, match="unknown setting"):
        TrainParams.from_dict({"epochs": 3, "dropout": 0.5})
    assert TrainParams.from_dict({"epochs": "3", "margin": 1}).epochs == 3
    assert "choose at least one source" in pipeline.preflight(pipeline.DataChoice(), fast())[0]


def test_reviewed_pairs_without_faces_refused_with_each_reason(session_factory, photo_store, add_member):
    for k in range(3):
        add_member(f"X{k}", "F")
    with session_factory() as session:
        for member_id in ("X0", "X1", "X2"):
            photos = {p.kind: p for p in session.scalars(select(Photo).where(Photo.member_id == member_id))}
            session.add(
                ResultRow(
                    member_id=member_id,
                    gallery_photo_id=photos["gallery"].id,
                    verification_photo_id=photos["verification"].id,
                    threshold=0.4,
                    band_low=0.1,
                    band_high=0.9,
                    status="approved",
                    flags=[],
                    model_version="test",
                    ground_truth_same=True,
                    ground_truth_gender="F",
                    decided_by="staff_user",
                )
            )
        session.commit()
    data = pipeline.collect(pipeline.DataChoice(reviewed=True), session_factory, photo_store)
    assert len(data.pairs) == 3
    with pytest.raises(ValueError) as caught:
        pipeline.build_features(data, fast(), session_factory)
    text = str(caught.value)
    assert "none of the 3 reviewed pairs has a usable face" in text
    assert "(member X1) skipped: the gallery photo has no usable face" in text
    # The no-face verdicts are cached: asking again runs no network.
    again = embedding_cache.featurise([p.ref for p in data.photos], (), session_factory)
    assert again.computed == 0 and len(again.failed) == 6


# ----------------------------------------------------------------------------------------------
# The background worker


def test_second_concurrent_start_is_refused(session_factory, models_copy):
    choice = pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    outcomes = []

    def press():
        try:
            outcomes.append(worker.start(session_factory, "ds_user", choice, fast()))
        except worker.RunInProgress as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=press) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [o for o in outcomes if isinstance(o, int)]
    refused = [o for o in outcomes if isinstance(o, worker.RunInProgress)]
    assert len(started) == 1 and len(refused) == 2
    assert all(r.run_id == started[0] and "only one run at a time" in str(r) for r in refused)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 1
        assert worker.current_run(session).id == started[0]
        starts = session.scalars(select(AuditEntry).where(AuditEntry.action == "start_training")).all()
        assert len(starts) == 1 and starts[0].actor == "ds_user"


def test_bad_settings_refused_before_a_run_exists(session_factory):
    choice = pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    with pytest.raises(ValueError, match="epochs must be between 1 and 500"):
        worker.start(session_factory, "ds_user", choice, fast(epochs=0))
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0


def _queued(session_factory, models_copy, **params):
    choice = pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    return worker.start(session_factory, "ds_user", choice, fast(**params))


def test_cancel_stops_the_run_and_leaves_the_active_model(
    session_factory, models_copy, warm_cache, monkeypatch
):
    warm_cache(session_factory)
    run_id = _queued(session_factory, models_copy, epochs=50)
    original = worker.Reporter.update

    def update(self, stage, fraction, logs):
        if stage == "siamese" and fraction > 0:
            worker.cancel(session_factory, run_id, "ds_user")
        return original(self, stage, fraction, logs)

    monkeypatch.setattr(worker.Reporter, "update", update)
    status = worker.work(run_id, session_factory, models_copy)
    assert status == worker.CANCELLED
    with session_factory() as session:
        run = worker.get_run(session, run_id)
        assert run.status == "cancelled" and run.finished_at is not None
        assert "Cancelled by ds_user" in run.error and "during siamese" in run.error
        assert "active model is unchanged" in run.error
        assert len(run.progress.get("siamese_loss", [])) < 50
        active = registry.active_version(session, models_copy)
        versions = session.scalars(select(VersionRow.version)).all()
        assert versions == [active]
        assert (
            session.scalar(select(AuditEntry).where(AuditEntry.action == "cancel_training")).actor
            == "ds_user"
        )
    assert sorted(p.name for p in models_copy.iterdir()) == sorted(["DEFAULT", versions[0]])


def test_crash_is_reported_and_leaves_the_active_model(session_factory, models_copy, warm_cache, monkeypatch):
    warm_cache(session_factory)
    run_id = _queued(session_factory, models_copy)

    def broken(*args, **kwargs):
        raise RuntimeError("comparison exploded")

    monkeypatch.setattr(pipeline, "compare", broken)  # after the version was saved and registered
    assert worker.work(run_id, session_factory, models_copy) == worker.FAILED
    with session_factory() as session:
        run = worker.get_run(session, run_id)
        assert run.status == "failed" and "during compare: RuntimeError: comparison exploded" in run.error
        active = registry.active_version(session, models_copy)
        assert session.scalars(select(VersionRow.version)).all() == [active]
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "forget_model")) is not None
    assert sorted(p.name for p in models_copy.iterdir()) == sorted(["DEFAULT", active])


def test_dead_worker_is_detected_and_says_why(session_factory, models_copy):
    import socket

    run_id = _queued(session_factory, models_copy)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (models_copy.parent / "run.log").write_text("Traceback ...\nMemoryError\n")
    with session_factory() as session:
        worker._merge_progress(
            session,
            run_id,
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "heartbeat": "2000-01-01T00:00:00",
                "log": str(models_copy.parent / "run.log"),
            },
            worker.LIVE,
        )
        assert worker.current_run(session) is None  # reaped on the way
        run = worker.get_run(session, run_id)
    assert (
        run.status == "failed" and "killed or ran out of memory" in run.error and "MemoryError" in run.error
    )
    # A new run may start now.
    assert _queued(session_factory, models_copy) != run_id


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_background_run_in_its_own_process(
    session_factory, db_url, photo_store, models_copy, warm_cache, monkeypatch
):
    monkeypatch.setenv("CACHE_DIR", str(models_copy.parent / "cache"))
    warm_cache(session_factory)
    choice = pipeline.DataChoice(SAMPLE_IMAGES, SAMPLE_DIR / "people.csv")
    run_id = jobs.start_training(session_factory, "ds_user", choice, fast(), store_dir=photo_store.root)
    deadline = time.time() + 300
    while time.time() < deadline:
        with session_factory() as session:
            run = worker.get_run(session, run_id)
            if run.status not in worker.LIVE:
                break
        time.sleep(1)
    log = worker.log_path(run_id)
    assert run.status == "succeeded", (run.error, log.read_text() if log.exists() else "")
    assert run.progress["stage"] == "done" and run.progress["siamese_loss"]
    assert run.progress["comparison"]["new"]["model_version"] == run.model_version
    with session_factory() as session:
        assert registry.active_version(session, models_copy) != run.model_version
    assert (models_copy / run.model_version / "siamese.keras").is_file()


def test_negative_pairs_draw_people_alike_not_photos():
    """One person with most of the photos must not be in most different-person pairs."""
    from core.training.fitting import make_pairs

    people = np.array(["big"] * 500 + [f"p{k}" for k in range(20) for _ in range(5)])
    pairs, labels = make_pairs(people, positives_per_person=10, negatives_per_positive=2, seed=1)
    negatives = pairs[labels == 0]
    assert (people[negatives[:, 0]] != people[negatives[:, 1]]).all()
    with_big = np.mean((people[negatives] == "big").any(axis=1))
    assert with_big < 0.2, f"{with_big:.0%} of negatives involve the person with most photos"


def test_midpoint_threshold_is_where_both_classes_are_equally_likely():
    from core.training.fitting import midpoint_threshold

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(2000), np.zeros(2000)]
    different = 1 / (1 + np.exp(-rng.normal(-1, 1, 2000)))  # logit -1 +- 1
    same = 1 / (1 + np.exp(-rng.normal(1, 1, 2000)))  # logit 1 +- 1: equally likely at logit 0
    assert abs(midpoint_threshold(np.r_[same, different], labels) - 0.5) < 0.03
    # same person at logit -1, different at -3: equally likely at logit -2, similarity 0.12
    lower = 1 / (1 + np.exp(-rng.normal(-3, 1, 2000)))
    assert abs(midpoint_threshold(np.r_[different, lower], labels) - 0.12) < 0.03
