"""core.verification.imaging: every bad input gets its error code, every awkward one decodes correctly."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import badimages as bad
import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from core.errors import ImageError
from core.verification import decode_memory
from core.verification.imaging import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_WORK_SIZE,
    DecodedImage,
    decode_image,
)
from core.verification.quality import LOW_QUALITY_THRESHOLD, image_quality

CODES = {"empty", "not_an_image", "corrupt", "too_large", "too_many_pixels", "too_small", "busy"}


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def face_rgb() -> np.ndarray:
    return bad.sample_photo_rgb(bad.FACE_PHOTO)


# --- refused inputs -------------------------------------------------------------------------------


# pytest resets warning filters per test, undoing core.verification.imaging's filter for Pillow's own warning.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", sorted(bad.BAD_INPUTS))
def test_bad_input_gets_its_code(name):
    build, code = bad.BAD_INPUTS[name]
    with pytest.raises(ImageError) as info:
        decode_image(build())
    assert info.value.code == code
    assert code in CODES
    message = str(info.value)
    assert message and message[0].isupper() and message.endswith("."), message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_messages_name_the_limits():
    with pytest.raises(ImageError, match=r"25\.0 MB"):
        decode_image(bad.oversized_bytes())
    with pytest.raises(ImageError, match="100 megapixels"):
        decode_image(bad.bomb_png())
    with pytest.raises(ImageError, match="100 megapixels"):
        decode_image(bad.bomb_png(12000, 10000))
    with pytest.raises(ImageError, match="48 pixels"):
        decode_image(bad.tiny_image())
    with pytest.raises(ImageError, match="HEIC"):
        decode_image(bad.heic_bytes())
    with pytest.raises(ImageError, match="PDF"):
        decode_image(bad.pdf_bytes())
    with pytest.raises(ImageError, match="ZIP"):
        decode_image(bad.zip_bytes())
    with pytest.raises(ImageError, match="text"):
        decode_image(bad.text_bytes())


def test_limits_are_parameters():
    photo = bad.sample_photo_bytes()
    with pytest.raises(ImageError) as info:
        decode_image(photo, max_bytes=len(photo) - 1)
    assert info.value.code == "too_large"
    assert "KB" in str(info.value)
    with pytest.raises(ImageError) as info:
        decode_image(photo, max_pixels=250 * 250 - 1)
    assert info.value.code == "too_many_pixels"
    with pytest.raises(ImageError) as info:
        decode_image(photo, min_side=251)
    assert info.value.code == "too_small"
    # The same photo passes right at each limit.
    decoded = decode_image(photo, max_bytes=len(photo), max_pixels=250 * 250, min_side=250)
    assert decoded.rgb.shape == (250, 250, 3)


def test_bomb_refused_from_header_before_pixels():
    # Declares 3000 x 2000 but holds only 4 rows. With a 1 MP limit it is refused from the header.
    data = bad.bomb_png(3000, 2000)
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=1_000_000)
    assert info.value.code == "too_many_pixels"
    # Within the default limit it decodes: the refusal above was our limit, not a decoding error.
    # (Pillow fills the missing rows with black when the compressed stream ends cleanly; only a
    # stream cut mid-way, as in truncated_png, is reported as truncated.)
    assert decode_image(data).original_size == (3000, 2000)


def test_bomb_limit_default_is_100_megapixels():
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_truncated_jpeg_is_never_decoded_partly():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = bad.truncated_jpeg()
    Image.open(io.BytesIO(data))  # the header is whole: Pillow itself opens it ...
    with pytest.raises(ImageError) as info:
        decode_image(data)  # ... but the pixels are incomplete
    assert info.value.code == "corrupt"


def test_extreme_aspect_ratio_is_too_small_after_scaling():
    banner = Image.new("RGB", (4000, 60), (200, 100, 50))
    buf = io.BytesIO()
    banner.save(buf, "PNG")
    with pytest.raises(ImageError) as info:
        decode_image(buf.getvalue())
    assert info.value.code == "too_small"


def test_input_types():
    photo = bad.sample_photo_bytes()
    assert decode_image(bytearray(photo)).sha256 == decode_image(memoryview(photo)).sha256
    with pytest.raises(TypeError):
        decode_image("images/Julianne_Moore_0003.jpg")
    with pytest.raises(ImageError) as info:
        decode_image(None)
    assert info.value.code == "empty"


# --- accepted inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(bad.GOOD_INPUTS))
def test_good_input_decodes(name):
    data = bad.GOOD_INPUTS[name]()
    decoded = decode_image(data)
    assert isinstance(decoded, DecodedImage)
    rgb = decoded.rgb
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    assert max(rgb.shape[:2]) <= DEFAULT_WORK_SIZE
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert (decoded.width, decoded.height) == (rgb.shape[1], rgb.shape[0])
    w, h = decoded.original_size
    assert decoded.scale == pytest.approx(rgb.shape[1] / w)
    assert round(h * decoded.scale) == pytest.approx(rgb.shape[0], abs=1)


def test_plain_sample_photo_is_unchanged():
    decoded = decode_image(bad.sample_photo_bytes())
    assert decoded.format == "JPEG"
    assert decoded.original_size == (250, 250) and decoded.scale == 1.0
    assert np.array_equal(decoded.rgb, face_rgb())
    assert decoded.notes == []


def test_50_megapixel_jpeg_is_decoded_at_reduced_scale():
    data = bad.huge_jpeg_50mp()
    start = time.perf_counter()
    decoded = decode_image(data)
    elapsed = time.perf_counter() - start
    print(
        f"\n50 MP JPEG ({len(data) / 1e6:.1f} MB) decoded to {decoded.width}x{decoded.height} in {elapsed:.3f} s"
    )
    assert decoded.original_size == bad.HUGE_SIZE
    assert decoded.width == DEFAULT_WORK_SIZE
    assert decoded.height == pytest.approx(5773 * DEFAULT_WORK_SIZE / 8660, abs=1)
    assert decoded.scale == pytest.approx(DEFAULT_WORK_SIZE / 8660)
    assert any("draft" in note for note in decoded.notes)
    # The picture survives: the centre of the result is the face, scaled down.
    side = decoded.height
    x0 = (decoded.width - side) // 2
    centre = cv2.resize(decoded.rgb[:, x0 : x0 + side], (250, 250), interpolation=cv2.INTER_AREA)
    assert mean_abs_diff(centre, face_rgb()) < 12


def test_work_size_is_a_parameter():
    decoded = decode_image(bad.huge_jpeg_50mp(), work_size=640)
    assert max(decoded.rgb.shape[:2]) == 640
    small = decode_image(bad.sample_photo_bytes(), work_size=200)
    assert small.rgb.shape == (200, 200, 3) and small.scale == pytest.approx(0.8)


def test_rgba_png_composites_on_white():
    decoded = decode_image(bad.rgba_png())
    rgb = decoded.rgb
    for y, x in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        assert rgb[y, x].min() >= 250, f"corner {(y, x)} is {rgb[y, x]}, not white"
    # Inside the opaque ellipse the photo is untouched.
    assert mean_abs_diff(rgb[100:150, 100:150], face_rgb()[100:150, 100:150]) < 1
    assert any("white" in note for note in decoded.notes)


def test_la_png_composites_on_white():
    rgb = decode_image(bad.la_png()).rgb
    assert rgb[:, :60].min() >= 250  # the transparent left quarter
    grey = cv2.cvtColor(face_rgb(), cv2.COLOR_RGB2GRAY)
    assert mean_abs_diff(rgb[:, 70:, 0], grey[:, 70:]) < 2


def test_palette_png_decodes_close_to_original():
    assert mean_abs_diff(decode_image(bad.palette_png()).rgb, face_rgb()) < 6


def test_cmyk_jpeg_decodes_to_the_right_colours():
    decoded = decode_image(bad.cmyk_jpeg())
    assert mean_abs_diff(decoded.rgb, face_rgb()) < 8
    # Colour survives (not inverted, not grey): per-channel means match.
    assert np.allclose(decoded.rgb.mean(axis=(0, 1)), face_rgb().mean(axis=(0, 1)), atol=6)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_decodes_upright(orientation):
    data = bad.exif_rotated_jpeg(orientation)
    upright = bad.exif_upright_rgb()
    decoded = decode_image(data)
    assert decoded.rgb.shape == upright.shape  # 200 high, 250 wide
    assert decoded.original_size == (250, 200)
    assert mean_abs_diff(decoded.rgb, upright) < 4
    # Sanity: the stored pixels, read without the tag, are not upright.
    stored = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    assert stored.shape != upright.shape or mean_abs_diff(stored, upright) > 20


def test_large_exif_rotated_jpeg_is_drafted_then_turned_upright():
    upright = Image.fromarray(bad.exif_upright_rgb()).resize((3000, 2400), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    decoded = decode_image(buf.getvalue(), work_size=500)
    assert decoded.original_size == (3000, 2400)
    assert decoded.rgb.shape == (400, 500, 3)
    assert decoded.scale == pytest.approx(500 / 3000)
    assert any("draft" in n for n in decoded.notes) and any("orientation 6" in n for n in decoded.notes)
    expected = np.array(upright.resize((500, 400), Image.Resampling.LANCZOS))
    assert mean_abs_diff(decoded.rgb, expected) < 4


def test_pillow_bomb_warning_is_replaced_by_our_limit():
    # Outside pytest (which resets warning filters per test) a 120 MP header gives our error and
    # no DecompressionBombWarning on stderr.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import badimages\n"
        "from core.verification.imaging import decode_image\n"
        "try:\n"
        "    decode_image(badimages.bomb_png(12000, 10000))\n"
        "except Exception as exc:\n"
        "    print(exc.code)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code, str(root), str(root / "tests")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "too_many_pixels", done.stderr
    assert "DecompressionBombWarning" not in done.stderr


def test_grayscale_jpeg_becomes_three_equal_channels():
    rgb = decode_image(bad.grayscale_jpeg()).rgb
    assert rgb.shape == (250, 250, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert mean_abs_diff(rgb[..., 0], cv2.cvtColor(face_rgb(), cv2.COLOR_RGB2GRAY)) < 3


def test_16bit_png_is_scaled_not_clipped():
    decoded = decode_image(bad.png_16bit())
    grey = np.array(Image.fromarray(face_rgb()).convert("L"))
    assert mean_abs_diff(decoded.rgb[..., 0], grey) < 1
    assert decoded.rgb.mean() < 200  # clipping would make it almost white


def test_48bit_rgb_png_decodes():
    assert mean_abs_diff(decode_image(bad.png_16bit_rgb()).rgb, face_rgb()) < 1


def test_animated_gif_uses_first_frame():
    decoded = decode_image(bad.animated_gif())
    assert decoded.format == "GIF"
    assert mean_abs_diff(decoded.rgb, face_rgb()) < 12  # GIF's 256-colour palette costs a little
    assert any("first frame" in note for note in decoded.notes)


@pytest.mark.parametrize(
    ("name", "fmt", "tolerance"),
    [("webp", "WEBP", 6), ("bmp", "BMP", 0), ("tiff", "TIFF", 0), ("mpo", "MPO", 4)],
)
def test_other_formats(name, fmt, tolerance):
    decoded = decode_image(bad.GOOD_INPUTS[name]())
    assert decoded.format == fmt
    assert mean_abs_diff(decoded.rgb, face_rgb()) <= tolerance


def test_blank_and_two_face_images_decode():
    blank = decode_image(bad.blank_image())
    assert blank.rgb.shape == (480, 640, 3) and blank.rgb.std() < 2
    two = decode_image(bad.two_faces_jpeg())
    assert two.rgb.shape == (250, 500, 3)


def test_sample_photos_all_decode():
    for path in sorted(bad.SAMPLE_IMAGES.glob("*.jpg")):
        decoded = decode_image(path.read_bytes())
        assert decoded.rgb.shape == (250, 250, 3), path.name
    for name in bad.SAMPLE_TWO_FACE_PHOTOS:
        assert (bad.SAMPLE_IMAGES / name).exists(), name


# --- quality --------------------------------------------------------------------------------------


def centre_crop(rgb: np.ndarray) -> np.ndarray:
    return rgb[50:200, 50:200]  # LFW photos are centred on the face


def test_quality_sharp_sample_faces_score_above_threshold():
    scores = [
        image_quality(centre_crop(bad.sample_photo_rgb(p.name)))
        for p in sorted(bad.SAMPLE_IMAGES.glob("*.jpg"))
    ]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert min(scores) > LOW_QUALITY_THRESHOLD
    assert float(np.median(scores)) > LOW_QUALITY_THRESHOLD + 0.3


def test_quality_heavily_blurred_faces_score_below_threshold():
    for path in sorted(bad.SAMPLE_IMAGES.glob("*.jpg")):
        blurred = cv2.GaussianBlur(bad.sample_photo_rgb(path.name), (0, 0), 3)
        assert image_quality(centre_crop(blurred)) < LOW_QUALITY_THRESHOLD, path.name


def test_quality_low_contrast_and_tiny_faces_score_low():
    face = centre_crop(face_rgb())
    washed_out = (face.astype(np.float32) * 0.15 + 110).astype(np.uint8)
    assert image_quality(washed_out) < LOW_QUALITY_THRESHOLD
    tiny = cv2.resize(face, (24, 24), interpolation=cv2.INTER_AREA)  # upscaled inside: blurred
    assert image_quality(tiny) < LOW_QUALITY_THRESHOLD
    assert image_quality(np.full((150, 150, 3), 128, np.uint8)) == 0.0


def test_quality_ignores_black_fill_from_alignment():
    # A blurred face whose chip ran off the photo: the black fill's hard edge is not sharpness.
    chip = cv2.resize(cv2.GaussianBlur(centre_crop(face_rgb()), (0, 0), 3), (150, 150))
    chip[:, :50] = 0
    assert image_quality(chip) < LOW_QUALITY_THRESHOLD
    assert image_quality(np.zeros((150, 150, 3), np.uint8)) == 0.0


def test_quality_accepts_any_crop_layout():
    face = centre_crop(face_rgb())
    score = image_quality(face)
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    assert image_quality(grey) == pytest.approx(score, abs=1e-9)
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    assert image_quality(rgba) == pytest.approx(score, abs=1e-9)
    assert image_quality(face.astype(np.float32)) == pytest.approx(score, abs=1e-9)
    big = cv2.resize(face, (600, 600), interpolation=cv2.INTER_CUBIC)
    assert abs(image_quality(big) - score) < 0.15  # measured at 150 px whatever the crop size
    assert image_quality(np.zeros((0, 0, 3), np.uint8)) == 0.0
    assert isinstance(score, float)


# --- memory budget -------------------------------------------------------------------------------


def test_decoder_memory_is_judged_by_pixel_format_from_the_header():
    # 99 MP is under the pixel limit, but as RGB it would need 378 MiB of decoder memory.
    with pytest.raises(ImageError) as info:
        decode_image(bad.bomb_png(9950, 9950))
    assert info.value.code == "too_many_pixels"
    assert "377.7 MB of memory, above the limit of 256.0 MB" in str(info.value)
    assert decode_memory.decode_cost_bytes("I;16", (9950, 9950)) == 9950 * 9950 * 2
    assert decode_memory.decode_cost_bytes("P", (100, 100)) == 100 * 100 * 5  # converted before shrinking
    assert decode_memory.decode_cost_bytes("RGB", (100, 100)) == 100 * 100 * 4


def test_99_megapixel_16bit_grey_png_decodes_at_reduced_scale_in_little_memory():
    """The photo that took 3.6 GB: decoded in its own 16-bit format, shrunk at once, then converted.
    Measured in a fresh process (peak resident memory, imports included)."""
    code = (
        "import resource, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import badimages\n"
        "from core.verification.imaging import decode_image\n"
        "data = badimages.grey16_png()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "d = decode_image(data)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "import json; print(json.dumps([len(data), d.original_size, d.rgb.shape, float(d.rgb.mean()), (after - before) // 1024]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(root / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    size, original, shape, mean, grown_mb = json.loads(done.stdout)
    assert size < 250_000 and original == [9950, 9950] and shape == [1280, 1280, 3]
    assert round(mean) == 128  # 0x8000 / 257: scaled, not clipped
    # 190 MiB for Pillow's 16-bit buffer plus a 1/9 copy (it took 2.5 GB and 27 s before).
    assert grown_mb < 300, done.stdout


def test_photos_decoded_at_once_share_the_process_budget(monkeypatch):
    data = bad.grey16_png(3000, 3000)  # 18 MB to decode
    cost = decode_memory.decode_cost_bytes("L", (3000, 3000))
    budget = decode_memory.DecodeBudget(int(cost * 1.5))  # room for one at a time, not two
    monkeypatch.setattr(decode_memory, "_budget", budget)
    monkeypatch.setattr(decode_memory, "DECODE_WAIT_S", 600.0)  # a busy test machine must not time out
    results, errors = [], []

    def decode():
        try:
            results.append(decode_image(data).rgb.shape)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    import threading

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 4
    assert budget.peak == cost and budget.in_use == 0


def test_a_full_budget_answers_busy_instead_of_waiting_forever(monkeypatch):
    budget = decode_memory.DecodeBudget(10_000_000)
    monkeypatch.setattr(decode_memory, "_budget", budget)
    monkeypatch.setattr(decode_memory, "DECODE_WAIT_S", 0.2)
    with budget.hold(10_000_000):
        with pytest.raises(ImageError) as info:
            decode_image(bad.grey16_png(2000, 2000))
    assert info.value.code == "busy"
    assert budget.in_use == 0
    assert decode_image(bad.grey16_png(2000, 2000)).rgb.shape == (1280, 1280, 3)


def test_concurrent_decodes_of_the_worst_png_stay_within_the_budget():
    """Eight threads at once, in a fresh process: the budget holds the peak (Pillow's PNG getexif()
    used to decode each photo in full before the budget was taken: 1.6 GB here)."""
    code = (
        "import resource, sys, threading; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import badimages\n"
        "from core.verification.imaging import decode_image\n"
        "data = badimages.grey16_png()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "ts = [threading.Thread(target=decode_image, args=(data,)) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(root / "tests")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) < 450, done.stdout  # one 190 MiB buffer at a time, not eight
