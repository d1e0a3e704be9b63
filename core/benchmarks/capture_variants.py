"""Synthetic capture problems drawn on real photos, for measuring and fitting the capture check.

make_variant(rgb, landmarks68, box, kind, rng) -> RGB uint8     one problem drawn on a copy

The drawing follows dlib's 68 landmarks (the way MaskTheFace places masks), which are a different
model from the face mesh the check itself reads, so the check is not graded on its own points.
These are synthetic: a drawn mask, hand or pair of sunglasses is not a photo of one, and the
figures they give are an estimate of what real photos would show, not a measurement of them.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

KINDS = (
    "mask",
    "hand",
    "sunglasses",
    "eyes_closed",
    "blur",
    "dark",
    "bright",
    "backlit",
    "small",
    "cut_off",
)

_MASK_COLOURS = [
    (150, 190, 225),  # surgical blue
    (235, 235, 235),  # white KF94
    (35, 35, 40),  # black cloth
    (120, 120, 125),  # grey
    (225, 180, 190),  # pink
    (40, 50, 90),  # navy
    (200, 185, 160),  # beige
]
_SKIN_TONES = [(240, 200, 170), (225, 180, 150), (200, 150, 120), (170, 120, 90), (120, 80, 60), (90, 60, 45)]


@lru_cache(maxsize=1)
def _predictor68():
    import dlib
    import face_recognition_models

    return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


def landmarks68(rgb: np.ndarray, dlib_box: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's 68 landmarks (68 x 2 float) on a box given as (left, top, right, bottom)."""
    import dlib

    shape = _predictor68()(np.ascontiguousarray(rgb), dlib.rectangle(*dlib_box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _to_linear(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) / 255.0) ** 2.2


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    return (np.clip(linear, 0, 1) ** (1 / 2.2) * 255.0 + 0.5).astype(np.uint8)


def _blend(rgb: np.ndarray, layer: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32)
    return np.clip(rgb.astype(np.float32) * (1 - a) + layer.astype(np.float32) * a, 0, 255).astype(np.uint8)


def _soft(mask: np.ndarray, face_width: float) -> np.ndarray:
    k = max(1, int(face_width * 0.01)) * 2 + 1
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), 0)


def _scene_gain(rgb: np.ndarray, pts: np.ndarray) -> float:
    """How bright the face is lit, so a drawn object is lit like the face (1.0 = ordinary)."""
    x0, y0 = pts.min(axis=0).astype(int)
    x1, y1 = pts.max(axis=0).astype(int)
    patch = rgb[max(0, y0) : max(1, y1), max(0, x0) : max(1, x1)]
    return float(np.clip(patch.mean() / 130.0, 0.3, 1.6)) if patch.size else 1.0


def _texture(shape, colour, rng, noise: float, shade_dir: float, face_width: float) -> np.ndarray:
    h, w = shape
    layer = np.empty((h, w, 3), np.float32)
    layer[:] = colour
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = (np.cos(shade_dir) * xx + np.sin(shade_dir) * yy) / max(h, w)
    layer *= (1.0 + rng.uniform(0.1, 0.35) * (gradient - gradient.mean()))[..., None]
    layer += rng.normal(0, noise, (h, w, 1)).astype(np.float32)
    return cv2.GaussianBlur(layer, (3, 3), 0) if face_width > 60 else layer


def draw_mask(rgb, pts, rng):
    face_width = float(np.linalg.norm(pts[16] - pts[0]))
    top = pts[rng.choice([28, 29, 29, 30])]
    jaw = [pts[i] for i in range(1, 16)]
    left_top, right_top = pts[1] * 0.7 + pts[28] * 0.3, pts[15] * 0.7 + pts[28] * 0.3
    polygon = np.array(jaw + [right_top, top + (0, -0.03 * face_width), left_top], dtype=np.float32)
    # a mask stands off the jaw a little
    centre = polygon.mean(axis=0)
    polygon = centre + (polygon - centre) * rng.uniform(1.02, 1.1)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(mask, [polygon.astype(np.int32)], 1)
    colour = np.array(_MASK_COLOURS[rng.integers(len(_MASK_COLOURS))], np.float32)
    colour = np.clip(colour * _scene_gain(rgb, pts) * rng.uniform(0.8, 1.1), 0, 255)
    layer = _texture(rgb.shape[:2], colour, rng, rng.uniform(2, 8), rng.uniform(0, 2 * np.pi), face_width)
    if rng.random() < 0.5:  # pleats of a surgical mask
        for k in range(3):
            y = int(top[1] + (pts[8, 1] - top[1]) * (0.3 + 0.2 * k))
            cv2.line(
                layer, (int(pts[2, 0]), y), (int(pts[14, 0]), y), tuple(float(c) * 0.8 for c in colour), 1
            )
    if rng.random() < 0.5:  # ear straps
        for a, b in ((left_top, pts[0]), (right_top, pts[16])):
            cv2.line(layer, tuple(a.astype(int)), tuple(b.astype(int)), tuple(float(c) for c in colour), 2)
            cv2.line(mask, tuple(a.astype(int)), tuple(b.astype(int)), 1, 2)
    return _blend(rgb, layer, _soft(mask, face_width))


