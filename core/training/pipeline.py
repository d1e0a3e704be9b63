"""The training pipeline: choose data, features (cached), train both heads, evaluate by person, register.

python -m core.training.pipeline --images DIR --people PEOPLE.csv --json OUT.json [--promote] [--seed N]
                     [--reviewed] [--augment blur,jitter,gray] [--no-cache] [--no-compare]

DIR holds NAME_NNNN.jpg photos (flat, or NAME/NAME_NNNN.jpg as LFW ships them); PEOPLE.csv has
person,gender. --reviewed adds the reviewers' decisions from the database (approved: same
person, rejected: different people, the reviewer's gender for the verification photo). People are split into training and held-out sets
(never photos); the heads are trained on the first, the threshold and uncertain band chosen on the
training people, and every reported figure comes from the held-out people. The new version is
written under MODELS_DIR and registered in the database as a candidate; without --promote the
active model stays as it is. With --promote it becomes the active version (core.training.registry) and
models/DEFAULT names it.

    DataChoice(lfw_images, lfw_people, reviewed)     what to train on; lfw_dev_dir() finds ../shared
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
from core.training.embedding_cache import PhotoRef  # noqa: E402
from core.training.fitting import (  # noqa: E402
    TrainParams,
    calibrate,
    gender_metrics,
    make_pairs,
    midpoint_threshold,
    split_people,
    train_gender,
    train_siamese,
    verification_metrics,
)
from core.verification.calibration import expected_calibration_error  # noqa: E402
from core.verification.policy import choose_operating_points, policy_figures  # noqa: E402

# Held-out pairs are drawn like lfw_dev's pairs.csv, each person weighing about alike: a cap on
# same-person pairs per person keeps one person with hundreds of photos from being most of them.
HELDOUT_POSITIVES_PER_PERSON = 100
LFW_NAME = re.compile(r"^(?P<person>.+)_\d{4}\.(jpe?g|png)$", re.IGNORECASE)
LFW, DB = "lfw", "db"
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

    def to_dict(self) -> dict:
        return {
            "lfw_images": str(self.lfw_images) if self.lfw_images else None,
            "lfw_people": str(self.lfw_people) if self.lfw_people else None,
            "reviewed": bool(self.reviewed),
        }

    @classmethod
    def from_dict(cls, values: dict) -> DataChoice:
        images, people = values.get("lfw_images"), values.get("lfw_people")
        return cls(
            Path(images) if images else None, Path(people) if people else None, bool(values.get("reviewed"))
        )

    def describe(self) -> str:
        parts = []
        if self.lfw_images:
            parts.append(str(self.lfw_images))
        if self.reviewed:
            parts.append("reviewed decisions")
        return " + ".join(parts) or "nothing"


def lfw_dev_dir() -> Path | None:
    """The LFW development set (../shared/data/lfw_dev, or LFW_DEV_DIR) when this machine has it."""
    configured = config.setting("LFW_DEV_DIR")
    folder = Path(configured) if configured else config.SHARED_LFW_DEV_DIR
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
    source: str  # LFW or DB


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
    """Rows (path, person, gender) for every photo in images (flat or one folder per person)
    whose person is in people_csv."""
    people = pd.read_csv(people_csv)
    missing = {"person", "gender"} - set(people.columns)
    if missing:
        raise ValueError(f"{people_csv}: missing column(s) {', '.join(sorted(missing))}")
    gender_of = dict(zip(people.person.astype(str), people.gender.astype(str).str.upper(), strict=True))
    bad = sorted({g for g in gender_of.values() if g not in ("M", "F")})
    if bad:
        raise ValueError(f"{people_csv}: gender must be M or F, found {bad}")
    rows = []
    for path in lfw_photo_files(Path(images)):
        match = LFW_NAME.match(path.name)
        if match["person"] in gender_of:
            rows.append((path, match["person"], gender_of[match["person"]]))
    return pd.DataFrame(rows, columns=["path", "person", "gender"])


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


def lfw_photos(images: Path, people_csv: Path) -> list[LabelledPhoto]:
    table = read_lfw_folder(images, people_csv)
    return [LabelledPhoto(_file_ref(r.path), r.person, r.gender, LFW) for r in table.itertuples()]


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
    if not choice.lfw_images and not choice.reviewed:
        raise ValueError("Cannot train: choose at least one source of data.")
    if choice.lfw_images:
        if not Path(choice.lfw_images).is_dir():
            raise ValueError(f"Cannot train: the photo folder {choice.lfw_images} does not exist.")
        if not choice.lfw_people or not Path(choice.lfw_people).is_file():
            raise ValueError(f"Cannot train: the people file {choice.lfw_people} does not exist.")
        photos += lfw_photos(choice.lfw_images, choice.lfw_people)
        if not photos:
            raise ValueError(f"Cannot train: no photo in {choice.lfw_images} belongs to a listed person.")
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
    people = np.array([p.person for p in data.photos])
    genders = np.array([p.gender for p in data.photos])
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
        _, held_part = split_people(group[mask], params.holdout_fraction, params.seed)
        held[np.flatnonzero(mask)[held_part]] = True
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


def train_and_evaluate(data: FeatureSet, params: TrainParams, progress=None) -> dict:
    """Split by person, train both heads, choose threshold and band, evaluate on held-out people.

    Returns {"siamese", "gender", "threshold", "uncertain_band", "metrics", "data", "evaluation"}.
    progress(stage, fraction, logs) is called along the way (it may raise to stop the run).
    """
    from core.verification.features import head_inputs
    from core.verification.heads import GENDERS, similarity_from_projections

    params.validate()
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

    def person_pairs(mask, seed, per_person):
        index = np.where(mask)[0]
        pairs, labels = make_pairs(data.people[mask], per_person, 1, seed)
        return index[pairs], labels

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
        train_pairs, train_labels = person_pairs(train, params.seed + 1, 200)
        train_sims = similarities(train_pairs)
    threshold = midpoint_threshold(train_sims, train_labels)
    points = choose_operating_points(train_sims, train_labels, params.max_auto_fmr, params.max_auto_fnmr)
    band = (points.reject_below, points.approve_at)

    report("gender", 0.0)
    _, gender_input = head_inputs(data.embeddings, data.gender_logits)
    _, aug_gender_input = head_inputs(data.aug_embeddings, data.aug_logits)
    labelled = data.genders != ""
    gender_rows = np.flatnonzero(train & labelled)
    aug_gender = aug_train[labelled[data.aug_of[aug_train]]] if len(aug_train) else aug_train
    gender = train_gender(
        np.concatenate([gender_input[gender_rows], aug_gender_input[aug_gender]]),
        np.concatenate([data.genders[gender_rows], data.genders[data.aug_of[aug_gender]]]),
        np.concatenate([data.people[gender_rows], data.people[data.aug_of[aug_gender]]]),
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
    gender_held = np.flatnonzero(held & labelled)
    probs = gender.predict(gender_input[gender_held], verbose=0)
    predicted = np.array(GENDERS)[np.argmax(probs, axis=1)]
    metrics.update(gender_metrics(predicted, data.genders[gender_held]))
    pretrained_pred = np.where(data.gender_logits[gender_held] > 0, "M", "F")
    metrics["pretrained_gender_accuracy"] = gender_metrics(pretrained_pred, data.genders[gender_held])[
        "gender_accuracy"
    ]
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
    sources = data.sources if data.sources is not None else np.full(len(data.people), LFW)
    summary = {
        "n_photos": int(len(data.names)),
        "n_people": int(len(np.unique(data.people))),
        "n_failed_photos": len(data.failed),
        "train_people": sorted(map(str, np.unique(data.people[train]))),
        "heldout_people": sorted(map(str, np.unique(data.people[held]))),
        "photos_by_gender": {g: int(np.sum(data.genders == g)) for g in ("M", "F")},
    }
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
        "gender": gender,
        "threshold": threshold,
        "uncertain_band": band,
        "policy": points,
        "policy_chosen_on": chosen_on,
        "history": history,
        "metrics": metrics,
        "heldout_pairs": [
            (data.names[a], data.names[b], int(y)) for (a, b), y in zip(held_pairs, held_labels, strict=True)
        ],
        "evaluation": {"pairs": held_pairs, "labels": held_labels, "gender_rows": gender_held},
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
        "gender_min_confidence": 0.9,
        "metrics": result["metrics"],
        "params": params.to_dict(),
        "data": {**result["data"], "source": source},
        "history": result["history"],
        **(extra or {}),
    }
    directory = save_version(models_dir, version, result["siamese"], result["gender"], metadata)
    pd.DataFrame(result["heldout_pairs"], columns=["file_x", "file_y", "Decision"]).replace(
        {"Decision": {1: "Yes", 0: "No"}}
    ).to_csv(directory / "heldout_pairs.csv", index=False)
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
    sims = np.array(
        [similarity_from_projections(projections[a], projections[b], offset, scale) for a, b in pairs]
    )
    metrics = verification_metrics(sims, labels, model.threshold)
    metrics.update(policy_figures(sims, labels, model.operating_points))
    metrics["calibration_error"] = expected_calibration_error(sims, labels) if len(sims) else None
    rows = evaluation["gender_rows"]
    _, gender_input = head_inputs(data.embeddings[rows], data.gender_logits[rows])
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
    features_s = time.perf_counter() - start
    check_trainable(feats, params)
    start = time.perf_counter()
    # Its own "done" is not the run's: saving and comparing come after.
    result = train_and_evaluate(feats, params, progress=lambda s, f, logs: s != "done" and report(s, f, logs))
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
    args = parser.parse_args(argv)
    params = TrainParams(
        seed=args.seed,
        epochs=args.epochs,
        loss=args.loss,
        augment=args.augment,
        augment_views=args.augment_views,
    )
    try:
        params.validate()
        read_lfw_folder(args.images, args.people)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    factory = _cli_session_factory(args.no_cache)
    if args.reviewed and factory is None:
        parser.error("--reviewed needs the database")
    choice = DataChoice(args.images, args.people, reviewed=args.reviewed)
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
