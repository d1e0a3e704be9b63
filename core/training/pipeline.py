"""The training pipeline: choose data, features (cached), train both heads, evaluate by person, register.

python -m core.training.pipeline --images DIR --people PEOPLE.csv --json OUT.json [--promote] [--seed N]
                     [--reviewed] [--augment blur,jitter,gray] [--no-cache] [--no-compare]
                     [--gender-only GENDER.csv [--gender-only-images DIR]] [--gender-balance source]
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
each photo its own person) to the gender head's data (core.training.gender). --reviewed adds the reviewers' decisions from the database (approved: same
person, rejected: different people, the reviewer's gender for the verification photo). People are split into training and held-out sets
(never photos); the heads are trained on the first, the threshold and uncertain band chosen on the
training people, and every reported figure comes from the held-out people. The new version is
written under MODELS_DIR and registered in the database as a candidate; without --promote the
active model stays as it is. With --promote it becomes the active version (core.training.registry) and
models/DEFAULT names it.

    DataChoice(lfw_images, lfw_people, reviewed, gender_only, gender_only_images)
                                                     what to train on; lfw_dev_dir() finds ../shared
    collect(choice, session_factory, store) -> TrainingData      labelled photos + reviewed pairs
    preflight(choice, params, session_factory) -> list[str]      problems found without any network
    build_features(data, params, session_factory, ...) -> FeatureSet   cached pretrained features
    check_trainable(features, params)                raises ValueError with every problem at once
    train_and_evaluate(features, params, progress) -> dict       heads, threshold, band, metrics
    save_trained(result, params, source, models_dir) -> version
    compare(result, features, versions, models_dir) -> dict      the same held-out set, each model
    run(choice, params, ...) -> TrainOutcome         all of the above, as the page's worker runs it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import config  # noqa: E402
from core.training import gender as gender_training  # noqa: E402
from core.training.embedding_cache import PhotoRef  # noqa: E402
from core.training.fitting import (  # noqa: E402
    GENDER_BALANCES,
    TrainParams,
    calibrate,
    gender_metrics,
    make_pairs,
    midpoint_threshold,
    split_people,
    train_siamese,
    verification_metrics,
)
from core.verification.calibration import expected_calibration_error  # noqa: E402
from core.verification.policy import choose_operating_points, policy_figures  # noqa: E402

# Held-out pairs are drawn like lfw_dev's pairs.csv, each person weighing about alike: a cap on
# same-person pairs per person keeps one person with hundreds of photos from being most of them.
HELDOUT_POSITIVES_PER_PERSON = 100
LFW_NAME = re.compile(r"^(?P<person>.+)_\d{4}\.(jpe?g|png|bmp)$", re.IGNORECASE)
LFW, DB, COHORT = "lfw", "db", "cohort"
OLDER_AGE = 45  # the age band reported apart ("45+"): the service's members are in their 50s and 60s
# Training people's photos in the shipped cohort: one each. A person inside the cohort is judged
# against their own photos (their top cohort scores are themselves): with 3 photos each, a genuine
# pair of John Howard (lfw_dev, a training person) fell from 0.99994 to 0.38. Members are never in
# the cohort, but the people the product is tried and shown on are. With none (East Asian cohort
# faces alone), held-out LFW men lost: FNMR at FMR 0.1% 0.57%, 11 impostors at approve_at; with one
# each, 0.25% and none, and every data/sample pair is decided right.
COHORT_PHOTOS_PER_PERSON = 1
# Two cohort files whose SFace embeddings are this alike are one photo twice (copies in the source).
COPY_COSINE = 0.9
MIN_PEOPLE = 6
MIN_PEOPLE_WITH_PAIRS = 4
LATENCY_PAIRS = 20  # held-out pairs timed per model in a comparison


class Cancelled(Exception):
    """The run was asked to stop; nothing was registered."""


# ----------------------------------------------------------------------------------------------
# Choosing the data


@dataclass
class DataChoice:
    lfw_images: Path | None = None
    lfw_people: Path | None = None
    reviewed: bool = False  # the reviewers' decisions in the database
    # Photos labelled with a gender only (CSV file,gender; core.training.gender), for the gender head.
    gender_only: Path | None = None
    gender_only_images: Path | None = None  # their folder (default: beside the CSV, named like it)
    # More labelled sets, (images, people.csv) each; the set's name is its folder's (source).
    sets: list[tuple[Path, Path]] = field(default_factory=list)
    # Folders of faces of other people to normalise scores against, with optional labels
    # (CSV file,gender,age) to group their impostor pairs.
    cohort: list[Path] = field(default_factory=list)
    cohort_labels: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "lfw_images": str(self.lfw_images) if self.lfw_images else None,
            "lfw_people": str(self.lfw_people) if self.lfw_people else None,
            "reviewed": bool(self.reviewed),
            "gender_only": str(self.gender_only) if self.gender_only else None,
            "gender_only_images": str(self.gender_only_images) if self.gender_only_images else None,
            "sets": [[str(i), str(p)] for i, p in self.sets],
            "cohort": [str(c) for c in self.cohort],
            "cohort_labels": [str(c) for c in self.cohort_labels],
        }

    @classmethod
    def from_dict(cls, values: dict) -> DataChoice:
        images, people = values.get("lfw_images"), values.get("lfw_people")
        chips, chip_images = values.get("gender_only"), values.get("gender_only_images")
        return cls(
            Path(images) if images else None,
            Path(people) if people else None,
            bool(values.get("reviewed")),
            Path(chips) if chips else None,
            Path(chip_images) if chip_images else None,
            [(Path(i), Path(p)) for i, p in values.get("sets") or []],
            [Path(c) for c in values.get("cohort") or []],
            [Path(c) for c in values.get("cohort_labels") or []],
        )

    def describe(self) -> str:
        parts = []
        if self.lfw_images:
            parts.append(str(self.lfw_images))
        parts += [str(images) for images, _ in self.sets]
        if self.cohort:
            parts.append("cohort " + ", ".join(str(c) for c in self.cohort))
        if self.reviewed:
            parts.append("reviewed decisions")
        if self.gender_only:
            parts.append(f"gender only: {self.gender_only}")
        return " + ".join(parts) or "nothing"


def lfw_dev_dir() -> Path | None:
    """The LFW development set (../shared/data/lfw_dev, or LFW_DEV_DIR) when this machine has it."""
    folder = config.get("LFW_DEV_DIR") or config.SHARED_LFW_DEV_DIR
    if (folder / "images").is_dir() and (folder / "people.csv").is_file():
        return folder
    return None


def default_choice() -> DataChoice:
    folder = lfw_dev_dir()
    if folder is None:
        return DataChoice(reviewed=True)
    return DataChoice(folder / "images", folder / "people.csv", reviewed=True)


@dataclass
class LabelledPhoto:
    ref: PhotoRef
    person: str
    gender: str  # "M", "F", or "" when nobody said
    source: str  # LFW, DB, a labelled set's name, or COHORT
    age_band: str = ""  # "45+" or "" (unknown or younger), where the labels say


def set_name(images: Path) -> str:
    """A labelled set's name (its source): the folder holding images/ (eastasian_dev), else its own."""
    images = Path(images)
    return images.parent.name if images.name == "images" else images.name


