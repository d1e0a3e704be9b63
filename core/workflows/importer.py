"""Import members from an .xlsx or .csv file: member_id, gender, gallery_photo, verification_photo.

import_members(session, rows_source, zip_bytes=None, base_dir=None, actor="system", ...)
    -> list[RowReport]      one per data row: imported / updated / unchanged / rejected + message
load_sample_members(session) -> list[RowReport]    the demo members in data/sample/members.csv

Each photo is a local path (relative to the file's folder or base_dir), a path inside the photo
ZIP, or an http(s) link. The whole file is checked first (columns, duplicate IDs); then every row is
validated completely (both photos fetched and decoded) before its own transaction writes the
member and both photos, so a row is imported entirely or not at all. Importing the same file again
changes nothing.

Command line:
    faceverify import FILE [--zip PHOTOS.zip] [--base-dir DIR] [--url DATABASE_URL]
"""

from __future__ import annotations

import collections
import csv
import difflib
import io
import re
import unicodedata
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from core import config
from core.errors import FaceVerifyError, ImageError
from core.storage import audit
from core.storage.photostore import PhotoStoreBackend, sha256_hex
from core.storage.schema import GALLERY, MEMBER_PENDING, VERIFICATION, Member, Photo, ProfilePhoto, utcnow
from core.storage.stores import open_photo_store
from core.verification import imaging
from core.verification.genders import normalise_gender  # noqa: F401  (re-exported: pages and API import it from here)
from core.workflows import gallery, links, member_ids, profile_rows, profiles, spreadsheets, verification

EXPECTED_COLUMNS = ("member_id", "gender", "gallery_photo", "verification_photo")
PHOTO_COLUMNS = {"gallery_photo": GALLERY, "verification_photo": VERIFICATION}
OPTIONAL_COLUMNS = ("birth_year",)  # groups the self-measurement's pairs by age band
# The profile: the gallery cell may hold several photos (separated by ";" or a new line), or the
# columns gallery_photo_1 ... gallery_photo_N replace gallery_photo. The first is the main photo.
GALLERY_SEPARATORS = re.compile(r"[;\n]+")
NUMBERED_GALLERY = re.compile(r"^gallery_photo_(\d+)$")

MAX_TABLE_BYTES = 20 * 1024 * 1024  # a 100,000-row CSV of links is ~10 MB
MAX_ROWS = 100_000
MAX_XLSX_UNPACKED_BYTES = spreadsheets.MAX_UNPACKED_BYTES  # the XML inside an .xlsx (ZIP bombs)
MAX_PHOTO_BYTES = 25 * 1024 * 1024  # same limit as core.verification.imaging
MAX_ZIP_ENTRIES = 200_000
MAX_ID_LENGTH = spreadsheets.MAX_MEMBER_ID_LENGTH
PREFETCH_WORKERS = 4  # photo reading and decoding overlap with the database work of earlier rows

IMPORTED, UPDATED, UNCHANGED, REJECTED = "imported", "updated", "unchanged", "rejected"


class ImportFileError(FaceVerifyError):
    """The file as a whole cannot be imported (unreadable, wrong columns); no row was touched."""

    code = "import_file_error"

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(" ".join(self.problems))


class PhotoRefError(FaceVerifyError):
    code = "photo_ref_error"


@dataclass
class RowReport:
    row: int  # the row number a spreadsheet shows (header is row 1)
    member_id: str | None
    status: str  # imported / updated / unchanged / rejected
    message: str
    warnings: list[str] = field(default_factory=list)


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


@dataclass
class _PreparedRow:
    row: int
    member_id: str | None
    gender: str | None = None
    birth_year: int | None = None
    photos: list[_LoadedPhoto] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    photo_notes: list[str] = field(default_factory=list)  # per profile photo: what happened


# ----------------------------------------------------------------------------------------------
# Values


