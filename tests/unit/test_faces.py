"""Detection and alignment on real photos: the box adapter puts dlib's landmarks where dlib's own
detector would, which is what dlib's ResNet embeds best (see core/verification/faces.py)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_IMAGES

from core.verification import faces, features
from core.verification.imaging import decode_image
from core.verification.networks import compiled


def _fit_script():
    spec = importlib.util.spec_from_file_location("fit_box_adapter", ROOT / "scripts" / "fit_box_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def main_faces():
    """(rgb, MediaPipe's main face) of every sample photo."""
    found = []
    for photo in sorted(SAMPLE_IMAGES.glob("*.jpg")):
        rgb = decode_image(photo.read_bytes()).rgb
        detected = faces.detect_faces(rgb)
        main = faces.main_face_index(detected, rgb.shape[1], rgb.shape[0])
        if main is not None:
            found.append((photo.name, rgb, detected[main]))
    return found


def test_adapted_box_lands_on_dlibs_own_box(main_faces):
    import dlib

    fit = _fit_script()
    detector = dlib.get_frontal_face_detector()
    adapted, raw = [], []
    for _, rgb, face in main_faces:
        hog_box = fit.hog_box_of(rgb, face, detector)
        if hog_box is None:
            continue
        x, y, w, h = face.box
        adapted.append(fit.overlap(faces.landmark_box(face), hog_box))
        raw.append(fit.overlap((x, y, x + w - 1, y + h - 1), hog_box))
    assert len(adapted) >= 100
    assert np.median(adapted) >= 0.8, (
        f"median overlap {np.median(adapted):.2f} (raw box {np.median(raw):.2f})"
    )
    assert np.median(adapted) > np.median(raw) + 0.05, (np.median(adapted), np.median(raw))


def test_adapter_file_records_how_it_was_fitted():
    report = json.loads(faces.BOX_ADAPTER_FILE.read_text())
    weights = np.asarray(report["weights"])
    assert weights.shape == (4, 15) and np.isfinite(weights).all()
    assert report["n_photos"] >= 1000
    # fitted only on the people the default training does not hold out
    assert report["left_out_people"]
    assert all(r < u for r, u in zip(report["residual_std"], report["unadapted_std"], strict=True))


def test_adapter_ranks_the_sample_photos_better_than_the_raw_box(main_faces):
    """Raw dlib distances (no heads) over every pair of sample photos: the adapted alignment puts
    fewer different-person pairs closer than same-person ones than MediaPipe's box as it comes."""
    from sklearn.metrics import roc_auc_score

    person = np.array([name.rsplit("_", 1)[0] for name, _, _ in main_faces])
    first, second = np.triu_indices(len(person), k=1)
    same = person[first] == person[second]
    auc = {}
    for adapt in (True, False):
        aligned = [faces.align_face(rgb, face, adapt_box=adapt) for _, rgb, face in main_faces]
        with compiled.runner(("dlib",)) as run:
            emb = np.stack([features.pretrained_features(run, a.chip, a.gender_chip)[0] for a in aligned])
        auc[adapt] = roc_auc_score(same, -np.linalg.norm(emb[first] - emb[second], axis=1))
    assert same.sum() >= 200
    assert auc[True] > auc[False], auc