def group_of(source: str, gender: str, age_band: str = "") -> str:
    """The group a photo is judged in: population (its set) x gender (x age band where known)."""
    return ":".join(part for part in (source, gender or "?", age_band) if part)


@dataclass
class ReviewedPair:
    result_id: int
    member_id: str | None
    gallery: str  # photo sha256
    verification: str
    same: bool


@dataclass
class TrainingData:
    photos: list[LabelledPhoto]
    pairs: list[ReviewedPair]
    notes: list[str] = field(default_factory=list)


def read_lfw_folder(images: Path, people_csv: Path) -> pd.DataFrame:
    """Rows (path, person, gender, age_band) for every photo in images (flat or one folder per
    person) whose person is in people_csv (an age or age_band column gives the age band)."""
    people = pd.read_csv(people_csv)
    missing = {"person", "gender"} - set(people.columns)
    if missing:
        raise ValueError(f"{people_csv}: missing column(s) {', '.join(sorted(missing))}")
    gender_of = dict(zip(people.person.astype(str), people.gender.astype(str).str.upper(), strict=True))
    bad = sorted({g for g in gender_of.values() if g not in ("M", "F")})
    if bad:
        raise ValueError(f"{people_csv}: gender must be M or F, found {bad}")
    band_of = _age_bands(people, "person")
    rows = []
    for path in lfw_photo_files(Path(images)):
        match = LFW_NAME.match(path.name)
        if match["person"] in gender_of:
            person = match["person"]
            rows.append((path, person, gender_of[person], band_of.get(person, "")))
    return pd.DataFrame(rows, columns=["path", "person", "gender", "age_band"])