def _birth_year(value) -> int | None:
    """The optional birth_year cell: empty, or a four-digit year between 1900 and this year."""
    text = str(value or "").strip()
    if not text:
        return None
    if text.endswith(".0"):  # a spreadsheet's number cell
        text = text[:-2]
    if not text.isdigit() or not 1900 <= int(text) <= utcnow().year:
        raise ValueError(f"birth_year {_short(text, 20)!r} is not a year between 1900 and {utcnow().year}")
    return int(text)


def _check_member_id(value: str) -> str:
    """An identifier by core.workflows.spreadsheets.MEMBER_ID_RULE, else ValueError."""
    return member_ids.canonical_member_id(value)  # NFKC, no invisible or look-alike letters


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# Reading the table


def _normalise_header(name) -> str:
    text = unicodedata.normalize("NFC", str(name if name is not None else "")).strip().lower()
    return re.sub(r"[\s\-.]+", "_", text)


def _source_bytes(rows_source, filename: str | None) -> tuple[bytes, str]:
    if isinstance(rows_source, str | Path):
        path = Path(rows_source)
        if not path.is_file():
            raise ImportFileError(f"The file {path} does not exist.")
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise ImportFileError(
                f"The file is {path.stat().st_size / 1e6:.1f} MB; the limit is "
                f"{MAX_TABLE_BYTES / 1e6:.0f} MB. Split it into smaller files."
            )
        return path.read_bytes(), filename or path.name
    if isinstance(rows_source, bytes | bytearray):
        return bytes(rows_source), filename or "upload.csv"
    # A file-like object, such as Streamlit's UploadedFile.
    reader = getattr(rows_source, "getvalue", None) or getattr(rows_source, "read", None)
    if reader is None:
        raise TypeError("rows_source must be a path, bytes or a file-like object")
    data = reader()
    if isinstance(data, str):
        data = data.encode("utf-8")
    return data, filename or getattr(rows_source, "name", None) or "upload.csv"


def read_table(rows_source, filename: str | None = None) -> tuple[list[str], list[tuple[int, dict]]]:
    """(normalised column names, [(row number, {column: text})]); blank rows are skipped."""
    data, name = _source_bytes(rows_source, filename)
    if len(data) > MAX_TABLE_BYTES:
        raise ImportFileError(
            f"The file is {len(data) / 1e6:.1f} MB; the limit is {MAX_TABLE_BYTES / 1e6:.0f} MB. "
            "Split it into smaller files."
        )
    if not data.strip():
        raise ImportFileError("The file is empty.")
    suffix = Path(name).suffix.lower()
    if suffix in (".xlsx", ".xlsm") or (data[:4] == b"PK\x03\x04" and suffix not in (".csv", ".txt", ".tsv")):
        header, rows = _read_xlsx(data)
    elif suffix == ".xls" or data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise ImportFileError("Old Excel .xls files are not supported: save the sheet as .xlsx or CSV.")
    elif data[:4] == b"PK\x03\x04":
        raise ImportFileError(
            f"{name} is named like a CSV file but is an Excel workbook: rename it to .xlsx."
        )
    else:
        header, rows = _read_csv(data)
    if len(rows) > MAX_ROWS:
        raise ImportFileError(f"The file has {len(rows)} rows; the limit is {MAX_ROWS}. Split it.")
    columns = [_normalise_header(h) for h in header]
    table = []
    for row_number, values in rows:
        cells = ["" if v is None else str(v).strip() for v in values]
        if not any(cells):
            continue
        cells += [""] * (len(columns) - len(cells))
        table.append((row_number, dict(zip(columns, cells, strict=False))))
    return columns, table


def _read_csv(data: bytes) -> tuple[list, list[tuple[int, list]]]:
    for encoding in ("utf-8-sig", "cp949"):  # Korean Excel saves CSV as cp949 unless told otherwise
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ImportFileError("The CSV file is neither UTF-8 nor Korean (CP949) text. Save it as UTF-8 CSV.")
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        rows = [(reader.line_num, values) for values in reader]
    except csv.Error as exc:
        raise ImportFileError(f"The CSV file is malformed near line {reader.line_num}: {exc}.") from None
    return header, rows


