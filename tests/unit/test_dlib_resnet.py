"""The Keras port of dlib's face-recognition ResNet must reproduce dlib's own embeddings.

Faces come from the committed sample photos (data/sample/images): detected with dlib's HOG
detector, aligned with the 5-point landmark model and cut with dlib.get_face_chip, exactly as
the product does; dlib.face_recognition_model_v1 gives the reference descriptors.
"""

from __future__ import annotations

from collections import defaultdict

import dlib
import face_recognition_models
import numpy as np
import pytest

from core import config
from core.errors import ModelError
from core.verification.networks import dlib_resnet

TOLERANCE = 1e-4
PEOPLE = 4  # first people in name order ...
PHOTOS_EACH = 2  # ... and their first photos: enough faces to be convincing, quick to run


def _sample_photos() -> list:
    photos = sorted((config.SAMPLE_DIR / "images").glob("*.jpg"))
    by_person = defaultdict(list)
    for photo in photos:
        by_person[photo.stem.rsplit("_", 1)[0]].append(photo)
    chosen = [p for person in sorted(by_person)[:PEOPLE] for p in by_person[person][:PHOTOS_EACH]]
    assert len(chosen) >= 4, f"expected sample photos under {config.SAMPLE_DIR / 'images'}"
    return chosen


@pytest.fixture(scope="module")
def dlib_net():
    return dlib.face_recognition_model_v1(str(dlib_resnet.dlib_model_path()))


@pytest.fixture(scope="module")
def faces(dlib_net):
    """(photo name, chip, dlib descriptor of the chip, dlib descriptor from image + landmarks)."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    found = []
    for photo in _sample_photos():
        img = dlib.load_rgb_image(str(photo))
        for rect in detector(img, 1):
            shape = predictor(img, rect)
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            from_chip = np.array(dlib_net.compute_face_descriptor(chip))
            from_image = np.array(dlib_net.compute_face_descriptor(img, shape))
            found.append((photo.name, chip, from_chip, from_image))
    assert len(found) >= 4, "dlib found too few faces in the sample photos"
    return found


def test_model_matches_dlib_on_every_face(faces):
    chips = np.stack([chip for _, chip, _, _ in faces])
    batched = dlib_resnet.load_embedding_model()(chips.astype(np.float32), training=False).numpy()
    assert batched.shape == (len(faces), 128) and batched.dtype == np.float32
    for (name, chip, from_chip, from_image), keras_batched in zip(faces, batched, strict=True):
        single = dlib_resnet.embed_chips(chip, mirror=False)[0]
        for keras_out in (keras_batched, single):
            assert np.abs(keras_out - from_chip).max() <= TOLERANCE, name
            assert np.abs(keras_out - from_image).max() <= TOLERANCE, name


def test_uint8_and_float_input_agree(faces):
    chips = np.stack([chip for _, chip, _, _ in faces[:2]])
    as_uint8 = dlib_resnet.embed_chips(chips, mirror=False)
    as_float = dlib_resnet.embed_chips(chips.astype(np.float64), mirror=False)
    np.testing.assert_allclose(as_uint8, as_float, atol=1e-6)


def test_mirror_mode_averages_face_and_mirror(faces, dlib_net):
    chips = np.stack([chip for _, chip, _, _ in faces[:3]])
    mirrored = dlib_resnet.embed_chips(chips, mirror=True)
    for chip, keras_out in zip(chips, mirrored, strict=True):
        flipped = np.ascontiguousarray(chip[:, ::-1])
        expected = (
            np.array(dlib_net.compute_face_descriptor(chip))
            + np.array(dlib_net.compute_face_descriptor(flipped))
        ) / 2
        assert np.abs(keras_out - expected).max() <= TOLERANCE


def test_embed_chips_shapes():
    assert dlib_resnet.embed_chips(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError):
        dlib_resnet.embed_chips(np.zeros((2, 112, 112, 3), np.uint8))


def test_weights_cache_is_written_keyed_by_sha_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_DIR", str(tmp_path))
    sha = dlib_resnet.dlib_model_sha256()
    assert len(sha) == 64
    first = dlib_resnet.load_dlib_weights()
    cached = list(tmp_path.glob("*.npz"))
    assert [p.name for p in cached] == [dlib_resnet._cache_path(sha).name] and sha[:16] in cached[0].name
    second = dlib_resnet.load_dlib_weights()
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    np.testing.assert_allclose(first["input_mean"], [122.782, 117.001, 104.298], atol=1e-4)

    cached[0].write_bytes(b"not an npz")  # a damaged cache is rebuilt, not trusted
    third = dlib_resnet.load_dlib_weights()
    assert all(np.array_equal(first[k], third[k]) for k in first)


def test_parser_rejects_truncated_or_padded_file():
    data = dlib_resnet.dlib_model_path().read_bytes()
    for cut in (300, len(data) // 2):  # inside the header, inside a weight tensor
        with pytest.raises(ModelError):
            dlib_resnet.parse_dlib_model(data[:cut])
    with pytest.raises(ModelError):
        dlib_resnet.parse_dlib_model(data + b"\x00")


def test_portable_float_and_old_tensor_format():
    # dlib's portable float: mantissa 0xa3d70a, exponent -28 (the stored metric margin, 0.04)
    assert dlib_resnet._Reader(bytes.fromhex("030ad7a3811c")).float() == pytest.approx(0.04, abs=1e-8)
    # version-1 tensor: n, nr, nc, k then portable floats (1.5 = 3 * 2**-1, -2 = -1 * 2**1)
    old = bytes.fromhex("0101 0101 0101 0101 0102  0103 8101  8101 0101")
    assert dlib_resnet._Reader(old).tensor().ravel().tolist() == [1.5, -2.0]
