"""Cydral Technology's dlib gender classifier (``dnn_gender_classifier_v1``), ported to Keras.

The weights come from ``models/pretrained/gender_cydral_v1.npz`` (CC0, see the NOTICE beside
it), written once by ``scripts/convert_gender_onnx.py`` from the ONNX export of the dlib network;
nothing is downloaded or converted at run time.

The network, bottom-up (dlib's names in brackets)::

    RGB chip 32x32 -> (pixel - channel mean) / 256            [input_rgb_image_sized<32>]
    conv 3x3 32 same -> affine -> relu   x2, avg pool 2x2/2    [con, bn_con folded to affine]
    conv 3x3 64 same -> affine -> relu   x2, avg pool 2x2/2
    x 0.5 -> fc 16 -> relu -> x 0.5 -> fc 2 -> softmax       [multiply = dropout at test time]

Public API:
    weights_path()               where the .npz is
    gender_weights_sha256()      hash of the weights, to version caches of gender outputs
    build_gender_network()       a fresh Keras model (for fine-tuning)
    custom_objects()             what keras.saving.load_model needs to reload a saved copy
    load_gender_network()        the shared Keras model, built once per process
    gender_probabilities(chips)  N x 2 float32 probabilities, in the order LABELS
    gender_logit(chips)          N float32, logit(male) - logit(female)
    gender_chip(rgb, landmarks)  the 32x32 chip the network expects, from dlib's 5 landmarks
"""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import config
from core.errors import ModelError

if TYPE_CHECKING:
    import keras

CHIP_SIZE = 32
CHIP_PADDING = 0.2  # dlib's default padding, which the network was trained with
LABELS = ("female", "male")  # order of the network's outputs
WEIGHTS_FILENAME = "gender_cydral_v1.npz"

_CONVS = (("conv1", 32), ("conv2", 32), ("conv3", 64), ("conv4", 64))
_POOL_AFTER = ("conv2", "conv4")


def weights_path() -> Path:
    # Shipped with the code, not a trained artifact, so it does not follow MODELS_DIR.
    return config.PROJECT_ROOT / "models" / "pretrained" / WEIGHTS_FILENAME


@lru_cache(maxsize=1)
def load_gender_weights() -> dict[str, np.ndarray]:
    """The .npz contents: float32 weights in the ONNX/dlib layout plus string metadata.

    Keys: input_mean (3,), input_scale (); convK_w (out, in, 3, 3), convK_b; affineK_scale,
    affineK_offset (per channel); dropout1_scale, dropout2_scale (); fc1_w (4096, 16) with
    rows in NCHW flatten order, fc1_b; fc2_w (16, 2), fc2_b; labels; source_* (provenance).
    """
    path = weights_path()
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ModelError(f"gender network weights unreadable at {path}: {exc}") from exc
    if tuple(weights.get("labels", ())) != LABELS:
        raise ModelError(f"{path}: labels {weights.get('labels')} are not {LABELS}")
    return weights


@lru_cache(maxsize=1)
def gender_weights_sha256() -> str:
    """sha256 (hex) of the weight arrays (names, dtypes, shapes, bytes in key order).

    Hashes the contents rather than the file: np.savez stamps the zip entries with the time, so
    re-running the converter changes the file bytes but not this hash.
    """
    digest = hashlib.sha256()
    for key, value in sorted(load_gender_weights().items()):
        if key.startswith("source_"):
            continue  # provenance notes, not the network
        value = np.ascontiguousarray(value)
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


_layer_lock = threading.Lock()
_ChannelAffine = None


def _channel_affine():
    """The ChannelAffine layer class, defined on first use so importing this module skips TF."""
    global _ChannelAffine
    with _layer_lock:
        if _ChannelAffine is None:
            import keras

            @keras.saving.register_keras_serializable(package="faceverify")
            class ChannelAffine(keras.layers.Layer):
                """y = x * scale + offset per channel: dlib's test-time form of its batch norm.

                Kept apart from the conv (not folded) so the arithmetic is the ONNX graph's, and
                trainable like a frozen batch norm's gamma and beta.
                """

                def build(self, input_shape):
                    channels = input_shape[-1]
                    self.scale = self.add_weight(shape=(channels,), initializer="ones", name="scale")
                    self.offset = self.add_weight(shape=(channels,), initializer="zeros", name="offset")

                def call(self, x):
                    return x * self.scale + self.offset

            _ChannelAffine = ChannelAffine
        return _ChannelAffine


def custom_objects() -> dict:
    """For keras.saving.load_model of a saved (e.g. fine-tuned) copy of this network."""
    return {"faceverify>ChannelAffine": _channel_affine()}