def draw_hand_near(rgb, pts, rng):
    """A hand under the chin that leaves the face uncovered (a chin resting on a hand, a gloved
    hand at the collar): not a finding. The network learns it as one more unmodified face, so
    that it looks for what covers the mouth and nose, not for a hand anywhere near them."""
    return draw_hand(rgb, pts, rng, below_chin=True)


def draw_hand(rgb, pts, rng, below_chin: bool = False):
    face_width = float(np.linalg.norm(pts[16] - pts[0]))
    if rng.random() < 0.5:
        colour = np.median(rgb[_cheek_pixels(rgb, pts)].reshape(-1, 3), axis=0) * rng.uniform(0.9, 1.15)
    else:
        colour = np.array(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], np.float32) * _scene_gain(rgb, pts)
    colour = np.clip(colour, 0, 255).astype(np.float32)
    side = rng.choice([-1, 1])
    nose_bottom, chin = pts[33], pts[8]
    finger_w = face_width * rng.uniform(0.1, 0.14)
    n_fingers = 4
    first_y = nose_bottom[1] + rng.uniform(-0.3, 0.3) * finger_w
    if below_chin:  # the top finger along the chin, the rest below it
        first_y = chin[1] + rng.uniform(0.0, 0.5) * finger_w
    # fingers across the mouth from one side of the face; the palm on that side below the jaw
    edge_x = pts[0, 0] if side < 0 else pts[16, 0]
    tip_reach = rng.uniform(0.55, 0.9) * face_width
    tilt = rng.uniform(-0.35, 0.35)
    if below_chin:  # level or pointing down: a finger rising from under the chin would cover the mouth
        tilt = rng.uniform(0.0, 0.35)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    shade = np.zeros(rgb.shape[:2], np.float32)
    layer = _texture(rgb.shape[:2], colour, rng, rng.uniform(2, 5), rng.uniform(0, 2 * np.pi), face_width)
    for k in range(n_fingers):
        y = first_y + k * finger_w * 0.95
        start = np.array([edge_x + side * 0.1 * face_width, y])
        end = start + np.array([-side * tip_reach * (1 - 0.08 * abs(k - 1.5)), tilt * tip_reach])
        t = int(round(finger_w))
        cv2.line(mask, tuple(start.astype(int)), tuple(end.astype(int)), 1, t)
        cv2.line(shade, tuple(start.astype(int)), tuple(end.astype(int)), 1.0, max(1, t // 6))
    palm_centre = np.array([edge_x, max(chin[1], first_y + n_fingers * finger_w * 0.8)])
    axes = (int(face_width * rng.uniform(0.25, 0.35)), int(face_width * rng.uniform(0.35, 0.5)))
    cv2.ellipse(mask, tuple(palm_centre.astype(int)), axes, float(rng.uniform(-30, 30)), 0, 360, 1, -1)
    # dark gaps between fingers, lighter ridges along them
    edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32)
    layer *= (1 - 0.25 * edges[..., None]) * (1 + 0.08 * shade[..., None])
    return _blend(rgb, layer, _soft(mask, face_width))


def _cheek_pixels(rgb, pts):
    mask = np.zeros(rgb.shape[:2], bool)
    for a, b in ((1, 31), (15, 35)):
        c = (pts[a] + pts[b]) / 2
        r = max(2, int(np.linalg.norm(pts[a] - pts[b]) * 0.2))
        y0, x0 = int(c[1]) - r, int(c[0]) - r
        mask[max(0, y0) : max(0, y0 + 2 * r), max(0, x0) : max(0, x0 + 2 * r)] = True
    if not mask.any():
        mask[:] = True
    return mask


def draw_sunglasses(rgb, pts, rng):
    face_width = float(np.linalg.norm(pts[16] - pts[0]))
    angle = float(np.degrees(np.arctan2(pts[45, 1] - pts[36, 1], pts[45, 0] - pts[36, 0])))
    lens_colour = np.array(
        [(15, 15, 15), (45, 30, 20), (20, 30, 50), (40, 40, 40), (60, 45, 25)][rng.integers(5)], np.float32
    )
    layer = _texture(rgb.shape[:2], lens_colour, rng, 2.0, rng.uniform(0, 2 * np.pi), face_width)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    rounded = rng.random() < 0.5
    for eye in (pts[36:42], pts[42:48]):
        centre = eye.mean(axis=0) + (0, rng.uniform(-0.01, 0.04) * face_width)
        width = float(np.linalg.norm(eye[3] - eye[0])) * rng.uniform(1.5, 1.9)
        height = width * rng.uniform(0.7, 0.95)
        if rounded:
            cv2.ellipse(
                mask, tuple(centre.astype(int)), (int(width / 2), int(height / 2)), angle, 0, 360, 1, -1
            )
        else:
            box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (width, height), angle))
            cv2.fillConvexPoly(mask, box.astype(np.int32), 1)
    frame_t = max(1, int(face_width * 0.02))
    cv2.line(mask, tuple(pts[39].astype(int)), tuple(pts[42].astype(int)), 1, frame_t)
    cv2.line(mask, tuple(pts[36].astype(int)), tuple(pts[0].astype(int)), 1, frame_t)
    cv2.line(mask, tuple(pts[45].astype(int)), tuple(pts[16].astype(int)), 1, frame_t)
    # a highlight across the lenses
    yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]].astype(np.float32)
    streak = np.exp(-(((xx - yy * rng.uniform(-0.5, 0.5)) - pts[27, 0]) ** 2) / (2 * (0.1 * face_width) ** 2))
    layer += (rng.uniform(20, 70) * streak)[..., None]
    alpha = _soft(mask, face_width) * rng.uniform(0.85, 1.0)
    return _blend(rgb, layer, alpha)


