"""Calibrate core.verification.quality.image_quality on real LFW face chips, sharp and blurred.

Usage:  .venv/bin/python scripts/calibrate_quality.py [--source /work/shared/data/lfw_dev] [--n 600]

Takes up to --n photos (seeded) from SOURCE/images (default lfw_dev, else data/sample/images),
finds the largest face with dlib's HOG detector, aligns a 150 x 150 chip with dlib's 5-point model
(the same chip the pipeline embeds), and prints percentiles of image_quality for the chip of the
photo as it is and of the same photo blurred, downscaled or low in contrast, beside
LOW_QUALITY_THRESHOLD. The landmarks of the sharp photo are reused for its degraded copies, so
the comparison is of quality alone, not of detection.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.verification.quality import LOW_QUALITY_THRESHOLD, image_quality  # noqa: E402

DEFAULT_SOURCE = Path("/work/shared/data/lfw_dev")


def degradations() -> dict:
    def blur(sigma):
        return lambda a: cv2.GaussianBlur(a, (0, 0), sigma)

    def down(factor):
        def f(a):
            h, w = a.shape[:2]
            small = cv2.resize(a, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

        return f

    return {
        "as is": lambda a: a,
        "blur sigma 1": blur(1),
        "blur sigma 1.5": blur(1.5),
        "blur sigma 2": blur(2),
        "blur sigma 3": blur(3),
        "blur sigma 5": blur(5),
        "downscaled 1/3 and back": down(3),
        "downscaled 1/4 and back": down(4),
        "contrast x0.25": lambda a: (a.astype(np.float32) * 0.25 + 96).astype(np.uint8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import dlib
    import face_recognition_models

    images = args.source / "images"
    if not images.is_dir():
        images = ROOT / "data" / "sample" / "images"
    paths = sorted(images.glob("*.jpg"))
    random.Random(args.seed).shuffle(paths)
    paths = paths[: args.n]

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    variants = degradations()
    scores: dict[str, list[float]] = {name: [] for name in variants}
    for path in paths:
        rgb = np.array(Image.open(path).convert("RGB"))
        boxes = detector(rgb, 1)
        if not boxes:
            continue
        shape = predictor(rgb, max(boxes, key=lambda r: r.area()))
        for name, degrade in variants.items():
            degraded = np.ascontiguousarray(degrade(rgb))
            chip = dlib.get_face_chip(degraded, shape, size=150, padding=0.25)
            scores[name].append(image_quality(chip))

    n = len(scores["as is"])
    print(
        f"{n} faces from {images} (of {len(paths)} photos); LOW_QUALITY_THRESHOLD = {LOW_QUALITY_THRESHOLD}"
    )
    print(f"{'variant':26s} {'p1':>5s} {'p5':>5s} {'p50':>5s} {'p95':>5s} {'p99':>5s}  below threshold")
    for name, values in scores.items():
        v = np.array(values)
        p = np.percentile(v, [1, 5, 50, 95, 99])
        below = float((v < LOW_QUALITY_THRESHOLD).mean())
        print(f"{name:26s} " + " ".join(f"{x:5.2f}" for x in p) + f"  {below:6.1%}")


if __name__ == "__main__":
    main()