def build_gender_network(weights: dict[str, np.ndarray] | None = None) -> keras.Model:
    """A new Keras model with the pretrained weights; not shared, so it may be trained.

    Input N x 32 x 32 x 3 RGB chips (uint8 or float, values 0..255). Output N x 2 softmax
    probabilities in the order LABELS; the layer named "logits" holds the pre-softmax values.
    Dropout layers are identity at inference; in training, Dropout(0.5) (which scales kept
    values by 2) followed by the fixed x0.5 is dlib's own dropout, which does not rescale.
    """
    import keras
    from keras import layers

    w = load_gender_weights() if weights is None else weights
    affine = _channel_affine()
    mean = np.asarray(w["input_mean"], dtype=np.float64)
    scale = float(w["input_scale"])  # 1/256: a power of two, so scaling commutes with rounding

    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), name="chips")
    x = layers.Rescaling(scale=scale, offset=list(-mean * scale), name="input_norm")(inputs)
    for name, filters in _CONVS:
        # ONNX: pads 1 on every side, stride 1 -> Keras "same"
        x = layers.Conv2D(filters, 3, padding="same", name=name)(x)
        x = affine(name=name.replace("conv", "affine"))(x)
        x = layers.ReLU(name=name.replace("conv", "relu"))(x)
        if name in _POOL_AFTER:
            # 2x2 stride 2 without padding on even sizes: ceil_mode/count_include_pad do not arise
            x = layers.AveragePooling2D(2, strides=2, padding="valid", name=name.replace("conv", "pool"))(x)
    x = layers.Dropout(0.5, name="dropout1")(x)
    x = layers.Rescaling(float(w["dropout1_scale"]), name="dropout1_scale")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.5, name="dropout2")(x)
    x = layers.Rescaling(float(w["dropout2_scale"]), name="dropout2_scale")(x)
    logits = layers.Dense(len(LABELS), name="logits")(x)
    probabilities = layers.Softmax(name="probabilities")(logits)
    model = keras.Model(inputs, probabilities, name="gender_cydral_v1")

    for name, _ in _CONVS:
        kernel = np.transpose(w[f"{name}_w"], (2, 3, 1, 0))  # OIHW -> HWIO
        model.get_layer(name).set_weights([kernel, w[f"{name}_b"]])
        index = name.removeprefix("conv")
        model.get_layer(f"affine{index}").set_weights([w[f"affine{index}_scale"], w[f"affine{index}_offset"]])
    # ONNX flattens NCHW (channel, row, col); Keras flattens NHWC (row, col, channel).
    c, h, wd = _CONVS[-1][1], CHIP_SIZE // 4, CHIP_SIZE // 4
    fc1 = w["fc1_w"].reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(c * h * wd, -1)
    model.get_layer("fc1").set_weights([fc1, w["fc1_b"]])
    model.get_layer("logits").set_weights([w["fc2_w"], w["fc2_b"]])  # Gemm transB=0: in x out
    return model


_lock = threading.Lock()
_model = None
_infer = None


def load_gender_network() -> keras.Model:
    """The shared model (see build_gender_network), built once per process; do not train it."""
    global _model
    with _lock:
        if _model is None:
            _model = build_gender_network()
        return _model


def _inference_fn():
    """One traced pass returning (logits, probabilities); far cheaper per call than predict()."""
    global _infer
    model = load_gender_network()
    with _lock:
        if _infer is None:
            import keras
            import tensorflow as tf

            logits_model = keras.Model(model.input, [model.get_layer("logits").output, model.output])
            spec = tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.float32)
            _infer = tf.function(lambda x: logits_model(x, training=False), input_signature=[spec])
        return _infer


def _run(chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(chips)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected N x {CHIP_SIZE} x {CHIP_SIZE} x 3 RGB chips, got shape {x.shape}")
    if x.shape[0] == 0:
        return np.zeros((0, len(LABELS)), np.float32), np.zeros((0, len(LABELS)), np.float32)
    logits, probabilities = _inference_fn()(x.astype(np.float32, copy=False))
    return logits.numpy(), probabilities.numpy()


def gender_probabilities(chips: np.ndarray) -> np.ndarray:
    """N x 2 float32 probabilities [female, male] for N chips (a single 32x32x3 chip gives 1 x 2)."""
    return _run(chips)[1]


def gender_logit(chips: np.ndarray) -> np.ndarray:
    """N float32 values logit(male) - logit(female): > 0 means male; sigmoid of it is P(male).

    Unbounded, unlike the probabilities, so it keeps its resolution on confident faces (for
    calibration or thresholds far from 0.5).
    """
    logits = _run(chips)[0]
    return logits[:, 1] - logits[:, 0]


def gender_chip(rgb: np.ndarray, landmarks) -> np.ndarray:
    """The network's 32x32 RGB uint8 chip, from dlib's five landmarks in the photo.

    ``landmarks`` are the five (x, y) points of core.verification.faces.align_face (AlignedFace.landmarks), so
    the landmark model runs once per face for both the recognition and the gender chip.
    """
    import dlib

    points = [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
    if len(points) != 5:
        raise ValueError(f"expected dlib's 5 landmarks, got {len(points)}")
    xs, ys = [p.x for p in points], [p.y for p in points]
    # get_face_chip only reads the parts; the box is required by the constructor
    shape = dlib.full_object_detection(dlib.rectangle(min(xs), min(ys), max(xs), max(ys)), points)
    chip = dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=CHIP_SIZE, padding=CHIP_PADDING)
    return np.asarray(chip, dtype=np.uint8)
