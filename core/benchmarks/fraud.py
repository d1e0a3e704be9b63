"""Figures of the fraud checks on lfw_dev, through the product's own path.

    faceverify bench fraud [--images DIR] [--every N] [--train-copies N] [--json OUT.json]

Prints, on the people the shipped model held out (models/<version>/metadata.json):
  - reuse: each copy kind (same bytes, JPEG q60, 60% size, mirror, 10% crop, +15% brightness,
    screenshot, a simulated re-photograph) flagged reused_photo / all, and the share of same-person
    pairs of distinct photos flagged, at the shipped limit and at the suggested one;
  - the identity ceiling: distances between the default model's pretrained embeddings (every
    network's part) of same-person pairs of distinct photos (minimum, 0.1% and 1% quantiles) on the
    training people, where the limit is chosen (limit_suggested: the 0.1% quantile rounded down),
    and the held-out ones, beside the copies' distances (training sample and held-out);
  - pose: each challenge's acceptance on photos whose measured pose shows it and refusal on frontal
    photos, tilt on frontal photos rotated by 20 degrees;
  - identity on turned faces: accuracy of held-out pairs whose verification face is turned 15-30
    degrees (measured yaw) beside pairs whose verification face is frontal.
--every N analyses every Nth photo only (faster, fewer pairs).
"""

from __future__ import annotations

import io
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np

from core.config import PROJECT_ROOT

COPY_KINDS = (
    "same bytes",
    "jpeg q60",
    "resized 60%",
    "mirrored",
    "cropped 10%",
    "brightness +15%",
    "screenshot",
)


def copies_of(data: bytes) -> dict[str, bytes]:
    """The issue's copies, plus a crude photo of a screen (perspective, blur, colour cast, noise)."""
    import cv2
    from PIL import Image, ImageEnhance

    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size

    def jpeg(img, quality=92):
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return out.getvalue()

    screen = Image.new("RGB", (int(w * 1.5) + 40, int(h * 1.5) + 260), (250, 250, 250))
    screen.paste(Image.new("RGB", (screen.width, 90), (30, 30, 30)), (0, 0))
    screen.paste(image.resize((int(w * 1.5), int(h * 1.5)), Image.BICUBIC), (20, 110))
    png = io.BytesIO()
    screen.save(png, "PNG")
    pixels = np.asarray(image).astype(np.float32)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[w * 0.04, h * 0.02], [w * 0.97, 0], [w, h * 0.98], [0, h * 0.95]])
    warped = cv2.warpPerspective(
        pixels, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REPLICATE
    )
    warped = 255 * (cv2.GaussianBlur(warped, (0, 0), 1.0) / 255) ** 0.85 * np.array([1.0, 0.97, 1.06])
    noise = np.random.default_rng(len(data)).normal(0, 4, warped.shape)
    rephoto = Image.fromarray(np.clip(warped + noise, 0, 255).astype(np.uint8))
    dx, dy = int(w * 0.05), int(h * 0.05)
    return {
        "same bytes": data,
        "jpeg q60": jpeg(image, 60),
        "resized 60%": jpeg(image.resize((int(w * 0.6), int(h * 0.6)), Image.LANCZOS)),
        "mirrored": jpeg(image.transpose(Image.FLIP_LEFT_RIGHT)),
        "cropped 10%": jpeg(image.crop((dx, dy, w - dx, h - dy))),
        "brightness +15%": jpeg(ImageEnhance.Brightness(image).enhance(1.15)),
        "screenshot": png.getvalue(),
        "photo of a screen (simulated)": jpeg(rephoto, 80),
    }


def _person(name: str) -> str:
    return name.rsplit("_", 1)[0]


