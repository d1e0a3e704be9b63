"""The gender head's recipe: photo weights, the mismatch flag's confidence (chosen at training,
read by the engine from the model's metadata), a gender-only set of photos as extra training data,
older heads on the whole embedding, and the figures on East Asian faces (from ../shared)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DIR, SAMPLE_IMAGES

from core import config
from core.training import gender, pipeline
from core.training.fitting import TrainParams
from core.verification.engine import Engine
from core.verification.features import head_inputs
from core.verification.heads import load_version
from core.verification.result import GENDER_MISMATCH, UNCERTAIN_GENDER

EAST_ASIAN_DEV = config.PROJECT_ROOT.parent / "shared" / "data" / "eastasian_dev"


# ----------------------------------------------------------------------------------------------
# Hand-made cases


def test_each_cell_weighs_alike_and_each_person_within_it():
    people = np.array(["a", "a", "b", "c"])
    genders = np.array(["M", "M", "F", "M"])
    by_source = gender.photo_weights(people, genders, np.array(["lfw", "lfw", "lfw", "chips"]))
    assert np.allclose(by_source, np.array([0.5, 0.5, 1, 1]) * 4 / 3)
    by_gender = gender.photo_weights(people, genders)  # the shipped versions' weighting
    assert np.allclose(by_gender, np.array([0.25, 0.25, 1, 0.5]) * 4 / 2)


def test_flag_confidence_is_the_lowest_that_keeps_false_flags_on_men_and_women_under_the_target():
    genders = np.array(["M", "M", "M", "F", "F", "F"])
    groups = np.array(["x"] * 6)
    # a wrong man at confidence 0.97, a wrong woman at 0.92
    p_male = np.array([0.95, 0.2, 0.03, 0.1, 0.05, 0.92])
    chosen, rates = gender.choose_min_confidence(p_male, genders, groups, max_false_flags=0.1)
    assert chosen == pytest.approx(0.971)
    assert rates == {"x/M": 0.0, "x/F": 0.0}
    # one false flag in three allowed: the floor does
    chosen, rates = gender.choose_min_confidence(p_male, genders, groups, max_false_flags=0.34)
    assert chosen == gender.MIN_CONFIDENCE_FLOOR and rates["x/M"] == pytest.approx(1 / 3)
    # a group of its own is held to the target on its own
    groups = np.array(["x", "x", "x", "x", "x", "y"])
    assert gender.choose_min_confidence(p_male, genders, groups, 0.6)[0] == pytest.approx(0.921)
    # nothing keeps a wrong man at 0.9999 unflagged: the ceiling
    p_male[2] = 1e-4
    assert gender.choose_min_confidence(p_male, genders, groups, 0.1)[0] == gender.MIN_CONFIDENCE_CEILING


def test_figures_per_group_and_gender():
    genders = np.array(["M", "M", "M", "M", "F", "F"])
    groups = np.array(["a", "a", "a", "a", "a", "b"])
    p_male = np.array([0.9, 0.8, 0.3, 0.01, 0.2, 0.7])
    figures = gender.gender_figures(p_male, genders, groups, min_confidence=0.95)
    a = figures["a"]
    assert (a["n_men"], a["n_women"]) == (4, 1)
    assert a["men_called_women"] == 0.5 and a["women_called_men"] == 0.0
    assert a["accuracy"] == pytest.approx(3 / 5) and a["balanced_accuracy"] == pytest.approx(0.75)
    assert a["false_mismatch_flags_men"] == 0.25  # only the man at 0.99
    assert a["unconfirmed_men"] == 0.75 and a["unconfirmed_women"] == 1.0
    assert figures["b"]["men_called_women"] is None and figures["b"]["women_called_men"] == 1.0
    assert figures["all"]["n_men"] == 4 and figures["all"]["n_women"] == 2


# ----------------------------------------------------------------------------------------------
# The model's metadata and older versions


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load()


def test_mismatch_flag_confidence_comes_from_the_models_metadata(engine):
    norah = (SAMPLE_IMAGES / "Norah_Jones_0004.jpg").read_bytes()
    gallery = (SAMPLE_IMAGES / "Norah_Jones_0001.jpg").read_bytes()
    result = engine.verify(gallery, norah, "M")
    assert result.predicted_gender == "F" and GENDER_MISMATCH in {f.code for f in result.flags}
    saved = dict(engine.model.metadata)
    try:
        # Above her confidence: the head is no longer sure enough to call it a mismatch.
        engine.model.metadata["gender_min_confidence"] = (result.gender_confidence + 1) / 2
        unsure = engine.compare(result.gallery, result.verification, "M")
        engine.model.metadata["gender_min_confidence"] = result.gender_confidence
        flagged = engine.compare(result.gallery, result.verification, "M")
    finally:
        engine.model.metadata.clear()
        engine.model.metadata.update(saved)
    codes = {f.code for f in unsure.flags}
    assert UNCERTAIN_GENDER in codes and GENDER_MISMATCH not in codes
    assert GENDER_MISMATCH in {f.code for f in flagged.flags}


def test_a_head_trained_on_dlibs_part_reads_its_part_of_the_whole_embedding():
    version = load_version("v20261201-102216")  # [log-odds, dlib] only, fusing dlib and SFace
    assert version.gender.input_shape[-1] == 1 + 128 + 128
    import keras

    raw = keras.saving.load_model(config.models_dir() / "v20261201-102216" / "gender.keras")
    rng = np.random.default_rng(3)
    embedding = rng.normal(0, 0.1, (5, 256)).astype(np.float32)
    _, inputs = head_inputs(embedding, rng.normal(0, 3, 5))
    assert np.allclose(version.gender.predict(inputs, verbose=0), raw.predict(inputs[:, :129], verbose=0))


# ----------------------------------------------------------------------------------------------
# A gender-only set in the training pipeline (real sample photos)


def test_gender_only_csv_problems_are_named(tmp_path):
    folder = tmp_path / "chips"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "Adrien_Brody_0001.jpg", folder / "a.jpg")
    csv = tmp_path / "chips.csv"
    csv.write_text("file,gender\na.jpg,남\nb.jpg,M\na.jpg,X\n../a.jpg,F\n")
    with pytest.raises(ValueError) as caught:
        gender.read_gender_only(csv)
    message = str(caught.value)
    assert "line 3" in message and "b.jpg does not exist" in message
    assert "line 4" in message and "'X' is not recognised" in message
    assert "line 5" in message and "not a photo file name" in message
    csv.write_text("file,sex\na.jpg,M\n")
    with pytest.raises(ValueError, match="missing column.*gender"):
        gender.read_gender_only(csv)
    csv.write_text("file,gender\na.jpg,남\n")
    table = gender.read_gender_only(csv)  # the folder named like the CSV
    assert list(table.gender) == ["M"] and table.person[0] == gender.GENDER_ONLY_PREFIX + "a.jpg"


# Their ages when photographed (about 2002): only Jiang Zemin is in the 45+ band.
CHIP_AGES = {"Norah_Jones": 23, "Jennifer_Lopez": 33, "Jiang_Zemin": 76, "David_Beckham": 27}


@pytest.fixture
def sample_with_gender_only(tmp_path, warm_cache):
    """The sample's people split in two: 18 as people (LFW layout), the photos of 6 more as a
    gender-only set; features from a cache warmed with the session's sample features."""
    from core.storage.db import init_db, session_factory

    people = pd.read_csv(SAMPLE_DIR / "people.csv")
    as_chips = people[people.person.isin(["Norah_Jones", "Jennifer_Lopez", "Jiang_Zemin", "David_Beckham"])]
    people[~people.person.isin(as_chips.person)].to_csv(tmp_path / "people.csv", index=False)
    (tmp_path / "chips").mkdir()
    rows = []
    for person, sex in zip(as_chips.person, as_chips.gender, strict=True):
        for photo in sorted(SAMPLE_IMAGES.glob(f"{person}_*.jpg")):
            shutil.copy(photo, tmp_path / "chips" / photo.name)
            rows.append((photo.name, sex, CHIP_AGES[person]))
    pd.DataFrame(rows, columns=["file", "gender", "age"]).to_csv(tmp_path / "chips.csv", index=False)
    factory = session_factory(init_db(f"sqlite:///{tmp_path / 'cache.sqlite3'}"))
    warm_cache(factory)
    choice = pipeline.DataChoice(SAMPLE_IMAGES, tmp_path / "people.csv", gender_only=tmp_path / "chips.csv")
    assert pipeline.DataChoice.from_dict(choice.to_dict()) == choice
    data = pipeline.collect(choice)
    return pipeline.build_features(data, TrainParams(), factory), len(rows)