def _lid(height_at_middle: float, s: np.ndarray) -> np.ndarray:
    """A lid's offset across the eye at positions s (0 and 1 are the corners, where lids meet):
    a parabola through both corners and the lid's middle."""
    return 4.0 * height_at_middle * s * (1.0 - s)


def draw_eyes_closed(rgb, pts, rng):
    """Both upper lids lowered over the eyes, the way an eye closes.

    In each eye's own frame (along the corners, and down across them) the skin between the crease
    and the upper lid's edge is stretched down to a closing line near the lower lid: the opening
    (white, iris) disappears under the person's own lid skin, and the upper lashes end up on the
    closing line, darkened a little where they meet the lower ones. Nothing is painted from a
    palette, so the lid keeps the photo's skin, light, grain and make-up.
    """
    face_width = float(np.linalg.norm(pts[16] - pts[0]))
    h, w = rgb.shape[:2]
    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    lashes = np.zeros((h, w), np.float32)
    # where the lid's edge stops, 0 upper lid .. 1 lower lid: closed, not a squint (which stops short)
    closing = rng.uniform(0.92, 1.0)
    for corner_a, upper, corner_b, lower in ((36, [37, 38], 39, [40, 41]), (42, [43, 44], 45, [46, 47])):
        a, b = pts[corner_a], pts[corner_b]
        length = float(np.linalg.norm(b - a))
        if length < 2:
            continue
        along = (b - a) / length
        down = np.array([-along[1], along[0]]) * (1 if along[0] >= 0 else -1)  # points down the face
        upper_mid = float(np.mean((pts[upper] - a) @ down))  # negative: above the corners' line
        lower_mid = float(np.mean((pts[lower] - a) @ down))
        opening = max(lower_mid - upper_mid, 0.04 * length)
        crease = upper_mid - rng.uniform(0.8, 1.2) * opening  # skin above it stays where it is
        x0, x1 = int(max(0, min(a[0], b[0]) - 2)), int(min(w, max(a[0], b[0]) + 3))
        y0 = int(max(0, min(a[1], b[1]) + crease - 3))
        y1 = int(min(h, max(a[1], b[1]) + lower_mid + 4))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        rel = np.stack([xx - a[0], yy - a[1]], axis=-1)
        s, t = rel @ along / length, rel @ down
        inside = (s > 0) & (s < 1)
        upper_t = np.minimum(_lid(upper_mid, np.clip(s, 0, 1)), -1e-3)
        close_t = upper_t + closing * (_lid(lower_mid, np.clip(s, 0, 1)) - upper_t)
        top = np.minimum(crease, upper_t - 1e-3)
        lid = inside & (t >= top) & (t <= close_t)
        # rows from the crease down to the closing line show the rows from the crease to the lid's edge
        source_t = top + (t - top) * (upper_t - top) / np.maximum(close_t - top, 1e-3)
        source = a + s[..., None] * length * along + source_t[..., None] * down
        map_x[y0:y1, x0:x1] = np.where(lid, source[..., 0], xx)
        map_y[y0:y1, x0:x1] = np.where(lid, source[..., 1], yy)
        width = max(0.6, 0.012 * face_width)
        band = np.exp(-(((t - close_t) / width) ** 2)) * np.sqrt(np.clip(4 * s * (1 - s), 0, 1))
        lashes[y0:y1, x0:x1] = np.maximum(lashes[y0:y1, x0:x1], band * inside)
    out = cv2.remap(np.ascontiguousarray(rgb), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    darker = 1.0 - rng.uniform(0.25, 0.5) * lashes[..., None]
    return np.clip(out.astype(np.float32) * darker, 0, 255).astype(np.uint8)


def blur(rgb, pts, rng):
    face_width = float(np.linalg.norm(pts[16] - pts[0]))
    if rng.random() < 0.6:
        sigma = face_width * rng.uniform(0.02, 0.04)
        return cv2.GaussianBlur(rgb, (0, 0), sigma)
    length = max(3, int(face_width * rng.uniform(0.08, 0.15)))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel /= kernel.sum()
    return cv2.filter2D(rgb, -1, kernel)


def _noisy(linear: np.ndarray, rng, amount: float) -> np.ndarray:
    return linear + rng.normal(0, amount, linear.shape).astype(np.float32) * np.sqrt(np.maximum(linear, 1e-4))


def dark(rgb, pts, rng):
    linear = _to_linear(rgb) * rng.uniform(0.03, 0.12)
    return _to_srgb(_noisy(linear, rng, rng.uniform(0.005, 0.02)))


def bright(rgb, pts, rng):
    return _to_srgb(_to_linear(rgb) * rng.uniform(4.0, 8.0))


def backlit(rgb, pts, rng):
    face_width = float(np.linalg.norm(pts[16] - pts[0]))
    person = np.zeros(rgb.shape[:2], np.uint8)
    hull = cv2.convexHull(pts.astype(np.float32))
    centre = pts.mean(axis=0)
    head = centre + (hull.reshape(-1, 2) - centre) * 1.35 - (0, 0.15 * face_width)
    cv2.fillConvexPoly(person, head.astype(np.int32), 1)
    shoulders_top = int(pts[8, 1])
    x0, x1 = int(centre[0] - 1.3 * face_width), int(centre[0] + 1.3 * face_width)
    person[shoulders_top:, max(0, x0) : max(0, x1)] = 1
    person = cv2.GaussianBlur(person.astype(np.float32), (0, 0), face_width * 0.05)
    linear = _to_linear(rgb)
    subject = _noisy(linear * rng.uniform(0.04, 0.15), rng, 0.01)
    background = np.maximum(linear * rng.uniform(3.0, 6.0), rng.uniform(0.5, 0.9))
    return _to_srgb(subject * person[..., None] + background * (1 - person[..., None]))


def small(rgb, pts, rng, face_box_width: float, target_width: float | None = None):
    target = target_width if target_width is not None else rng.uniform(40, 78)
    factor = target / face_box_width
    h, w = rgb.shape[:2]
    shrunk = cv2.resize(rgb, (max(8, int(w * factor)), max(8, int(h * factor))), interpolation=cv2.INTER_AREA)
    canvas = cv2.GaussianBlur(rgb, (0, 0), max(h, w) * 0.08)
    sh, sw = shrunk.shape[:2]
    y = int(rng.integers(0, max(1, h - sh)))
    x = int(rng.integers(0, max(1, w - sw)))
    canvas[y : y + sh, x : x + sw] = shrunk
    return canvas


def cut_off(rgb, pts, rng):
    """Crop the photo so that 35-55% of the face's width or height falls outside it."""
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    share = rng.uniform(0.35, 0.55)
    h, w = rgb.shape[:2]
    side = rng.choice(["left", "right", "bottom"])
    if side == "left":
        return rgb[:, int(min(w - 48, x0 + share * (x1 - x0))) :]
    if side == "right":
        return rgb[:, : int(max(48, x1 - share * (x1 - x0)))]
    return rgb[: int(max(48, y1 - share * (y1 - y0))), :]


_DRAW = {
    "mask": draw_mask,
    "hand": draw_hand,
    "sunglasses": draw_sunglasses,
    "eyes_closed": draw_eyes_closed,
    "blur": blur,
    "dark": dark,
    "bright": bright,
    "backlit": backlit,
    "cut_off": cut_off,
    "hand_near": draw_hand_near,  # training only: a negative, not one of KINDS
}


def make_variant(rgb: np.ndarray, pts: np.ndarray, face_box_width: float, kind: str, rng) -> np.ndarray:
    """A copy of rgb with one synthetic capture problem of the given kind."""
    if kind == "small":
        return small(rgb, pts, rng, face_box_width)
    return np.ascontiguousarray(_DRAW[kind](rgb, pts, rng))
