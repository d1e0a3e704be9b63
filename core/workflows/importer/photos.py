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
from core.i18n.notes import Note, note, of_error
from core.storage.photostore import sha256_hex
from core.verification import imaging
from core.workflows import links
from core.workflows.importer.table import ImportFileError

MAX_PHOTO_BYTES = 25 * 1024 * 1024  # same limit as core.verification.imaging
MAX_ZIP_ENTRIES = 200_000


class PhotoRefError(FaceVerifyError):
    """A photo reference that gives no usable photo; `note` says why (catalog key and values)."""

    code = "photo_ref_error"

    def __init__(self, why: Note):
        self.note = why
        super().__init__(str(why))


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
            raise ImportFileError(note("import.file.zip_unopenable", detail=str(exc))) from None
        infos = self.zip.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise ImportFileError(note("import.file.zip_too_many", entries=len(infos), limit=MAX_ZIP_ENTRIES))
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
            raise PhotoRefError(note("import.photo.outside_zip", ref=reference))
        if name in self.entries:
            return self.entries[name]
        # The ZIP often wraps the photos in a folder: "photos/a.jpg" for "a.jpg".
        candidates = self._by_suffix.get(name, [])
        if len(candidates) == 1:
            return self.entries[candidates[0]]
        if len(candidates) > 1:
            raise PhotoRefError(
                note("import.photo.ambiguous_zip", ref=reference, entries=", ".join(candidates[:3]))
            )
        return None

    def read(self, info: zipfile.ZipInfo, reference: str) -> bytes:
        if info.file_size > MAX_PHOTO_BYTES:
            raise PhotoRefError(
                note(
                    "import.photo.zip_entry_size",
                    ref=reference,
                    mb=info.file_size / 1e6,
                    limit=MAX_PHOTO_BYTES / 1e6,
                )
            )
        try:
            with self.zip.open(info) as f:
                data = f.read(MAX_PHOTO_BYTES + 1)  # the header's size may lie (ZIP bombs)
        except RuntimeError as exc:  # encrypted entry
            raise PhotoRefError(
                note("import.photo.zip_entry_locked", ref=reference, detail=str(exc))
            ) from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise PhotoRefError(
                note("import.photo.zip_entry_damaged", ref=reference, detail=str(exc))
            ) from None
        if len(data) > MAX_PHOTO_BYTES:
            raise PhotoRefError(
                note("import.photo.zip_entry_over", ref=reference, limit=MAX_PHOTO_BYTES / 1e6)
            )
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
        raise PhotoRefError(of_error(exc, "import.photo.link_failed")) from None
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
            raise PhotoRefError(note("import.photo.scheme", scheme=scheme))
        if self.photo_zip is not None:
            info = self.photo_zip.find(reference)
            if info is not None:
                return self.photo_zip.read(info, reference), None
            if not self.allow_local_files:
                raise PhotoRefError(note("import.photo.not_in_zip", ref=reference))
        if not self.allow_local_files:
            raise PhotoRefError(note("import.photo.no_local_files"))
        path = Path(reference)
        if not path.is_absolute() and "\\" in reference:
            path = Path(reference.replace("\\", "/"))  # a table written on Windows
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        missing = "import.photo.missing_not_in_zip" if self.photo_zip is not None else "import.photo.missing"
        try:
            if self.base_dir is not None and not self.allow_outside:
                # ../.., absolute paths and symbolic links leading out are all judged where they land.
                if not path.resolve().is_relative_to(self.base_dir.resolve()):
                    raise PhotoRefError(note("import.photo.outside_base", ref=reference))
            if not path.is_file():
                raise PhotoRefError(note(missing, ref=reference))
            if path.stat().st_size > MAX_PHOTO_BYTES:
                raise PhotoRefError(
                    note(
                        "import.photo.file_size",
                        ref=reference,
                        mb=path.stat().st_size / 1e6,
                        limit=MAX_PHOTO_BYTES / 1e6,
                    )
                )
            return path.read_bytes(), None
        except OSError as exc:
            raise PhotoRefError(
                note("import.photo.file_unreadable", ref=reference, detail=str(exc.strerror or exc))
            ) from None

    def load(self, kind: str, reference: str) -> _LoadedPhoto:
        data, content_type = self._read(reference)
        try:
            width, height, fmt = _validate_image(data)
        except ImageError as exc:
            if content_type and content_type.split(";")[0].strip().lower() in (
                "text/html",
                "application/xhtml+xml",
            ):
                raise PhotoRefError(note("import.photo.web_page")) from None
            raise PhotoRefError(of_error(exc, "import.photo.image")) from None
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
