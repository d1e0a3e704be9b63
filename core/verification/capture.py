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
    pixels             face brightness (median inside the outline, and its lit parts on the
                       chip), brightness around the face, share of blown-out face pixels
    blur model         how gradient energy falls across scales of the chip and runs one way,
                       with the face's size: a logistic (weights in capture_check.json)
    box                face width in the original photo's pixels
    occlusion network  probabilities of a mask, a hand, sunglasses, closed eyes: a small Keras
                       CNN on the chip and its eyes' band (models/pretrained/capture_occlusion.keras),
                       averaged over the chip and its mirror image when the record says so

Each finding has a code, the measured value, the limit it crossed and an instruction for the
member (core/i18n: "capture.<code>", Korean and English). The limits and the occlusion model are
made by `faceverify train capture-check` on synthetic variants of the training people's
photos only (models/pretrained/capture_check.json records how; NOTICE-capture.md says what the
network is and how it was made).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from core import config
from core.verification.lending import Lending

LIMITS_FILE = config.PROJECT_ROOT / "models" / "pretrained" / "capture_check.json"
MESH_INPUT = 192  # the face-mesh network's input side
MESH_ROI_SCALE = 1.5  # MediaPipe's own margin around a detected face for its mesh network
# Too dark is read on the face's lit parts, not its median, which darker skin lowers (on lfw_dev
# the median stopped one held-out man's photos as too dark 31% of the time, the lit parts 8%).
DARK_MEASURE = "face_highlight"
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
# Told to the member before submitting and kept in the result, but no reason for review: with
# the eyes closed the networks still see the whole face, and on lfw_dev's unmodified photos this
# finding fires on squints and broad smiles (as a review flag it cost 159 of 4,114 pairs).
ADVISORY_CODES = (EYES_CLOSED,)

_FOREHEAD, _CHIN, _EYE_OUTER_LEFT, _EYE_OUTER_RIGHT = 10, 152, 33, 263  # face-mesh indices


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


def _make_mesh_interpreter():
    import mediapipe
    import tensorflow as tf

    path = Path(mediapipe.__file__).parent / "modules" / "face_landmark" / "face_landmark.tflite"
    with warnings.catch_warnings():  # TF 2.19 (pinned) still ships tf.lite; the notice is for 2.20
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


# One interpreter per locate thread (an interpreter is not thread-safe): with one shared under a
# lock, the two photos of a pair queued for it.
_mesh_interpreters = Lending(_make_mesh_interpreter)


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
    with _mesh_interpreters.lend() as interpreter:
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


_INTERIOR = (slice(30, 130), slice(25, 125))  # the face inside the 150 px chip: brows to chin
_BLUR_SIGMAS = (0.0, 1.0, 2.0, 4.0)  # pixels of the chip
BLUR_FEATURES = ("fine", "middle", "coarse", "streak_fine", "streak_middle")


def sharpness(energies: list[float]) -> float:
    """log10 of the ratio of fine to coarse gradient energy in the chip's centre (energies from
    _gradient_energies).

    A ratio, so it does not move with contrast or lighting; on the aligned chip, so it does not
    move with the face's size in the photo. Blur removes the fine gradients first.
    """
    return math.log10(energies[0] / energies[2])


def _gradient_energies(chip: np.ndarray) -> tuple[list[float], list[float]]:
    """Gradient energy of the chip's interior at each of _BLUR_SIGMAS, and how much of it runs
    one way (coherence of the structure tensor, 0 any way .. 1 all one way) at each scale."""
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energies, coherence = [], []
    for sigma in _BLUR_SIGMAS:
        image = grey if sigma == 0 else cv2.GaussianBlur(grey, (0, 0), sigma)
        gx = cv2.Sobel(image, cv2.CV_32F, 1, 0)[_INTERIOR]
        gy = cv2.Sobel(image, cv2.CV_32F, 0, 1)[_INTERIOR]
        xx, yy, xy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
        energies.append(xx + yy + 1e-6)
        coherence.append(math.sqrt((xx - yy) ** 2 + 4 * xy * xy) / (xx + yy + 1e-6))
    return energies, coherence