def _age_bands(table: pd.DataFrame, key: str) -> dict[str, str]:
    """key -> "45+" where an age (age, age_label) or an age_band column says so, else ""."""
    for column in ("age", "age_label"):
        if column in table.columns:
            ages = pd.to_numeric(table[column], errors="coerce")
            return {
                str(k): (f"{OLDER_AGE}+" if a >= OLDER_AGE else "")
                for k, a in zip(table[key], ages, strict=True)
                if a == a
            }
    if "age_band" in table.columns:
        return {
            str(k): str(b) for k, b in zip(table[key], table["age_band"], strict=True) if isinstance(b, str)
        }
    return {}


def lfw_photo_files(images: Path) -> list[Path]:
    """Photos named like LFW's (Person_Name_0001.jpg), flat in images or in one folder per person
    (LFW's own layout, Person_Name/Person_Name_0001.jpg)."""
    found = []
    for path in sorted(images.iterdir()):
        if path.is_dir() and not path.name.startswith("."):
            found += [p for p in sorted(path.iterdir()) if p.is_file() and LFW_NAME.match(p.name)]
        elif path.is_file() and LFW_NAME.match(path.name):
            found.append(path)
    return found


def _file_ref(path: Path) -> PhotoRef:
    data = Path(path).read_bytes()
    return PhotoRef(hashlib.sha256(data).hexdigest(), Path(path).name, lambda p=Path(path): p.read_bytes())


def lfw_photos(images: Path, people_csv: Path, source: str = LFW) -> list[LabelledPhoto]:
    table = read_lfw_folder(images, people_csv)
    return [
        LabelledPhoto(_file_ref(r.path), r.person, r.gender, source, r.age_band) for r in table.itertuples()
    ]


COHORT_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def cohort_photos(folders: list[Path], labels: list[Path] | None = None) -> list[LabelledPhoto]:
    """Faces of other people: every photo in the folders, each its own person ("cohort:<folder>/<file>"),
    with gender and age band from the labels (CSV file,gender[,age]) where given."""
    gender_of: dict[str, str] = {}
    band_of: dict[str, str] = {}
    for path in labels or []:
        table = pd.read_csv(path)
        if not {"file", "gender"} <= set(table.columns):
            raise ValueError(f"{path}: a cohort's labels need the columns file, gender")
        gender_of.update(zip(table.file.astype(str), table.gender.astype(str).str.upper(), strict=True))
        band_of.update(_age_bands(table, "file"))
    photos = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"Cannot use the cohort: the folder {folder} does not exist.")
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in COHORT_SUFFIXES:
                gender = gender_of.get(path.name, "")
                photos.append(
                    LabelledPhoto(
                        _file_ref(path),
                        f"{COHORT}:{folder.name}/{path.name}",
                        gender if gender in ("M", "F") else "",
                        COHORT,
                        band_of.get(path.name, ""),
                    )
                )
    if not photos:
        raise ValueError(f"Cannot use the cohort: no photo in {', '.join(map(str, folders))}.")
    return photos


def reviewed_data(session, store) -> tuple[list[LabelledPhoto], list[ReviewedPair]]:
    """Photos and pairs of every reviewed result, by the reviewer's label of the pair (ground_truth_same:
    same person or different people; "can't tell" is left out), never by the decision on the member.

    Labels only what a reviewer confirmed: a same-person pair's two photos are the member (and
    have the reviewer's gender); in a different-person pair the gallery photo is the member and
    the verification photo an unknown other person with the reviewer's gender, if given.
    """
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from core.storage.schema import Photo
    from core.storage.schema import VerificationResult as ResultRow

    gallery, verification = aliased(Photo), aliased(Photo)
    rows = session.execute(
        select(
            ResultRow.id,
            ResultRow.member_id,
            ResultRow.ground_truth_same,
            ResultRow.ground_truth_gender,
            gallery.sha256,
            gallery.stored_path,
            verification.sha256,
            verification.stored_path,
        )
        .join(gallery, gallery.id == ResultRow.gallery_photo_id)
        .join(verification, verification.id == ResultRow.verification_photo_id)
        .where(ResultRow.ground_truth_same.is_not(None), ResultRow.decided_by.is_not(None))
        .order_by(ResultRow.id)
    ).all()
    photos, pairs = [], []
    for rid, member_id, same, gender, g_sha, g_path, v_sha, v_path in rows:
        gender = gender if gender in ("M", "F") else ""
        member = f"member:{member_id}" if member_id else f"result:{rid}"
        g_ref = PhotoRef(g_sha, f"result {rid}, gallery photo", lambda p=g_path: store.read(p))
        v_ref = PhotoRef(v_sha, f"result {rid}, verification photo", lambda p=v_path: store.read(p))
        if same:
            photos += [LabelledPhoto(g_ref, member, gender, DB), LabelledPhoto(v_ref, member, gender, DB)]
        else:
            photos += [
                LabelledPhoto(g_ref, member, "", DB),
                LabelledPhoto(v_ref, f"photo:{v_sha[:16]}", gender, DB),
            ]
        pairs.append(ReviewedPair(int(rid), member_id, g_sha, v_sha, bool(same)))
    return photos, pairs


