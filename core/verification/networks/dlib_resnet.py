"""dlib's pretrained face-recognition ResNet, ported to Keras.

The weights are read straight from dlib's own file, ``dlib_face_recognition_resnet_model_v1.dat``
(shipped by the ``face_recognition_models`` package), so no weights are downloaded at run time.
The network is dlib's ``anet_type`` from ``dnn_face_recognition_ex.cpp``; on 150x150 aligned face
chips (``dlib.get_face_chip(img, shape, size=150, padding=0.25)``) it returns the same 128-d
embeddings as ``dlib.face_recognition_model_v1.compute_face_descriptor``.

Public API:
    dlib_model_path()        where the .dat file is
    dlib_model_sha256()      its sha256, to version embedding caches by pretrained model
    load_embedding_model()   the Keras model (built once per process)
    embed_chips(chips)       N x 128 embeddings, by default averaged with the mirror image

The converted weights are cached under ``core.config.cache_dir()`` as an .npz named by the .dat
file's sha256, so only the first load in a fresh checkout parses the dlib file.

``python -m core bench dlib-port`` prints its load time and per-face timings against dlib
(core.benchmarks.dlib_port).
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import config
from core.errors import ModelError

if TYPE_CHECKING:
    import keras

MODEL_FILENAME = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
EMBEDDING_DIM = 128

# Bump when the cached .npz layout changes, so stale caches are ignored rather than misread.
_CACHE_FORMAT = 1

# XLA (jit_compile=True) measured about 2x slower than TF's default oneDNN kernels on the 2-core
# CPU box, and thread-pool settings did not beat TF's defaults, so neither is changed here.
_JIT_COMPILE = False

# Test-time augmentation measured on lfw_dev (5-fold by person): averaging the face with its
# mirror image gave 99.09% vs 98.94% for the face alone. Adding +-4 degree rotations gave 99.12%
# but tripled the network time (a pair would no longer be 3x faster than bare dlib), so off.
TTA_ROTATIONS = (0.0,)


# --------------------------------------------------------------------------------------------
# Where the pretrained file is


def dlib_model_path() -> Path:
    """Path of dlib's face-recognition ResNet file from the face_recognition_models package."""
    try:
        import face_recognition_models
    except ImportError as exc:  # pragma: no cover - installed with the project
        raise ModelError(
            "face_recognition_models is not installed; it ships the dlib ResNet weights"
        ) from exc
    path = Path(face_recognition_models.face_recognition_model_location())
    if not path.exists():  # older package layouts keep it under models/
        path = Path(face_recognition_models.__file__).parent / "models" / MODEL_FILENAME
    if not path.exists():
        raise ModelError(f"dlib face-recognition model not found at {path}")
    return path