def blur_features(energies: list[float], coherence: list[float]) -> np.ndarray:
    """What the blur model reads: how fast gradient energy falls from one scale to the next (blur
    takes the finest first) and how much the fine gradients run one way (a shake smears along one
    direction). All on the aligned chip, so the face's size in the photo does not enter: a big
    sharp face and a small sharp one look the same there (a face too small has its own finding)."""
    ratios = [math.log10(energies[k] / energies[k + 1]) for k in range(3)]
    return np.array([*ratios, coherence[0], coherence[1]], np.float32)


def blur_probability(features: np.ndarray, model: dict) -> float:
    x = (np.asarray(features, np.float64) - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return float(1.0 / (1.0 + math.exp(-(x @ np.asarray(model["weights"]) + model["bias"]))))


def face_highlight(chip: np.ndarray) -> float:
    """The 95th percentile grey level of the face's interior: how bright the lit parts of the
    face are. Unlike the median it does not fall with darker skin, only with less light."""
    grey = cv2.cvtColor(np.ascontiguousarray(chip[_INTERIOR]), cv2.COLOR_RGB2GRAY)
    return float(np.percentile(grey, 95))


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


# -- occlusion network ------------------------------------------------------------------------

OCCLUSION_CLASSES = ("mask", "hand", "sunglasses", "eyes_closed")  # the network's sigmoid outputs
OCCLUSION_FILE = config.PROJECT_ROOT / "models" / "pretrained" / "capture_occlusion.keras"
FACE_INPUT = 64  # side of the whole chip, shrunk, that the network's face branch reads
# The eyes' band of the 150 px chip at full resolution (dlib's alignment puts the eyes on rows
# 40-51, columns 33-113 on lfw_dev): an eyelid is a few pixels, so this branch is not shrunk.
EYE_ROWS, EYE_COLS = slice(28, 64), slice(19, 131)
EYE_INPUT = (EYE_ROWS.stop - EYE_ROWS.start, EYE_COLS.stop - EYE_COLS.start, 1)
_BATCH = 256


def occlusion_inputs(chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's two inputs for N aligned 150 px chips: the face (N x 64 x 64 x 3) and the
    eyes' band in grey (N x 36 x 112 x 1), each standardised by its own mean and spread, so the
    light's strength matters less than what covers the face."""
    chips = np.asarray(chips, dtype=np.uint8)
    face = np.stack([cv2.resize(c, (FACE_INPUT, FACE_INPUT), interpolation=cv2.INTER_AREA) for c in chips])
    eyes = np.stack(
        [cv2.cvtColor(np.ascontiguousarray(c[EYE_ROWS, EYE_COLS]), cv2.COLOR_RGB2GRAY) for c in chips]
    )

    def standardise(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        axes = tuple(range(1, x.ndim))
        return (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + 8.0)

    return standardise(face), standardise(eyes)[..., None]


@lru_cache(maxsize=1)
def _occlusion_graph():
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(OCCLUSION_FILE, compile=False)
    face_spec = tf.TensorSpec((None, FACE_INPUT, FACE_INPUT, 3), tf.float32)
    eyes_spec = tf.TensorSpec((None, *EYE_INPUT), tf.float32)
    return tf.function(
        lambda face, eyes: model([face, eyes], training=False), input_signature=[face_spec, eyes_spec]
    )


def occlusion_probabilities_many(chips: np.ndarray, predict=None) -> dict[str, np.ndarray]:
    """{"p_mask", "p_hand", "p_lower_face", "p_sunglasses", "p_eyes_closed"} for N aligned chips.

    p_lower_face: the lower face is covered by either (1 - both probabilities of not).
    predict(face, eyes) -> N x 4: the network as the caller runs it (the verification path: its
    TensorFlow Lite copy, core.verification.networks.compiled); default this module's Keras one."""
    if len(chips) == 0:
        return {k: np.zeros(0) for k in ("p_mask", "p_hand", "p_lower_face", "p_sunglasses", "p_eyes_closed")}
    graph = predict or _occlusion_graph()
    mirror = mirror_averaged()
    parts = []
    for i in range(0, len(chips), _BATCH):
        face, eyes = occlusion_inputs(chips[i : i + _BATCH])
        p = np.asarray(graph(face, eyes), dtype=np.float64)
        if mirror:
            # averaged with the mirror image's (a mask or a hand is the same mirrored, a stray
            # shadow or crease on one side is not); a second call, as the compiled copy's batch is 1
            flipped = np.ascontiguousarray(face[:, :, ::-1]), np.ascontiguousarray(eyes[:, :, ::-1])
            p = (p + np.asarray(graph(*flipped), dtype=np.float64)) / 2.0
        parts.append(p)
    p = dict(zip(OCCLUSION_CLASSES, np.concatenate(parts).T, strict=True))
    return {
        "p_mask": p["mask"],
        "p_hand": p["hand"],
        "p_lower_face": 1.0 - (1.0 - p["mask"]) * (1.0 - p["hand"]),
        "p_sunglasses": p["sunglasses"],
        "p_eyes_closed": p["eyes_closed"],
    }


# -- the check -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def check_record() -> dict:
    """models/pretrained/capture_check.json: the limits and the blur model, chosen and fitted on
    training people by `faceverify train capture-check`, and how."""
    with LIMITS_FILE.open(encoding="utf-8") as f:
        return json.load(f)


def limits() -> dict:
    """The limits chosen on training people."""
    return check_record()["limits"]


def mirror_averaged() -> bool:
    """Whether the occlusion network's probabilities are averaged over the chip and its mirror
    image (chosen by the fitting command on training people; the record says so)."""
    return bool(check_record().get("occlusion_network", {}).get("mirror_average", False))


def blur_model() -> dict:
    """The blur model's standardisation and logistic weights over BLUR_FEATURES."""
    return check_record()["blur_model"]


def blurry_probability(measures: dict[str, float]) -> float:
    return blur_probability([measures[f"blur_{name}"] for name in BLUR_FEATURES], blur_model())


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
        **exposure(rgb, box, points[:, :2]),
    }
    return measures | chip_measures(chip, measures["face_width_px"])


def chip_measures(chip: np.ndarray, face_width_px: float) -> dict[str, float]:
    """The measures read from the aligned chip alone: sharpness, the blur model's features, the
    face's highlights."""
    energies, coherence = _gradient_energies(chip)  # once: both measures read them
    blur = blur_features(energies, coherence)
    return {
        "sharpness": sharpness(energies),
        **{f"blur_{name}": float(v) for name, v in zip(BLUR_FEATURES, blur, strict=True)},
        "face_highlight": face_highlight(chip),
    }


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

    if "p_lower_face" in measures:
        lower = measures["p_lower_face"]
        if lower > lim["lower_face_covered"]:
            code = FACE_MASK if measures["p_mask"] >= measures["p_hand"] else HAND_OVER_FACE
            out.append(Finding(code, round(lower, 4), lim["lower_face_covered"], "probability"))
        above(EYES_COVERED, "p_sunglasses", "probability")
        if EYES_COVERED not in [f.code for f in out]:  # closed or not, covered eyes cannot be told
            above(EYES_CLOSED, "p_eyes_closed", "probability")
    if "p_blurry" in measures:
        above(BLURRY, "p_blurry", "probability")
    backlit = measures["background_luminance"] - measures["face_luminance"]
    above(BACKLIT, "", "grey levels brighter behind", value=backlit)
    if BACKLIT not in [f.code for f in out]:  # a backlit face is dark; the backlight is the fix
        below(TOO_DARK, DARK_MEASURE, "grey level")
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
    rgb: np.ndarray,
    box: tuple[int, int, int, int],
    keypoints: list,
    chip: np.ndarray,
    scale: float = 1.0,
    predict_occlusion=None,
) -> CaptureCheck:
    """Measure the main face and list what the member should fix (empty findings: nothing).

    predict_occlusion: see occlusion_probabilities_many's predict."""
    start = time.perf_counter()
    measures = measure(rgb, box, keypoints, chip, scale)
    occlusion = occlusion_probabilities_many(chip[None], predict_occlusion)
    measures |= {k: float(v[0]) for k, v in occlusion.items()}
    measures["p_blurry"] = blurry_probability(measures)
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