def test_gender_only_photos_train_the_gender_head_only(sample_with_gender_only, tmp_path):
    feats, n_chips = sample_with_gender_only
    assert feats.computed == 0 and (feats.sources == gender.GENDER_ONLY).sum() == n_chips
    params = TrainParams(epochs=3, gender_epochs=15, positives_per_person=20)
    result = pipeline.train_and_evaluate(feats, params)
    chips = set(feats.names[feats.sources == gender.GENDER_ONLY])
    # Never in a pair: neither the tower's nor the held-out ones.
    assert not chips & {name for a, b, _ in result["heldout_pairs"] for name in (a, b)}
    assert not any(p.startswith(gender.GENDER_ONLY_PREFIX) for p in result["data"]["train_people"])
    assert result["data"]["gender_only_photos"] == n_chips and result["data"]["gender_only_heldout"] >= 1
    figures = result["metrics"]["gender_by_source"]
    assert figures["gender_only"]["n_men"] + figures["gender_only"]["n_women"] >= 1
    assert result["metrics"]["gender_accuracy"] >= 0.8
    # The 45+ band on its own: the held-out chips of Jiang Zemin, the only one that old.
    train, held = pipeline.split_by_source(feats, params)
    jiang = np.char.find(feats.names.astype(str), "Jiang_Zemin") >= 0
    older = held & (feats.sources == gender.GENDER_ONLY) & jiang
    by_age = result["metrics"].get("gender_by_source_45_plus", {})
    if older.any():
        assert by_age == {"gender_only:45+": by_age["gender_only:45+"]}
        assert (by_age["gender_only:45+"]["n_men"], by_age["gender_only:45+"]["n_women"]) == (older.sum(), 0)
        assert by_age["gender_only:45+"]["women_called_men"] is None
    else:
        assert by_age == {}
    # The mismatch confidence was chosen with the older band as a cell of its own.
    trained_older = train & (feats.sources == gender.GENDER_ONLY) & jiang
    cells = result["gender_policy"]["training_false_flags"]
    assert cells and ("gender_only:45+/M" in cells) == bool(trained_older.any())
    chosen = result["gender_min_confidence"]
    assert gender.MIN_CONFIDENCE_FLOOR <= chosen <= gender.MIN_CONFIDENCE_CEILING
    # Saved with the version, read back from its metadata; the head takes the whole embedding.
    version = pipeline.save_trained(result, params, "sample", tmp_path / "models")
    card = (tmp_path / "models" / version / "MODEL_CARD.md").read_text()
    assert ("| gender_only:45+ |" in card) == bool(older.any())
    model = load_version(version, tmp_path / "models")
    assert model.gender_min_confidence == chosen
    assert model.metadata["gender_policy"]["max_false_flags"] == params.gender_max_false_flags
    assert model.gender.input_shape[-1] == 1 + 128 + 128
    assert model.gender.get_layer("standardise") is not None


