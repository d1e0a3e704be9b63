"""SFace behind the network interface, on real sample photos, against OpenCV's own FaceRecognizerSF."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.config import SAMPLE_DIR
from core.errors import ModelError
from core.verification import faces, imaging
from core.verification.networks import network, network_class, networks_of, sface

IMAGES = SAMPLE_DIR / "images"


def located(name: str):
    rgb = imaging.decode_image((IMAGES / name).read_bytes()).rgb
    found = faces.detect_faces(rgb)
    return rgb, found[faces.main_face_index(found, rgb.shape[1], rgb.shape[0])]


@pytest.fixture(scope="module")
def reference():
    return cv2.FaceRecognizerSF.create(str(sface.PRETRAINED / sface.SFACE_FILE), "")


@pytest.mark.parametrize("name", ["Nicole_Kidman_0006.jpg", "Jiang_Zemin_0014.jpg", "Howard_Dean_0010.jpg"])
def test_embedding_matches_opencv_face_recognizer_on_the_same_chip(reference, name):
    rgb, face = located(name)
    chip = network("sface").chip(rgb, face)
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    ours = network("sface").embed(chip[None])[0]
    # FaceRecognizerSF takes OpenCV's BGR order and gives the raw (not unit) feature.
    theirs = reference.feature(cv2.cvtColor(chip, cv2.COLOR_RGB2BGR)).ravel()
    assert np.abs(ours - theirs / np.linalg.norm(theirs)).max() < 1e-5
    assert abs(np.linalg.norm(ours) - 1.0) < 1e-5


def test_chip_matches_opencv_align_crop_on_the_same_landmarks(reference):
    rgb, face = located("Jiang_Zemin_0014.jpg")
    points = sface.landmarks(rgb, face.box)
    assert points is not None and points.shape == (5, 2)
    row = np.zeros((1, 15), np.float32)
    row[0, 4:14] = points.reshape(-1)
    theirs = reference.alignCrop(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), row)
    ours = cv2.cvtColor(sface.chip_from_points(rgb, points), cv2.COLOR_RGB2BGR)
    # Same template, same least-squares similarity: the chips differ only by interpolation rounding.
    assert np.mean(np.abs(ours.astype(int) - theirs.astype(int))) < 2.0


def test_same_person_is_closer_than_another_person():
    net = network("sface")
    chips = [
        net.chip(*located(n))
        for n in ("Jiang_Zemin_0014.jpg", "Jiang_Zemin_0009.jpg", "Howard_Dean_0010.jpg")
    ]
    a, b, c = net.embed(np.stack(chips))
    assert a @ b > 0.5 > a @ c


def test_a_changed_model_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / sface.SFACE_FILE
    data = bytearray((sface.PRETRAINED / sface.SFACE_FILE).read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(sface, "PRETRAINED", tmp_path)
    with pytest.raises(ModelError, match="sha256"):
        sface.SFace()


def test_bad_chip_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="112"):
        network("sface").embed(np.zeros((1, 150, 150, 3), np.uint8))


def test_networks_of_a_model_version():
    assert networks_of({}) == ("dlib",)
    assert networks_of({"networks": ["dlib", "sface"]}) == ("dlib", "sface")
    for bad in (["sface"], ["dlib", "facenet"], ["dlib", "dlib"]):
        with pytest.raises(ModelError):
            networks_of({"networks": bad})
    assert network_class("sface").dim == 128
