"""Capture check of the main face: can the networks see it well enough to decide, and if not,
what should the member do?

    check_capture(rgb, face, chip, scale) -> CaptureCheck    measured values and findings

Runs on what the verification path already has (core/verification/features.py calls it once per
photo): the decoded RGB photo, the main face MediaPipe found (box and 6 keypoints), dlib's aligned
150 x 150 chip and the decode scale. Nothing is detected twice: MediaPipe's 468-point face-mesh
network (face_landmark.tflite, shipped in the mediapipe 0.10.21 wheel) runs directly on a crop
around the detected box, the way MediaPipe's own graph frames it.

What is measured, and from what:
    face mesh          head pose (yaw, pitch), how much of the face lies outside the photo, and
                       the face's outline for exposure
    pixels             face brightness (median inside the outline), brightness around the face,
                       share of blown-out face pixels, sharpness of the chip (scale-free)
    box                face width in the original photo's pixels
    occlusion model    probabilities of a mask, a hand, sunglasses, closed eyes: a small
                       classifier on the chip (models/pretrained/capture_occlusion.npz)

Each finding has a code, the measured value, the limit it crossed and an instruction for the
member (core/i18n: "capture.<code>", Korean and English). The limits and the occlusion model are
made by `python -m core.benchmarks.capture fit` on synthetic variants of the training people's
photos only (models/pretrained/capture_check.json records how).
"""

from __future__ import annotations

import json
import math
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from core import config

LIMITS_FILE = config.PROJECT_ROOT / "models" / "pretrained" / "capture_check.json"
MESH_INPUT = 192  # the face-mesh network's input side
MESH_ROI_SCALE = 1.5  # MediaPipe's own margin around a detected face for its mesh network
MIN_FACE_WIDTH_PX = 80  # the product's rule: a face narrower than this in the photo is too small

# Finding codes; each is also a flag code in the verification result.
FACE_MASK = "face_mask"
HAND_OVER_FACE = "hand_over_face"
EYES_COVERED = "eyes_covered"
EYES_CLOSED = "eyes_closed"
BLURRY = "blurry"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
BACKLIT = "backlit"
FACE_TOO_SMALL = "face_too_small"
FACE_CUT_OFF = "face_cut_off"
HEAD_TURNED = "head_turned"
FINDING_CODES = (
    FACE_MASK,
    HAND_OVER_FACE,
    EYES_COVERED,
    EYES_CLOSED,
    BLURRY,
    TOO_DARK,
    TOO_BRIGHT,
    BACKLIT,
    FACE_TOO_SMALL,
    FACE_CUT_OFF,
    HEAD_TURNED,
)
# Part of the face is hidden: the networks would compare what is left as if it were whole.
HIDDEN_FACE_CODES = (FACE_MASK, HAND_OVER_FACE, EYES_COVERED)

_FOREHEAD, _CHIN, _EYE_OUTER_LEFT, _EYE_OUTER_RIGHT = 10, 152, 33, 263  # face-mesh indices

_mesh_lock = threading.Lock()  # one TFLite interpreter, used from request threads


@dataclass
class Finding:
    code: str
    value: float  # what was measured
    limit: float  # the limit it crossed
    unit: str  # what value is: "probability", "px", "degrees", "grey level", "share", ...

    @property
    def instruction_key(self) -> str:
        return f"capture.{self.code}"


@dataclass
class CaptureCheck:
    measures: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    time_ms: float = 0.0

    @property
    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    @property
    def face_hidden(self) -> bool:
        return any(f.code in HIDDEN_FACE_CODES for f in self.findings)

    def to_dict(self) -> dict:
        return {
            "measures": {k: round(float(v), 4) for k, v in self.measures.items()},
            "findings": [asdict(f) for f in self.findings],
            "time_ms": round(self.time_ms, 2),
        }


# -- face mesh on the detected box -----------------------------------------------------------


@lru_cache(maxsize=1)
def _mesh_interpreter():
    import mediapipe
    import tensorflow as tf

    path = Path(mediapipe.__file__).parent / "modules" / "face_landmark" / "face_landmark.tflite"
    with warnings.catch_warnings():  # TF 2.19 (pinned) still ships tf.lite; the notice is for 2.20
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _roi_transform(center: np.ndarray, size: float, angle: float) -> np.ndarray:
    """2x3 affine map from photo pixels to the mesh input: a square of `size` turned by `angle`."""
    scale = MESH_INPUT / size
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    m = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]])
    m[:, 2] = MESH_INPUT / 2 - m[:, :2] @ center
    return m


