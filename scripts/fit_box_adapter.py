"""Fit models/pretrained/box_adapter.json: MediaPipe's face box and keypoints -> dlib's HOG box.

Usage:  .venv/bin/python scripts/fit_box_adapter.py [--source /work/shared/data/lfw_dev]

dlib's 5-point landmark model was trained on boxes from dlib's own HOG detector; fed a MediaPipe
box it places the landmarks slightly differently and the chips embed worse. This fits a linear
(ridge) map from MediaPipe's detection to the HOG box on every photo where both detectors agree
on the main face, so the pipeline gets HOG-like boxes without running HOG (5 ms a photo).

The people that `faceverify train` holds out with its default seed and fraction are left out
of the fit, so the held-out figures stay on people nothing was fitted on.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.training.fitting import TrainParams, split_people  # noqa: E402
from core.verification import faces  # noqa: E402
from core.verification.imaging import decode_image  # noqa: E402

DEFAULT_SOURCE = Path("/work/shared/data/lfw_dev")
RIDGE_ALPHA = 1e-3
MIN_OVERLAP = 0.5  # HOG and MediaPipe boxes of the same face overlap far more than this


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h) if area > w * h else 0.0


def hog_box_of(rgb: np.ndarray, face: faces.Face, detector) -> tuple[int, int, int, int] | None:
    """dlib's HOG box for the same face as MediaPipe's main face, or None when HOG misses it."""
    x, y, w, h = face.box
    best, best_overlap = None, MIN_OVERLAP
    for rect in detector(rgb, 0):
        box = (rect.left(), rect.top(), rect.right(), rect.bottom())
        score = overlap(box, (x, y, x + w, y + h))
        if score > best_overlap:
            best, best_overlap = box, score
    return best


def main(argv: list[str] | None = None) -> None:
    import dlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=faces.BOX_ADAPTER_FILE)
    args = parser.parse_args(argv)

    photos = sorted((args.source / "images").glob("*.jpg"))
    people = np.array([p.stem.rsplit("_", 1)[0] for p in photos])
    params = TrainParams()
    _, held = split_people(people, params.holdout_fraction, params.seed)
    detector = dlib.get_frontal_face_detector()
    inputs, targets = [], []
    for photo in np.array(photos)[~held]:
        rgb = decode_image(photo.read_bytes()).rgb
        found = faces.detect_faces(rgb)
        main_face = faces.main_face_index(found, rgb.shape[1], rgb.shape[0])
        if main_face is None:
            continue
        box = hog_box_of(rgb, found[main_face], detector)
        if box is None:
            continue
        inputs.append(faces.box_adapter_inputs(found[main_face]))
        targets.append(faces.box_adapter_targets(found[main_face], box))
    x, y = np.array(inputs), np.array(targets)
    # Ridge with the constant column unpenalised: solve on centred data, then put the mean back.
    features, mean_x, mean_y = x[:, :-1], x[:, :-1].mean(0), y.mean(0)
    xc, yc = features - mean_x, y - mean_y
    coef = np.linalg.solve(xc.T @ xc + RIDGE_ALPHA * np.eye(xc.shape[1]), xc.T @ yc).T
    weights = np.concatenate([coef, (mean_y - coef @ mean_x)[:, None]], axis=1)
    residual = y - x @ weights.T
    report = {
        "what": "dlib HOG box from a MediaPipe detection; see core/verification/faces.py landmark_box",
        "inputs": "6 MediaPipe keypoints (x then y) minus box centre over sqrt(w*h); w, h over sqrt(w*h); 1",
        "outputs": "dlib box centre x, y minus MediaPipe centre over sqrt(w*h); log(width), log(height) over it",
        "weights": weights.round(6).tolist(),
        "residual_std": residual.std(0).round(4).tolist(),
        "unadapted_std": y.std(0).round(4).tolist(),
        "n_photos": len(x),
        "n_people": len(np.unique(people[~held])),
        "left_out_people": sorted(map(str, np.unique(people[held]))),
        "source": str(args.source),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"fitted on {len(x)} photos; residual std {report['residual_std']} (unadapted {report['unadapted_std']})"
    )


if __name__ == "__main__":
    main()