def collect(choice: DataChoice, session_factory=None, store=None) -> TrainingData:
    """The labelled photos of the chosen sources, one per photo content (the first label wins)."""
    photos: list[LabelledPhoto] = []
    pairs: list[ReviewedPair] = []
    notes = []
    if not choice.lfw_images and not choice.reviewed and not choice.sets:
        raise ValueError("Cannot train: choose at least one source of people (photos or reviewed decisions).")
    if choice.lfw_images:
        if not Path(choice.lfw_images).is_dir():
            raise ValueError(f"Cannot train: the photo folder {choice.lfw_images} does not exist.")
        if not choice.lfw_people or not Path(choice.lfw_people).is_file():
            raise ValueError(f"Cannot train: the people file {choice.lfw_people} does not exist.")
        photos += lfw_photos(choice.lfw_images, choice.lfw_people)
        if not photos:
            raise ValueError(f"Cannot train: no photo in {choice.lfw_images} belongs to a listed person.")
    for images, people_csv in choice.sets:
        if not Path(images).is_dir() or not Path(people_csv).is_file():
            raise ValueError(f"Cannot train: the set {images} (people {people_csv}) does not exist.")
        found = lfw_photos(images, people_csv, set_name(images))
        if not found:
            raise ValueError(f"Cannot train: no photo in {images} belongs to a person of {people_csv}.")
        photos += found
    if choice.reviewed:
        if session_factory is None:
            raise ValueError("Cannot use reviewed decisions: no database is configured.")
        if store is None:
            from core.storage.stores import open_photo_store

            store = open_photo_store()
        with session_factory() as session:
            db_photos, pairs = reviewed_data(session, store)
        if not pairs:
            notes.append("There are no reviewed decisions in the database yet.")
        photos += db_photos
    if choice.gender_only:  # last: their rows follow every identity photo's (gender.identity_rows)
        table = gender_training.read_gender_only(choice.gender_only, choice.gender_only_images)
        photos += [
            LabelledPhoto(_file_ref(r.path), r.person, r.gender, gender_training.GENDER_ONLY)
            for r in table.itertuples()
        ]
    by_sha: dict[str, LabelledPhoto] = {}
    for photo in photos:
        known = by_sha.get(photo.ref.sha256)
        if known is None:
            by_sha[photo.ref.sha256] = photo
        elif not known.gender and photo.gender:
            known.gender = photo.gender
    return TrainingData(list(by_sha.values()), pairs, notes)


# ----------------------------------------------------------------------------------------------
# Features


@dataclass
class FeatureSet:
    """Pretrained features of labelled photos: one row per photo with a usable face.

    Augmented views are extra rows (aug_*) pointing at their photo's row; explicit pairs are
    reviewed decisions as row index pairs. failed: photos without a usable face, by name.
    """

    names: np.ndarray  # file names (or photo hashes)
    people: np.ndarray
    genders: np.ndarray  # "M"/"F", "" unknown
    embeddings: np.ndarray  # N x 128, dlib's
    gender_logits: np.ndarray  # N
    failed: list[str]
    shas: np.ndarray | None = None
    sources: np.ndarray | None = None
    refs: list[PhotoRef] | None = None
    aug_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    aug_embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))
    aug_logits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    pair_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pair_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    computed: int = 0
    cached: int = 0
    others: dict[str, np.ndarray] = field(default_factory=dict)  # other networks' N x dim, by name
    age_bands: np.ndarray | None = None  # "45+" or "" per row

    def groups(self) -> np.ndarray:
        """Each row's group (group_of: source x gender x age band)."""
        sources = self.sources if self.sources is not None else np.full(len(self.people), LFW)
        bands = self.age_bands if self.age_bands is not None else np.full(len(self.people), "")
        return np.array([group_of(s, g, b) for s, g, b in zip(sources, self.genders, bands, strict=True)])

    def inputs(self, networks: tuple[str, ...] = ("dlib",)) -> np.ndarray:
        """The Siamese tower's input for a model on these networks: their embeddings side by side."""
        missing = [n for n in networks if n != "dlib" and n not in self.others]
        if missing:
            raise ValueError(f"These features have no embeddings of the network(s) {', '.join(missing)}.")
        return np.concatenate([self.embeddings, *(self.others[n] for n in networks if n != "dlib")], axis=1)