def face_mesh(rgb: np.ndarray, box: tuple[int, int, int, int], keypoints: list) -> np.ndarray:
    """468 x 3 face-mesh points of a detected face: x, y in photo pixels, z (depth) in the same unit.

    The crop is MediaPipe's: the box's centre, 1.5 times its longer side, turned so that the
    detector's two eye keypoints are level.
    """
    x, y, w, h = box
    eyes = np.asarray(keypoints[:2], dtype=np.float64)
    angle = math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0])
    size = MESH_ROI_SCALE * max(w, h)
    m = _roi_transform(np.array([x + w / 2, y + h / 2]), size, angle)
    crop = cv2.warpAffine(np.ascontiguousarray(rgb), m, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR)
    interpreter = _mesh_interpreter()
    with _mesh_lock:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], (crop / np.float32(255.0))[None])
        interpreter.invoke()
        outputs = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    landmarks = next(o for o in outputs if o.size == 468 * 3).reshape(468, 3).astype(np.float64)
    inverse = cv2.invertAffineTransform(m)
    xy = landmarks[:, :2] @ inverse[:, :2].T + inverse[:, 2]
    return np.concatenate([xy, landmarks[:, 2:] * (size / MESH_INPUT)], axis=1)


def head_pose(points: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees from the mesh's 3-D eye line and forehead-chin line."""
    eye_line = points[_EYE_OUTER_RIGHT] - points[_EYE_OUTER_LEFT]
    yaw = math.degrees(math.atan2(eye_line[2], math.hypot(eye_line[0], eye_line[1])))
    vertical = points[_CHIN] - points[_FOREHEAD]
    pitch = math.degrees(math.atan2(-vertical[2], math.hypot(vertical[0], vertical[1])))
    return yaw, pitch


# -- pixels ----------------------------------------------------------------------------------


def sharpness(chip: np.ndarray) -> float:
    """log10 of the ratio of fine to coarse gradient energy in the chip's centre.

    A ratio, so it does not move with contrast or lighting; on the aligned chip, so it does not
    move with the face's size in the photo. Blur removes the fine gradients first.
    """
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(np.float32)
    coarse = cv2.GaussianBlur(grey, (0, 0), 2.0)

    def energy(image: np.ndarray) -> float:
        gx = cv2.Sobel(image, cv2.CV_32F, 1, 0)[30:120, 30:120]
        gy = cv2.Sobel(image, cv2.CV_32F, 0, 1)[30:120, 30:120]
        return float((gx * gx + gy * gy).mean()) + 1e-6

    return math.log10(energy(grey) / energy(coarse))


def exposure(rgb: np.ndarray, box: tuple[int, int, int, int], outline: np.ndarray) -> dict[str, float]:
    """Face brightness inside the mesh outline, the surroundings' brightness, blown-out share."""
    height, width = rgb.shape[:2]
    x, y, w, h = box
    # only a window around the face is looked at: a 50-megapixel photo costs the same
    x0, y0 = max(0, int(x - w)), max(0, int(y - h))
    x1, y1 = min(width, int(x + 2 * w)), min(height, int(y + 2 * h))
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    inside = np.zeros(grey.shape, np.uint8)
    hull = cv2.convexHull((outline - (x0, y0)).astype(np.float32)).astype(np.int32)
    cv2.fillConvexPoly(inside, hull, 1)
    face, around = grey[inside > 0], grey[inside == 0]
    if face.size == 0:
        face = grey.ravel()
    return {
        "face_luminance": float(np.median(face)),
        "background_luminance": float(np.percentile(around, 75)) if around.size else float(np.median(face)),
        "face_clipped": float((face >= 250).mean()),
    }


# -- occlusion model -------------------------------------------------------------------------

OCCLUSION_CLASSES = ("mask", "hand", "sunglasses", "eyes_closed")
# Logistic heads on the features below: lower face covered (mask or hand), mask rather than hand
# (given covered), sunglasses, closed eyes. Made by `python -m core.benchmarks.capture fit`.
OCCLUSION_HEADS = ("lower_face_covered", "mask_not_hand", "sunglasses", "eyes_closed")
OCCLUSION_FILE = config.PROJECT_ROOT / "models" / "pretrained" / "capture_occlusion.npz"
OCCLUSION_INPUT = 96  # side of the chip the model reads (the 150 px chip, shrunk)
_FACE_HOG = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)
_EYES_HOG = cv2.HOGDescriptor((96, 32), (16, 16), (8, 8), (8, 8), 9)
_EYE_ROWS = slice(22, 54)  # the eyes' band in the 96 px chip (dlib's alignment puts them there)


