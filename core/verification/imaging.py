"""Photo bytes -> upright RGB pixels: the first stage of every verification.

decode_image(data) -> DecodedImage     bytes in; RGB uint8 array (EXIF orientation applied, at most
                                        `work_size` px on the long side), original size, scale,
                                        sha256 and format out. Raises core.errors.ImageError.

The decoder's memory (what a photo costs, the process-wide budget) is core.verification.decode_memory;
a face crop's quality score is core.verification.quality.

ImageError.code is one of:
    empty            no bytes at all
    not_an_image     text, PDF, ZIP, HEIC or any format not in ALLOWED_FORMATS
    corrupt          a known format whose pixels cannot be decoded (truncated, broken)
    too_large        more bytes than max_bytes
    too_many_pixels  more pixels than max_pixels (decompression bombs), or more decoder memory than
                     max_decode_bytes for its pixel format; rejected from the header, before decoding
    busy             the process-wide decode budget stayed full for DECODE_WAIT_S (retry later)
    too_small        shorter side under min_side pixels: too small to hold a usable face

No Streamlit here: pages, the batch runner, the API and the tests all call these functions.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from core.errors import ImageError
from core.verification.decode_memory import CONVERTED_BEFORE_SHRINK, decode_budget, decode_cost_bytes

try:  # littlecms ships with Pillow's wheels, but a source build may lack it
    from PIL import ImageCms
except ImportError:  # pragma: no cover
    ImageCms = None

DEFAULT_MAX_BYTES = 25 * 1024 * 1024  # 25 MB: above any phone photo, below what hurts a server
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: above any phone or DSLR photo (50 MP is accepted)
DEFAULT_WORK_SIZE = 1280  # long side after scaling: a face filling 1/10 of the photo is still 128 px
DEFAULT_MIN_SIDE = 48  # a face must fit inside the photo; the aligned chip is 150 px
# Memory the decoder may take for one photo, whatever its format and bit depth: Pillow keeps 1
# byte per pixel for L and P, 2 for 16-bit grey, 4 for RGB, RGBA, CMYK, 32-bit and float. A 50 MP
# RGB PNG needs 200 MB and is accepted; a 99 MP RGB PNG (396 MB) is refused from its header.
DEFAULT_MAX_DECODE_BYTES = 256 * 1024 * 1024
# Formats Pillow may open. Anything else (HEIC without a plugin, PSD, EPS, PDF, ...) is not a photo
# for us; listing them also stops Pillow from probing exotic decoders on untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# MPO is how Pillow names the multi-picture JPEGs many cameras and phones write; its JPEG plugin
# returns them, so MPO is accepted as a result but is not a plugin name to open with.
RESULT_FORMATS = ALLOWED_FORMATS + ("MPO",)
# File extension the photo store gives each decoded format.
FILE_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
    "TIFF": "tif",
}

# Our explicit max_pixels check replaces Pillow's DecompressionBombWarning (raised between 89 and
# 179 MP, a range that includes photos we accept). Pillow's DecompressionBombError (> 179 MP) still
# fires and is reported as too_many_pixels. Only this one warning category from PIL is silenced.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module=r"PIL\.")

# Magic numbers of common non-image uploads, only to word the error message helpfully.
_KNOWN_NON_IMAGES = (  # signature, what it is, its catalog name (image_kind.<name>)
    (b"%PDF", "a PDF document", "pdf"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)", "zip"),
    (b"PK\x05\x06", "an empty ZIP archive", "empty_zip"),
    (b"\x1f\x8b", "a gzip archive", "gzip"),
    (b"Rar!", "a RAR archive", "rar"),
    (b"7z\xbc\xaf", "a 7-Zip archive", "7z"),
    (b"<?xml", "an XML or SVG file", "xml"),
    (b"<svg", "an SVG drawing", "svg"),
    (b"{", "a JSON or text file", "json"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")

WHITE = (255, 255, 255)


@dataclass
class DecodedImage:
    """A decoded photo, ready for face detection.

    rgb            H x W x 3 uint8 RGB, upright (EXIF orientation applied), long side <= work_size
    original_size  (width, height) of the full-resolution upright photo, before scaling
    scale          rgb width / original width (1.0 when not scaled); divide rgb coordinates by it
                   to get coordinates in the original photo
    sha256         hex digest of the input bytes (the photo store's key)
    format         Pillow's format name: "JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF" or "MPO"
    notes          what was done on the way, in plain English (EXIF rotation, draft decoding, ...)
    """

    rgb: np.ndarray
    original_size: tuple[int, int]
    scale: float
    sha256: str
    format: str
    notes: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    work_size: int = DEFAULT_WORK_SIZE,
    min_side: int = DEFAULT_MIN_SIDE,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> DecodedImage:
    """Decode photo bytes into an upright RGB uint8 array of at most `work_size` px on the long side.

    In:  the raw bytes of an uploaded file (bytes, bytearray or memoryview).
    Out: DecodedImage (see its docstring).
    Raises ImageError with .code "empty", "not_an_image", "corrupt", "too_large",
    "too_many_pixels", "too_small" or "busy" and a message naming the limit.

    Memory: the decoder's buffer for the photo's pixel format is known from the header; above
    max_decode_bytes the photo is refused before decoding, and every decode holds its share of
    the process-wide budget (decode_budget()) while it runs. Photos much larger than work_size
    are shrunk by an integer factor right after decoding (box filter, in the decoded format), so
    conversions (16-bit to 8-bit, alpha on white, colour profile) work on the small copy.

    Transparent images are composited on white (a transparent background is usually white in the
    app that made it; black would hide dark hair and make a face detector see a different photo).
    Animated images use their first frame. Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg itself (Image.draft), so a 50 MP photo costs about as much as a 3 MP one; the result
    is then resized with a Lanczos filter to exactly `work_size` on the long side. Other formats
    have no such shortcut: a 50 MP PNG is decoded in full (about 200 MB) before it is scaled.
    Truncated files are reported as "corrupt", never decoded partly (Pillow's
    LOAD_TRUNCATED_IMAGES must stay False; it is a process-wide switch).
    """
    if data is None:
        raise ImageError("No photo was given.", code="empty")
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("The file is empty (0 bytes).", code="empty")
    if len(data) > max_bytes:
        raise ImageError(
            f"The file is {_mb(len(data))}, above the limit of {_mb(max_bytes)}. "
            "Please upload a smaller photo.",
            code="too_large",
        )

    sha256 = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    im = _open(data, max_pixels)
    fmt = im.format or "unknown"

    # Header checks: the size is known from the header alone, so bombs and thumbnails are
    # rejected before a single pixel is decoded.
    width, height = im.size
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    if min(width, height) < min_side:
        raise ImageError(
            f"The photo is {width} x {height} pixels; it must be at least {min_side} pixels "
            "on its shorter side to show a face.",
            code="too_small",
        )

    if getattr(im, "is_animated", False) and fmt != "MPO":
        # Pillow opens on frame 0; say so, the member may expect another frame to be used.
        # (MPO's extra frames are the camera's preview or depth images, not an animation.)
        notes.append(f"animated {fmt} with {getattr(im, 'n_frames', '?')} frames: first frame used")

    if fmt in ("JPEG", "MPO") and max(width, height) > work_size:
        # Ask libjpeg for the smallest 1/2^k scale that is still at least work_size on the long
        # side. Measured on the test's 50 MP JPEG: 0.08 s at 1/4 scale instead of 0.39 s, and
        # 9 MB of pixels instead of 150 MB.
        factor = work_size / max(width, height)
        requested = (max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor)))
        before = im.size
        im.draft(None, requested)
        if im.size != before:
            notes.append(f"JPEG decoded at reduced scale {im.size[0]}x{im.size[1]} (draft)")

    im = _grey16_png_as_8bit(im, notes)
    cost = decode_cost_bytes(im.mode, im.size)
    # Never more than the whole process budget: a photo that cannot fit alone is refused from its
    # header, since waiting for an empty budget would still take the process past its memory.
    max_decode_bytes = min(max_decode_bytes, decode_budget().capacity)
    if cost > max_decode_bytes:
        raise ImageError(
            f"The photo is {width} x {height} pixels in {_mode_name(im.mode)}; decoding it would take "
            f"{_mb(cost)} of memory, above the limit of {_mb(max_decode_bytes)}. Please send a "
            "smaller photo (a phone photo as JPEG is always fine).",
            code="too_many_pixels",
        )
    with decode_budget().hold(cost):
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise _too_many_pixels(width, height, max_pixels) from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as exc:
            # Pillow signals truncated or broken data with OSError ("image file is truncated",
            # "broken data stream"), SyntaxError (broken PNG chunks) and a few others.
            raise ImageError(
                f"The {fmt} file is damaged or incomplete and cannot be read ({_short(exc)}). "
                "Please upload the photo again.",
                code="corrupt",
            ) from exc
        # After load(), inside the budget: Pillow's PNG getexif() decodes the whole image to look
        # for an eXIf chunk after the pixels (that was a full decode outside any budget).
        orientation = _exif_orientation(im)
        # Orientations 5-8 swap width and height; the upright size is what callers see.
        upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        im = _shrink_early(im, work_size, notes)
        return _finish(im, fmt, width, height, orientation, upright, sha256, notes, work_size, min_side)


def _finish(im, fmt, width, height, orientation, upright, sha256, notes, work_size, min_side):
    """EXIF rotation, RGB conversion and the final Lanczos scaling of the (already small) image."""
    if orientation not in (None, 1):
        try:
            # By the tag read from the header: the shrunk copy need not carry the EXIF block.
            im = im.transpose(_ORIENTATION_TRANSPOSE[orientation])
            notes.append(f"EXIF orientation {orientation} applied")
        except Exception as exc:  # a broken EXIF block must not lose the photo
            notes.append(f"EXIF orientation {orientation} could not be applied ({_short(exc)})")
            upright = (width, height)

    im = _to_rgb(im, notes)

    # Lanczos for quality; reducing_gap lets Pillow first shrink by an integer factor (box filter),
    # which keeps big PNGs fast at no visible cost.
    long_side = max(im.size)
    if long_side > work_size:
        factor = work_size / long_side
        target = (max(1, round(im.size[0] * factor)), max(1, round(im.size[1] * factor)))
        im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)

    rgb = np.array(im, dtype=np.uint8)  # a copy: writeable and independent of Pillow's buffer
    if rgb.ndim != 3 or rgb.shape[2] != 3:  # pragma: no cover - _to_rgb guarantees this
        raise ImageError(f"Unexpected pixel layout {rgb.shape}.", code="corrupt")
    if min(rgb.shape[:2]) < min_side:
        # Extreme aspect ratios (a 10000 x 300 banner) become too thin after scaling.
        raise ImageError(
            f"After scaling to {work_size} pixels on the long side the photo is only "
            f"{rgb.shape[1]} x {rgb.shape[0]} pixels; its shorter side must be at least {min_side}.",
            code="too_small",
        )
    scale = rgb.shape[1] / upright[0]
    return DecodedImage(
        rgb=rgb,
        original_size=(int(upright[0]), int(upright[1])),
        scale=float(scale),
        sha256=sha256,
        format=fmt,
        notes=notes,
    )


_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _mode_name(mode: str) -> str:
    names = {"L": "8-bit grey", "P": "palette colour", "1": "black and white", "RGB": "RGB colour"}
    if mode.startswith("I;16"):
        return "16-bit grey"
    return names.get(mode, f"{mode} mode")


def _grey16_png_as_8bit(im: Image.Image, notes: list[str]) -> Image.Image:
    """A 16-bit greyscale PNG decoded straight to 8-bit grey (the high byte of each sample): half
    the decoder memory, and the same pixels the 16-to-8-bit conversion gives (at most one level
    apart). Pillow opens 48-bit RGB PNGs the same way. Left alone with a transparent colour,
    which is a 16-bit value."""
    if im.format != "PNG" or im.mode != "I;16" or "transparency" in im.info or len(im.tile) != 1:
        return im
    tile = im.tile[0]
    if tile.codec_name != "zip" or tile.args != "I;16B":
        return im
    im._mode = "L"
    im.tile = [tile._replace(args="L;16B")]
    notes.append("16-bit grey PNG decoded to 8 bits")
    return im


def _shrink_early(im: Image.Image, work_size: int, notes: list[str]) -> Image.Image:
    """An integer box-filter reduction of a photo far above work_size, in its own mode.

    The result keeps at least 2 x work_size on the long side, so the final Lanczos step has the
    same headroom as before; everything after this works on a copy 1/k^2 the size.
    """
    factor = max(im.size) // (2 * work_size)
    if factor < 2:
        return im
    before = im.size
    if im.mode in CONVERTED_BEFORE_SHRINK:
        im = im.convert(CONVERTED_BEFORE_SHRINK[im.mode][0])
    if im.mode.startswith("I;16"):  # reduce() has no 16-bit path; resize's box filter does
        target = (max(1, im.size[0] // factor), max(1, im.size[1] // factor))
        im = im.resize(target, Image.Resampling.BOX)
    else:
        im = im.reduce(factor)
    notes.append(
        f"shrunk {factor}x right after decoding ({before[0]}x{before[1]} -> {im.size[0]}x{im.size[1]})"
    )
    return im


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format from the header; no pixels are decoded here."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone switched it on process-wide: say so loudly
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated photos will decode partly "
            "instead of being reported as corrupt.",
            RuntimeWarning,
            stacklevel=3,
        )
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Above twice Pillow's own limit (179 MP), refused from the header alone. Pillow's
        # message holds the declared pixel count; the width and height are not exposed.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)) / 1e6:,.0f} megapixels" if found else "too many pixels"
        raise ImageError(
            f"The photo declares {declared}, above the limit of {max_pixels / 1e6:.0f} megapixels "
            "(a small file declaring that many pixels is typical of a decompression bomb).",
            code="too_many_pixels",
        ) from exc
    except UnidentifiedImageError as exc:
        sniffed = _sniff_format(data)
        if sniffed:
            # Pillow gives up on a header cut short or garbled; the signature says what it was.
            raise ImageError(
                f"The file starts like a {sniffed} image but is damaged or incomplete. "
                "Please upload the photo again.",
                code="corrupt",
            ) from exc
        raise _not_an_image(data) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # The signature matched a format, but its header is broken.
        sniffed = _sniff_format(data)
        what = f"a {sniffed} image" if sniffed else "an image"
        raise ImageError(
            f"The file looks like {what} but its header is damaged ({_short(exc)}). "
            "Please upload the photo again.",
            code="corrupt",
        ) from exc
    if im.format not in RESULT_FORMATS:  # pragma: no cover - formats= already restricts this
        raise _not_an_image(data)
    return im


def _sniff_format(data: bytes) -> str | None:
    """The allowed format whose signature the bytes start with, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith(b"BM") and len(data) >= 18 and data[14] in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"  # the DIB header size tells a bitmap from text that starts with "BM"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def _not_an_image(data: bytes) -> ImageError:
    """Why the bytes are not a photo, in English and as a catalog key (image_detail.*)."""
    allowed = "JPEG, PNG, WebP, BMP, GIF or TIFF"
    head = data[:16]
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        message = f"HEIC/HEIF/AVIF photos are not supported. Please send the photo as {allowed}."
        return ImageError(message, "not_an_image", key="image_detail.heif")
    stripped = data[:64].lstrip()
    for magic, what, name in _KNOWN_NON_IMAGES:
        if head.startswith(magic) or (magic[:1] in b"<{" and stripped.startswith(magic)):
            message = f"The file is {what}, not a photo. Please upload a {allowed} image."
            return ImageError(message, "not_an_image", key="image_detail.known", kind=name)
    if _looks_like_text(data[:512]):
        message = f"The file is text, not a photo. Please upload a {allowed} image."
        return ImageError(message, "not_an_image", key="image_detail.text")
    message = f"The file is not a photo in a supported format. Please upload a {allowed} image."
    return ImageError(message, "not_an_image", key="image_detail.unknown")


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the 512-byte window is still text.
        return exc.start >= len(head) - 3
    return True


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(0x0112)  # Orientation tag
    except Exception:  # unreadable EXIF: treat the photo as upright
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> RGB: alpha on white, 16-bit scaled (not clipped), colour profile to sRGB."""
    mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        # Composite on white: a transparent background is meant to be the page colour, and
        # convert("RGB") alone would show whatever colour the transparent pixels happen to hold.
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        background.alpha_composite(rgba)
        notes.append("transparent pixels composited on white")
        return background.convert("RGB")

    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # convert("L") clips 16-bit values at 255 (an almost white picture); scale instead.
        arr = np.asarray(im).astype(np.float32)  # float32: half of float64's memory, exact to 1/257
        if mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        elif mode.startswith("I;16") or (arr.size and float(arr.max()) > 255.0):
            arr = arr / 257.0  # 65535 -> 255
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        notes.append(f"{mode} pixels scaled to 8 bits")
        return Image.fromarray(gray, "L").convert("RGB")

    icc = im.info.get("icc_profile")
    if icc and ImageCms is not None and mode in ("RGB", "CMYK", "L"):
        # Phones write Display P3 and CMYK JPEGs carry press profiles; convert to sRGB so colours
        # (and the gender model's skin tones) look as the photographer saw them.
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # broken or unsupported profile: plain conversion below
            notes.append("colour profile ignored (unreadable)")

    if mode == "RGB":
        return im
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return im.convert("RGB")


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"The photo is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels), above "
        f"the limit of {max_pixels / 1e6:.0f} megapixels.",
        code="too_many_pixels",
    )


def _mb(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