def build_features(
    data: TrainingData,
    params: TrainParams,
    session_factory=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    networks: tuple[str, ...] | None = None,
) -> FeatureSet:
    """Features of every photo (and its augmented views) from the cache or the networks.

    networks: the identity networks to compute (default the run's own; a comparison with a model
    on other networks needs theirs too). Reviewed pairs whose photos have no usable face are
    reported in notes and left out.
    """
    from core.training import embedding_cache

    networks = tuple(networks or params.network_names())
    found = embedding_cache.featurise(
        [p.ref for p in data.photos],
        params.view_names(),
        session_factory,
        progress,
        should_stop,
        networks=networks,
    )
    base = {
        sha: vector
        for sha, vector in found.vectors[""].items()
        if all(sha in found.extra[name] for name in found.extra)
    }
    keep = [p for p in data.photos if p.ref.sha256 in base]
    row_of = {p.ref.sha256: k for k, p in enumerate(keep)}
    vectors = np.array([base[p.ref.sha256] for p in keep], np.float32).reshape(-1, 129)
    aug_of, aug_vectors = [], []
    for view in params.view_names():
        for k, photo in enumerate(keep):
            vector = found.vectors[view].get(photo.ref.sha256)
            if vector is not None:
                aug_of.append(k)
                aug_vectors.append(vector)
    aug = np.array(aug_vectors, np.float32).reshape(-1, 129)
    notes = list(data.notes)
    pairs, labels, ids = [], [], []
    for pair in data.pairs:
        missing = [
            (kind, found.failed.get(sha, "not read"))
            for kind, sha in (("gallery", pair.gallery), ("verification", pair.verification))
            if sha not in row_of
        ]
        if missing:
            why = "; ".join(f"the {kind} photo has no usable face ({reason})" for kind, reason in missing)
            who = f" (member {pair.member_id})" if pair.member_id else ""
            notes.append(f"Reviewed result {pair.result_id}{who} skipped: {why}.")
            continue
        pairs.append((row_of[pair.gallery], row_of[pair.verification]))
        labels.append(1.0 if pair.same else 0.0)
        ids.append(pair.result_id)
    if data.pairs and not pairs:
        raise ValueError(
            f"Cannot train on the reviewed decisions: none of the {len(data.pairs)} reviewed pairs has a "
            "usable face in both photos. " + " ".join(notes)
        )
    failed = sorted(p.ref.name for p in data.photos if p.ref.sha256 not in base)
    return FeatureSet(
        names=np.array([p.ref.name for p in keep]),
        people=np.array([p.person for p in keep]),
        genders=np.array([p.gender for p in keep]),
        embeddings=vectors[:, :128].copy(),
        gender_logits=vectors[:, 128].copy(),
        failed=failed,
        shas=np.array([p.ref.sha256 for p in keep]),
        sources=np.array([p.source for p in keep]),
        age_bands=np.array([p.age_band for p in keep]),
        refs=[p.ref for p in keep],
        aug_of=np.array(aug_of, np.int64),
        aug_embeddings=aug[:, :128].copy(),
        aug_logits=aug[:, 128].copy(),
        pairs=np.array(pairs, np.int64).reshape(-1, 2),
        pair_labels=np.array(labels, np.float32),
        pair_ids=ids,
        notes=notes,
        seconds=found.seconds,
        computed=found.computed,
        cached=found.cached,
        others={
            name: np.array([rows[p.ref.sha256] for p in keep], np.float32).reshape(len(keep), -1)
            for name, rows in found.extra.items()
        },
    )


def extract_features(table: pd.DataFrame, progress=None, session_factory=None) -> FeatureSet:
    """Features of a read_lfw_folder table (cached in the database when a factory is given)."""
    photos = [LabelledPhoto(_file_ref(r.path), r.person, r.gender, LFW) for r in table.itertuples()]
    return build_features(TrainingData(photos, []), TrainParams(), session_factory, progress)


# ----------------------------------------------------------------------------------------------
# Checks before training


class Problem(str):
    """A reason the data are not enough, in English, with its catalog key and values so a page can
    say it in its own language (core.dashboard.retrain.problem_text)."""

    def __new__(cls, text: str, key: str, **params):
        problem = super().__new__(cls, text)
        problem.key, problem.params = key, params
        return problem


