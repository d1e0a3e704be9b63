"""Profile verification on profiles built from real LFW people: strangers' photos swapped in, group
photos, and the time of a whole profile.

    python -m core bench profiles --images DIR --people PEOPLE.csv [--set heldout|train] --json OUT.json

A profile: one member's selfie and 3-6 of their other photos, each photo swapped with probability
`swap_share` (one in five) for a photo of another person of the same gender, and some photos made
group photos of 2-4 people by tiling real photos of different people side by side: the member among
same-gender strangers (the member must be found, their face named) or strangers only (the photo
must be flagged). Strangers come from the same set of people as the members.

Each distinct photo is analysed once (as the product does within a profile); the profiles are then
decided from those analyses, under each rule asked for, so that rules are compared on the same
photos. Time per profile is measured apart (time_profiles): whole profiles of 6 photos plus a
selfie through the product's analysis, a new member's (every photo new) and the same profile
verified again (only the selfie new, the photos' stored checks reused), with the same 7 photos
through the one-face path (one main face each) timed beside them, interleaved, so that the ratio
survives a busy machine. timing_only skips the accuracy part.

Figures by person and by gender: swapped photos caught (flagged on their own), swapped photos
approved automatically, genuine photos wrongly flagged, members verified without a person, the
member found in group photos, group photos without the member flagged.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

LFW_NAME = re.compile(r"^(?P<person>.+)_\d{4}\.\w+$")
TARGETS = {
    "swapped_caught_min": 0.995,
    "swapped_approved_automatically_max": 0,
    "genuine_wrongly_flagged_max": 0.02,
    "member_found_in_group_min": 0.98,
    "profile_p95_ms_max": 150.0,
}


@dataclass
class Slot:
    """One photo of a built profile: a file, or a group photo made of several files."""

    kind: str  # "genuine", "swapped", "group_with_member", "group_without_member"
    files: list[Path]
    member_tile: int | None = None  # in a group photo, which tile is the member's
    data: bytes | None = None  # the group photo's bytes
    tiles: list[tuple[int, int, int, int]] = field(default_factory=list)  # each tile's x, y, w, h

    @property
    def key(self) -> str:
        return "|".join(str(f) for f in self.files)


@dataclass
class Profile:
    person: str
    gender: str
    selfie: Path
    slots: list[Slot]


def read_people(people_csv: Path) -> dict[str, str]:
    import pandas as pd

    people = pd.read_csv(people_csv)
    missing = {"person", "gender"} - set(people.columns)
    if missing:
        raise SystemExit(f"{people_csv}: missing column(s) {', '.join(sorted(missing))}")
    return {str(r.person): str(r.gender).strip().upper() for r in people.itertuples()}


def photos_by_person(images: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(images.iterdir()):
        match = LFW_NAME.match(path.name)
        if match:
            out[match["person"]].append(path)
    return out


def tile_photos(files: list[Path]) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """A group photo: the photos side by side (four as a 2 x 2 grid), as a JPEG, and each tile's box."""
    from PIL import Image

    images = [Image.open(f).convert("RGB") for f in files]
    width, height = max(i.width for i in images), max(i.height for i in images)
    columns = 2 if len(images) == 4 else len(images)
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * width, rows * height), (128, 128, 128))
    tiles = []
    for n, image in enumerate(images):
        x, y = (n % columns) * width, (n // columns) * height
        canvas.paste(image, (x, y))
        tiles.append((x, y, image.width, image.height))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), tiles


