"""Sharpness-and-contrast quality of an aligned face crop (the LOW_QUALITY flag's measure)."""

from __future__ import annotations

import math

import cv2
import numpy as np

# image_quality's scale, calibrated with scripts/calibrate_quality.py on dlib 150 x 150 aligned chips
# of 597 LFW photos (lfw_dev, seed 0). Normal LFW faces: 1st percentile 0.41, 5th 0.53, median 0.83
# (1.0% below the threshold). The same photos with Gaussian blur on the 250 px photo: sigma 1 (mild)
# median 0.45, 19% below; sigma 1.5 median 0.26, 82% below; sigma 2 median 0.13, 99% below; sigma 3
# all below. Shrunk to 1/4 and enlarged again (a face of ~30 px): median 0.23, 90% below.
LOW_QUALITY_THRESHOLD = 0.35
QUALITY_SIZE = 150  # crops are measured at the aligned chip's size, so any crop size compares
_SHARP_LO, _SHARP_HI = 3.0, 100.0  # variance of the Laplacian: 0 at or below LO, 1 at or above HI
_CONTRAST_LO, _CONTRAST_HI = 5.0, 25.0  # grey-level standard deviation: 0 at LO, 1 at HI
_MIN_VALID = 0.5  # share of the centre that must be real photo (not black fill) to score at all


def image_quality(rgb_crop: np.ndarray) -> float:
    """Sharpness-and-contrast quality of a face crop, 0 (unusable) to 1 (sharp, well lit).

    In:  H x W x 3 uint8 RGB (or H x W grey) crop, ideally the aligned 150 x 150 face chip.
    Out: float in [0, 1]; below LOW_QUALITY_THRESHOLD (0.35) the face should be flagged.

    The crop is brought to 150 x 150 (so a tiny face upscaled from a few pixels scores as
    blurred, which it is) and only its central two thirds are measured: that is the face in an
    aligned chip, without background. Pure black pixels, which alignment uses to fill where the
    chip runs off the photo, are left out with a margin, because their hard edge would read as
    sharpness. Sharpness is the variance of the Laplacian on a log scale from 3 (0) to 100 (1);
    contrast is the grey standard deviation from 5 (0) to 25 (1). quality = sharpness *
    sqrt(contrast): either being bad sinks the score, contrast less because the Laplacian already
    falls with contrast. Noise reads as sharpness, so a very noisy photo can score too well.
    """
    arr = np.asarray(rgb_crop)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.size == 0 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        return 0.0
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    gray = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else arr
    if gray.shape != (QUALITY_SIZE, QUALITY_SIZE):
        shrinking = gray.shape[0] * gray.shape[1] > QUALITY_SIZE * QUALITY_SIZE
        gray = cv2.resize(
            gray,
            (QUALITY_SIZE, QUALITY_SIZE),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
    fill = cv2.dilate((gray == 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    lo, hi = QUALITY_SIZE // 6, QUALITY_SIZE - QUALITY_SIZE // 6
    laplacian = cv2.Laplacian(gray, cv2.CV_64F)[lo:hi, lo:hi]
    valid = ~fill[lo:hi, lo:hi]
    if valid.mean() < _MIN_VALID:
        return 0.0
    laplacian_var = float(laplacian[valid].var())
    contrast_std = float(gray[lo:hi, lo:hi][valid].std())
    sharpness = math.log(max(laplacian_var, 1e-6) / _SHARP_LO) / math.log(_SHARP_HI / _SHARP_LO)
    contrast = (contrast_std - _CONTRAST_LO) / (_CONTRAST_HI - _CONTRAST_LO)
    sharpness = min(1.0, max(0.0, sharpness))
    contrast = min(1.0, max(0.0, contrast))
    return float(sharpness * math.sqrt(contrast))
