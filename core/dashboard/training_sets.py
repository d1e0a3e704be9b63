"""The training sets the Retrain page offers, each with what it holds and whether it is enough.

    reviewed_summary(session) -> SetSummary      the reviewed decisions in the database
    find_folder(path) -> (images, people_csv)    a folder on the server in the LFW layout
    folder_summary(images, people_csv) -> SetSummary
    combine(*summaries) -> SetSummary            the chosen sets together
    unpack_upload(zip_bytes, root) -> (folder, left_out)   an uploaded ZIP in the LFW layout,
                                                 checked, then written under root (TRAINING_SETS_DIR)

The LFW layout: photos named Person_Name_0001.jpg, flat or in one folder per person, and a
people.csv with the columns person,gender (M or F), as `python -m core train` reads.
Problems are raised as TrainingSetError with every problem found, in plain words.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from sqlalchemy.orm import Session

from core import config
from core.training import pipeline
from core.workflows import importer, spreadsheets

PEOPLE_FILE = "people.csv"
MAX_UPLOAD_PHOTOS = 20_000  # lfw_dev has 3,298; the whole of LFW 13,233
MAX_UNPACKED_BYTES = 2 * 1024**3  # what the photos may take once unpacked (a ZIP bomb stops here)
MAX_PEOPLE_BYTES = 5 * 1024 * 1024
SHOWN_PROBLEMS = 8  # problems listed by name; the rest are counted


class TrainingSetError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(" ".join(problems))


@dataclass
class SetSummary:
    photos: int = 0
    people: int = 0
    people_with_pairs: int = 0  # people with two photos or more
    men: int = 0  # photos labelled M
    women: int = 0
    pairs: int = 0  # reviewed decisions (the database set only)
    problems: list[str] = field(default_factory=list)  # why it is not enough alone; empty: enough
    labels: list[tuple[str, str]] = field(default_factory=list, repr=False)  # (person, gender) per photo

    @property
    def enough(self) -> bool:
        return self.photos > 0 and not self.problems


def _summary(people: list[str], genders: list[str], pairs: int = 0) -> SetSummary:
    people_a, genders_a = np.array(people, dtype=object), np.array(genders, dtype=object)
    counts: dict[str, int] = {}
    for person in people:
        counts[person] = counts.get(person, 0) + 1
    return SetSummary(
        photos=len(people),
        people=len(counts),
        people_with_pairs=sum(1 for n in counts.values() if n >= 2),
        men=int(np.sum(genders_a == "M")),
        women=int(np.sum(genders_a == "F")),
        pairs=pairs,
        problems=pipeline.data_problems(people_a, genders_a) if people else [],
        labels=list(zip(people, genders, strict=True)),
    )


def combine(*summaries: SetSummary) -> SetSummary:
    """The sets taken together (what a run on all of them would have, before faces are found)."""
    labels = [label for s in summaries for label in s.labels]
    return _summary([p for p, _ in labels], [g for _, g in labels], pairs=sum(s.pairs for s in summaries))


def reviewed_summary(session: Session) -> SetSummary:
    """Photos and people the reviewers' decisions label (no photo is read)."""
    photos, pairs = pipeline.reviewed_data(session, store=None)
    unique: dict[str, pipeline.LabelledPhoto] = {}
    for photo in photos:  # one per photo content, as collect() keeps them
        known = unique.setdefault(photo.ref.sha256, photo)
        if not known.gender and photo.gender:
            known.gender = photo.gender
    kept = list(unique.values())
    return _summary([p.person for p in kept], [p.gender for p in kept], pairs=len(pairs))


def find_folder(path: str | Path) -> tuple[Path, Path]:
    """(photo folder, people file) of a folder on the server: FOLDER/people.csv with the photos in
    FOLDER/images/ (as data/sample and lfw_dev) or in FOLDER itself (flat or one folder per person)."""
    text = str(path).strip()
    if not text:
        raise TrainingSetError(["Type the path of a folder on the server."])
    folder = Path(text).expanduser()
    if not folder.is_absolute():
        folder = config.PROJECT_ROOT / folder
    if not folder.is_dir():
        raise TrainingSetError([f"There is no folder {folder} on the server (or it cannot be read)."])
    people = folder / PEOPLE_FILE
    if not people.is_file():
        raise TrainingSetError(
            [f"{folder} has no {PEOPLE_FILE} (the columns person,gender: one row per person, M or F)."]
        )
    images = folder / "images" if (folder / "images").is_dir() else folder
    return images, people


def folder_summary(images: Path, people_csv: Path) -> SetSummary:
    """What a folder in the LFW layout holds; TrainingSetError when its people file is unusable."""
    try:
        table = pipeline.read_lfw_folder(images, people_csv)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise TrainingSetError([f"The people file cannot be used: {exc}"]) from None
    except Exception as exc:  # pandas' parser errors
        raise TrainingSetError([f"The people file cannot be read: {exc}"]) from None
    summary = _summary(list(table.person), list(table.gender))
    if table.empty:
        summary.problems = [
            f"No photo in {images} is named like Person_Name_0001.jpg for a person in {people_csv.name}."
        ]
    return summary


# ----------------------------------------------------------------------------------------------
# An uploaded ZIP