def build_profiles(
    members: list[str],
    genders: dict[str, str],
    photos: dict[str, list[Path]],
    profiles_per_person: int,
    selfies_per_person: int,
    photos_per_person: int,
    swap_share: float,
    group_share: float,
    rng: random.Random,
) -> list[Profile]:
    """Profiles of 3-6 photos for each member with at least 4 photos; strangers of the same gender
    come from the same members (a stranger's photos are drawn from their own profile pool)."""
    pools: dict[str, tuple[list[Path], list[Path]]] = {}
    for person in members:
        files = list(photos[person])
        rng.shuffle(files)
        n_selfies = min(selfies_per_person, len(files) - 3)
        if n_selfies < 1:
            continue
        pools[person] = (files[:n_selfies], files[n_selfies : n_selfies + photos_per_person])
    by_gender: dict[str, list[str]] = defaultdict(list)
    for person in pools:
        by_gender[genders[person]].append(person)

    def strangers(person: str, n: int) -> list[str]:
        others = [p for p in by_gender[genders[person]] if p != person]
        return rng.sample(others, min(n, len(others)))

    def stranger_photo(person: str) -> Path:
        return rng.choice(pools[person][1] + pools[person][0])

    profiles = []
    for person, (selfies, own) in pools.items():
        if not strangers(person, 1):
            continue
        for n in range(profiles_per_person):
            size = rng.randint(3, min(6, len(own)))
            chosen = rng.sample(own, size)
            slots = []
            for file in chosen:
                swapped = rng.random() < swap_share
                group = rng.random() < group_share
                if group:
                    others = [stranger_photo(p) for p in strangers(person, rng.randint(1, 3))]
                    if swapped:
                        others.append(stranger_photo(strangers(person, 1)[0]))
                        rng.shuffle(others)
                        slots.append(Slot("group_without_member", others))
                    else:
                        at = rng.randint(0, len(others))
                        slots.append(Slot("group_with_member", [*others[:at], file, *others[at:]], at))
                elif swapped:
                    slots.append(Slot("swapped", [stranger_photo(strangers(person, 1)[0])]))
                else:
                    slots.append(Slot("genuine", [file]))
            profiles.append(Profile(person, genders[person], selfies[n % len(selfies)], slots))
    return profiles


def _percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _counts() -> dict[str, int]:
    return defaultdict(int)


def _inside(box, tile) -> bool:
    x, y, w, h = box
    tx, ty, tw, th = tile
    cx, cy = x + w / 2, y + h / 2
    return tx <= cx < tx + tw and ty <= cy < ty + th


def score_profile(profile: Profile, result, counts: dict[str, int]) -> None:
    """Add one decided profile's outcomes to counts."""
    from core.verification.profile import DOES_NOT_MATCH, MATCHES
    from core.verification.result import AUTO_APPROVED

    has_impostor = False
    selfie_ok = result.selfie.usable
    counts["profiles"] += 1
    counts["photos"] += len(profile.slots)
    for slot, photo in zip(profile.slots, result.photos, strict=True):
        if slot.kind == "genuine":
            counts["genuine"] += 1
            counts["genuine_wrongly_flagged"] += photo.state != MATCHES
            counts[f"genuine_{photo.state}"] += 1
        elif slot.kind == "swapped":
            has_impostor = True
            counts["swapped"] += 1
            counts["swapped_caught"] += photo.state != MATCHES
            counts["swapped_confident_non_match"] += photo.state == DOES_NOT_MATCH
            counts["swapped_approved_automatically"] += photo.state == MATCHES
        elif slot.kind == "group_with_member":
            counts["group_with_member"] += 1
            found = (
                photo.state == MATCHES
                and photo.box is not None
                and _inside(photo.box, slot.tiles[slot.member_tile])
            )
            counts["member_found_in_group"] += found
            counts["group_wrong_face_named"] += photo.state == MATCHES and not found
        else:
            has_impostor = True
            counts["group_without_member"] += 1
            counts["group_without_member_flagged"] += photo.state != MATCHES
            counts["group_without_member_approved_automatically"] += photo.state == MATCHES
    counts["selfie_unusable"] += not selfie_ok
    counts["selfie_flagged"] += bool(result.selfie_flags)
    if has_impostor:
        counts["profiles_with_stranger"] += 1
        counts["profiles_with_stranger_verified"] += result.status == AUTO_APPROVED
    else:
        counts["genuine_profiles"] += 1
        counts["members_verified_without_a_person"] += result.status == AUTO_APPROVED
        counts["genuine_profiles_flagged_for_photos"] += any(p.state != MATCHES for p in result.photos)


def summarise(counts: dict[str, int]) -> dict:
    c = dict(counts)
    return {
        "counts": c,
        "swapped_caught": _rate(c.get("swapped_caught", 0), c.get("swapped", 0)),
        "swapped_approved_automatically": c.get("swapped_approved_automatically", 0)
        + c.get("group_without_member_approved_automatically", 0),
        "genuine_wrongly_flagged": _rate(c.get("genuine_wrongly_flagged", 0), c.get("genuine", 0)),
        "members_verified_without_a_person": _rate(
            c.get("members_verified_without_a_person", 0), c.get("genuine_profiles", 0)
        ),
        "member_found_in_group": _rate(c.get("member_found_in_group", 0), c.get("group_with_member", 0)),
        "group_without_member_flagged": _rate(
            c.get("group_without_member_flagged", 0), c.get("group_without_member", 0)
        ),
        "profiles_with_stranger_verified": c.get("profiles_with_stranger_verified", 0),
    }


