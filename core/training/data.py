"""The training data: the labelled photos of each source, the checks before training, the split by person.

DataChoice(lfw_images, lfw_people, reviewed, gender_only, gender_only_images, sets, cohort, ...)
                                                 what to train on; lfw_dev_dir() finds ../shared
collect(choice, session_factory, store) -> TrainingData      labelled photos + reviewed pairs
check_sources(choice)                            raises ValueError when a file cannot be read
preflight(choice, params, session_factory) -> list[str]      problems found without any network
check_trainable(features, params)                raises ValueError with every problem at once
split_by_source(features, params) -> (train, held)           boolean masks, by person
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from core import config
from core.training import gender as gender_training
from core.training.embedding_cache import PhotoRef
from core.training.fitting import TrainParams, split_people


class PeopleRows(Protocol):
    """What checking and splitting read of a feature set (core.training.features.FeatureSet): the
    person, gender and source of each row, and the reviewed pairs as row index pairs."""

    people: np.ndarray
    genders: np.ndarray
    sources: np.ndarray | None
    pairs: np.ndarray


LFW_NAME = re.compile(r"^(?P<person>.+)_\d{4}\.(jpe?g|png|bmp)$", re.IGNORECASE)
LFW, DB, COHORT = "lfw", "db", "cohort"
OLDER_AGE = 45  # the age band reported apart ("45+"): the service's members are in their 50s and 60s
OLDER_BAND = f"{OLDER_AGE}+"
MIN_PEOPLE = 6
MIN_PEOPLE_WITH_PAIRS = 4


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
                str(k): (OLDER_BAND if a >= OLDER_AGE else "")
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
        band_of = _age_bands(table, "person")
        photos += [
            LabelledPhoto(
                _file_ref(r.path),
                r.person,
                r.gender,
                gender_training.GENDER_ONLY,
                band_of.get(r.person, ""),
            )
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


def check_trainable(data: PeopleRows, params: TrainParams) -> None:
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


def check_sources(choice: DataChoice) -> None:
    """Read every file the choice names (people lists, gender labels, cohort folders) without any
    photo going through a network; raises ValueError (or OSError) on the first that is wrong."""
    if choice.lfw_images:
        read_lfw_folder(choice.lfw_images, choice.lfw_people)
    if choice.gender_only:
        gender_training.read_gender_only(choice.gender_only, choice.gender_only_images)
    for images, people in choice.sets:
        read_lfw_folder(images, people)
    if choice.cohort:
        cohort_photos(choice.cohort, choice.cohort_labels)


# ----------------------------------------------------------------------------------------------
# Splitting by person


def split_by_source(data: PeopleRows, params: TrainParams) -> tuple[np.ndarray, np.ndarray]:
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
