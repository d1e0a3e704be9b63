"""The pretrained networks as the serving path runs them (compiled to TensorFlow Lite, one
interpreter set per locate thread): the same outputs as the Keras ports on real sample chips, the
capture check's occlusion network as capture.py runs it, and the lending of interpreter sets."""

from __future__ import annotations

import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
from conftest import ROOT, SAMPLE_IMAGES

from core.verification import capture, faces, features, imaging
from core.verification.networks import compiled, dlib_resnet, gender_cydral, network

NAMES = ["Nicole_Kidman_0006.jpg", "Jiang_Zemin_0014.jpg", "Howard_Dean_0010.jpg"]


@pytest.fixture(scope="module")
def aligned():
    out = []
    for name in NAMES:
        rgb = imaging.decode_image((SAMPLE_IMAGES / name).read_bytes()).rgb
        found = faces.detect_faces(rgb)
        face = found[faces.main_face_index(found, rgb.shape[1], rgb.shape[0])]
        out.append((rgb, face, faces.align_face(rgb, face)))
    return out


def test_each_compiled_network_gives_its_keras_port_output(aligned):
    gender = gender_cydral.load_gender_network()
    occlusion = keras.saving.load_model(capture.OCCLUSION_FILE, compile=False)
    sface = network("sface")
    with compiled.runner(("dlib", "sface", "sface8")) as run:
        for rgb, face, a in aligned:
            views = np.stack([a.chip, a.chip[:, ::-1]])
            keras_dlib = dlib_resnet.load_embedding_model()(views.astype(np.float32)).numpy()
            ours = run.dlib(views)  # 8-bit weights (compiled.QUANTISED): close, not equal
            cosine = (
                np.sum(ours * keras_dlib, 1)
                / np.linalg.norm(ours, axis=1)
                / np.linalg.norm(keras_dlib, axis=1)
            )
            assert cosine.min() > 0.9995
            assert np.abs(ours - keras_dlib).max() > 1e-6  # the quantised file, not the float one
            g = np.stack([a.gender_chip, a.gender_chip[:, ::-1]])
            assert np.abs(run.gender(g) - gender(g.astype(np.float32)).numpy()).max() < 1e-5
            face_in, eyes_in = capture.occlusion_inputs(a.chip[None])
            assert (
                np.abs(run.occlusion(face_in, eyes_in) - occlusion([face_in, eyes_in]).numpy()).max() < 1e-5
            )
            chip = sface.chip(rgb, face)
            keras_sface = sface.embed(chip[None])[0]
            assert np.abs(features.network_embedding(run, "sface", chip) - keras_sface).max() < 1e-5
            in_8_bits = features.network_embedding(run, "sface8", chip)  # unit length, like SFace's
            assert 0.99 < float(in_8_bits @ keras_sface) < 1 - 1e-6


def test_the_capture_check_reads_the_same_with_the_compiled_occlusion_network(aligned):
    rgb, face, a = aligned[0]
    keras_check = capture.check_capture(rgb, face.box, face.keypoints, a.chip)
    with compiled.runner(("dlib",)) as run:
        ours = capture.check_capture(rgb, face.box, face.keypoints, a.chip, predict_occlusion=run.occlusion)
    for key in ("p_mask", "p_hand", "p_lower_face", "p_sunglasses", "p_eyes_closed"):
        assert abs(ours.measures[key] - keras_check.measures[key]) < 1e-5
    assert ours.codes == keras_check.codes


def test_interpreter_sets_are_lent_one_thread_at_a_time_and_reused():
    networks = ("dlib",)
    compiled.warm(networks)
    holders: list[int] = []
    both_held = threading.Barrier(compiled.POOL_SIZE, timeout=30)

    def hold():
        with compiled.runner(networks) as run:
            holders.append(id(run))
            both_held.wait()  # every set is out at once: each thread has its own

    threads = [threading.Thread(target=hold) for _ in range(compiled.POOL_SIZE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(holders)) == compiled.POOL_SIZE
    with compiled.runner(networks) as again:  # no new set past the pool's size
        assert id(again) in holders


def test_the_cached_file_is_named_by_its_source_weights_and_format():
    path = compiled.compiled_path("dlib")
    assert dlib_resnet.dlib_model_sha256()[:16] in path.name
    assert f"_v{compiled.FORMAT}_" in path.name
    assert compiled.compiled_file("dlib").stat().st_size > 1_000_000


def test_a_variant_of_a_network_shares_its_familys_weights_scale_and_threshold():
    from core.benchmarks.verification import PUBLISHED_THRESHOLDS
    from core.verification.heads import NETWORK_SCALES
    from core.verification.networks import NETWORKS, network_class, sface

    for name in NETWORKS:  # a network added without a family, or a family without its entries, fails here
        family = network_class(name).family
        assert family in NETWORK_SCALES and family in PUBLISHED_THRESHOLDS, name
    assert network_class("sface8").family == network_class("sface").family == "sface"
    # SFace in 8 bits is compiled from SFace's file, into a file of its own.
    assert compiled.compiled_path("sface8") != compiled.compiled_path("sface")
    assert sface.SFACE_SHA256[:16] in compiled.compiled_path("sface8").name


@pytest.mark.slow  # a fresh process imports core: the full run has it
def test_a_process_that_imports_core_loads_tensorflow_lite_without_jax():
    """tf.lite's optional `import jax` cost every process about 130 MB resident (core/__init__.py
    stops it); mediapipe's requirements keep jax installed, so nothing else would catch it."""
    code = "import core, tensorflow as tf, sys; tf.lite.Interpreter; print(sorted(m for m in sys.modules if m.startswith('jax') and sys.modules[m]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