def _read_people(data: bytes) -> dict[str, str]:
    """person -> gender from people.csv's bytes; TrainingSetError listing what is wrong."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TrainingSetError([f"{PEOPLE_FILE} is not UTF-8 text."]) from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if not {"person", "gender"} <= set(columns):
        found = ", ".join(reader.fieldnames or []) or "nothing"
        raise TrainingSetError([f"{PEOPLE_FILE} needs the columns person,gender; found {found}."])
    people, problems = {}, []
    for number, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        person, gender = row.get("person", ""), row.get("gender", "").upper()
        if not person:
            continue
        if gender not in ("M", "F"):
            problems.append(f"{PEOPLE_FILE} row {number}: gender of {person} must be M or F, not {gender!r}.")
        # A name a spreadsheet would run as a formula is refused: people.csv is written back as given.
        elif "/" in person or "\\" in person or person.startswith((".", *spreadsheets.FORMULA_PREFIXES)):
            problems.append(f"{PEOPLE_FILE} row {number}: {person!r} is not a usable name.")
        else:
            people[person] = gender
    if problems:
        raise TrainingSetError(problems)
    if not people:
        raise TrainingSetError([f"{PEOPLE_FILE} lists nobody."])
    return people


def _limited(problems: list[str]) -> list[str]:
    if len(problems) <= SHOWN_PROBLEMS:
        return problems
    return problems[:SHOWN_PROBLEMS] + [f"… and {len(problems) - SHOWN_PROBLEMS} more."]


def unpack_upload(zip_bytes: bytes, root: Path | None = None) -> tuple[Path, list[str]]:
    """Check an uploaded training ZIP and write its photos and people file to a folder of its own
    under root (named by the ZIP's hash, so the same upload twice is one folder). Returns the
    folder (images/ + people.csv) and the people with photos but no row in people.csv (left out),
    or raises TrainingSetError with every problem, writing nothing.

    Entries are read one by one with a cap on each and on the total actually read (a ZIP's
    declared sizes may lie); paths outside the ZIP ("..", absolute) refuse the whole upload.
    """
    root = Path(root or config.get("TRAINING_SETS_DIR"))
    if not zip_bytes:
        raise TrainingSetError(["The ZIP is empty."])
    try:
        photo_zip = importer.PhotoZip(bytes(zip_bytes))
    except importer.ImportFileError as exc:
        raise TrainingSetError([str(exc)]) from None
    try:
        if photo_zip.unsafe:
            names = ", ".join(sorted(photo_zip.unsafe)[:3])
            raise TrainingSetError(
                [
                    f"The ZIP has entries that point outside it (absolute paths or '..'): {names}. Nothing was saved."
                ]
            )
        people_entries = [n for n in photo_zip.entries if PurePosixPath(n).name.lower() == PEOPLE_FILE]
        if len(people_entries) != 1:
            where = "none" if not people_entries else ", ".join(sorted(people_entries)[:3])
            raise TrainingSetError(
                [
                    f"The ZIP needs exactly one {PEOPLE_FILE} (columns person,gender) beside the photos; "
                    f"found {where}."
                ]
            )
        people_info = photo_zip.entries[people_entries[0]]
        if people_info.file_size > MAX_PEOPLE_BYTES:
            raise TrainingSetError([f"{PEOPLE_FILE} is over {MAX_PEOPLE_BYTES // 2**20} MB."])
        try:
            people = _read_people(photo_zip.read(people_info, people_entries[0]))
        except importer.PhotoRefError as exc:
            raise TrainingSetError([str(exc)]) from None

        photos: dict[str, str] = {}  # file name -> entry
        problems, unlisted = [], set()
        for name in sorted(photo_zip.entries):
            base = PurePosixPath(name).name
            match = pipeline.LFW_NAME.match(base)
            if not match:
                continue  # read-me files, other CSVs
            if match["person"] not in people:
                unlisted.add(match["person"])
                continue
            if base in photos:
                problems.append(f"{base} is in the ZIP twice ({photos[base]} and {name}).")
                continue
            photos[base] = name
        if not photos:
            problems.append(
                f"No photo in the ZIP is named like Person_Name_0001.jpg for a person in {PEOPLE_FILE}."
            )
        if len(photos) > MAX_UPLOAD_PHOTOS:
            problems.append(
                f"The ZIP holds {len(photos):,} photos; the page takes up to {MAX_UPLOAD_PHOTOS:,} "
                "(give bigger sets as a folder on the server)."
            )
        declared = sum(photo_zip.entries[n].file_size for n in photos.values())
        if declared > MAX_UNPACKED_BYTES:
            problems.append(
                f"The photos would take {declared / 2**30:.1f} GB unpacked; the limit is "
                f"{MAX_UNPACKED_BYTES / 2**30:.0f} GB."
            )
        if problems:
            raise TrainingSetError(_limited(problems))

        digest = hashlib.sha256(zip_bytes).hexdigest()[:16]
        folder = root / f"upload-{digest}"
        left_out = sorted(unlisted)
        if (folder / PEOPLE_FILE).is_file():
            return folder, left_out  # the same ZIP, unpacked before
        partial = root / f".partial-{digest}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "images").mkdir(parents=True)
        try:
            total = 0
            for base, name in photos.items():
                try:
                    data = photo_zip.read(photo_zip.entries[name], name)
                except importer.PhotoRefError as exc:
                    problems.append(str(exc))
                    continue
                total += len(data)
                if total > MAX_UNPACKED_BYTES:
                    raise TrainingSetError(
                        [
                            f"The photos unpack to more than {MAX_UNPACKED_BYTES / 2**30:.0f} GB; nothing was saved."
                        ]
                    )
                (partial / "images" / base).write_bytes(data)
            if problems:
                raise TrainingSetError(_limited(problems))
            with (partial / PEOPLE_FILE).open("w", newline="", encoding="utf-8") as f:
                writer = spreadsheets.csv_writer(f)
                writer.writerow(["person", "gender"])
                writer.writerows(sorted(people.items()))
            partial.rename(folder)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            if not (folder / PEOPLE_FILE).is_file():  # not another session unpacking the same ZIP
                raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return folder, left_out
    finally:
        photo_zip.close()