def occlusion_input(chip: np.ndarray) -> np.ndarray:
    """The aligned 150 px chip as the occlusion model reads it (96 x 96 RGB uint8)."""
    return cv2.resize(chip, (OCCLUSION_INPUT, OCCLUSION_INPUT), interpolation=cv2.INTER_AREA)


def occlusion_features(small_chip: np.ndarray) -> np.ndarray:
    """Shape and colour of a 96 px chip: gradients of the whole face (HOG at 64 px), gradients of
    the eyes' band at full resolution, and a 6 x 6 grid of Lab colour relative to the face's own
    mean (so the light's colour and strength matter less than what covers the face)."""
    grey = cv2.cvtColor(small_chip, cv2.COLOR_RGB2GRAY)
    face = _FACE_HOG.compute(cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA)).ravel()
    eyes = _EYES_HOG.compute(np.ascontiguousarray(grey[_EYE_ROWS])).ravel()
    lab = cv2.resize(cv2.cvtColor(small_chip, cv2.COLOR_RGB2LAB), (6, 6), interpolation=cv2.INTER_AREA)
    lab = lab.astype(np.float32)
    lightness_spread = float(lab[:, :, 0].std()) + 1.0
    lab -= lab.reshape(-1, 3).mean(axis=0)
    lab[:, :, 0] /= lightness_spread
    lab[:, :, 1:] /= 16.0
    return np.concatenate([face, eyes, lab.ravel()]).astype(np.float32)


@lru_cache(maxsize=1)
def occlusion_model() -> dict[str, np.ndarray]:
    with np.load(OCCLUSION_FILE) as z:
        return {k: z[k] for k in ("mean", "scale", "weights", "bias")}


def occlusion_probabilities_many(small_chips: np.ndarray) -> dict[str, np.ndarray]:
    """{"p_mask", "p_hand", "p_sunglasses", "p_eyes_closed"} for N 96 px chips (N arrays)."""
    model = occlusion_model()
    if len(small_chips) == 0:
        return {f"p_{name}": np.zeros(0) for name in OCCLUSION_CLASSES}
    x = (np.stack([occlusion_features(c) for c in small_chips]) - model["mean"]) / model["scale"]
    heads = dict(
        zip(OCCLUSION_HEADS, (1.0 / (1.0 + np.exp(-(x @ model["weights"].T + model["bias"])))).T, strict=True)
    )
    covered = heads["lower_face_covered"].astype(np.float64)
    return {
        "p_mask": covered * heads["mask_not_hand"],
        "p_hand": covered * (1.0 - heads["mask_not_hand"]),
        "p_sunglasses": heads["sunglasses"].astype(np.float64),
        "p_eyes_closed": heads["eyes_closed"].astype(np.float64),
    }


# -- the check -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def limits() -> dict:
    """The limits chosen on training people (models/pretrained/capture_check.json)."""
    with LIMITS_FILE.open(encoding="utf-8") as f:
        return json.load(f)["limits"]


def measure(
    rgb: np.ndarray, box: tuple[int, int, int, int], keypoints: list, chip: np.ndarray, scale: float
) -> dict:
    """Every measured value of the check, no decision yet (the fitting command reads these)."""
    height, width = rgb.shape[:2]
    points = face_mesh(rgb, box, keypoints)
    yaw, pitch = head_pose(points)
    outside = (points[:, 0] < 0) | (points[:, 0] >= width) | (points[:, 1] < 0) | (points[:, 1] >= height)
    measures = {
        "yaw": yaw,
        "pitch": pitch,
        "face_outside": float(outside.mean()),
        "face_width_px": box[2] / scale,
        "sharpness": sharpness(chip),
        **exposure(rgb, box, points[:, :2]),
    }
    return measures