def _read_xlsx(data: bytes) -> tuple[list, list[tuple[int, list]]]:
    """The first sheet, read as a stream with limits; formulas refuse the file (row named)."""
    try:
        return spreadsheets.read_xlsx(data, max_unpacked_bytes=MAX_XLSX_UNPACKED_BYTES, max_rows=MAX_ROWS)
    except spreadsheets.SpreadsheetError as exc:
        raise ImportFileError(str(exc)) from None


def check_columns(columns: list[str]) -> None:
    """Raise ImportFileError naming every missing column, with the closest header as a hint."""
    problems = []
    duplicates = sorted({c for c in columns if c and columns.count(c) > 1})
    if duplicates:
        problems.append(f"Column(s) {', '.join(duplicates)} appear more than once.")
    numbered = [c for c in columns if NUMBERED_GALLERY.match(c or "")]
    if numbered and "gallery_photo" in columns:
        problems.append("Use either gallery_photo or gallery_photo_1 ... gallery_photo_N, not both.")
    unknown = [c for c in columns if c and c not in EXPECTED_COLUMNS + OPTIONAL_COLUMNS and c not in numbered]
    for expected in EXPECTED_COLUMNS:
        if expected in columns or (expected == "gallery_photo" and numbered):
            continue
        close = difflib.get_close_matches(expected, unknown, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}? Rename it to {expected!r}." if close else ""
        problems.append(f"Column {expected!r} is missing.{hint}")
    if problems:
        found = ", ".join(c or "(empty)" for c in columns)
        problems.append(f"Expected columns: {', '.join(EXPECTED_COLUMNS)}; found: {found}.")
        raise ImportFileError(problems)


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


# ----------------------------------------------------------------------------------------------
# Rows


def _prepare(
    row_number: int,
    values: dict,
    loader: PhotoLoader,
    duplicate_rows: dict[str, list[int]],
    store: PhotoStoreBackend,
) -> _PreparedRow:
    """Validate one row completely and put its photos in the store, outside any transaction.

    This is the slow part (download, decode, hash, fsync) and runs on worker threads. Photos are
    stored only when the whole row is valid. The file goes in before the database row: if the
    row's transaction fails later, an unreferenced file is harmless (the next import of the same
    photo reuses it), while a committed row without its file would not be.
    """
    raw_id = values.get("member_id", "")
    prepared = _PreparedRow(row_number, raw_id.strip() or None)
    try:
        prepared.member_id = _check_member_id(raw_id)
    except ValueError as exc:
        prepared.errors.append(str(exc))
    if prepared.member_id in duplicate_rows:
        rows = duplicate_rows[prepared.member_id]
        prepared.errors.append(
            f"member_id {prepared.member_id!r} appears {len(rows)} times in this file (rows "
            f"{', '.join(map(str, rows))}); none of them was imported"
        )
        return prepared  # no point fetching photos of a row that cannot be imported
    try:
        prepared.gender = normalise_gender(values.get("gender"))
    except ValueError as exc:
        prepared.errors.append(str(exc))
    try:
        prepared.birth_year = _birth_year(values.get("birth_year"))
    except ValueError as exc:
        prepared.errors.append(str(exc))
    for column, kind in PHOTO_COLUMNS.items():
        references = gallery_references(values) if kind == GALLERY else [values.get(column, "")]
        references = [r for r in references if r]
        if not references:
            prepared.errors.append(f"{column} is empty")
            continue
        if kind == GALLERY and len(references) > profile_rows.max_photos():
            prepared.errors.append(
                f"{column}: {len(references)} photos; a profile holds at most {profile_rows.max_photos()}"
            )
            continue
        seen: set[str] = set()
        for position, reference in enumerate(references, start=1):
            try:
                loaded = loader.load(kind, reference)
            except PhotoRefError as exc:
                problem = f"{exc}"
            except Exception as exc:  # one odd file must cost its photo (or row), not the whole import
                problem = f"cannot be read ({type(exc).__name__}: {_short(str(exc))})"
            else:
                if kind == GALLERY and loaded.sha256 in seen:
                    prepared.photo_notes.append(
                        f"photo {position}: the same file as an earlier photo, skipped"
                    )
                    continue
                seen.add(loaded.sha256)
                loaded.position = position if kind == GALLERY else 0
                prepared.photos.append(loaded)
                continue
            if kind == GALLERY and position > 1:
                # A later profile photo that cannot be read costs that photo, not the member.
                prepared.photo_notes.append(
                    f"photo {position} {_short(reference, 60)!r}: {problem}, not added"
                )
            else:
                prepared.errors.append(f"{column} {_short(reference, 60)!r}: {problem}")
    if not prepared.errors:
        try:
            for photo in prepared.photos:
                photo.stored_path = store.put(photo.data, photo.ext).relative_path
                photo.data = b""  # the bytes are on disk now; keep memory flat on large files
        except OSError as exc:
            prepared.errors.append(
                f"the photo store cannot save the photo ({exc.strerror or type(exc).__name__})"
            )
    return prepared


