"""Reading the member table: .csv or .xlsx, its columns checked, the gallery cell split into the
profile's photos."""

from __future__ import annotations

import csv
import difflib
import io
import re
import unicodedata
from pathlib import Path

from core.errors import FaceVerifyError
from core.i18n.notes import Note, note, of_error
from core.storage.schema import GALLERY, VERIFICATION
from core.workflows import spreadsheets

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


class ImportFileError(FaceVerifyError):
    """The file as a whole cannot be imported (unreadable, wrong columns); no row was touched."""

    code = "import_file_error"

    def __init__(self, problems: list[Note | str] | Note | str):
        # Each problem as a note (catalog key and values); `problems` holds their English text.
        given = [problems] if isinstance(problems, Note | str) else list(problems)
        # A problem worded elsewhere in English is said as it is.
        self.notes = [
            p if isinstance(p, Note) else Note("import.file.detail", {"detail": p}, en=p) for p in given
        ]
        self.problems = [str(n) for n in self.notes]
        super().__init__(" ".join(self.problems))

    def texts(self, lang: str) -> list[str]:
        """The problems said in `lang`."""
        return [n.text(lang) for n in self.notes]


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
            raise ImportFileError(note("import.file.missing", path=str(path)))
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise ImportFileError(
                note("import.file.too_large", mb=path.stat().st_size / 1e6, limit=MAX_TABLE_BYTES / 1e6)
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
        raise ImportFileError(note("import.file.too_large", mb=len(data) / 1e6, limit=MAX_TABLE_BYTES / 1e6))
    if not data.strip():
        raise ImportFileError(note("import.file.empty"))
    suffix = Path(name).suffix.lower()
    if suffix in (".xlsx", ".xlsm") or (data[:4] == b"PK\x03\x04" and suffix not in (".csv", ".txt", ".tsv")):
        header, rows = _read_xlsx(data)
    elif suffix == ".xls" or data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise ImportFileError(note("import.file.xls"))
    elif data[:4] == b"PK\x03\x04":
        raise ImportFileError(note("import.file.xlsx_named_csv", name=name))
    else:
        header, rows = _read_csv(data)
    if len(rows) > MAX_ROWS:
        raise ImportFileError(note("import.file.too_many_rows", rows=len(rows), limit=MAX_ROWS))
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
        raise ImportFileError(note("import.file.encoding"))
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        rows = [(reader.line_num, values) for values in reader]
    except csv.Error as exc:
        raise ImportFileError(
            note("import.file.malformed_csv", line=reader.line_num, detail=str(exc))
        ) from None
    return header, rows


def _read_xlsx(data: bytes) -> tuple[list, list[tuple[int, list]]]:
    """The first sheet, read as a stream with limits; formulas refuse the file (row named)."""
    try:
        return spreadsheets.read_xlsx(data, max_unpacked_bytes=MAX_XLSX_UNPACKED_BYTES, max_rows=MAX_ROWS)
    except spreadsheets.SpreadsheetError as exc:
        raise ImportFileError(of_error(exc, "import.file.spreadsheet")) from None


def check_columns(columns: list[str]) -> None:
    """Raise ImportFileError naming every missing column, with the closest header as a hint."""
    problems = []
    duplicates = sorted({c for c in columns if c and columns.count(c) > 1})
    if duplicates:
        problems.append(note("import.file.duplicate_columns", columns=", ".join(duplicates)))
    numbered = [c for c in columns if NUMBERED_GALLERY.match(c or "")]
    if numbered and "gallery_photo" in columns:
        problems.append(note("import.file.both_gallery_forms"))
    unknown = [c for c in columns if c and c not in EXPECTED_COLUMNS + OPTIONAL_COLUMNS and c not in numbered]
    for expected in EXPECTED_COLUMNS:
        if expected in columns or (expected == "gallery_photo" and numbered):
            continue
        close = difflib.get_close_matches(expected, unknown, n=1, cutoff=0.6)
        if close:
            problems.append(note("import.file.missing_column_hint", column=expected, close=close[0]))
        else:
            problems.append(note("import.file.missing_column", column=expected))
    if problems:
        found = ", ".join(c or "(empty)" for c in columns)
        problems.append(
            note("import.file.expected_columns", expected=", ".join(EXPECTED_COLUMNS), found=found)
        )
        raise ImportFileError(problems)


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
