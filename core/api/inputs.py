"""Checking what a request brings: member id, gender, photos (base64, uploads, stored references)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from fastapi import UploadFile

from core.api.errors import ApiError, image_error
from core.api.settings import MAX_PHOTO_BYTES, megabytes
from core.errors import ImageError
from core.verification import imaging
from core.verification.imaging import decode_image
from core.workflows import member_ids
from core.workflows.importer import normalise_gender


@dataclass
class PhotoIn:
    which: str  # gallery / verification
    data: bytes | None = None  # uploaded bytes
    sha256: str | None = None  # reference to a stored photo
    ext: str = "jpg"
    width: int | None = None
    height: int | None = None


def checked_member_id(raw: str, factory=None) -> str:
    """The member id in its canonical form (core.workflows.member_ids, as the importer and the
    dashboard check it). With a session factory, also refused when it is not a member yet but
    looks like an existing member's id (a request that may enrol)."""
    try:
        if factory is None:
            return member_ids.canonical_member_id(raw)
        with factory() as session:
            return member_ids.check_new_member_id(session, raw)
    except ValueError as exc:
        raise ApiError(422, "bad_member_id", f"{exc}.") from None


def checked_gender(raw: str | None) -> str | None:
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return normalise_gender(raw)
    except ValueError as exc:
        raise ApiError(422, "bad_gender", f"registered_gender: {exc}.") from None


def checked_photo(which: str, data: bytes) -> PhotoIn:
    if not data:
        raise ApiError(422, "empty", f"The {which} photo is empty (0 bytes).")
    try:
        decoded = decode_image(data, max_bytes=MAX_PHOTO_BYTES)
    except ImageError as exc:
        raise image_error(which, exc) from None
    width, height = decoded.original_size
    return PhotoIn(
        which, data=data, ext=imaging.FILE_EXTENSIONS.get(decoded.format, "jpg"), width=width, height=height
    )


def decode_base64(which: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "bad_base64", f"{which}_base64 is not valid base64.") from None


def upload_bytes(which: str, upload: UploadFile | None) -> bytes | None:
    if upload is None:
        return None
    data = upload.file.read(MAX_PHOTO_BYTES + 1)
    if len(data) > MAX_PHOTO_BYTES:
        raise ApiError(413, "too_large", f"The {which} photo is larger than {megabytes(MAX_PHOTO_BYTES)} MB.")
    return data