def data_problems(people: np.ndarray, genders: np.ndarray) -> list[str]:
    """Why these labelled photos are not enough for an honest run (empty when they are)."""
    unique = np.unique(people)
    counts = pd.Series(people).value_counts()
    with_pairs = int((counts >= 2).sum())
    problems = []
    if len(unique) < MIN_PEOPLE:
        who = "1 person" if len(unique) == 1 else f"{len(unique)} people"
        problems.append(
            Problem(
                f"only {who} with a usable face; at least {MIN_PEOPLE} are needed to hold "
                "some out for an honest evaluation",
                "train.problem.few_people",
                n=len(unique),
                need=MIN_PEOPLE,
            )
        )
    if with_pairs < MIN_PEOPLE_WITH_PAIRS:
        who = "1 person has" if with_pairs == 1 else f"{with_pairs} people have"
        problems.append(
            Problem(
                f"only {who} two or more photos; at least {MIN_PEOPLE_WITH_PAIRS} are needed",
                "train.problem.few_pairs",
                n=with_pairs,
                need=MIN_PEOPLE_WITH_PAIRS,
            )
        )
    for gender, word in (("M", "men"), ("F", "women")):
        if not np.any(genders == gender):
            problems.append(
                Problem(
                    f"no photos of {word} (gender {gender}): the gender head cannot learn it",
                    f"train.problem.no_gender.{gender}",
                )
            )
    return problems


def check_trainable(data: FeatureSet, params: TrainParams) -> None:
    """Refuse, before any training, data that cannot give an honest held-out evaluation."""
    problems = data_problems(data.people, data.genders)
    if problems:
        raise ValueError("Cannot train: " + "; ".join(problems) + ".")


