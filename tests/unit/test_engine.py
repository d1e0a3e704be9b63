"""The verification engine end to end on real sample photos, with the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import badimages
import numpy as np
import pandas as pd
import pytest

from core.config import PROJECT_ROOT, SAMPLE_DIR
from core.verification import features
from core.verification.engine import Engine
from core.verification.genders import optional_gender
from core.verification.result import (
    AUTO_APPROVED,
    AUTO_REJECTED,
    BAD_IMAGE,
    FLAGGED,
    GENDER_MISMATCH,
    NO_FACE,
    SEVERAL_FACES,
    UNCERTAIN_SIMILARITY,
)

IMAGES = SAMPLE_DIR / "images"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load()


@pytest.fixture(scope="module")
def sample_pairs() -> pd.DataFrame:
    pairs = pd.read_csv(SAMPLE_DIR / "pairs.csv")
    pairs["same"] = pairs.Decision.eq("Yes")
    return pairs


def photo(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def test_sample_pairs_decided_correctly(engine, sample_pairs):
    results = [engine.verify(photo(r.file_x), photo(r.file_y)) for r in sample_pairs.itertuples()]
    decided = np.array([r.same_person for r in results])
    assert all(r.similarity is not None and 0.0 <= r.similarity <= 1.0 for r in results)
    # Every same-person pair passes and every different-person pair fails on this sample.
    assert list(decided) == list(sample_pairs.same)
    # Clear different-person pairs are decided without a person unless another flag says otherwise.
    for result, same in zip(results, sample_pairs.same, strict=True):
        if not result.flags:
            assert result.status == (AUTO_APPROVED if same else AUTO_REJECTED)


def test_shipped_version_fuses_both_networks(engine):
    assert engine.networks == ("dlib", "sface8")  # SFace with 8-bit weights
    assert engine.model.metadata["features_version"] == features.features_version(("dlib", "sface8"))
    points = engine.model.operating_points
    assert points.max_fmr == 0.001 and points.max_fnmr == 0.001
    assert 0 < points.reject_below < engine.model.threshold < points.approve_at < 1


def test_kidman_in_a_film_role_is_not_rejected_by_the_machine(engine):
    # One person (a film role and a red carpet): dlib alone gave 0.00001 and rejected it unflagged.
    result = engine.verify(photo("Nicole_Kidman_0006.jpg"), photo("Nicole_Kidman_0011.jpg"))
    assert result.status != AUTO_REJECTED
    assert result.similarity >= engine.model.operating_points.reject_below


def test_a_dlib_only_version_still_loads_and_verifies(sample_pairs):
    dlib_only = Engine.load("v20261122-053418")
    assert dlib_only.networks == ("dlib",) and dlib_only.embedding_dim == 128
    rows = list(sample_pairs.itertuples())[:8]
    results = [dlib_only.verify(photo(r.file_x), photo(r.file_y)) for r in rows]
    assert [r.same_person for r in results] == [r.same for r in rows]
    assert all(r.verification.embedding.shape == (128,) for r in results)


def test_similarity_rises_with_the_tower_distance_falling(engine):
    # The calibration is monotone: a closer pair never gets a lower similarity.
    a = engine.analyze(photo("Jiang_Zemin_0014.jpg"))
    others = [
        engine.analyze(photo(n))
        for n in ("Jiang_Zemin_0009.jpg", "Jiang_Zemin_0005.jpg", "Howard_Dean_0010.jpg")
    ]
    pairs = sorted(
        (float(np.linalg.norm(a.projection - b.projection)), engine.compare(a, b).similarity) for b in others
    )
    sims = [s for _, s in pairs]
    assert sims == sorted(sims, reverse=True) and sims[0] > sims[-1]


def test_result_carries_everything_a_reviewer_needs(engine):
    result = engine.verify(photo("Adrien_Brody_0001.jpg"), photo("Adrien_Brody_0002.jpg"), "M")
    assert result.same_person is True
    assert result.threshold == engine.model.threshold
    assert result.uncertain_band[0] <= result.threshold <= result.uncertain_band[1]
    assert result.predicted_gender == "M" and result.gender_confidence > 0.5
    for analysis in (result.gallery, result.verification):
        assert analysis.faces and analysis.main_face is not None
        assert analysis.crop.shape == (150, 150, 3) and analysis.crop.dtype == np.uint8
        assert analysis.embedding.shape == (engine.embedding_dim,) == (256,)
        assert analysis.chips["sface8"].shape == (112, 112, 3)
    for stage in ("decode", "detect", "align", "embed", "decide", "total"):
        assert result.timings_ms[stage] >= 0
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["same_person"] is True and as_json["model_version"] == engine.model_version


def test_gender_on_labelled_samples(engine):
    people = pd.read_csv(SAMPLE_DIR / "people.csv")
    gender_of = dict(zip(people.person, people.gender, strict=True))
    files = sorted(IMAGES.glob("*.jpg"))
    analyses = engine.analyze_many(files)
    truth = [gender_of[f.stem.rsplit("_", 1)[0]] for f in files]
    predicted = ["MF"[int(np.argmax(a.gender_probs))] for a in analyses]
    accuracy = np.mean(np.array(predicted) == np.array(truth))
    assert accuracy >= 0.95, f"gender accuracy {accuracy:.3f} on {len(files)} sample photos"
    for gender in ("M", "F"):
        mine = [p for p, t in zip(predicted, truth, strict=True) if t == gender]
        assert np.mean(np.array(mine) == gender) >= 0.9, f"recall for {gender}"


def test_gender_mismatch_is_flagged(engine):
    # Norah Jones registered as a man: the photo says otherwise, so a person must look.
    result = engine.verify(photo("Norah_Jones_0004.jpg"), photo("Norah_Jones_0001.jpg"), "M")
    assert result.predicted_gender == "F"
    assert GENDER_MISMATCH in {f.code for f in result.flags}
    assert result.status == FLAGGED


def test_operating_points_come_from_the_model_metadata(engine):
    result = engine.verify(photo("Jiang_Zemin_0014.jpg"), photo("Jiang_Zemin_0009.jpg"))
    assert not result.gallery.flags and not result.verification.flags
    saved = dict(engine.model.metadata)
    try:
        engine.model.metadata["policy"] = {"reject_below": 0.0, "approve_at": 1.01}  # all to review
        flagged = engine.compare(result.gallery, result.verification)
        engine.model.metadata["policy"] = {"reject_below": 0.0, "approve_at": result.similarity}
        approved = engine.compare(result.gallery, result.verification)
        engine.model.metadata["policy"] = {"reject_below": 1.0, "approve_at": 1.01}
        rejected = engine.compare(result.gallery, result.verification)
    finally:
        engine.model.metadata.clear()
        engine.model.metadata.update(saved)
    assert UNCERTAIN_SIMILARITY in {f.code for f in flagged.flags}
    assert flagged.status == FLAGGED and flagged.uncertain_band == (0.0, 1.01)
    assert approved.status == AUTO_APPROVED and rejected.status == AUTO_REJECTED


@pytest.mark.parametrize("name", sorted(badimages.BAD_INPUTS))
def test_bad_input_is_flagged_not_raised(engine, name):
    builder, code = badimages.BAD_INPUTS[name]
    result = engine.verify(photo("Adrien_Brody_0001.jpg"), builder())
    assert result.same_person is None and result.similarity is None
    assert result.status == FLAGGED
    flags = [f for f in result.flags if f.photo == "verification"]
    assert flags and flags[0].code == BAD_IMAGE and flags[0].reason
    assert result.verification.error


@pytest.mark.parametrize("name", sorted(badimages.GOOD_INPUTS))
def test_awkward_but_valid_photos_are_verified(engine, name):
    data = badimages.GOOD_INPUTS[name]()
    result = engine.verify(photo("Adrien_Brody_0001.jpg"), data)
    codes = {f.code for f in result.flags}
    assert BAD_IMAGE not in codes
    if NO_FACE not in codes:  # e.g. a blank image decodes fine but has no face
        assert result.similarity is not None


def test_no_face_flagged(engine):
    result = engine.verify(photo("Adrien_Brody_0001.jpg"), badimages.blank_image())
    assert NO_FACE in {f.code for f in result.flags}
    assert result.status == FLAGGED and result.same_person is None


def test_several_faces_uses_main_face_and_flags(engine):
    two = badimages.two_faces_jpeg()
    analysis = engine.analyze(two)
    assert len(analysis.faces) >= 2
    assert SEVERAL_FACES in {f.code for f in analysis.flags}
    assert analysis.embedding is not None


def test_a_cut_off_background_face_does_not_flag_the_photo(engine):
    # Another man's face, as wide as the subject's but cut off by the top edge of the photo.
    analysis = engine.analyze(photo("Charles_Moose_0010.jpg"))
    assert len(analysis.faces) >= 2
    assert SEVERAL_FACES not in {f.code for f in analysis.flags}
    assert analysis.embedding is not None


def test_batch_analyses_each_distinct_photo_once(engine, sample_pairs, monkeypatch):
    located = []
    real_locate = features.locate
    monkeypatch.setattr(
        features,
        "locate",
        lambda data, *args, **kwargs: located.append(data) or real_locate(data, *args, **kwargs),
    )
    rows = list(sample_pairs.itertuples())[:12]
    pairs = [(photo(r.file_x), photo(r.file_y), None) for r in rows]
    pairs += pairs[:4]  # repeated pairs must not be analysed again
    results = list(engine.verify_batch(pairs, chunk_pairs=5))
    distinct = {p for pair in pairs for p in pair[:2]}
    assert len(located) == len(distinct)
    singles = [engine.verify(g, v) for g, v, _ in pairs]
    assert np.allclose([r.similarity for r in results], [r.similarity for r in singles], atol=1e-4)


def test_photos_located_side_by_side_come_back_in_order_and_as_one_at_a_time(engine, tmp_path):
    names = [
        "Jiang_Zemin_0014.jpg",
        "Howard_Dean_0010.jpg",
        "Nicole_Kidman_0006.jpg",
        "Adrien_Brody_0001.jpg",
    ]
    photos = [IMAGES / names[0], tmp_path / "missing.jpg", *(IMAGES / n for n in names[1:])]
    together = features.extract(photos, networks=engine.networks)
    assert features.LOCATE_THREADS > 1
    assert together[1].error and together[1].flags[0].code == BAD_IMAGE
    for path, analysis in zip(photos, together, strict=True):
        if path.exists():
            alone = features.extract([path], networks=engine.networks)[0]
            assert analysis.sha256 == alone.sha256
            assert np.array_equal(analysis.crop, alone.crop)
            assert np.abs(analysis.embedding - alone.embedding).max() < 1e-4
    with pytest.raises(ValueError, match="one entry per photo"):
        features.extract(photos, measure_pose=[True])


def test_batch_survives_missing_files(engine, tmp_path):
    pairs = [(tmp_path / "missing.jpg", IMAGES / "Adrien_Brody_0001.jpg", "M")]
    pairs.append((IMAGES / "Adrien_Brody_0001.jpg", IMAGES / "Adrien_Brody_0002.jpg", "M"))
    results = list(engine.verify_batch(pairs))
    assert results[0].status == FLAGGED and results[0].gallery.error
    assert results[1].same_person is True


def test_gender_forms():
    assert [optional_gender(v) for v in ("M", "female", " 남 ", "여성", "", None)] == [
        "M",
        "F",
        "M",
        "F",
        None,
        None,
    ]
    with pytest.raises(ValueError):
        optional_gender("x")


def run_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=300,
    )


@pytest.mark.slow  # a fresh process loads the model: the full run has it
def test_cli_verify_prints_json():
    done = run_cli(
        "verify",
        str(IMAGES / "Adrien_Brody_0001.jpg"),
        str(IMAGES / "Adrien_Brody_0002.jpg"),
        "--gender",
        "M",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["same_person"] is True and result["predicted_gender"] == "M"


@pytest.mark.slow  # a fresh process loads the model: the full run has it
def test_cli_reports_bad_input(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    done = run_cli("verify", str(IMAGES / "Adrien_Brody_0001.jpg"), str(text))
    assert done.returncode == 2
    assert json.loads(done.stdout)["flags"][0]["code"] == BAD_IMAGE
    missing = run_cli("verify", str(tmp_path / "nope.jpg"), str(text))
    assert missing.returncode != 0 and "no such file" in missing.stderr


@pytest.mark.slow  # a fresh process loads the model: the full run has it
def test_benchmark_command_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "bench",
            "verification",
            "--pairs",
            str(SAMPLE_DIR / "pairs.csv"),
            "--images",
            str(IMAGES),
        ]
        + [
            "--people",
            str(SAMPLE_DIR / "people.csv"),
            "--json",
            str(out),
            "--limit",
            "8",
            "--baseline-pairs",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in (
        "n_pairs n_failed verification_accuracy verification_auc fnmr_at_fmr_0_001 gender_accuracy "
        "gender_balanced_accuracy latency_p50_ms latency_p95_ms pairs_per_second "
        "baseline_verification_accuracy baseline_latency_p95_ms"
    ).split():
        assert report[key] is not None, key
    assert report["n_pairs"] == 8 and report["batch_matches_per_pair"] is True
    assert "product per pair" in done.stderr  # the progress bar
