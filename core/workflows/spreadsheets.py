"""Spreadsheets in and out, safely: streaming .xlsx reading, member ids, formula-safe downloads.

read_xlsx(data) -> (header, rows)       the first sheet's cells as text, read as a stream
                                        (never the whole workbook in memory), with limits on the
                                        unpacked size, cells, rows and columns. A formula cell
                                        refuses the file, naming its rows: formulas are never
                                        evaluated and their cached values are never used.
                                        Raises SpreadsheetError.
check_member_id(text) -> str            the member id, NFC-normalised, or ValueError (MEMBER_ID_RULE).
escape_cell(value) / escape_frame(df)   OWASP's rule for CSV and Excel downloads: text starting
                                        with = + - @ tab or carriage return gets a leading ' so a
                                        spreadsheet shows it as text instead of running it.
csv_writer(file) / csv_text(rows)       the csv module's writer with every cell escaped the same
                                        way: every CSV the product hands out is written through it
                                        (or through escape_frame for a DataFrame).

Why a reader of our own: openpyxl's normal mode builds every cell as an object (a 199 KB .xlsx
holding 99 MB of sheet XML took 3.3 GB and 68 s), and its read-only mode still builds a whole
<row> element before handing it out, so one row of millions of cells costs the same. Here each
cell is handed over by expat's callbacks and kept only as its text (no element tree at all), and
the limits stop the reading early.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
import unicodedata
import zipfile
from decimal import Decimal, InvalidOperation
from xml.parsers import expat

from core.errors import FaceVerifyError

MAX_UNPACKED_BYTES = 64 * 1024 * 1024  # the XML a 100,000-row member list unpacks to is ~30 MB
MAX_CELLS = 600_000  # 100,000 rows of six columns
MAX_ROWS = 100_000  # data rows, as core.workflows.importer
MAX_COLUMNS = 64

MAX_MEMBER_ID_LENGTH = 64
MEMBER_ID_RULE = (
    "letters (any alphabet, Hangul included), digits, '_', '-' and '.', starting with a letter "
    "or a digit, at most 64 characters"
)
_MEMBER_ID_RE = re.compile(r"[^\W_][\w.\-]*")

# OWASP "CSV injection": cells starting with these run as formulas in Excel, LibreOffice, Sheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# Element and attribute names as expat gives them with namespace_separator="}".
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships}"
_CELL_REF = re.compile(r"^([A-Z]{1,3})([0-9]{1,7})$")


class SpreadsheetError(FaceVerifyError):
    """The workbook cannot be read within the limits, or holds formulas; nothing was imported."""

    code = "bad_spreadsheet"


# --- member ids ----------------------------------------------------------------------------------


def check_member_id(value) -> str:
    """The member id (NFC, stripped) if it is an identifier by MEMBER_ID_RULE, else ValueError."""
    member_id = unicodedata.normalize("NFC", str(value if value is not None else "")).strip()
    if not member_id:
        raise ValueError("member_id is empty")
    if len(member_id) > MAX_MEMBER_ID_LENGTH:
        raise ValueError(f"member_id is longer than {MAX_MEMBER_ID_LENGTH} characters")
    if any(not ch.isprintable() for ch in member_id):
        raise ValueError("member_id contains control characters (tabs, line breaks)")
    if not _MEMBER_ID_RE.fullmatch(member_id):
        raise ValueError(f"member_id may hold only {MEMBER_ID_RULE}")
    return member_id


# --- downloads -----------------------------------------------------------------------------------


def escape_cell(value):
    """Text that a spreadsheet would run as a formula, prefixed with ' ; anything else unchanged.

    Numbers stay numbers (a negative similarity is a value, not a formula); only text is escaped.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def escape_frame(frame):
    """A copy of a pandas DataFrame with every text cell (and column name) passed through escape_cell."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(escape_cell)
    out.columns = [escape_cell(c) for c in out.columns]
    return out


class _EscapingWriter:
    """csv.writer's writerow/writerows, with every cell passed through escape_cell first."""

    def __init__(self, file, **fmtparams):
        self._writer = csv.writer(file, **fmtparams)

    def writerow(self, row):
        return self._writer.writerow([escape_cell(cell) for cell in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def csv_writer(file, **fmtparams) -> _EscapingWriter:
    """A csv writer (same arguments as csv.writer) whose cells are escaped against formulas."""
    return _EscapingWriter(file, **fmtparams)


def csv_text(rows, **fmtparams) -> str:
    """Rows (the first one the header) as CSV text, every cell escaped against formulas."""
    out = io.StringIO()
    csv_writer(out, **fmtparams).writerows(rows)
    return out.getvalue()


# --- reading .xlsx -------------------------------------------------------------------------------


def read_xlsx(
    data: bytes,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_cells: int = MAX_CELLS,
    max_rows: int = MAX_ROWS,
    max_columns: int = MAX_COLUMNS,
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header cells, [(row number, cells)]) of the first sheet; every cell as text.

    Hyperlinked cells give the link's target (a "photo" column often shows the word "photo" and
    links to the file). Row numbers are the ones the spreadsheet shows.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise SpreadsheetError("The Excel file is damaged (not a valid .xlsx).") from None
    with archive:
        # The sizes in the ZIP's directory are enforced by zipfile while reading (a part that
        # inflates past its declared size fails its check), so refusing here is refusing for good.
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > max_unpacked_bytes:
            raise SpreadsheetError(
                f"The Excel file unpacks to {unpacked / 1e6:.0f} MB; the limit is "
                f"{max_unpacked_bytes / 1e6:.0f} MB. Save it as CSV or split it."
            )
        try:
            sheet_path, strings_path = _first_sheet(archive)
            strings = _shared_strings(archive, strings_path, max_cells) if strings_path else []
            links = _hyperlinks_targets(archive, sheet_path)
            grid, formulas, hyperlinks = _read_sheet(
                archive, sheet_path, strings, max_cells, max_rows, max_columns
            )
        except SpreadsheetError:
            raise
        except (expat.ExpatError, KeyError, zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise SpreadsheetError(
                f"The Excel file is damaged or not a workbook ({type(exc).__name__})."
            ) from None
    if formulas:
        rows = sorted({row for row, _ in formulas})
        cells = ", ".join(ref for _, ref in formulas[:5])
        shown = ", ".join(map(str, rows[:10])) + (" and more" if len(rows) > 10 else "")
        raise SpreadsheetError(
            f"Row(s) {shown} hold formulas (cells {cells}); formulas are not evaluated. "
            "Replace each formula by its value (Paste special > Values) and import again."
        )
    _apply_hyperlinks(grid, hyperlinks, links)
    if not grid:
        raise SpreadsheetError("The Excel sheet is empty.")
    numbers = sorted(grid)
    header = grid[numbers[0]]
    return header, [(n, grid[n]) for n in numbers[1:]]


_CHUNK = 64 * 1024


def _parse(archive: zipfile.ZipFile, name: str, start, end, chars=None) -> None:
    """Stream one XML part through expat: callbacks only, no element tree is ever built.

    Element names arrive as "namespace}local". Any DOCTYPE or entity declaration refuses the
    file (no workbook needs one; it is how entity-expansion bombs start).
    """
    parser = expat.ParserCreate(namespace_separator="}")

    def refuse(*_):
        raise SpreadsheetError("The Excel file holds XML entity declarations; it is not a normal workbook.")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    if chars is not None:
        parser.CharacterDataHandler = chars
    parser.buffer_text = True
    with archive.open(name) as part:
        while chunk := part.read(_CHUNK):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)


def _rels(archive: zipfile.ZipFile, rels_name: str, base: str) -> dict[str, tuple[str, str, str]]:
    """Relationship id -> (type, target resolved inside the package or as given, target mode)."""
    if rels_name not in archive.NameToInfo:
        return {}
    out = {}

    def start(tag, attrs):
        if tag == f"{_PKG_REL}Relationship":
            target = attrs.get("Target", "")
            mode = attrs.get("TargetMode", "Internal")
            if mode != "External":
                target = posixpath.normpath(posixpath.join(base, target)).lstrip("/")
            out[attrs.get("Id", "")] = (attrs.get("Type", ""), target, mode)
            if len(out) > MAX_CELLS:
                raise SpreadsheetError(
                    "The Excel file holds too many relationships; it is not a normal workbook."
                )

    _parse(archive, rels_name, start, lambda tag: None)
    return out


def _first_sheet(archive: zipfile.ZipFile) -> tuple[str, str | None]:
    rels = _rels(archive, "xl/_rels/workbook.xml.rels", "xl")
    sheet_ids: list[str] = []

    def start(tag, attrs):
        if tag == f"{_MAIN}sheet" and not sheet_ids:
            sheet_ids.append(attrs.get(f"{_REL}id", ""))

    _parse(archive, "xl/workbook.xml", start, lambda tag: None)
    sheet = rels.get(sheet_ids[0] if sheet_ids else "", ("", "xl/worksheets/sheet1.xml", ""))[1]
    if sheet not in archive.NameToInfo:
        raise SpreadsheetError("The Excel file has no worksheet.")
    strings = next((t for kind, t, _ in rels.values() if kind.endswith("/sharedStrings")), None)
    if strings is None:
        strings = "xl/sharedStrings.xml"
    return sheet, strings if strings in archive.NameToInfo else None


class _TextCollector:
    """Text of <si> (shared strings) or <is> (inline) elements: their <t> runs, not <rPh> guides."""

    def __init__(self):
        self.parts: list[str] | None = None
        self.in_t = False
        self.in_phonetic = 0

    def start(self, tag):
        if tag == f"{_MAIN}t" and not self.in_phonetic:
            self.in_t = True
        elif tag == f"{_MAIN}rPh":
            self.in_phonetic += 1

    def end(self, tag):
        if tag == f"{_MAIN}t":
            self.in_t = False
        elif tag == f"{_MAIN}rPh":
            self.in_phonetic -= 1

    def chars(self, text):
        if self.in_t and self.parts is not None:
            self.parts.append(text)


def _shared_strings(archive: zipfile.ZipFile, name: str, max_cells: int) -> list[str]:
    strings: list[str] = []
    text = _TextCollector()

    def start(tag, attrs):
        if tag == f"{_MAIN}si":
            text.parts = []
        else:
            text.start(tag)

    def end(tag):
        if tag == f"{_MAIN}si":
            strings.append("".join(text.parts or ()))
            text.parts = None
            if len(strings) > max_cells:
                raise SpreadsheetError(f"The Excel file holds more than {max_cells:,} texts; split it.")
        else:
            text.end(tag)

    _parse(archive, name, start, end, text.chars)
    return strings


def _hyperlinks_targets(archive: zipfile.ZipFile, sheet_path: str) -> dict[str, str]:
    folder, file = posixpath.split(sheet_path)
    rels = _rels(archive, f"{folder}/_rels/{file}.rels", folder)
    return {rid: target for rid, (kind, target, mode) in rels.items() if kind.endswith("/hyperlink")}


def _column_index(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - 64)
    return n


def _number_text(raw: str) -> str:
    """Member ids typed as numbers come back as typed: 1001, not 1001.0."""
    if raw.isdigit():
        return raw
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return raw
    if value.is_finite() and value == value.to_integral_value() and abs(value) < Decimal(10) ** 20:
        return str(int(value))
    return raw


class _SheetReader:
    """expat callbacks for one worksheet; every limit is checked as the cells go by."""

    C, V, F, IS, ROW, LINK = (f"{_MAIN}{t}" for t in ("c", "v", "f", "is", "row", "hyperlink"))

    def __init__(self, strings, max_cells, max_rows, max_columns):
        self.strings, self.max_cells, self.max_rows, self.max_columns = (
            strings,
            max_cells,
            max_rows,
            max_columns,
        )
        self.grid: dict[int, list[str]] = {}
        self.formulas: list[tuple[int, str]] = []
        self.hyperlinks: list[tuple[str, str]] = []  # (ref, relationship id)
        self.cells = 0
        self.row = 0
        self.cell: tuple[str, str] | None = None  # (ref, type) of the open <c>
        self.value: list[str] | None = None  # text of the open <v>
        self.has_formula = False
        self.inline = _TextCollector()

    def start(self, tag, attrs):
        if tag == self.C:
            self.cells += 1
            if self.cells > self.max_cells:
                raise SpreadsheetError(f"The sheet has more than {self.max_cells:,} cells; split it.")
            self.cell = (attrs.get("r", ""), attrs.get("t", "n"))
            self.has_formula = False
        elif self.cell is not None:
            if tag == self.V:
                self.value = []
            elif tag == self.F:
                self.has_formula = True
            elif tag == self.IS:
                self.inline.parts = []
            else:
                self.inline.start(tag)
        elif tag == self.ROW:
            r = attrs.get("r")
            self.row = int(r) if r and r.isdigit() else self.row + 1
            self._check_row()
        elif tag == self.LINK:
            rid, ref = attrs.get(f"{_REL}id"), attrs.get("ref")
            if rid and ref:
                self.hyperlinks.append((ref, rid))
                if len(self.hyperlinks) > self.max_cells:
                    raise SpreadsheetError(f"The sheet has more than {self.max_cells:,} links; split it.")

    def chars(self, text):
        if self.value is not None:
            self.value.append(text)
        else:
            self.inline.chars(text)

    def end(self, tag):
        if tag == self.V:
            if self.cell is not None and self.value is not None:
                self.cell = (self.cell[0], self.cell[1], "".join(self.value))
            self.value = None
        elif tag == self.C:
            self._finish_cell()
        elif self.cell is not None and tag != self.IS:
            self.inline.end(tag)

    def _check_row(self):
        if self.row > self.max_rows + 1:
            raise SpreadsheetError(f"The sheet has more than {self.max_rows:,} rows; split it.")

    def _finish_cell(self):
        ref, kind, *raw = self.cell
        self.cell = None
        inline, self.inline.parts = self.inline.parts, None
        match = _CELL_REF.match(ref)
        if match:
            column, self.row = _column_index(match.group(1)), int(match.group(2))
            self._check_row()
        else:  # cells without a reference follow each other
            column = len(self.grid.get(self.row, ())) + 1
            ref = f"row {self.row} column {column}"
        if column > self.max_columns:
            name = match.group(1) if match else column
            raise SpreadsheetError(
                f"Row {self.row} uses column {name}; at most {self.max_columns} columns are read. "
                "Delete the extra columns."
            )
        if self.has_formula:
            self.formulas.append((self.row, ref))
            return
        value = self._text(kind, raw[0] if raw else "", inline)
        if value != "":
            cells = self.grid.setdefault(self.row, [])
            if len(cells) < column:
                cells.extend([""] * (column - len(cells)))
            cells[column - 1] = value

    def _text(self, kind: str, raw: str, inline: list[str] | None) -> str:
        if kind == "inlineStr":
            return "".join(inline or ())
        if kind == "s":
            try:
                return self.strings[int(raw)]
            except (ValueError, IndexError):
                raise SpreadsheetError(
                    "A cell points at a text that does not exist; the file is damaged."
                ) from None
        if kind == "b":
            return {"1": "TRUE", "0": "FALSE"}.get(raw.strip(), raw)
        if kind == "n":
            return _number_text(raw.strip())
        return raw  # e (an error value such as #N/A), d (a date as text); str needs a formula


def _read_sheet(archive, sheet_path, strings, max_cells, max_rows, max_columns):
    reader = _SheetReader(strings, max_cells, max_rows, max_columns)
    _parse(archive, sheet_path, reader.start, reader.end, reader.chars)
    return reader.grid, reader.formulas, reader.hyperlinks


def _apply_hyperlinks(grid, hyperlinks, targets) -> None:
    for ref, rid in hyperlinks:
        target = targets.get(rid)
        if not target:
            continue
        first, _, last = ref.upper().partition(":")
        a, b = _CELL_REF.match(first), _CELL_REF.match(last or first)
        if not a or not b:
            continue
        c0, c1 = sorted((_column_index(a.group(1)), _column_index(b.group(1))))
        r0, r1 = sorted((int(a.group(2)), int(b.group(2))))
        for row in range(r0, r1 + 1) if r1 - r0 <= len(grid) else sorted(grid):
            cells = grid.get(row)
            if cells is None or not r0 <= row <= r1:
                continue
            for column in range(c0, min(c1, len(cells)) + 1):
                if cells[column - 1] != "":
                    cells[column - 1] = target