def preflight(choice: DataChoice, params: TrainParams, session_factory=None, store=None) -> list[str]:
    """Problems visible before any photo goes through a network (settings, sources, labels).

    Photos without a face are only known once the features are computed (the worker says so).
    """
    try:
        params.validate()
    except ValueError as exc:
        return [str(exc)]
    try:
        data = collect(choice, session_factory, store)
    except (ValueError, OSError) as exc:
        return [str(exc)]
    if choice.reviewed and not choice.lfw_images and not data.pairs:
        return ["Cannot train: there are no reviewed decisions in the database yet; choose a photo set too."]
    identity = [p for p in data.photos if p.source != gender_training.GENDER_ONLY]
    people = np.array([p.person for p in identity])
    genders = np.array([p.gender for p in identity])
    problems = data_problems(people, genders)
    return ["Cannot train: " + "; ".join(problems) + "."] if problems else []


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def split_by_source(data: FeatureSet, params: TrainParams) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held out) by person, never by photo.

    People joined by a reviewed pair go to the same side together (so every reviewed pair is
    either trained on or evaluated on, never lost across the split), and held-out people are
    chosen within each source: adding reviewed decisions does not move the LFW people held out,
    so the comparison with earlier versions stays on people they did not see.
    """
    people = data.people
    sources = data.sources if data.sources is not None else np.full(len(people), LFW)
    root = {p: p for p in np.unique(people)}

    def find(p):
        while root[p] != p:
            root[p] = root[root[p]]
            p = root[p]
        return p

    for a, b in data.pairs:
        ra, rb = find(people[a]), find(people[b])
        if ra != rb:
            root[max(ra, rb)] = min(ra, rb)
    group = np.array([find(p) for p in people]) if len(data.pairs) else people
    source_of: dict = {}
    for g, source in zip(group, sources, strict=True):
        if source == LFW or g not in source_of:
            source_of[g] = source
    row_source = np.array([source_of[g] for g in group]) if len(group) else sources
    held = np.zeros(len(people), bool)
    for source in sorted(set(row_source)):
        mask = row_source == source
        if len(np.unique(group[mask])) < 2:
            continue  # a lone group of one source trains; it cannot be held out on its own
        if source in (LFW, DB):
            _, held_part = split_people(group[mask], params.holdout_fraction, params.seed)
            held[np.flatnonzero(mask)[held_part]] = True
            continue
        # Another labelled set: its own share held out, men and women alike (small populations).
        genders = data.genders[mask]
        for gender in sorted(set(genders)):
            part = np.flatnonzero(mask)[genders == gender]
            if len(np.unique(group[part])) < 2:
                continue
            _, held_part = split_people(group[part], params.set_holdout_fraction, params.seed)
            held[part[held_part]] = True
    return ~held, held


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
    if "sface" in data.others:
        vectors = data.others["sface"] / np.linalg.norm(data.others["sface"], axis=1, keepdims=True)
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


def _raw_scoring(data, params, train, train_rows, inputs, tower, layer, report) -> dict:
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


def _cohort_scoring(data, params, train, train_rows, inputs, tower, layer, cohort, report) -> dict:
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
        scoring = _cohort_scoring(data, params, train, train_rows, inputs, tower, layer, cohort, report)
    else:
        scoring = _raw_scoring(data, params, train, train_rows, inputs, tower, layer, report)
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


# ----------------------------------------------------------------------------------------------
# Saving and comparing


def new_version_name(models_dir: Path) -> str:
    created = datetime.now(UTC)
    version = f"v{created:%Y%m%d-%H%M%S}"
    suffix = 1
    while (Path(models_dir) / version).exists():
        suffix += 1
        version = f"v{created:%Y%m%d-%H%M%S}-{suffix}"
    return version


def save_trained(
    result: dict, params: TrainParams, source: str, models_dir: Path | None = None, extra: dict | None = None
) -> str:
    """Write the model version folder with its metadata; returns the version name."""
    from core.verification import features
    from core.verification.heads import save_version
    from core.verification.networks import dlib_resnet, gender_cydral, network

    networks = params.network_names()
    models_dir = Path(models_dir or config.models_dir())
    version = new_version_name(models_dir)
    metadata = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features_version": features.features_version(networks),
        "networks": list(networks),
        "pretrained": {
            "dlib_resnet_sha256": dlib_resnet.dlib_model_sha256(),
            "gender_network_sha256": gender_cydral.gender_weights_sha256(),
            **{f"{name}_sha256": network(name).weights_sha256() for name in networks if name != "dlib"},
        },
        "threshold": result["threshold"],
        "uncertain_band": list(result["uncertain_band"]),
        "policy": {**result["policy"].to_dict(), "chosen_on": result["policy_chosen_on"]},
        # The engine reads it from here: the gender_mismatch flag's confidence (core.training.gender).
        "gender_min_confidence": result.get("gender_min_confidence", gender_training.MIN_CONFIDENCE_FLOOR),
        **({"gender_policy": result["gender_policy"]} if "gender_policy" in result else {}),
        "metrics": result["metrics"],
        "params": params.to_dict(),
        "data": {**result["data"], "source": source},
        "history": result["history"],
        **(extra or {}),
    }
    if result.get("policy_by_group"):
        metadata["policy"]["by_group"] = result["policy_by_group"]
    if result.get("metrics_by_group"):
        metadata["metrics_by_group"] = result["metrics_by_group"]
    if result.get("cohort_entry"):
        metadata["cohort"] = result["cohort_entry"]
    directory = save_version(
        models_dir, version, result["siamese"], result["gender"], metadata, cohort=result.get("cohort")
    )
    pd.DataFrame(result["heldout_pairs"], columns=["file_x", "file_y", "Decision"]).replace(
        {"Decision": {1: "Yes", 0: "No"}}
    ).to_csv(directory / "heldout_pairs.csv", index=False)
    if result.get("heldout_pairs_by_group"):
        # Held-out pairs of each set apart (impostors within a group), for the benchmark's --set.
        by_group = pd.DataFrame(
            result["heldout_pairs_by_group"], columns=["file_x", "file_y", "Decision", "group"]
        )
        by_group["Decision"] = by_group["Decision"].map({1: "Yes", 0: "No"})
        for name, part in by_group.groupby(by_group["group"].str.split(":").str[0]):
            if name != LFW:  # LFW's held-out people are judged on heldout_pairs.csv, as before
                part.to_csv(directory / f"heldout_pairs_{name}.csv", index=False)
    from core.training.model_card import write_model_card

    write_model_card(directory, {**metadata, "version": version})
    return version


def promote_default(version: str, models_dir: Path | None = None) -> None:
    path = Path(models_dir or config.models_dir()) / "DEFAULT"
    path.write_text(version + "\n")


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


# ----------------------------------------------------------------------------------------------
# The whole run


def _active_networks(session_factory, models_dir: Path) -> tuple[str, ...]:
    """The identity networks of the active (or default) model version; () when there is none."""
    from core.errors import ModelError
    from core.training import registry
    from core.verification.heads import default_version
    from core.verification.networks import networks_of

    try:
        active = None
        if session_factory is not None:
            with session_factory() as session:
                active = registry.active_version(session, models_dir)
        active = active or default_version(models_dir)
        return networks_of(json.loads((Path(models_dir) / active / "metadata.json").read_text()))
    except (ModelError, OSError, ValueError):
        return ()


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
        networks += tuple(n for n in _active_networks(session_factory, models_dir) if n not in networks)
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


# ----------------------------------------------------------------------------------------------
# Command line


def _cli_session_factory(no_cache: bool):
    """The configured database (for the cache and the registry), or None when it cannot be reached."""
    if no_cache:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from core.storage.db import init_db, session_factory

    try:
        return session_factory(init_db())
    except (SQLAlchemyError, OSError) as exc:
        print(f"Database not reachable ({exc}); running without the embedding cache.", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.training.pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--promote", action="store_true", help="make the new version the active one")
    parser.add_argument("--seed", type=int, default=TrainParams.seed)
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs)
    parser.add_argument("--loss", choices=["contrastive", "triplet"], default=TrainParams.loss)
    parser.add_argument("--augment", default=TrainParams.augment, help="comma list of blur,jitter,gray")
    parser.add_argument("--augment-views", type=int, default=TrainParams.augment_views)
    parser.add_argument("--reviewed", action="store_true", help="add the reviewed decisions in the database")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison with the active model")
    gender = parser.add_argument_group("gender head")
    gender.add_argument(
        "--gender-only",
        type=Path,
        help="CSV file,gender of face photos without identities (each its own person)",
    )
    gender.add_argument(
        "--gender-only-images", type=Path, help="their folder (default: beside the CSV, named like it)"
    )
    gender.add_argument("--gender-balance", choices=GENDER_BALANCES, default=TrainParams.gender_balance)
    gender.add_argument(
        "--gender-raw-inputs",
        action="store_true",
        help="do not standardise the gender head's inputs (the versions before standardising)",
    )
    gender.add_argument("--gender-l2", type=float, default=TrainParams.gender_l2)
    gender.add_argument("--gender-max-false-flags", type=float, default=TrainParams.gender_max_false_flags)
    parser.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("IMAGES", "PEOPLE"),
        help="another labelled set (its people split apart, set_holdout_fraction held out)",
    )
    parser.add_argument(
        "--cohort", type=Path, action="append", default=[], help="a folder of faces of other people"
    )
    parser.add_argument(
        "--cohort-labels",
        type=Path,
        action="append",
        default=[],
        help="CSV file,gender[,age] of cohort faces",
    )
    parser.add_argument("--cohort-top-k", type=int, default=TrainParams.cohort_top_k)
    args = parser.parse_args(argv)
    params = TrainParams(
        seed=args.seed,
        epochs=args.epochs,
        loss=args.loss,
        augment=args.augment,
        augment_views=args.augment_views,
        gender_balance=args.gender_balance,
        gender_standardise=not args.gender_raw_inputs,
        gender_l2=args.gender_l2,
        gender_max_false_flags=args.gender_max_false_flags,
        cohort_top_k=args.cohort_top_k,
    )
    sets = [(Path(images), Path(people)) for images, people in args.set]
    try:
        params.validate()
        read_lfw_folder(args.images, args.people)
        if args.gender_only:
            gender_training.read_gender_only(args.gender_only, args.gender_only_images)
        for images, people in sets:
            read_lfw_folder(images, people)
        if args.cohort:
            cohort_photos(args.cohort, args.cohort_labels)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    factory = _cli_session_factory(args.no_cache)
    if args.reviewed and factory is None:
        parser.error("--reviewed needs the database")
    choice = DataChoice(
        args.images,
        args.people,
        reviewed=args.reviewed,
        gender_only=args.gender_only,
        gender_only_images=args.gender_only_images,
        sets=sets,
        cohort=args.cohort,
        cohort_labels=args.cohort_labels,
    )
    last = {"stage": None}

    def show(stage, fraction, logs):
        if stage == "features" and "total" in logs:
            sys.stderr.write(f"\rfeatures {logs['done']}/{logs['total']}")
            if logs["done"] == logs["total"]:
                sys.stderr.write("\n")
        elif stage != last["stage"]:
            sys.stderr.write(f"{stage}\n")
        last["stage"] = stage

    try:
        outcome = run(
            choice,
            params,
            session_factory=factory,
            actor="cli",
            progress=show,
            compare_with_active=not args.no_compare,
        )
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    promoted = False
    if args.promote:
        if factory is not None:
            from core.training import registry

            with factory() as session:
                registry.promote(session, outcome.version, "cli")
        promote_default(outcome.version)
        promoted = True
    new = outcome.comparison.get("new", {})
    out = {
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
        from core.verification.policy import group_table

        out["by_group"] = outcome.result["metrics_by_group"]
        print(group_table(out["by_group"], "Held-out people, group by group:"), file=sys.stderr)
    for note in outcome.features.notes:
        print(note, file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps(out, indent=2, default=float))
    t = outcome.timings
    print(
        f"retrain time: features {t['features_seconds']} s ({t['photos_cached']} photos from the cache, "
        f"{t['photos_computed']} computed), training {t['training_seconds']} s, comparison "
        f"{t.get('compare_seconds', 0)} s, total {t.get('total_seconds')} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
