"""Awkward and broken photo inputs, built in memory at test time from the committed sample faces.

Every builder returns the bytes of one file as a user might upload it. Import from tests with
`from badimages import ...` (pytest puts tests/ on sys.path) or `from tests.badimages import ...`.

BAD_INPUTS   name -> (builder, expected ImageError.code): inputs decode_image must refuse
GOOD_INPUTS  name -> builder: awkward inputs decode_image must accept (the pipeline may still flag
             them later, e.g. no face or two faces)

Real faces come from data/sample/images (see data/sample/README.md), so none of this needs
/work/shared. Heavy builders are cached: they return immutable bytes.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "data" / "sample" / "images"

FACE_PHOTO = "Julianne_Moore_0003.jpg"  # one frontal face, woman
OTHER_FACE_PHOTO = "John_Howard_0014.jpg"  # one frontal face, man
# Sample photos where LFW itself shows a clear second face beside the named person.
SAMPLE_TWO_FACE_PHOTOS = (
    "Adrien_Brody_0002.jpg",
    "Charles_Moose_0003.jpg",
    "Charles_Moose_0010.jpg",
    "Jiang_Zemin_0005.jpg",
    "John_Howard_0018.jpg",
    "John_Negroponte_0004.jpg",
    "Jose_Maria_Aznar_0018.jpg",
    "Julianne_Moore_0016.jpg",
    "Megawati_Sukarnoputri_0025.jpg",
)

HUGE_SIZE = (8660, 5773)  # 50.0 megapixels, 3:2 like a full-frame camera
BOMB_SIZE = (30000, 30000)  # 900 megapixels declared by a file of a few hundred bytes


# --- helpers --------------------------------------------------------------------------------------


def sample_photo_bytes(name: str = FACE_PHOTO) -> bytes:
    """The unchanged bytes of one sample photo (LFW 250 x 250 JPEG)."""
    return (SAMPLE_IMAGES / name).read_bytes()


def sample_photo_rgb(name: str = FACE_PHOTO) -> np.ndarray:
    """One sample photo as an H x W x 3 uint8 RGB array (decoded by Pillow directly)."""
    with Image.open(SAMPLE_IMAGES / name) as im:
        return np.array(im.convert("RGB"))


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _face() -> Image.Image:
    return Image.fromarray(sample_photo_rgb(FACE_PHOTO))


# --- inputs decode_image must refuse --------------------------------------------------------------


def empty_bytes() -> bytes:
    return b""


def text_bytes() -> bytes:
    return "Hello, this is my profile text, not a photo.\nViele Grüße, Kim 😊\n".encode()


def pdf_bytes() -> bytes:
    """The start of a real-looking PDF (header, one object, trailer)."""
    return (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
        b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def zip_bytes() -> bytes:
    """A ZIP archive holding a real face photo (someone zipped their photo)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(FACE_PHOTO, sample_photo_bytes(FACE_PHOTO))
    return buf.getvalue()


def heic_bytes() -> bytes:
    """The start of an iPhone HEIC file: an ISO-BMFF 'ftyp' box with the 'heic' brand, then junk.

    Pillow cannot read HEIC without the pillow-heif plugin, which the project does not install.
    """
    ftyp = b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heic"
    box = struct.pack(">I", 4 + len(ftyp)) + ftyp
    return box + bytes(range(256)) * 8


def random_bytes() -> bytes:
    """Binary noise with no known signature."""
    return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def truncated_jpeg() -> bytes:
    """A real face JPEG cut after 55% of its bytes (an upload that stopped half-way).

    Pillow opens it (the header is whole) and fails while decoding the pixels, unless
    LOAD_TRUNCATED_IMAGES is on, in which case the bottom of the photo would silently be grey.
    """
    data = sample_photo_bytes(FACE_PHOTO)
    return data[: int(len(data) * 0.55)]


def jpeg_header_only() -> bytes:
    """The first 300 bytes of a real JPEG: the signature is there, the header is not complete."""
    return sample_photo_bytes(FACE_PHOTO)[:300]


def truncated_png() -> bytes:
    """A real face saved as PNG and cut after 60% of its bytes."""
    data = _save(_face(), "PNG")
    return data[: int(len(data) * 0.6)]


