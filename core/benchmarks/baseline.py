"""The bare pretrained pipeline, for comparison only: the same decoding and MediaPipe detection as
the product, dlib's 5 landmarks on MediaPipe's box as it comes, then dlib-bin's own ResNet
embedding and its Euclidean distance at dlib's 0.6. No box adapter, mirror or trained heads: the
product's gain over this is theirs.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from core.errors import ImageError
from core.verification import faces as face_ops
from core.verification import imaging

DLIB_THRESHOLD = 0.6


@lru_cache(maxsize=1)
def _dlib_model():
    import dlib
    import face_recognition_models

    return dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())


def dlib_embedding(data: bytes) -> np.ndarray | None:
    """dlib's 128-d descriptor of the main face, or None when there is no usable face."""
    try:
        rgb = imaging.decode_image(data).rgb
    except ImageError:
        return None
    faces = face_ops.detect_faces(rgb)
    main = face_ops.main_face_index(faces, rgb.shape[1], rgb.shape[0])
    if main is None:
        return None
    chip = face_ops.align_face(rgb, faces[main], adapt_box=False).chip
    return np.asarray(_dlib_model().compute_face_descriptor(chip), dtype=np.float32)


def verify_pair(gallery: bytes, verification: bytes) -> tuple[bool | None, float | None]:
    """(same person?, distance) by dlib's rule; (None, None) when a photo has no usable face."""
    a, b = dlib_embedding(gallery), dlib_embedding(verification)
    if a is None or b is None:
        return None, None
    distance = float(np.linalg.norm(a - b))
    return distance < DLIB_THRESHOLD, distance