def gallery_references(values: dict) -> list[str]:
    """A row's profile photos in order: gallery_photo_1 ... gallery_photo_N, or the gallery_photo
    cell split at ";" and new lines."""
    numbered = sorted(
        (int(m.group(1)), column) for column in values if (m := NUMBERED_GALLERY.match(column or ""))
    )
    if numbered:
        return [values.get(column, "").strip() for _n, column in numbered if values.get(column, "").strip()]
    return [
        part.strip() for part in GALLERY_SEPARATORS.split(values.get("gallery_photo", "")) if part.strip()
    ]


def _prefetch(items: Iterable, fn: Callable, workers: int) -> Iterator:
    """fn over items on a thread pool, results in order, at most 2*workers in flight (bounded memory)."""
    if workers <= 1:
        yield from (fn(*item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        window: collections.deque[Future] = collections.deque()
        for item in items:
            window.append(pool.submit(fn, *item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _add_profile_photos(
    session: Session, member_id: str, prepared: _PreparedRow, now
) -> tuple[int, list[str]]:
    """The row's later gallery photos join the member's profile after the ones it has, unchecked
    (a verification, or a reviewer, checks them). (how many were added, a note per photo)."""
    later = [p for p in prepared.photos if p.kind == GALLERY and p.position > 1]
    if not later:
        return 0, []
    rows = profile_rows.profile_of(session, member_id)
    have = {session.get(Photo, r.photo_id).sha256 for r in rows}
    top = max((r.position for r in rows), default=1)
    notes, added = [], 0
    for photo in later:
        if photo.sha256 in have:
            notes.append(f"photo {photo.position}: already in the profile")
            continue
        if len(rows) + added >= profile_rows.max_photos():
            notes.append(
                f"photo {photo.position}: the profile is full ({profile_rows.max_photos()}), not added"
            )
            continue
        row = session.scalar(
            select(Photo).where(
                Photo.member_id == member_id, Photo.kind == GALLERY, Photo.sha256 == photo.sha256
            )
        )
        if row is None:
            row = Photo(
                member_id=member_id,
                kind=GALLERY,
                sha256=photo.sha256,
                stored_path=photo.stored_path,
                size_bytes=photo.size_bytes,
                source=_short(photo.reference, 2048),
                current=False,  # the member's current gallery photo is the main one
                created_at=now,
                width=photo.width,
                height=photo.height,
            )
            session.add(row)
            session.flush()
        top += 1
        added += 1
        have.add(photo.sha256)
        session.add(ProfilePhoto(member_id=member_id, position=top, photo_id=row.id, created_at=now))
        notes.append(f"photo {photo.position}: added to the profile as photo {top}, waits to be checked")
    session.flush()
    return added, notes


def _write_row(session: Session, prepared: _PreparedRow, actor: str, source_name: str) -> RowReport:
    """One transaction: member and both photos, or nothing."""
    member_id = prepared.member_id
    now = utcnow()
    member = session.get(Member, member_id)
    is_new = member is None
    changes: list[str] = []
    if is_new:
        member = Member(
            id=member_id,
            gender=prepared.gender,
            created_at=now,
            updated_at=now,
            source=source_name,
            birth_year=prepared.birth_year,
        )
        session.add(member)
    else:
        if member.gender != prepared.gender:
            changes.append(f"gender {member.gender} → {prepared.gender}")
        if prepared.birth_year is not None and member.birth_year != prepared.birth_year:
            changes.append(f"birth year {member.birth_year or '-'} → {prepared.birth_year}")
            member.birth_year = prepared.birth_year
        # An import never replaces an existing member's main gallery photo: the row is refused whole.
        for photo in prepared.photos:
            if photo.kind == GALLERY and photo.position == 1:
                try:
                    gallery.check_not_replaced(session, member_id, photo.sha256)
                except gallery.GalleryLocked as exc:
                    session.rollback()
                    return RowReport(prepared.row, member_id, REJECTED, str(exc))

    done = verification.set_current_photos(
        session,
        member_id,
        [
            verification.NewPhoto(
                photo.kind,
                photo.sha256,
                photo.stored_path,
                photo.size_bytes,
                _short(photo.reference, 2048),
                photo.width,
                photo.height,
            )
            for photo in prepared.photos
            if photo.kind != GALLERY or photo.position == 1
        ],
        now,
        is_new=is_new,
    )
    changes += [c for c in done.changes if c not in changes]
    warnings = done.warnings
    added, notes = _add_profile_photos(session, member_id, prepared, now)
    if added:
        changes.append(f"{added} profile photo(s) added")
    notes = prepared.photo_notes + notes

    if not is_new and not changes:
        session.rollback()
        return RowReport(
            prepared.row, member_id, UNCHANGED, "; ".join(["already up to date", *notes]), warnings
        )
    member.gender = prepared.gender
    member.updated_at = now
    member.source = source_name
    # A birth year alone says nothing about the photos: the verification stands.
    photo_changes = [c for c in changes if not c.startswith("birth year")]
    if not is_new and added and photo_changes == [f"{added} profile photo(s) added"]:
        # Only profile photos added: they wait to be checked against the verified face (the badge
        # is off meanwhile); the member's own verification still stands.
        profiles.refresh_badge(session, member_id)
    elif not is_new and member.status != MEMBER_PENDING and photo_changes:
        # New photos or a new gender: the earlier verification no longer speaks for this member.
        changes.append(f"status {member.status} → {MEMBER_PENDING} (verify again)")
        member.status = MEMBER_PENDING
    status = IMPORTED if is_new else UPDATED
    message = "new member with gallery and verification photos" if is_new else "; ".join(changes)
    message = "; ".join([message, *notes])
    audit.log(
        session,
        actor,
        audit.IMPORT_MEMBER,
        "member",
        member_id,
        {"status": status, "file": source_name, "changes": changes},
    )
    session.commit()
    return RowReport(prepared.row, member_id, status, message, warnings)


def import_members(
    session: Session,
    rows_source,
    zip_bytes: bytes | str | Path | None = None,
    base_dir: str | Path | None = None,
    actor: str = "system",
    *,
    filename: str | None = None,
    photo_store: PhotoStoreBackend | None = None,
    allow_local_files: bool | None = None,
    fetch: Callable[[str], tuple[bytes, str | None]] = fetch_url,
    workers: int = PREFETCH_WORKERS,
    progress: Callable[[int, int], None] | None = None,
    allow_outside: bool = False,
) -> list[RowReport]:
    """Import members from a table; returns one RowReport per data row.

    rows_source: a path, bytes (with filename= to tell .csv from .xlsx) or an uploaded file object.
    zip_bytes: the photo ZIP (bytes or a path) for photos given as paths inside it.
    base_dir: folder for relative photo paths (default: the table's folder when it is a path).
    allow_outside: read local photo paths outside base_dir too (the command line's --allow-outside);
        by default ../ and absolute paths leading out of it are rejected.
    allow_local_files: read photo paths from this machine's disk. Default: only when the table is
        a path on disk (the command line); an uploaded table may name only ZIP entries and links,
        so nobody can read server files through an upload.
    Raises ImportFileError for problems with the whole file (nothing is imported then).
    Commits row by row: a rejected row leaves no trace, earlier rows stay imported.
    """
    is_path = isinstance(rows_source, str | Path)
    if allow_local_files is None:
        allow_local_files = is_path or base_dir is not None
    if base_dir is None and is_path:
        base_dir = Path(rows_source).resolve().parent
    columns, table = read_table(rows_source, filename)
    source_name = _short(
        filename or (Path(rows_source).name if is_path else getattr(rows_source, "name", "upload")), 255
    )
    check_columns(columns)
    if not table:
        raise ImportFileError("The file has a header but no data rows.")

    ids = collections.defaultdict(list)
    for row_number, values in table:
        member_id = unicodedata.normalize("NFC", values.get("member_id", "")).strip()
        if member_id:
            ids[member_id].append(row_number)
    duplicate_rows = {k: v for k, v in ids.items() if len(v) > 1}

    photo_zip = PhotoZip(zip_bytes) if zip_bytes is not None else None
    loader = PhotoLoader(
        photo_zip, Path(base_dir) if base_dir else None, allow_local_files, fetch, allow_outside=allow_outside
    )
    store = photo_store or open_photo_store()
    reports: list[RowReport] = []
    try:
        work = ((row_number, values, loader, duplicate_rows, store) for row_number, values in table)
        for done, prepared in enumerate(_prefetch(work, _prepare, workers), start=1):
            if prepared.errors:
                reports.append(
                    RowReport(prepared.row, prepared.member_id, REJECTED, "; ".join(prepared.errors))
                )
            else:
                reports.append(_write_with_retry(session, prepared, actor, source_name))
            if progress:
                progress(done, len(table))
    finally:
        if photo_zip is not None:
            photo_zip.close()

    counts = summarize(reports)
    audit.log(session, actor, audit.IMPORT_FILE, "import", source_name, counts)
    session.commit()
    return reports


def _write_with_retry(session, prepared, actor, source_name) -> RowReport:
    for attempt in (1, 2):
        try:
            return _write_row(session, prepared, actor, source_name)
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                break  # someone else keeps writing the same member; report it below
        except SQLAlchemyError as exc:
            session.rollback()
            return RowReport(
                prepared.row,
                prepared.member_id,
                REJECTED,
                f"database error, row not imported: {type(exc).__name__}: {_short(str(exc.orig if hasattr(exc, 'orig') else exc), 200)}",
            )
    return RowReport(
        prepared.row,
        prepared.member_id,
        REJECTED,
        "another import changed this member at the same time; import the file again",
    )


def summarize(reports: list[RowReport]) -> dict[str, int]:
    counts = {IMPORTED: 0, UPDATED: 0, UNCHANGED: 0, REJECTED: 0}
    for report in reports:
        counts[report.status] += 1
    return counts


def format_report(reports: list[RowReport], only_problems: bool = False) -> str:
    shown = [r for r in reports if not only_problems or r.status == REJECTED or r.warnings]
    rows = [("row", "member_id", "status", "message")]
    for r in shown:
        message = r.message + "".join(f" [warning: {w}]" for w in r.warnings)
        rows.append((str(r.row), r.member_id or "", r.status, message))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:>{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * min(120, sum(widths) + 6 + max(len(r[3]) for r in rows)))
    return "\n".join(lines)


def load_sample_members(
    session: Session, actor: str = "demo", photo_store: PhotoStoreBackend | None = None
) -> list[RowReport]:
    """Import the demo members of data/sample/members.csv (idempotent)."""
    return import_members(session, config.SAMPLE_DIR / "members.csv", actor=actor, photo_store=photo_store)