def findings_from(measures: dict[str, float], lim: dict | None = None) -> list[Finding]:
    """The findings the measured values give under the limits (training people's choice)."""
    lim = lim or limits()
    out: list[Finding] = []

    def above(code: str, key: str, unit: str, value: float | None = None) -> None:
        v = measures[key] if value is None else value
        if v > lim[code]:
            out.append(Finding(code, round(float(v), 4), lim[code], unit))

    def below(code: str, key: str, unit: str) -> None:
        if measures[key] < lim[code]:
            out.append(Finding(code, round(float(measures[key]), 4), lim[code], unit))

    if "p_mask" in measures:
        lower = measures["p_mask"] + measures["p_hand"]
        if lower > lim["lower_face_covered"]:
            code = FACE_MASK if measures["p_mask"] >= measures["p_hand"] else HAND_OVER_FACE
            out.append(Finding(code, round(lower, 4), lim["lower_face_covered"], "probability"))
        above(EYES_COVERED, "p_sunglasses", "probability")
        if EYES_COVERED not in [f.code for f in out]:  # closed or not, covered eyes cannot be told
            above(EYES_CLOSED, "p_eyes_closed", "probability")
    below(BLURRY, "sharpness", "log10 gradient ratio")
    backlit = measures["background_luminance"] - measures["face_luminance"]
    above(BACKLIT, "", "grey levels brighter behind", value=backlit)
    if BACKLIT not in [f.code for f in out]:  # a backlit face is dark; the backlight is the fix
        below(TOO_DARK, "face_luminance", "grey level")
    above(TOO_BRIGHT, "face_clipped", "share blown out")
    if measures["face_width_px"] < MIN_FACE_WIDTH_PX:
        out.append(Finding(FACE_TOO_SMALL, round(measures["face_width_px"], 1), MIN_FACE_WIDTH_PX, "px"))
    above(FACE_CUT_OFF, "face_outside", "share outside the photo")
    turn = max(abs(measures["yaw"]) / lim["yaw"], abs(measures["pitch"]) / lim["pitch"])
    if turn > 1.0:
        worst = (
            "yaw" if abs(measures["yaw"]) / lim["yaw"] >= abs(measures["pitch"]) / lim["pitch"] else "pitch"
        )
        out.append(Finding(HEAD_TURNED, round(abs(measures[worst]), 1), lim[worst], f"degrees {worst}"))
    return out


def check_capture(
    rgb: np.ndarray, box: tuple[int, int, int, int], keypoints: list, chip: np.ndarray, scale: float = 1.0
) -> CaptureCheck:
    """Measure the main face and list what the member should fix (empty findings: nothing)."""
    start = time.perf_counter()
    measures = measure(rgb, box, keypoints, chip, scale)
    measures |= {k: float(v[0]) for k, v in occlusion_probabilities_many(occlusion_input(chip)[None]).items()}
    return CaptureCheck(
        measures=measures, findings=findings_from(measures), time_ms=(time.perf_counter() - start) * 1000.0
    )


_REASONS = {
    FACE_MASK: "The lower face looks covered by a mask (probability {value:.2f}).",
    HAND_OVER_FACE: "A hand seems to cover the lower face (probability {value:.2f}).",
    EYES_COVERED: "The eyes look covered, e.g. by sunglasses (probability {value:.2f}).",
    EYES_CLOSED: "The eyes look closed (probability {value:.2f}).",
    BLURRY: "The face is blurred (sharpness {value:.2f}, limit {limit:.2f}).",
    TOO_DARK: "The face is too dark (brightness {value:.0f} of 255, limit {limit:.0f}).",
    TOO_BRIGHT: "The face is overexposed ({value:.0%} of it blown out).",
    BACKLIT: "The light is behind the face (background {value:.0f} grey levels brighter).",
    FACE_TOO_SMALL: "The face is {value:.0f} px wide, under {limit:.0f} px.",
    FACE_CUT_OFF: "Part of the face is outside the photo ({value:.0%}).",
    HEAD_TURNED: "The head is turned {value:.0f} degrees ({unit}), more than {limit:.0f}.",
}


def reason(finding: Finding) -> str:
    """One English sentence for the reviewer (the pages translate by code)."""
    return _REASONS[finding.code].format(value=finding.value, limit=finding.limit, unit=finding.unit)


# Photo-level flags of the path that the member can also fix before submitting.
PHOTO_LEVEL_CODES = ("no_face", "several_faces", "low_quality")


def photo_findings(analysis) -> list[dict]:
    """What a photo check answers for one analysed photo (core.verification.result.PhotoAnalysis):
    [{code, value, limit, unit, hides_face, instruction_key}], the capture findings first, then
    no face / several faces / low quality. Empty: nothing to fix."""
    out = []
    for finding in analysis.capture.findings if analysis.capture else []:
        out.append(asdict(finding) | {"hides_face": finding.code in HIDDEN_FACE_CODES})
    for flag in analysis.flags:
        if flag.code in PHOTO_LEVEL_CODES:
            out.append({"code": flag.code, "value": None, "limit": None, "unit": None, "hides_face": False})
    for item in out:
        item["instruction_key"] = f"capture.{item['code']}"
    return out