def run(images: Path, every: int = 1, train_copies: int = 150) -> dict:
    from PIL import Image

    from core.verification import features, fraud
    from core.verification.engine import Engine

    engine = Engine.load()
    meta = engine.model.metadata["data"]
    heldout, train = set(meta["heldout_people"]), set(meta["train_people"])
    names = sorted(p.name for p in images.glob("*.jpg"))[::every]
    recipe = features.features_version(engine.networks)

    def analyse(datas, pose=False):
        out = []
        for first in range(0, len(datas), 32):
            chunk = datas[first : first + 32]
            out += engine.analyze_many(chunk, measure_pose=[pose] * len(chunk))
        for a in out:
            a.crop = a.gender_crop = None
        return out

    photos = dict(zip(names, analyse([(images / n).read_bytes() for n in names], pose=True), strict=True))
    by_person = defaultdict(list)
    for name, a in photos.items():
        if a.usable:
            by_person[_person(name)].append(name)

    def fp(name):
        return fraud.fingerprint(photos[name], name)

    # Identity ceiling and distinct pairs. A pair is caught by the hashes (or the same file) or by
    # the identity limit; the distances are kept so the limit can be chosen on the training people.
    def caught_by_hash(copy: fraud.Fingerprint, original: fraud.Fingerprint) -> bool:
        return bool(fraud.reuse_matches(copy, [original], None))

    figures: dict = {
        "photos": len(photos),
        "features_version": recipe,
        "limit_shipped": fraud.reuse_limit(recipe),
        "limit_bits": fraud.REUSE_BITS,
    }
    # Two measures of the identity distance: every network's part (the embedding as stored and as
    # the Siamese tower takes it) and dlib's part alone (the first 128 numbers); both are printed
    # so the limit's measure is chosen on the training people too.
    measures = {"all networks": None, "dlib part": 128}

    def distances(a, b) -> dict:
        return {m: fraud.embedding_distance(a, b, dims) for m, dims in measures.items()}

    distinct: dict = {}
    for label, people in (("train", train), ("heldout", heldout)):
        rows = []
        for person in people:
            for x, y in itertools.combinations(by_person.get(person, []), 2):
                if photos[x].sha256 != photos[y].sha256:
                    rows.append((caught_by_hash(fp(y), fp(x)), distances(fp(x).embedding, fp(y).embedding)))
        distinct[label] = rows

    # Copies: every held-out photo (reported), and a sample of training photos (to choose the limit)
    def copy_rows(originals):
        out = defaultdict(list)
        for name in originals:
            made = copies_of((images / name).read_bytes())
            for kind, analysis in zip(made, analyse(list(made.values())), strict=True):
                copy = fraud.fingerprint(analysis, kind)
                out[kind].append(
                    (caught_by_hash(copy, fp(name)), distances(copy.embedding, fp(name).embedding))
                )
        return out

    usable = [n for n in names if photos[n].usable]
    train_originals = [n for n in usable if _person(n) in train]
    step = max(len(train_originals) // max(train_copies, 1), 1)
    copies = {
        "train": copy_rows(train_originals[::step][:train_copies]),
        "heldout": copy_rows([n for n in usable if _person(n) in heldout]),
    }

    def flagged(rows, measure, at):
        return sum(h or (at is not None and d[measure] is not None and d[measure] <= at) for h, d in rows)

    shipped = fraud.reuse_limit(recipe)
    for measure, dims in measures.items():
        # The limit: under the closest 0.1% of the training people's separate captures, rounded down
        train_d = np.array([d[measure] for _, d in distinct["train"] if d[measure] is not None])
        suggested = float(np.floor(np.quantile(train_d, 0.001) * 100) / 100) if len(train_d) else None
        limit = (
            shipped[1] if shipped and shipped[0] == dims else None
        )  # the shipped limit, if on this measure
        out: dict = {"limit_shipped": limit, "limit_suggested": suggested}
        for label in ("train", "heldout"):
            rows = distinct[label]
            d = np.array([x[measure] for _, x in rows if x[measure] is not None])
            out[f"distinct_pairs_{label}"] = {
                "pairs": len(rows),
                "caught_by_hashes": sum(h for h, _ in rows),
                "flagged_at_shipped": flagged(rows, measure, limit),
                "flagged_at_suggested": flagged(rows, measure, suggested),
                "flagged_share_at_suggested": flagged(rows, measure, suggested) / max(len(rows), 1),
                "distance_min": float(d.min()) if len(d) else None,
                "distance_q0.1%": float(np.quantile(d, 0.001)) if len(d) else None,
                "distance_q1%": float(np.quantile(d, 0.01)) if len(d) else None,
            }
            out[f"copies_{label}"] = {
                kind: {
                    "of": len(rows),
                    "flagged_at_shipped": flagged(rows, measure, limit),
                    "flagged_at_suggested": flagged(rows, measure, suggested),
                    "caught_by_hashes": sum(h for h, _ in rows),
                    "distance_max": max(
                        (x[measure] for _, x in rows if x[measure] is not None), default=None
                    ),
                    "distance_max_missed_by_hashes": max(
                        (x[measure] for h, x in rows if x[measure] is not None and not h), default=None
                    ),
                }
                for kind, rows in copies[label].items()
            }
        figures[f"reuse_by_{measure.replace(' ', '_')}"] = out

    # Pose challenges on held-out photos
    posed = {n: photos[n].pose for n in names if _person(n) in heldout and photos[n].pose}
    frontal = [
        n for n, p in posed.items() if abs(p["yaw"]) < 8 and abs(p["pitch"]) < 8 and abs(p["roll"]) < 8
    ]
    shows = {
        fraud.TURN_LEFT: [n for n, p in posed.items() if 15 <= p["yaw"] <= 45],
        fraud.TURN_RIGHT: [n for n, p in posed.items() if -45 <= p["yaw"] <= -15],
        fraud.CHIN_UP: [n for n, p in posed.items() if p["pitch"] >= 20],
    }
    pose_figures = {"frontal_photos": len(frontal)}
    for kind in fraud.CHALLENGES:
        refused = sum(not fraud.challenge_outcome(kind, fraud.HeadPose(**posed[n])).met for n in frontal)
        pose_figures[kind] = {"refused_on_frontal": refused, "of_frontal": len(frontal)}
        if kind in shows:
            met = sum(fraud.challenge_outcome(kind, fraud.HeadPose(**posed[n])).met for n in shows[kind])
            pose_figures[kind].update(accepted=met, of_showing=len(shows[kind]))
        pose_figures[kind]["passes_among_all_photos"] = sum(
            fraud.challenge_outcome(kind, fraud.HeadPose(**p)).met for p in posed.values()
        ) / max(len(posed), 1)
    tilted = []
    for name in frontal[:60]:
        image = Image.open(images / name).convert("RGB")
        for angle in (20, -20):
            out = io.BytesIO()
            image.rotate(angle, resample=Image.BICUBIC, fillcolor=(128, 128, 128)).save(
                out, "JPEG", quality=92
            )
            tilted.append(out.getvalue())
    tilted_poses = [a.pose for a in analyse(tilted, pose=True) if a.pose]
    pose_figures[fraud.TILT].update(
        accepted=sum(fraud.challenge_outcome(fraud.TILT, fraud.HeadPose(**p)).met for p in tilted_poses),
        of_showing=len(tilted_poses),
        showing="frontal held-out photos rotated by +-20 degrees",
    )
    figures["pose_heldout"] = pose_figures

    # Identity on turned faces: the held-out pairs of the shipped model
    import csv

    pairs_file = Path(engine.model.path) / "heldout_pairs.csv" if hasattr(engine.model, "path") else None
    if pairs_file is None or not pairs_file.exists():
        pairs_file = PROJECT_ROOT / "models" / engine.model_version / "heldout_pairs.csv"
    groups = defaultdict(lambda: [0, 0])
    with pairs_file.open() as f:
        for row in csv.DictReader(f):
            x, y = row["file_x"], row["file_y"]
            if x not in photos or y not in photos or not (photos[x].usable and photos[y].usable):
                continue
            pose = photos[y].pose
            if pose is None:
                continue
            yaw = abs(pose["yaw"])
            group = "turned 15-30" if 15 <= yaw <= 30 else "frontal (<10)" if yaw < 10 else None
            if group is None:
                continue
            result = engine.compare(photos[x], photos[y])
            groups[group][1] += 1
            groups[group][0] += bool(result.same_person) == (row["Decision"] == "Yes")
    figures["turned_accuracy_heldout"] = {
        g: {"right": r, "of": n, "accuracy": r / max(n, 1)} for g, (r, n) in groups.items()
    }
    return figures
