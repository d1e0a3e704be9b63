"""Streaming .xlsx reading with limits, formula refusal, member ids, formula-safe downloads."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import openpyxl
import pandas as pd
import pytest

from core.workflows import spreadsheets
from core.workflows.spreadsheets import (
    SpreadsheetError,
    check_member_id,
    escape_cell,
    escape_frame,
    read_xlsx,
)

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/>'
    "</Relationships>"
)
_WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/>'
    "</Relationships>"
)
_SHEET_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
)
_SHEET_TAIL = "</sheetData></worksheet>"


def handmade_xlsx(sheet_rows, *, extra: bytes = b"", repeat: int = 0, close: str = "") -> bytes:
    """A minimal workbook whose sheet XML is written by hand (sheet_rows: XML of <row> elements).

    repeat > 0 appends that many copies of `extra` inside sheetData (for bombs), streamed into
    the ZIP so the test itself stays small in memory.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
        zf.writestr("_rels/.rels", _ROOT_RELS)
        zf.writestr("xl/workbook.xml", _WORKBOOK)
        zf.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(_SHEET_HEAD.encode())
            sheet.write(sheet_rows.encode())
            chunk = extra * 1000
            for _ in range(repeat // 1000):
                sheet.write(chunk)
            sheet.write((close + _SHEET_TAIL).encode())
    return buffer.getvalue()


def row_xml(n, *cells):
    out = "".join(f'<c r="{col}{n}" t="inlineStr"><is><t>{text}</t></is></c>' for col, text in cells)
    return f'<row r="{n}">{out}</row>'


HEADER_ROW = row_xml(
    1, ("A", "member_id"), ("B", "gender"), ("C", "gallery_photo"), ("D", "verification_photo")
)


def test_workbook_from_openpyxl_numbers_korean_and_hyperlinks(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["member_id", "gender", "gallery_photo", "verification_photo"])
    sheet.append([1001, "남", "photo", "v.jpg"])
    sheet.append([1002.0, "여성", "g2.jpg", "v2.jpg"])
    sheet["C2"].hyperlink = "https://photos.example/1001.jpg"
    sheet.append([])
    sheet.append(["M-3", "F", "사진/김민수.jpg", "b.jpg"])
    path = tmp_path / "m.xlsx"
    book.save(path)

    header, rows = read_xlsx(path.read_bytes())

    assert header == ["member_id", "gender", "gallery_photo", "verification_photo"]
    assert rows == [
        (2, ["1001", "남", "https://photos.example/1001.jpg", "v.jpg"]),
        (3, ["1002", "여성", "g2.jpg", "v2.jpg"]),
        (5, ["M-3", "F", "사진/김민수.jpg", "b.jpg"]),
    ]


def test_formula_cells_are_refused_with_their_rows_never_their_cached_value():
    formula = (
        '<row r="3"><c r="A3" t="str"><f>HYPERLINK("http://evil.example/x","click")</f>'
        "<v>http://evil.example/x</v></c></row>"
    )
    data = handmade_xlsx(HEADER_ROW + row_xml(2, ("A", "M1"), ("B", "M")) + formula)
    with pytest.raises(SpreadsheetError) as info:
        read_xlsx(data)
    message = str(info.value)
    assert "Row(s) 3 hold formulas (cells A3)" in message
    assert "evil" not in message


def test_formula_written_by_openpyxl_is_refused(tmp_path):
    book = openpyxl.Workbook()
    book.active.append(["member_id", "gender", "gallery_photo", "verification_photo"])
    book.active.append(["M1", "M", "a.jpg", "b.jpg"])
    book.active.append(['=HYPERLINK("http://evil.example/x","click")', "M", "a.jpg", "b.jpg"])
    book.active.append(["M3", "M", "=1+1", "b.jpg"])
    path = tmp_path / "f.xlsx"
    book.save(path)
    with pytest.raises(SpreadsheetError, match=r"Row\(s\) 3, 4 hold formulas"):
        read_xlsx(path.read_bytes())


def test_a_sheet_that_unpacks_to_99_mb_is_refused_from_the_zip_directory():
    cell = b'<row><c t="inlineStr"><is><t>x</t></is></c></row>'  # 50 bytes
    data = handmade_xlsx(HEADER_ROW, extra=cell, repeat=99 * 1024 * 1024 // len(cell))
    assert len(data) < 400_000  # a small upload ...
    tracemalloc.start()
    with pytest.raises(SpreadsheetError, match="unpacks to 10[0-9] MB; the limit is 67 MB"):
        read_xlsx(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5_000_000, peak  # refused from the ZIP's directory: nothing was inflated


def test_many_tiny_cells_stop_at_the_cell_limit_with_flat_memory():
    """Under the unpacked limit, but far more cells than allowed, in one giant row (which openpyxl's
    read-only mode would build whole): reading stops at the limit and memory stays flat."""
    cell = b'<c t="n"><v>1</v></c>'  # 20 bytes, one giant row as openpyxl's read-only mode cannot stream
    data = handmade_xlsx(HEADER_ROW + '<row r="2">', extra=cell, repeat=2_500_000, close="</row>")
    tracemalloc.start()
    with pytest.raises(SpreadsheetError, match="more than 100,000 cells"):
        read_xlsx(data, max_cells=100_000, max_columns=10_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # What is kept is the cells' text (one short string each), never an element per cell.
    assert peak < 20_000_000, peak


def test_too_many_columns_and_rows_are_refused():
    wide = row_xml(2, ("A", "M1"), ("XFD", "far away"))
    with pytest.raises(SpreadsheetError, match="uses column XFD"):
        read_xlsx(handmade_xlsx(HEADER_ROW + wide))
    tall = row_xml(2, ("A", "M1")) + row_xml(100_002, ("A", "M2"))
    with pytest.raises(SpreadsheetError, match="more than 100,000 rows"):
        read_xlsx(handmade_xlsx(HEADER_ROW + tall))


def test_entity_declarations_are_refused():
    data = handmade_xlsx(HEADER_ROW)
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "xl/workbook.xml":
                body = body.replace(
                    b"?>", b'?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>', 1
                )
            dst.writestr(info, body)
    with pytest.raises(SpreadsheetError, match="entity declarations"):
        read_xlsx(buffer.getvalue())


@pytest.mark.parametrize("data", [b"PK\x03\x04 broken", b"not a zip", b""])
def test_damaged_files_get_a_typed_error(data):
    with pytest.raises(SpreadsheetError, match="damaged"):
        read_xlsx(data)


def test_zip_without_a_workbook_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(SpreadsheetError):
        read_xlsx(buffer.getvalue())


@pytest.mark.parametrize(
    "raw, expected",
    [("M0001", "M0001"), (" 1001 ", "1001"), ("회원_7", "회원_7"), ("a.b-c_d", "a.b-c_d"), ("Ab9", "Ab9")],
)
def test_member_ids_are_identifiers(raw, expected):
    assert check_member_id(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        ('=HYPERLINK("http://evil.example/x","click")', "may hold only"),
        ("=cmd|' /C calc'!A0", "may hold only"),
        ("@SUM(1+1)", "may hold only"),
        ("+1-1", "may hold only"),
        ("-5", "may hold only"),
        ("_x", "may hold only"),
        ("M 001", "may hold only"),
        ("M001;DROP", "may hold only"),
        ("a/b", "may hold only"),
        ("x" * 65, "longer than 64"),
        ("", "empty"),
        ("M\t1", "control characters"),
    ],
)
def test_member_ids_that_are_not_identifiers_are_refused(raw, reason):
    with pytest.raises(ValueError, match=reason):
        check_member_id(raw)


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://e/x")'])
def test_cells_that_would_run_as_formulas_are_escaped(text):
    assert escape_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["M0001", "", "a=b", -0.25, 3, None, "'already"])
def test_other_cells_are_unchanged(value):
    assert escape_cell(value) == value


def test_escape_frame_escapes_text_columns_and_names_but_not_numbers():
    frame = pd.DataFrame(
        {"member_id": ["=cmd|' /C calc'!A0", "M1"], "similarity": [-0.5, 0.9], "@x": ["a", "-b"]}
    )
    out = escape_frame(frame)
    assert list(out["member_id"]) == ["'=cmd|' /C calc'!A0", "M1"]
    assert list(out["similarity"]) == [-0.5, 0.9]
    assert list(out.columns) == ["member_id", "similarity", "'@x"]
    assert list(out["'@x"]) == ["a", "'-b"]
    assert list(frame["member_id"])[0].startswith("=")  # the input is not changed
    csv_text = out.to_csv(index=False)
    assert all(not line.startswith(spreadsheets.FORMULA_PREFIXES) for line in csv_text.splitlines())


def test_csv_writer_escapes_every_cell_like_the_downloads():
    rows = [["at", "who", "why"], ["2026-12-06", '=HYPERLINK("http://e/x","click")', "+1"], [1, -0.5, None]]
    text = spreadsheets.csv_text(rows)
    import csv

    read = list(csv.reader(io.StringIO(text)))
    assert read[1] == ["2026-12-06", '\'=HYPERLINK("http://e/x","click")', "'+1"]
    assert read[2] == ["1", "-0.5", ""]  # numbers stay numbers


def test_training_set_names_that_would_run_as_formulas_are_refused(tmp_path):
    from core.dashboard import training_sets

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("people.csv", 'person,gender\n"=HYPERLINK(""http://e/x"")",M\nA_B,F\n')
        z.writestr('=HYPERLINK("http://e/x")_0001.jpg', b"\xff\xd8 not a real photo")
        z.writestr("A_B_0001.jpg", b"\xff\xd8 not a real photo")
    with pytest.raises(training_sets.TrainingSetError, match="is not a usable name"):
        training_sets.unpack_upload(buffer.getvalue(), tmp_path / "sets")
    assert not (tmp_path / "sets").exists() or not any((tmp_path / "sets").iterdir())