def corrupt_png_crc() -> bytes:
    """A real face PNG with one byte of the IHDR chunk flipped, so its CRC no longer matches."""
    data = bytearray(_save(_face(), "PNG"))
    data[8 + 8 + 9] ^= 0xFF  # inside IHDR's data (signature 8, length+type 8, then 13 data bytes)
    return bytes(data)


def oversized_bytes(size: int = 26 * 1024 * 1024) -> bytes:
    """A valid face JPEG padded with trailing zeros to `size` bytes (over the 25 MB default)."""
    data = sample_photo_bytes(FACE_PHOTO)
    return data + b"\x00" * (size - len(data))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = BOMB_SIZE[0], height: int = BOMB_SIZE[1]) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height 8-bit RGB pixels.

    At 30000 x 30000 it would need 2.7 GB once decoded. Only the first rows are actually in the
    (valid) compressed data: a reader must refuse it from the header, before decoding pixels.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour
    rows = (b"\x00" + b"\x00" * (3 * width)) * 4
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def grey16_png(width: int = 9950, height: int = 9950) -> bytes:
    """A complete 16-bit greyscale PNG of width x height mid-grey pixels: at the default 99
    megapixels it is about 200 KB on disk and 198 MB in Pillow's 16-bit buffer (the photo that
    took one verification to 3.6 GB before decoding had a memory budget)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80\x00" * width
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def tiny_image(size: int = 10) -> bytes:
    """A size x size PNG, far too small to hold a face."""
    return _save(_face().resize((size, size), Image.Resampling.LANCZOS), "PNG")


# --- awkward inputs decode_image must accept ------------------------------------------------------


@lru_cache(maxsize=1)
def huge_jpeg_50mp() -> bytes:
    """A 50-megapixel (8660 x 5773) JPEG, quality 85: the face photo upscaled to the full height,
    centred on a grey background. About 2-3 MB; built in about a second, then cached."""
    width, height = HUGE_SIZE
    face = _face().resize((height, height), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    canvas.paste(face, ((width - height) // 2, 0))
    return _save(canvas, "JPEG", quality=85)


def rgba_png() -> bytes:
    """The face photo as RGBA: an opaque ellipse around the face, fully transparent outside it.

    The transparent pixels' colour channels are black, so a decoder that drops the alpha channel
    shows black corners; compositing on white must show white corners.
    """
    rgb = sample_photo_rgb(FACE_PHOTO)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (0.42 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2 <= 1.0
    rgba = np.dstack([rgb * inside[..., None], np.where(inside, 255, 0)]).astype(np.uint8)
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def la_png() -> bytes:
    """Grey + alpha (mode LA): the face in grey, its left quarter fully transparent."""
    grey = np.array(_face().convert("L"))
    alpha = np.full_like(grey, 255)
    alpha[:, : grey.shape[1] // 4] = 0
    return _save(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")


def palette_png() -> bytes:
    """The face quantised to a 256-colour palette (mode P), as old tools and GIF converters save."""
    return _save(_face().quantize(256), "PNG")


def cmyk_jpeg() -> bytes:
    """The face converted to CMYK and saved as a CMYK JPEG (as print workflows export)."""
    return _save(_face().convert("CMYK"), "JPEG", quality=92)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A face JPEG stored sideways with an EXIF Orientation tag, as phones write them.

    The upright photo is FACE_PHOTO cropped to 250 x 200 (landscape, so a decoder that ignores
    the tag also gets the shape wrong). The pixels are stored transformed so that applying the
    tag (ImageOps.exif_transpose) gives back exactly the upright photo. See exif_upright_rgb().
    Orientation 6: stored rotated 90 degrees counter-clockwise, shown rotated clockwise;
    3: stored upside down; 8: stored rotated 90 degrees clockwise.
    """
    stored_transform = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,  # counter-clockwise; exif_transpose undoes it with ROTATE_270
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    upright = Image.fromarray(exif_upright_rgb())
    stored = upright.transpose(stored_transform)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes())


def exif_upright_rgb() -> np.ndarray:
    """What exif_rotated_jpeg() must decode to: FACE_PHOTO rows 25..224 (250 wide, 200 high)."""
    return sample_photo_rgb(FACE_PHOTO)[25:225].copy()


