"""Build the small sample data set committed under data/sample/ from the LFW development subset.

Usage:  .venv/bin/python scripts/make_sample.py [--source /work/shared/data/lfw_dev] [--seed 20240601]

Reads   SOURCE/people.csv (person,gender,images) and SOURCE/images/NAME_NNNN.jpg
Writes  data/sample/images/*.jpg      byte-for-byte copies, LFW file names kept
        data/sample/people.csv        person,gender,images (images = count in the sample)
        data/sample/pairs.csv         file_x,file_y,Decision (file_x gallery, file_y verification)
        data/sample/members.csv       member_id,gender,gallery_photo,verification_photo (demo import)
        data/sample/members_truth.csv member_id,case,gallery_person,verification_person (answer key)

Everything is drawn from one seeded random.Random over sorted inputs, so the same source and seed
give the same output. The tests and the demo use data/sample only, never the source, so that they
run on a fresh clone.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/work/shared/data/lfw_dev")
DEFAULT_DEST = ROOT / "data" / "sample"
SEED = 20240601

N_WOMEN = 10
N_MEN = 14
PHOTOS_PER_PERSON = (4, 6)  # inclusive range, drawn per person
N_PAIRS_EACH = 30  # Yes pairs and No pairs
N_GENUINE, N_IMPOSTOR, N_GENDER_SWAP = 14, 4, 2  # members.csv cases (20 members)

# LFW photos that clearly show a second face beside the named person. Found with a MediaPipe scan
# of the source (second face >= 45 px, score >= 0.8) and then checked by eye. Their people are
# always in the sample and these photos always among their photos, so the sample exercises the
# "several faces" rule; some of them are used as the verification photo in pairs and members.
TWO_FACE_PHOTOS = (
    "Adrien_Brody_0002.jpg",
    "Charles_Moose_0003.jpg",
    "Charles_Moose_0010.jpg",
    "Jiang_Zemin_0005.jpg",
    "John_Negroponte_0004.jpg",
    "Jose_Maria_Aznar_0018.jpg",
    "Julianne_Moore_0016.jpg",
    "Megawati_Sukarnoputri_0025.jpg",
)
# Photos the seeded draw picked by chance that also show a clear second face (same scan, same check).
# They stay out of the members' "clean" photos; forcing them above would change every later draw.
ALSO_TWO_FACES = ("John_Howard_0018.jpg",)


def person_of(file_name: str) -> str:
    """'Julianne_Moore_0016.jpg' -> 'Julianne_Moore'."""
    return file_name.rsplit("_", 1)[0]


def read_people(source: Path) -> dict[str, str]:
    with (source / "people.csv").open(newline="") as f:
        return {row["person"]: row["gender"] for row in csv.DictReader(f)}


def choose_people(rng: random.Random, gender_of: dict[str, str]) -> list[str]:
    forced = sorted({person_of(f) for f in TWO_FACE_PHOTOS})
    chosen = list(forced)
    for gender, wanted in (("F", N_WOMEN), ("M", N_MEN)):
        have = sum(gender_of[p] == gender for p in chosen)
        pool = sorted(p for p, g in gender_of.items() if g == gender and p not in chosen)
        chosen += rng.sample(pool, wanted - have)
    return sorted(chosen)


def choose_photos(rng: random.Random, source: Path, people: list[str]) -> dict[str, list[str]]:
    photos: dict[str, list[str]] = {}
    for person in people:
        available = sorted(p.name for p in (source / "images").glob(f"{person}_[0-9][0-9][0-9][0-9].jpg"))
        n = rng.randint(*PHOTOS_PER_PERSON)
        forced = [f for f in TWO_FACE_PHOTOS if person_of(f) == person]
        rest = [f for f in available if f not in forced]
        photos[person] = sorted(forced + rng.sample(rest, n - len(forced)))
    return photos


def make_pairs(
    rng: random.Random, photos: dict[str, list[str]], gender_of: dict[str, str]
) -> list[tuple[str, str, str]]:
    """30 Yes and 30 No pairs, unique, file_x the gallery photo and file_y the verification photo."""
    people = sorted(photos)
    seen: set[frozenset[str]] = set()
    pairs: list[tuple[str, str, str]] = []

    def add(x: str, y: str, decision: str) -> bool:
        key = frozenset((x, y))
        if x == y or key in seen:
            return False
        seen.add(key)
        pairs.append((x, y, decision))
        return True

    # Two-face photos as verification photos: five in Yes pairs, three in No pairs.
    two_face = list(TWO_FACE_PHOTOS)
    rng.shuffle(two_face)
    for y in two_face[:5]:
        x = rng.choice([f for f in photos[person_of(y)] if f not in TWO_FACE_PHOTOS])
        add(x, y, "Yes")
    for y in two_face[5:]:
        others = [p for p in people if p != person_of(y) and gender_of[p] == gender_of[person_of(y)]]
        add(rng.choice(photos[rng.choice(others)]), y, "No")

    while sum(d == "Yes" for *_, d in pairs) < N_PAIRS_EACH:
        person = rng.choice(people)
        x, y = rng.sample(photos[person], 2)
        add(x, y, "Yes")
    # Two thirds of the No pairs are of the same gender (the harder, more realistic impostor case).
    n_no = sum(d == "No" for *_, d in pairs)
    while n_no < N_PAIRS_EACH:
        a = rng.choice(people)
        same_gender = rng.random() < 2 / 3
        others = [p for p in people if p != a and (gender_of[p] == gender_of[a] or not same_gender)]
        b = rng.choice(others)
        n_no += add(rng.choice(photos[a]), rng.choice(photos[b]), "No")
    rng.shuffle(pairs)
    return pairs


def make_members(
    rng: random.Random, photos: dict[str, list[str]], gender_of: dict[str, str]
) -> tuple[list[dict], list[dict]]:
    """Demo import file: 14 genuine members, 4 impostors of the same gender, 2 of the other gender."""
    people = sorted(photos)
    # Each member is a different registered person (their gallery photo's person).
    registered = rng.sample(people, N_GENUINE + N_IMPOSTOR + N_GENDER_SWAP)
    cases = ["same_person"] * N_GENUINE + ["different_person"] * N_IMPOSTOR
    cases += ["gender_mismatch"] * N_GENDER_SWAP
    rng.shuffle(cases)
    # The first genuine member whose person has a two-face photo verifies with it (the demo then
    # shows the "several faces" flag). No photo file is used twice across members, so the demo
    # never trips the duplicate-photo check by accident.
    two_face_people = {person_of(f): f for f in TWO_FACE_PHOTOS}
    members, truth = [], []
    used: set[str] = set()
    used_two_face = False

    def pick(person: str) -> str:
        clean = [f for f in photos[person] if f not in TWO_FACE_PHOTOS + ALSO_TWO_FACES]
        choice = rng.choice([f for f in clean if f not in used])
        used.add(choice)
        return choice

    for i, (person, case) in enumerate(zip(registered, cases, strict=True), start=1):
        gallery = pick(person)
        if case == "same_person":
            if not used_two_face and person in two_face_people:
                verification, used_two_face = two_face_people[person], True
            else:
                verification = pick(person)
        else:
            want_same_gender = case == "different_person"
            others = [
                p for p in people if p != person and (gender_of[p] == gender_of[person]) == want_same_gender
            ]
            verification = pick(rng.choice(others))
        member_id = f"M{i:04d}"
        members.append(
            {
                "member_id": member_id,
                "gender": gender_of[person],
                "gallery_photo": f"images/{gallery}",
                "verification_photo": f"images/{verification}",
            }
        )
        truth.append(
            {
                "member_id": member_id,
                "case": case,
                "gallery_person": person,
                "verification_person": person_of(verification),
            }
        )
    return members, truth


def write_csv(path: Path, fieldnames: list[str], rows: list) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(fieldnames)
        for row in rows:
            writer.writerow([row[k] for k in fieldnames] if isinstance(row, dict) else row)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    gender_of = read_people(args.source)
    people = choose_people(rng, gender_of)
    photos = choose_photos(rng, args.source, people)
    pairs = make_pairs(rng, photos, gender_of)
    members, truth = make_members(rng, photos, gender_of)

    images_dir = args.dest / "images"
    # Start from an empty images folder so that a re-run never leaves stale photos behind.
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    for files in photos.values():
        for name in files:
            shutil.copyfile(args.source / "images" / name, images_dir / name)

    write_csv(
        args.dest / "people.csv",
        ["person", "gender", "images"],
        [(p, gender_of[p], len(photos[p])) for p in people],
    )
    write_csv(args.dest / "pairs.csv", ["file_x", "file_y", "Decision"], pairs)
    write_csv(
        args.dest / "members.csv", ["member_id", "gender", "gallery_photo", "verification_photo"], members
    )
    write_csv(
        args.dest / "members_truth.csv",
        ["member_id", "case", "gallery_person", "verification_person"],
        truth,
    )

    n_images = sum(len(v) for v in photos.values())
    size = sum(p.stat().st_size for p in images_dir.iterdir())
    women = sum(gender_of[p] == "F" for p in people)
    print(
        f"{len(people)} people ({women} F, {len(people) - women} M), {n_images} images, {size / 1e6:.2f} MB"
    )
    print(f"{len(pairs)} pairs, {len(members)} members -> {args.dest}")


if __name__ == "__main__":
    main()
