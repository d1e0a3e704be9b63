"""The photos a table names: entries of the photo ZIP, files on this machine, or http(s) links,
each read with limits and decoded before the row is written."""

from __future__ import annotations

import collections
import io
import re
import unicodedata
import urllib.parse
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.errors import FaceVerifyError, ImageError
from core.storage.photostore import sha256_hex
from core.verification import imaging
from core.workflows import links
from core.workflows.importer.table import ImportFileError

MAX_PHOTO_BYTES = 25 * 1024 * 1024  # same limit as core.verification.imaging
MAX_ZIP_ENTRIES = 200_000


class PhotoRefError(FaceVerifyError):
    code = "photo_ref_error"


@dataclass
class _LoadedPhoto:
    kind: str
    reference: str
    data: bytes  # emptied once the photo is in the store
    sha256: str
    ext: str
    width: int | None
    height: int | None
    size_bytes: int = 0
    stored_path: str | None = None
    position: int = 0  # in the profile (gallery photos), 1 is the main photo


# ----------------------------------------------------------------------------------------------
# Photos


def _is_unsafe_path(name: str) -> bool:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    return ".." in PurePosixPath(name).parts


def _normalise_zip_name(name: str) -> str:
    name = unicodedata.normalize("NFC", name).replace("\\", "/")  # macOS ZIPs hold NFD Hangul
    while name.startswith("./"):
        name = name[2:]
    return name