@lru_cache(maxsize=4)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dlib_model_sha256() -> str:
    """sha256 (hex) of the pretrained .dat file; hashed once per process unless the file changes."""
    path = dlib_model_path()
    st = path.stat()
    return _sha256_of(str(path), st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------------------------
# The architecture, bottom-up, exactly as dlib nests its templates (tags and skips included,
# because they occupy slots in the serialized stream).


def _block(n: int, stride: int) -> list[tuple]:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>, BN = affine
    return [("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]


def _ares(n: int) -> list[tuple]:
    # relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    return [("tag", 1), *_block(n, 1), ("add_prev", 1), ("relu",)]


def _ares_down(n: int) -> list[tuple]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>>
    return [
        ("tag", 1),
        *_block(n, 2),
        ("tag", 2),
        ("skip", 1),
        ("avg_pool", 2, 2),
        ("add_prev", 2),
        ("relu",),
    ]


def _anet_layers() -> list[tuple]:
    layers: list[tuple] = [("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]
    layers += _ares(32) * 3  # alevel4
    layers += _ares_down(64) + _ares(64) * 3  # alevel3
    layers += _ares_down(128) + _ares(128) * 2  # alevel2
    layers += _ares_down(256) + _ares(256) * 2  # alevel1
    layers += _ares_down(256)  # alevel0
    layers += [("avg_pool_all",), ("fc", EMBEDDING_DIM)]
    return layers


ANET_LAYERS = _anet_layers()

_DETAIL_NAMES = {
    "con": ("con_4",),
    "affine": ("affine_", "bn_con2"),
    "relu": ("relu_",),
    "max_pool": ("max_pool_2",),
    "avg_pool": ("avg_pool_2",),
    "avg_pool_all": ("avg_pool_2",),
    "add_prev": ("add_prev_",),
    "fc": ("fc_2",),
}


# --------------------------------------------------------------------------------------------
# Reading dlib's serialization format (dlib/serialize.h, dlib/dnn/{core,layers,input,tensor}.h)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> ModelError:
        return ModelError(f"unexpected dlib model layout at byte {self.pos}: {what}")

    def int(self) -> int:
        # Control byte: 0x80 = negative, low 4 bits = number of little-endian magnitude bytes.
        ctrl = self.data[self.pos]
        size = ctrl & 0x0F
        if size > 8:
            raise self.fail(f"integer control byte {ctrl:#x}")
        start = self.pos + 1
        value = int.from_bytes(self.data[start : start + size], "little")
        self.pos = start + size
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        # float_details: mantissa (int64) then exponent (int16); value = mantissa * 2**exponent.
        mantissa = self.int()
        exponent = self.int()
        if exponent >= 32000:  # is_inf / is_ninf / is_nan markers
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def bool(self) -> bool:
        ch = self.data[self.pos : self.pos + 1]
        self.pos += 1
        if ch not in (b"0", b"1"):
            raise self.fail(f"bool byte {ch!r}")
        return ch == b"1"

    def string(self) -> str:
        size = self.int()
        text = self.data[self.pos : self.pos + size].decode("latin-1")
        self.pos += size
        return text

    def expect_int(self, allowed: tuple[int, ...], what: str) -> int:
        value = self.int()
        if value not in allowed:
            raise self.fail(f"{what} = {value}, expected one of {allowed}")
        return value

    def tensor(self) -> np.ndarray:
        """A resizable_tensor as an NCHW float32 array."""
        version = self.expect_int((1, 2), "tensor version")
        if version == 2:  # n, k, nr, nc, then raw little-endian IEEE float32
            n, k, nr, nc = (self.int() for _ in range(4))
            count = n * k * nr * nc
            end = self.pos + 4 * count
            if end > len(self.data):
                raise self.fail("tensor runs past the end of the file")
            arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
            self.pos = end
            return arr.astype(np.float32).reshape(n, k, nr, nc)
        # version 1 (older dlib): n, nr, nc, k, then one portable float per value (slow, rare)
        n, nr, nc, k = (self.int() for _ in range(4))
        values = np.array([self.float() for _ in range(n * k * nr * nc)], dtype=np.float32)
        return values.reshape(n, k, nr, nc)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_int((1,), "alias_tensor version")
        return tuple(self.int() for _ in range(4))  # n, k, nr, nc


def _read_details(r: _Reader, spec: tuple) -> dict[str, np.ndarray]:
    """One layer's details object; returns its parameters in dlib layout (empty if none)."""
    kind = spec[0]
    name = r.string()
    if name not in _DETAIL_NAMES[kind]:
        raise r.fail(f"layer {spec} serialized as {name!r}")

    if name == "con_4":
        params = r.tensor().ravel()
        num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(7))
        _, k, fnr, fnc = r.alias_tensor()
        r.alias_tensor()  # biases: (1, num_filters)
        for _ in range(4):
            r.float()  # learning-rate / weight-decay multipliers
        _, n, size, stride = spec
        if (num_filters, nr, nc, stride_y, stride_x) != (n, size, size, stride, stride):
            raise r.fail(
                f"conv {spec} stored as {num_filters} filters {nr}x{nc} stride {stride_y},{stride_x}"
            )
        if (pad_y, pad_x) != ((0, 0) if stride != 1 else (size // 2, size // 2)):
            raise r.fail(f"conv {spec} has padding {pad_y},{pad_x}")
        n_w = num_filters * k * fnr * fnc
        if params.size != n_w + num_filters:
            raise r.fail(f"conv {spec} has {params.size} parameters")
        return {"w": params[:n_w].reshape(num_filters, k, fnr, fnc), "b": params[n_w:]}

    if name == "affine_":
        params = r.tensor().ravel()
        gamma = r.alias_tensor()
        r.alias_tensor()  # beta, same shape as gamma
        r.int()  # mode (conv or fc); both apply per channel here
        half = int(np.prod(gamma))
        return {"gamma": params[:half], "beta": params[half:]}

    if name == "bn_con2":
        # Training-form batch norm; convert to the inference affine as dlib's affine_(bn_) does.
        params = r.tensor().ravel()
        r.alias_tensor()
        r.alias_tensor()
        r.tensor()  # means (batch statistics)
        r.tensor()  # invstds
        running_means = r.tensor().ravel()
        running_variances = r.tensor().ravel()
        r.int()  # num_updates
        r.int()  # running_stats_window_size
        for _ in range(4):
            r.float()
        eps = r.float()
        half = params.size // 2
        gamma = (params[:half] / np.sqrt(running_variances.astype(np.float64) + eps)).astype(np.float32)
        beta = params[half:] - gamma * running_means
        return {"gamma": gamma, "beta": beta.astype(np.float32)}

    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
        expected = (0, 0, 1, 1) if kind == "avg_pool_all" else (spec[1], spec[1], spec[2], spec[2])
        if (nr, nc, stride_y, stride_x) != expected or (pad_y, pad_x) != (0, 0):
            raise r.fail(f"pool {spec} stored as {nr}x{nc} stride {stride_y},{stride_x} pad {pad_y},{pad_x}")
        return {}

    if name == "fc_2":
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor().ravel()
        r.alias_tensor()  # weights: (num_inputs, num_outputs)
        r.alias_tensor()  # biases (empty without bias)
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if bias_mode != 1 or num_outputs != spec[1] or params.size != num_inputs * num_outputs:
            raise r.fail(f"fc layer: bias_mode {bias_mode}, {num_inputs}x{num_outputs}, {params.size} params")
        # dlib computes output = input (N x num_inputs) times weights (num_inputs x num_outputs).
        return {"w": params.reshape(num_inputs, num_outputs)}

    return {}  # relu_, add_prev_: no state


def parse_dlib_model(data: bytes) -> dict[str, np.ndarray]:
    """Parse the .dat bytes into named float32 arrays in dlib layout.

    Keys: ``input_mean`` (R, G, B averages), then per computational layer, counted bottom-up,
    ``LNNN_con_w`` (filters x channels x rows x cols), ``LNNN_con_b``, ``LNNN_affine_gamma``,
    ``LNNN_affine_beta`` and ``LNNN_fc_w`` (inputs x outputs).
    Raises ModelError if the file is not the expected network or does not end where it should.
    """
    try:
        return _parse(_Reader(data))
    except (IndexError, UnicodeDecodeError) as exc:  # ran off the end of a truncated file
        raise ModelError(f"truncated or corrupt dlib model file: {exc}") from exc


def _parse(r: _Reader) -> dict[str, np.ndarray]:
    r.expect_int((1,), "add_loss_layer version")
    if r.string() != "loss_metric_2":
        raise r.fail("loss layer is not loss_metric_2")
    r.float()  # margin
    r.float()  # distance threshold

    # add_layer writes its version before recursing into its subnetwork, so the versions of all
    # layers come first (top-down), then the input layer, then each layer's details bottom-up.
    versions = []
    for depth, spec in enumerate(reversed(ANET_LAYERS)):
        bottom = depth == len(ANET_LAYERS) - 1
        if spec[0] in ("tag", "skip"):
            versions.append(r.expect_int((1,), f"{spec} version"))
        else:
            versions.append(r.expect_int((2, 3) if bottom else (1, 2), f"{spec} version"))
    versions.reverse()

    if r.string() != "input_rgb_image_sized":
        raise r.fail("input layer is not input_rgb_image_sized")
    mean = np.array([r.float(), r.float(), r.float()], dtype=np.float32)
    if (r.int(), r.int()) != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail(f"input size is not {CHIP_SIZE}x{CHIP_SIZE}")

    out: dict[str, np.ndarray] = {"input_mean": mean}
    for index, (spec, version) in enumerate(zip(ANET_LAYERS, versions, strict=True)):
        if spec[0] in ("tag", "skip"):
            continue
        for key, value in _read_details(r, spec).items():
            out[f"L{index:03d}_{spec[0]}_{key}"] = np.ascontiguousarray(value, dtype=np.float32)
        for _ in range(3):
            r.bool()  # setup_called, gradient_input_is_stale, output_and_gradient_disabled
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if index == 0:
            r.tensor()  # grad_final
            if version >= 3:
                r.int()  # sample_expansion_factor
        elif version >= 2:
            r.tensor()  # params_grad
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} trailing bytes")
    return out


def _cache_path(sha256: str) -> Path:
    return config.cache_dir() / f"dlib_resnet_v{_CACHE_FORMAT}_{sha256[:16]}.npz"


def load_dlib_weights() -> dict[str, np.ndarray]:
    """The pretrained weights in dlib layout, from the .npz cache or parsed from the .dat file."""
    sha = dlib_model_sha256()
    cache = _cache_path(sha)
    if cache.exists():
        try:
            with np.load(cache) as npz:
                weights = {key: npz[key] for key in npz.files}
            if weights.pop("__sha256__").item() == sha:
                return weights
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable or foreign cache: rebuild it below
    weights = parse_dlib_model(dlib_model_path().read_bytes())
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, __sha256__=np.array(sha), **weights)
        os.replace(tmp, cache)  # atomic, so concurrent processes never read a half-written cache
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache dir only costs the parse next time
    return weights


# --------------------------------------------------------------------------------------------
# The Keras model


def _keras_weights(weights: dict[str, np.ndarray]) -> list[tuple[str, list[np.ndarray]]]:
    """Fold each affine into the conv below it and convert layouts to Keras (HWIO, in x out)."""
    converted = []
    for index, spec in enumerate(ANET_LAYERS):
        if spec[0] == "con":
            w = weights[f"L{index:03d}_con_w"].astype(np.float64)
            b = weights[f"L{index:03d}_con_b"].astype(np.float64)
            # every con in this net is followed by affine: y = gamma * conv(x) + beta
            gamma = weights[f"L{index + 1:03d}_affine_gamma"].astype(np.float64)
            beta = weights[f"L{index + 1:03d}_affine_beta"].astype(np.float64)
            kernel = (w * gamma[:, None, None, None]).transpose(2, 3, 1, 0)  # OIHW -> HWIO
            bias = b * gamma + beta
            converted.append((f"conv{index:03d}", [kernel.astype(np.float32), bias.astype(np.float32)]))
        elif spec[0] == "fc":
            converted.append((f"fc{index:03d}", [weights[f"L{index:03d}_fc_w"]]))
    return converted


def _build_model(weights: dict[str, np.ndarray]) -> keras.Model:
    import keras
    from keras import layers

    class ZeroPadAdd(layers.Layer):
        """dlib's add_prev: the smaller tensor is zero-padded (bottom/right, extra channels)."""

        def compute_output_shape(self, input_shapes):
            a, b = input_shapes
            return (a[0], *(max(x, y) for x, y in zip(a[1:], b[1:], strict=True)))

        def call(self, inputs):
            a, b = inputs
            target = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True)]

            def pad(t):
                extra = [want - have for want, have in zip(target, t.shape[1:], strict=True)]
                if not any(extra):
                    return t
                return keras.ops.pad(t, [[0, 0]] + [[0, e] for e in extra])

            return pad(a) + pad(b)

    mean = weights["input_mean"]
    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), name="chips")
    # dlib's input layer: (pixel - channel mean) / 256
    x = layers.Rescaling(scale=1.0 / 256.0, offset=list(-mean / 256.0), name="input_norm")(inputs)
    tags = {}
    for index, spec in enumerate(ANET_LAYERS):
        kind = spec[0]
        if kind == "con":
            _, n, size, stride = spec
            padding = "same" if stride == 1 else "valid"  # dlib: stride 1 pads size//2, else 0
            x = layers.Conv2D(n, size, strides=stride, padding=padding, name=f"conv{index:03d}")(x)
        elif kind == "affine":
            pass  # folded into the conv below it
        elif kind == "relu":
            x = layers.ReLU(name=f"relu{index:03d}")(x)
        elif kind == "max_pool":
            x = layers.MaxPooling2D(spec[1], strides=spec[2], padding="valid", name=f"maxpool{index:03d}")(x)
        elif kind == "avg_pool":
            x = layers.AveragePooling2D(
                spec[1], strides=spec[2], padding="valid", name=f"avgpool{index:03d}"
            )(x)
        elif kind == "avg_pool_all":
            x = layers.GlobalAveragePooling2D(name=f"gap{index:03d}")(x)
        elif kind == "tag":
            tags[spec[1]] = x
        elif kind == "skip":
            x = tags[spec[1]]
        elif kind == "add_prev":
            x = ZeroPadAdd(name=f"add{index:03d}")([x, tags[spec[1]]])
        elif kind == "fc":
            x = layers.Dense(spec[1], use_bias=False, name=f"fc{index:03d}")(x)
    model = keras.Model(inputs, x, name="dlib_face_resnet_v1")
    for name, values in _keras_weights(weights):
        model.get_layer(name).set_weights(values)
    return model


