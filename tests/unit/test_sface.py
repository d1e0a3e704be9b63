"""SFace behind the network interface, on real sample photos: the Keras port against OpenCV's own
FaceRecognizerSF on the same chips, one at a time and in batches, and as the engine runs it
(compiled to TensorFlow Lite)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.config import SAMPLE_DIR
from core.errors import ModelError
from core.verification import faces, features, imaging
from core.verification.networks import dlib_resnet, network, network_class, networks_of, onnx_file, sface

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


def _opencv_unit(reference, chip):
    theirs = reference.feature(cv2.cvtColor(chip, cv2.COLOR_RGB2BGR)).ravel()
    return theirs / np.linalg.norm(theirs)


def test_a_batch_through_the_port_matches_opencv_chip_by_chip(reference):
    """OpenCV's DNN gave NaNs for batches of this int8 file; the port takes them."""
    net = network("sface")
    names = [
        "Nicole_Kidman_0006.jpg",
        "Jiang_Zemin_0014.jpg",
        "Howard_Dean_0010.jpg",
        "Adrien_Brody_0001.jpg",
    ]
    chips = np.stack([net.chip(*located(n)) for n in names])
    ours = net.embed(chips)
    assert ours.shape == (4, 128) and np.isfinite(ours).all()
    for chip, row in zip(chips, ours, strict=True):
        assert np.abs(row - _opencv_unit(reference, chip)).max() < 1e-5


def test_the_serving_path_matches_the_port_and_opencv(reference):
    """What the engine runs (the ports compiled to TensorFlow Lite, core.verification.networks.
    compiled, through features.embed_one): dlib's part close to the Keras port's (its weights are
    8-bit), SFace's part as OpenCV gives it."""
    names = ["Jiang_Zemin_0014.jpg", "Howard_Dean_0010.jpg"]
    analyses = features.extract([IMAGES / n for n in names], networks=("dlib", "sface"))
    for analysis in analyses:
        assert analysis.embedding.shape == (256,)
        dlib_part = dlib_resnet.embed_chips(analysis.crop[None], mirror=True)[0]
        ours = analysis.embedding[:128]  # dlib runs with 8-bit weights (compiled.QUANTISED)
        assert np.dot(ours, dlib_part) / np.linalg.norm(ours) / np.linalg.norm(dlib_part) > 0.9995
        sface_part = analysis.embedding[128:]
        assert np.abs(sface_part - _opencv_unit(reference, analysis.chips["sface"])).max() < 1e-5
        assert np.abs(sface_part - network("sface").embed(analysis.chips["sface"][None])[0]).max() < 1e-5


def test_block_dequantisation_follows_onnx():
    """DequantizeLinear with blocks: one scale and zero point per block of values along the axis."""
    q = np.array([[1, 2, 3, 4], [-4, -3, -2, -1]], np.int8)
    scales = np.array([[0.5, 2.0], [1.0, 0.25]], np.float32)
    zero = np.array([[1, 0], [0, -1]], np.int8)
    expected = np.array([[0.0, 0.5, 6.0, 8.0], [-4.0, -3.0, -0.25, 0.0]], np.float32)
    assert np.array_equal(onnx_file.dequantize(q, scales, zero, axis=1, block_size=2), expected)


def test_the_shipped_file_reads_as_the_port_expects():
    nodes, tensors = onnx_file.read_graph((sface.PRETRAINED / sface.SFACE_FILE).read_bytes())
    assert sum(n.op_type == "Conv" for n in nodes) == 27
    assert tensors["pre_fc1_weight_quantized"].shape == (128, 50176)
    assert tensors["pre_fc1_weight_quantized"].dtype == np.int8


def test_an_operator_outside_the_port_is_refused(monkeypatch):
    nodes, tensors = onnx_file.read_graph((sface.PRETRAINED / sface.SFACE_FILE).read_bytes())
    nodes.insert(3, onnx_file.Node(op_type="Sigmoid", inputs=["x"], outputs=["y"]))
    monkeypatch.setattr(onnx_file, "read_graph", lambda data: (nodes, tensors))
    with pytest.raises(ModelError, match="Sigmoid"):
        sface.build_keras_model(b"")


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