class PhotoZip:
    """Index of a photo ZIP. Entries are read into memory by name, never extracted to disk."""

    def __init__(self, zip_source: bytes | str | Path):
        try:
            if isinstance(zip_source, bytes | bytearray):
                self.zip = zipfile.ZipFile(io.BytesIO(zip_source))
            else:
                self.zip = zipfile.ZipFile(zip_source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ImportFileError(f"The photo ZIP cannot be opened: {exc}.") from None
        infos = self.zip.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise ImportFileError(f"The ZIP holds {len(infos)} entries; the limit is {MAX_ZIP_ENTRIES}.")
        self.entries: dict[str, zipfile.ZipInfo] = {}
        self.unsafe: set[str] = set()
        self._by_suffix: dict[str, list[str]] = collections.defaultdict(list)
        for info in infos:
            if info.is_dir():
                continue
            for raw in self._names(info):
                name = _normalise_zip_name(raw)
                if name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("._"):
                    continue  # macOS resource forks, not photos
                if _is_unsafe_path(name):
                    self.unsafe.add(name)
                    continue
                self.entries[name] = info
                parts = PurePosixPath(name).parts
                for i in range(1, len(parts)):
                    self._by_suffix["/".join(parts[i:])].append(name)

    @staticmethod
    def _names(info: zipfile.ZipInfo) -> list[str]:
        names = [info.filename]
        if not info.flag_bits & 0x800:
            # No UTF-8 flag: Python read the name as CP437, but Korean Windows wrote CP949.
            try:
                korean = info.filename.encode("cp437").decode("cp949")
            except (UnicodeEncodeError, UnicodeDecodeError):
                korean = None
            if korean and korean != info.filename:
                names.append(korean)
        return names

    def find(self, reference: str) -> zipfile.ZipInfo | None:
        name = _normalise_zip_name(reference)
        if _is_unsafe_path(name) or name in self.unsafe:
            raise PhotoRefError(
                f"{reference!r} points outside the ZIP (absolute path or '..'); such entries are refused"
            )
        if name in self.entries:
            return self.entries[name]
        # The ZIP often wraps the photos in a folder: "photos/a.jpg" for "a.jpg".
        candidates = self._by_suffix.get(name, [])
        if len(candidates) == 1:
            return self.entries[candidates[0]]
        if len(candidates) > 1:
            raise PhotoRefError(
                f"{reference!r} matches several ZIP entries ({', '.join(candidates[:3])}); give the full path"
            )
        return None

    def read(self, info: zipfile.ZipInfo, reference: str) -> bytes:
        if info.file_size > MAX_PHOTO_BYTES:
            raise PhotoRefError(
                f"ZIP entry {reference!r} is {info.file_size / 1e6:.1f} MB; the limit is {MAX_PHOTO_BYTES / 1e6:.0f} MB"
            )
        try:
            with self.zip.open(info) as f:
                data = f.read(MAX_PHOTO_BYTES + 1)  # the header's size may lie (ZIP bombs)
        except RuntimeError as exc:  # encrypted entry
            raise PhotoRefError(f"ZIP entry {reference!r} cannot be read: {exc}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise PhotoRefError(f"ZIP entry {reference!r} is damaged: {exc}") from None
        if len(data) > MAX_PHOTO_BYTES:
            raise PhotoRefError(f"ZIP entry {reference!r} is larger than {MAX_PHOTO_BYTES / 1e6:.0f} MB")
        return data

    def close(self) -> None:
        self.zip.close()


def fetch_url(url: str) -> tuple[bytes, str | None]:
    """Bytes and Content-Type of an http(s) photo link, through core.workflows.links' guard:
    public addresses (or the PHOTO_LINK_ALLOW host) only, redirects re-checked, timeouts and a
    size cap, and no text from the remote side in the message."""
    try:
        fetched = links.fetch_photo_link(url, max_bytes=MAX_PHOTO_BYTES)
    except links.LinkError as exc:
        raise PhotoRefError(str(exc)) from None
    return fetched.data, fetched.content_type


class PhotoLoader:
    """Turns a photo reference from the table into validated image bytes."""

    def __init__(
        self,
        photo_zip: PhotoZip | None,
        base_dir: Path | None,
        allow_local_files: bool,
        fetch: Callable[[str], tuple[bytes, str | None]] = fetch_url,
        allow_outside: bool = False,
    ):
        self.photo_zip = photo_zip
        self.base_dir = base_dir
        self.allow_local_files = allow_local_files
        self.fetch = fetch
        self.allow_outside = allow_outside

    def _read(self, reference: str) -> tuple[bytes, str | None]:
        scheme = urllib.parse.urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return self.fetch(reference)
        if len(scheme) > 1:  # one letter is a Windows drive (C:\photos\a.jpg)
            raise PhotoRefError(f"{scheme}: links are not supported; use http(s), a ZIP entry or a file path")
        if self.photo_zip is not None:
            info = self.photo_zip.find(reference)
            if info is not None:
                return self.photo_zip.read(info, reference), None
            if not self.allow_local_files:
                raise PhotoRefError(f"{reference!r} is not in the photo ZIP")
        if not self.allow_local_files:
            raise PhotoRefError(
                "file paths cannot be read from an uploaded table; upload the photos as a ZIP or use http(s) links"
            )
        path = Path(reference)
        if not path.is_absolute() and "\\" in reference:
            path = Path(reference.replace("\\", "/"))  # a table written on Windows
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        where = " (nor in the photo ZIP)" if self.photo_zip is not None else ""
        try:
            if self.base_dir is not None and not self.allow_outside:
                # ../.., absolute paths and symbolic links leading out are all judged where they land.
                if not path.resolve().is_relative_to(self.base_dir.resolve()):
                    raise PhotoRefError(
                        f"file {reference!r} is outside the base folder (the table's folder or --base-dir); "
                        "pass --allow-outside to read it"
                    )
            if not path.is_file():
                raise PhotoRefError(f"file {reference!r} does not exist{where}")
            if path.stat().st_size > MAX_PHOTO_BYTES:
                raise PhotoRefError(
                    f"file {reference!r} is {path.stat().st_size / 1e6:.1f} MB; the limit is "
                    f"{MAX_PHOTO_BYTES / 1e6:.0f} MB"
                )
            return path.read_bytes(), None
        except OSError as exc:
            raise PhotoRefError(f"file {reference!r} cannot be read ({exc.strerror or exc})") from None

    def load(self, kind: str, reference: str) -> _LoadedPhoto:
        data, content_type = self._read(reference)
        try:
            width, height, fmt = _validate_image(data)
        except ImageError as exc:
            if content_type and content_type.split(";")[0].strip().lower() in (
                "text/html",
                "application/xhtml+xml",
            ):
                raise PhotoRefError(
                    "the link returns a web page, not an image (for cloud drives use the direct download link)"
                ) from None
            raise PhotoRefError(str(exc)) from None
        return _LoadedPhoto(
            kind,
            reference,
            data,
            sha256_hex(data),
            imaging.FILE_EXTENSIONS.get(fmt, "img"),
            width,
            height,
            len(data),
        )


def _validate_image(data: bytes) -> tuple[int, int, str]:
    """(width, height, format) of a usable photo, else ImageError with a reason a person understands."""
    from core.verification.imaging import decode_image

    decoded = decode_image(data)
    return decoded.original_size[0], decoded.original_size[1], decoded.format
