"""Training-time views of an aligned face: the seed's part blur, the usual jitter, grey + equalised.

An augmented view is a changed pair of chips (the 150x150 chip for dlib's ResNet and the 32x32 chip
for the gender network) that goes through the same pretrained networks as the original, giving one
more (embedding, gender log-odds) sample of the same person for training the heads. Nothing here
is used when verifying: the serving path always sees the photo as it is (with its mirror image,
core.verification.features).

    VIEW_KINDS                          "blur", "jitter", "gray"
    view_name(kind, seed, index)        the name a view is cached under ("blur.s7.0")
    make_view(kind, chip, gender_chip, rng) -> (chip, gender_chip)
    view_rng(sha256, name)              the view's own random generator: the same photo and view
                                        always give the same pixels

Where the parts are: dlib's get_face_chip maps the 5 landmarks onto a fixed template, so on every
chip the eyes, the nose and the mouth sit in the same place. TEMPLATE_REGIONS are boxes in that
template's unit square (dlib's 5-point template: eye corners near y=0.22, the nose base at
(0.49, 0.63)); a chip with padding p shows the square scaled by 1/(1+2p) and shifted by p.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from core.verification.faces import CHIP_PADDING, GENDER_CHIP_PADDING

VIEW_KINDS = ("blur", "jitter", "gray")

# Boxes (x0, y0, x1, y1) in dlib's template square.
TEMPLATE_REGIONS = {
    "eyes": (0.02, 0.08, 0.98, 0.36),
    "nose": (0.32, 0.30, 0.66, 0.70),
    "mouth": (0.18, 0.70, 0.82, 0.98),
}
BLUR_SIGMA = 0.04  # of the chip's width: strong enough to wipe out the part's detail
JITTER_BRIGHTNESS = 0.25  # +-25% of the mean level
JITTER_CONTRAST = 0.25  # +-25% contrast
JITTER_DEGREES = 8.0  # +- rotation about the chip centre


def view_name(kind: str, seed: int, index: int) -> str:
    if kind not in VIEW_KINDS:
        raise ValueError(f"unknown augmentation {kind!r}; use one of {', '.join(VIEW_KINDS)}")
    return f"{kind}.s{seed}.{index}"


def view_kind(name: str) -> str:
    return name.split(".", 1)[0]


def view_rng(sha256: str, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{sha256}|{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def region_box(part: str, size: int, padding: float) -> tuple[int, int, int, int]:
    """The part's box in pixels on a chip of this size and padding."""
    x0, y0, x1, y1 = TEMPLATE_REGIONS[part]
    scale = size / (1 + 2 * padding)
    return (
        int(round((padding + x0) * scale)),
        int(round((padding + y0) * scale)),
        int(round((padding + x1) * scale)),
        int(round((padding + y1) * scale)),
    )


def blur_part(chip: np.ndarray, part: str, padding: float) -> np.ndarray:
    """The chip with one part (eyes, nose or mouth) strongly blurred, soft-edged."""
    size = chip.shape[0]
    x0, y0, x1, y1 = region_box(part, size, padding)
    sigma = max(BLUR_SIGMA * size, 0.8)
    blurred = cv2.GaussianBlur(chip, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    mask = np.zeros((size, size), np.float32)
    mask[max(y0, 0) : min(y1, size), max(x0, 0) : min(x1, size)] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(sigma / 2, 0.5))[..., None]
    out = chip.astype(np.float32) * (1 - mask) + blurred.astype(np.float32) * mask
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jitter(chip: np.ndarray, brightness: float, contrast: float, degrees: float) -> np.ndarray:
    """Brightness and contrast change about the chip's mean, then a small rotation."""
    size = chip.shape[0]
    x = chip.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * (1 + contrast) + mean * (1 + brightness)
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if degrees:
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, 1.0)
        x = cv2.warpAffine(x, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return x


def gray_equalize(chip: np.ndarray) -> np.ndarray:
    """The seed's preprocessing: grey levels, histogram-equalised, back to three channels."""
    gray = cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(cv2.equalizeHist(gray), cv2.COLOR_GRAY2RGB)


def make_view(
    kind: str, chip: np.ndarray, gender_chip: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented view of both chips (the same change on each)."""
    if kind == "blur":
        part = ("eyes", "nose", "mouth")[int(rng.integers(0, 3))]
        return blur_part(chip, part, CHIP_PADDING), blur_part(gender_chip, part, GENDER_CHIP_PADDING)
    if kind == "jitter":
        b = float(rng.uniform(-JITTER_BRIGHTNESS, JITTER_BRIGHTNESS))
        c = float(rng.uniform(-JITTER_CONTRAST, JITTER_CONTRAST))
        d = float(rng.uniform(-JITTER_DEGREES, JITTER_DEGREES))
        return jitter(chip, b, c, d), jitter(gender_chip, b, c, d)
    if kind == "gray":
        return gray_equalize(chip), gray_equalize(gender_chip)
    raise ValueError(f"unknown augmentation {kind!r}; use one of {', '.join(VIEW_KINDS)}")