def test_older_photos_are_a_group_of_their_own_where_ages_are_known():
    sources = np.array(["lfw", "gender_only", "gender_only", "eastasian_dev"])
    bands = np.array(["", "45+", "", "45+"])
    assert gender.with_older_band(sources, bands).tolist() == [
        "lfw",
        "gender_only:45+",
        "gender_only",
        "eastasian_dev:45+",
    ]
    assert gender.with_older_band(sources, None).tolist() == sources.tolist()


def test_without_gender_only_photos_the_shipped_recipe_is_unchanged(sample_with_gender_only):
    feats, _ = sample_with_gender_only
    identity = gender.identity_rows(feats)
    assert len(identity.names) == int((feats.sources != gender.GENDER_ONLY).sum())
    assert gender.identity_rows(identity) is identity


# ----------------------------------------------------------------------------------------------
# East Asian faces (development set in ../shared; its terms keep the photos out of the repository)


@pytest.mark.skipif(
    not (EAST_ASIAN_DEV / "gender_only.csv").is_file(),
    reason=f"the East Asian development set is not on this machine ({EAST_ASIAN_DEV}); CI has it beside the checkout",
)
def test_east_asian_men_and_women_on_people_never_trained_on():
    """The recipe trained on the sample's 24 people plus 80% of the gender-only East Asian photos,
    judged on the other 20% and on the 40 CASIA volunteers (never trained on), men and women apart.

    With so few people of LFW's kind, this checks what the small run must do: fewer East Asian men
    called women than the pretrained network alone, and false mismatch flags under the 3% target for
    men and women of both sets. (So small a run leaves most men unconfirmed, below the flag's
    confidence; the 3% targets on the decision itself are measured with the whole LFW development
    set, python -m core train with --gender-only.)
    Featurises about 1,040 photos: a minute on a quiet machine.
    """
    import re

    choice = pipeline.DataChoice(
        SAMPLE_IMAGES, SAMPLE_DIR / "people.csv", gender_only=EAST_ASIAN_DEV / "gender_only.csv"
    )
    data = pipeline.collect(choice)
    casia = pd.read_csv(EAST_ASIAN_DEV / "people.csv")
    sex = dict(zip(casia.person, casia.gender, strict=True))
    volunteers = sorted((EAST_ASIAN_DEV / "images").glob("CASIAV5_*.bmp"))
    data.photos += [
        pipeline.LabelledPhoto(pipeline._file_ref(p), m[1], sex[m[1]], "volunteers")
        for p in volunteers
        if (m := re.match(r"(CASIAV5_\d+)_\d+\.bmp$", p.name))
    ]
    feats = pipeline.build_features(data, TrainParams())
    params = TrainParams()  # the recipe's gender settings are the defaults
    train, held = pipeline.split_by_source(feats, params)
    volunteer_rows = feats.sources == "volunteers"
    fitted = gender.fit_gender_head(feats, train & ~volunteer_rows, held | volunteer_rows, params)
    figures = fitted["metrics"]["gender_by_source"]
    chips = figures["gender_only"]
    assert chips["n_men"] >= 40 and chips["n_women"] >= 40
    held_chips = fitted["gender_rows"][feats.sources[fitted["gender_rows"]] == gender.GENDER_ONLY]
    men = held_chips[feats.genders[held_chips] == "M"]
    pretrained_men_called_women = float(np.mean(feats.gender_logits[men] < 0))
    assert chips["men_called_women"] < pretrained_men_called_women, (chips, pretrained_men_called_women)
    assert chips["balanced_accuracy"] >= 0.93, chips
    for source in ("gender_only", "volunteers"):
        row = figures[source]
        assert row["false_mismatch_flags_men"] <= 0.03 and row["false_mismatch_flags_women"] <= 0.03, (
            source,
            row,
        )