_model_lock = threading.Lock()
_model = None
_infer = None


def load_embedding_model() -> keras.Model:
    """The Keras model, built once per process.

    Input: N x 150 x 150 x 3 RGB face chips (float or uint8 values 0..255) as made by
    ``dlib.get_face_chip(img, shape, size=150, padding=0.25)``. Output: N x 128 float32
    embeddings, the same as dlib's ``compute_face_descriptor`` on those chips (measured max
    difference below 1e-6; the tests require 1e-4). For speed call it directly or use
    embed_chips, not model.predict.
    """
    global _model
    with _model_lock:
        if _model is None:
            _model = _build_model(load_dlib_weights())
        return _model


def _inference_fn():
    """A traced forward pass with a fixed signature; much cheaper per call than model.predict."""
    global _infer
    model = load_embedding_model()
    with _model_lock:
        if _infer is None:
            import tensorflow as tf

            spec = tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.float32)
            _infer = tf.function(
                lambda x: model(x, training=False), input_signature=[spec], jit_compile=_JIT_COMPILE
            )
        return _infer


def embed_chips(chips: np.ndarray, mirror: bool = True) -> np.ndarray:
    """N x 128 float32 embeddings of N aligned 150x150 RGB face chips.

    With ``mirror=True`` the chips and their left-right mirror images go through the network in
    one batch and each face gets the mean of its two embeddings. The mean is not re-normalised:
    dlib's embeddings are not unit-length (norm about 1.4) and its 0.6 distance threshold refers
    to the raw scale. On 1,991 LFW development pairs, mirror averaging raised accuracy at 0.6
    from 98.6% to 99.2%; re-normalising broke the 0.6 threshold and was no better at its own
    best threshold.
    A single chip of shape 150 x 150 x 3 is accepted and still returns shape 1 x 128.
    """
    x = np.asarray(chips)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected N x {CHIP_SIZE} x {CHIP_SIZE} x 3 face chips, got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    x = x.astype(np.float32, copy=False)
    if mirror:
        x = np.concatenate([x, x[:, :, ::-1, :]], axis=0)
    out = _inference_fn()(x).numpy()
    if mirror:
        out = (out[:n] + out[n:]) / 2.0
    return out.astype(np.float32, copy=False)