def grayscale_jpeg() -> bytes:
    """The face as a one-channel (mode L) JPEG."""
    return _save(_face().convert("L"), "JPEG", quality=92)


def png_16bit() -> bytes:
    """The face as a 16-bit greyscale PNG (mode I;16, values 0..65535 = 8-bit grey x 257).

    A naive conversion to 8 bits clips everything above 255 and gives an almost white picture.
    """
    grey16 = np.array(_face().convert("L"), dtype=np.uint16) * 257
    return _save(Image.fromarray(grey16), "PNG")


def png_16bit_rgb() -> bytes:
    """The face as a 48-bit (16 bits per channel) RGB PNG, written by hand (Pillow cannot)."""
    rgb16 = sample_photo_rgb(FACE_PHOTO).astype(">u2") * 257
    h, w = rgb16.shape[:2]
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    """Three frames: the face first, then its negative, then black. The first frame must be used."""
    face = _face()
    negative = Image.fromarray(255 - np.array(face))
    black = Image.new("RGB", face.size)
    return _save(face, "GIF", save_all=True, append_images=[negative, black], duration=200, loop=0)


def webp_bytes() -> bytes:
    return _save(_face(), "WEBP", quality=90)


def bmp_bytes() -> bytes:
    return _save(_face(), "BMP")


def mpo_bytes() -> bytes:
    """A multi-picture JPEG (MPO, as many cameras and phones write): the face, then a small
    preview frame. Pillow reports format "MPO"; the first picture is the photo."""
    face = _face()
    return _save(face, "MPO", save_all=True, append_images=[face.resize((64, 64))])


def tiff_bytes() -> bytes:
    return _save(_face(), "TIFF", compression="tiff_lzw")


def blank_image() -> bytes:
    """A 640 x 480 evenly grey JPEG: decodes fine, holds no face."""
    return _save(Image.new("RGB", (640, 480), (180, 180, 180)), "JPEG", quality=90)


def two_faces_jpeg(left: str = FACE_PHOTO, right: str = OTHER_FACE_PHOTO) -> bytes:
    """Two real sample photos side by side (500 x 250): two faces of about equal size."""
    both = np.concatenate([sample_photo_rgb(left), sample_photo_rgb(right)], axis=1)
    return _save(Image.fromarray(both), "JPEG", quality=92)


BAD_INPUTS = {
    "empty": (empty_bytes, "empty"),
    "text": (text_bytes, "not_an_image"),
    "pdf": (pdf_bytes, "not_an_image"),
    "zip": (zip_bytes, "not_an_image"),
    "heic": (heic_bytes, "not_an_image"),
    "random_bytes": (random_bytes, "not_an_image"),
    "truncated_jpeg": (truncated_jpeg, "corrupt"),
    "jpeg_header_only": (jpeg_header_only, "corrupt"),
    "truncated_png": (truncated_png, "corrupt"),
    "corrupt_png_crc": (corrupt_png_crc, "corrupt"),
    "oversized": (oversized_bytes, "too_large"),
    "bomb_png": (bomb_png, "too_many_pixels"),
    "bomb_png_120mp": (lambda: bomb_png(12000, 10000), "too_many_pixels"),
    "bomb_png_99mp_rgb": (lambda: bomb_png(9950, 9950), "too_many_pixels"),  # 396 MB to decode
    "tiny_10x10": (tiny_image, "too_small"),
}

GOOD_INPUTS = {
    "sample_jpeg": sample_photo_bytes,
    "huge_jpeg_50mp": huge_jpeg_50mp,
    "rgba_png": rgba_png,
    "la_png": la_png,
    "palette_png": palette_png,
    "cmyk_jpeg": cmyk_jpeg,
    "exif_rotated_jpeg": exif_rotated_jpeg,
    "grayscale_jpeg": grayscale_jpeg,
    "png_16bit": png_16bit,
    "png_16bit_rgb": png_16bit_rgb,
    "animated_gif": animated_gif,
    "webp": webp_bytes,
    "bmp": bmp_bytes,
    "tiff": tiff_bytes,
    "mpo": mpo_bytes,
    "blank_image": blank_image,
    "two_faces_jpeg": two_faces_jpeg,
}