def _stored_faces(checked) -> list:
    """What the product keeps of a verified profile's photos (core.workflows.profiles.verify): the
    member's face of each photo with one face, and of each group photo the member was found in
    (a group photo without the member is analysed again)."""
    from core.verification.result import Face
    from core.workflows.profiles.analyse import StoredFace, reusable

    out = []
    for photo in checked.photos:
        a = photo.analysis
        group = len(photo.faces) > 1
        if (
            a is None
            or a.embedding is None
            or photo.box is None
            or not reusable(len(photo.faces), photo.state)
        ):
            continue
        out.append(
            StoredFace(
                sha256=photo.sha256,
                box=tuple(photo.box),
                embedding=a.embedding,
                hashes=a.hashes,
                flags=[(f.code, f.reason) for f in a.flags],
                width=a.width,
                height=a.height,
                faces=[Face(tuple(b), 0.0) for b in photo.faces] if group else None,
                main_face=photo.face if group else 0,
            )
        )
    return out


def _spread(values: list[float]) -> dict:
    return {"p50": _percentile(values, 50), "p95": _percentile(values, 95)}


def time_profiles(engine, profiles: list[Profile], n: int, rng: random.Random) -> dict:
    """Whole profiles of 6 photos plus a selfie through the product's analysis
    (core.workflows.profiles.analyse.verify_photos), timed three ways, interleaved:

      fresh     a new member: every photo new, each analysed once beside the selfie
      stored    the same profile verified again with a selfie: only the selfie (and group photos
                the member was not found in) analysed, the other photos' stored checks reused
                (the database read of those checks is not in this figure)
      one_face  the same 7 photos through the one-face path (analyze_many), for the ratio

    Nothing is reused between profiles, or between the fresh run and the next."""
    from core.workflows.profile_rule import rule_for
    from core.workflows.profiles.analyse import stored_analyses, verify_photos

    before = os.getloadavg()
    rule = rule_for(engine)
    candidates = [p for p in profiles if len(p.slots) >= 3]
    wall: dict[str, list[float]] = {"fresh": [], "stored": [], "one_face": []}
    cpu: dict[str, list[float]] = {"fresh": [], "stored": [], "one_face": []}
    reused = []
    for i in range(n):
        profile = rng.choice(candidates)
        pool = [s.data if s.data is not None else s.files[0] for s in profile.slots]
        photos = (pool * 2)[:6] if len(pool) < 6 else pool[:6]
        # Distinct bytes for repeated photos, so that nothing is analysed once for two.
        photos = [p if isinstance(p, bytes) else Path(p).read_bytes() for p in photos]
        photos = [p + bytes([k]) if photos.index(p) != k else p for k, p in enumerate(photos)]
        keys = [hashlib.sha256(p).hexdigest() for p in photos]
        new = dict(zip(keys, photos, strict=True))
        selfie = Path(profile.selfie).read_bytes()
        gender = profile.gender
        checked, _ = verify_photos(engine, selfie, keys, new, {}, gender, rule)  # what is stored
        kept = _stored_faces(checked)
        reused.append(len(kept))
        runs = [
            ("fresh", lambda s=selfie, k=keys, d=new, g=gender: verify_photos(engine, s, k, d, {}, g, rule)),
            (
                "stored",
                lambda s=selfie, k=keys, d=new, g=gender, f=kept: verify_photos(
                    engine, s, k, d, stored_analyses(engine, f), g, rule
                ),
            ),
            ("one_face", lambda s=selfie, p=photos: engine.analyze_many([s, *p])),
        ]
        for name, call in runs if i % 2 == 0 else runs[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            call()
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - cpu_start) * 1000)
    return {
        "profiles_timed": n,
        "photos_per_profile": 6,
        # A new member's profile: the selfie and the six photos each analysed once.
        "profile_ms": _spread(wall["fresh"]),
        "profile_cpu_ms": _spread(cpu["fresh"]),
        # The same profile verified again: only the selfie and any group photo analysed.
        "stored_profile_ms": _spread(wall["stored"]),
        "stored_profile_cpu_ms": _spread(cpu["stored"]),
        "stored_photos_reused_mean": (sum(reused) / len(reused)) if reused else None,
        "one_face_path_same_photos_ms": _spread(wall["one_face"]),
        "one_face_path_same_photos_cpu_ms": _spread(cpu["one_face"]),
        "ratio_p50": (_percentile(wall["fresh"], 50) / _percentile(wall["one_face"], 50)) if n else None,
        # CPU time of the process (every thread) per profile: on a busy machine the wall time waits
        # for other work, the CPU time much less; half of it is what two quiet cores need at best.
        "load_average_before": before,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def run(
    images: Path,
    people_csv: Path,
    people_set: str = "heldout",
    model: str | None = None,
    profiles_per_person: int = 20,
    selfies_per_person: int = 3,
    photos_per_person: int = 30,
    swap_share: float = 0.2,
    group_share: float = 0.15,
    rules: list[tuple[float | None, float | None, float | None]] | None = None,
    timing_profiles: int = 40,
    seed: int = 0,
    limit_people: int | None = None,
    progress=None,
    timing_only: bool = False,
) -> dict:
    """Build profiles from the chosen people, decide them under each rule, time whole profiles.

    people_set: "heldout" or "train" (the model version's split, metadata "data"), or "all".
    rules: the rules compared, each (approve_at, reject_below, corroborate_from) of the product's
    rule (core.workflows.profile_rule.rule_for: approve_at / reject_below None: the settings'; 0:
    the version's own; corroborate_from profile_rule.SETTING: the setting's, None: off); the first
    is the rule reported as the result. Default: the product's rule.
    timing_only: build the profiles and time them, without deciding every profile under the rules.
    """
    from core.verification.engine import Engine
    from core.verification.profile import decide_profile
    from core.workflows.profile_rule import rule_for

    rng = random.Random(seed)
    engine = Engine.load(model)
    genders = read_people(people_csv)
    photos = photos_by_person(images)
    split = engine.model.metadata.get("data", {})
    if people_set == "heldout":
        chosen = split.get("heldout_people") or []
    elif people_set == "train":
        chosen = split.get("train_people") or []
    elif people_set == "all":
        chosen = sorted(photos)
    else:
        raise SystemExit(f"people set must be heldout, train or all, not {people_set!r}")
    members = [p for p in chosen if p in genders and p in photos]
    if limit_people:
        members = members[:limit_people]
    if not members:
        raise SystemExit(f"No {people_set} people of model {engine.model_version} have photos in {images}.")

    profiles = build_profiles(
        members,
        genders,
        photos,
        profiles_per_person,
        selfies_per_person,
        photos_per_person,
        swap_share,
        group_share,
        rng,
    )
    slots: dict[str, Slot] = {}
    for profile in profiles:
        for slot in profile.slots:
            if slot.key in slots:  # the same group photo twice: one analysis, one set of tiles
                existing = slots[slot.key]
                slot.data, slot.tiles = existing.data, existing.tiles
                continue
            if slot.kind.startswith("group"):
                slot.data, slot.tiles = tile_photos(slot.files)
            slots[slot.key] = slot

    if timing_only:
        timing = time_profiles(engine, profiles, timing_profiles, rng)
        return {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_version": engine.model_version,
            "people_set": people_set,
            "people": len({p.person for p in profiles}),
            "profiles": len(profiles),
            "targets": {"profile_p95_ms_max": TARGETS["profile_p95_ms_max"]},
            "meets_targets": {"profile_p95_ms": timing["profile_ms"]["p95"] <= TARGETS["profile_p95_ms_max"]},
            "timing": timing,
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
        }

    started = time.perf_counter()
    selfie_files = sorted({p.selfie for p in profiles})
    selfies = dict(zip(selfie_files, engine.analyze_many(selfie_files), strict=True))
    if progress:
        progress(f"{len(selfies)} selfies analysed")
    keys = list(slots)
    analysed: dict[str, list] = {}
    chunk = 32
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        inputs = [slots[k].data if slots[k].data is not None else slots[k].files[0] for k in part]
        analysed.update(zip(part, engine.analyze_faces(inputs), strict=True))
        if progress:
            progress(f"{len(analysed)}/{len(keys)} profile photos analysed")
    analysis_s = time.perf_counter() - started

    by_rule = {}
    chosen_rules = [rule_for(engine, a, r, c) for a, r, c in rules] if rules else [rule_for(engine)]
    impostor_sims, genuine_sims = [], []
    for n_rule, rule in enumerate(chosen_rules):
        overall, by_person, by_gender = _counts(), defaultdict(_counts), defaultdict(_counts)
        examples = []
        for profile in profiles:
            result = decide_profile(
                engine,
                selfies[profile.selfie],
                [analysed[s.key] for s in profile.slots],
                profile.gender,
                rule,
            )
            for counts in (overall, by_person[profile.person], by_gender[profile.gender]):
                score_profile(profile, result, counts)
            for slot, photo in zip(profile.slots, result.photos, strict=True):
                if n_rule == 0 and photo.similarity is not None:
                    if slot.kind in ("swapped", "group_without_member"):
                        impostor_sims.append(photo.similarity)
                    elif slot.kind == "genuine":
                        genuine_sims.append(photo.similarity)
                if (slot.kind == "swapped" and photo.state == "matches") or (
                    slot.kind == "genuine" and photo.state != "matches" and len(examples) < 40
                ):
                    examples.append(
                        {
                            "member": profile.person,
                            "selfie": profile.selfie.name,
                            "kind": slot.kind,
                            "files": [f.name for f in slot.files],
                            "state": photo.state,
                            "similarity": photo.similarity,
                            "reason": photo.reason,
                        }
                    )
        name = f"approve_at={rule.approve_at:.4f},reject_below={rule.reject_below:.4f}"
        by_rule[f"{name},corroborate_from={rule.corroborate_from}"] = {
            "rule": {
                "approve_at": rule.approve_at,
                "reject_below": rule.reject_below,
                "corroborate_from": rule.corroborate_from,
            },
            **summarise(overall),
            "by_gender": {g: summarise(c) for g, c in sorted(by_gender.items())},
            "by_person": {p: summarise(c) for p, c in sorted(by_person.items())},
            "examples_of_errors": examples,
        }
    first = next(iter(by_rule.values()))
    timing = time_profiles(engine, profiles, timing_profiles, rng) if timing_profiles else {}
    checks = {
        "swapped_caught": (first["swapped_caught"] or 0) >= TARGETS["swapped_caught_min"],
        "none_approved_automatically": first["swapped_approved_automatically"] == 0,
        "genuine_wrongly_flagged": (first["genuine_wrongly_flagged"] or 0)
        <= TARGETS["genuine_wrongly_flagged_max"],
        "member_found_in_group": (first["member_found_in_group"] or 0)
        >= TARGETS["member_found_in_group_min"],
    }
    if timing:
        checks["profile_p95_ms"] = timing["profile_ms"]["p95"] <= TARGETS["profile_p95_ms_max"]
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": engine.model_version,
        "people_set": people_set,
        "people": len({p.person for p in profiles}),
        "profiles": len(profiles),
        "distinct_profile_photos_analysed": len(analysed),
        "selfies_analysed": len(selfies),
        "analysis_seconds": analysis_s,
        "settings": {
            "profiles_per_person": profiles_per_person,
            "selfies_per_person": selfies_per_person,
            "photos_per_person": photos_per_person,
            "swap_share": swap_share,
            "group_share": group_share,
            "seed": seed,
            "images": str(images),
        },
        "targets": TARGETS,
        "meets_targets": checks,
        "result": first,
        # Where a threshold would fall: the most similar strangers' photos (their best face) and
        # the least similar of the member's own, under any rule.
        "similarity_tails": {
            "strangers_highest": sorted(impostor_sims)[-15:][::-1],
            "genuine_lowest": sorted(genuine_sims)[:40],
            "strangers": len(impostor_sims),
            "genuine": len(genuine_sims),
            "genuine_below": {
                str(t): int(np.sum(np.asarray(genuine_sims) < t)) for t in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
            },
            "strangers_at_or_above": {
                str(t): int(np.sum(np.asarray(impostor_sims) >= t)) for t in (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
            },
        },
        "rules_compared": {
            k: {kk: vv for kk, vv in v.items() if kk != "by_person"} for k, v in by_rule.items()
        }
        if len(by_rule) > 1
        else {},
        "timing": timing,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
