"""Member import from CSV/XLSX with local, ZIP and http(s) photos; every bad input gets a row message."""

from __future__ import annotations

import io
import threading
import unicodedata
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from core import cli
from core.storage.schema import AuditEntry, Member, Photo
from core.workflows import importer, links
from core.workflows.importer import IMPORTED, REJECTED, UNCHANGED, UPDATED, ImportFileError, import_members

HEADER = "member_id,gender,gallery_photo,verification_photo\n"


@pytest.fixture(scope="module")
def http_server():
    """A local web server: routes[path] = (status, content type, body); allow-listed as the
    customer's photo host (core.workflows.links refuses loopback otherwise)."""
    routes: dict[str, tuple[int, str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"not found"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(links.ALLOW_SETTING, f"127.0.0.1:{server.server_port}")
        yield f"http://127.0.0.1:{server.server_port}", routes, requests
    server.shutdown()
    server.server_close()


def write_photos(folder, make_photo, seeds):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / f"p{seed}.jpg").write_bytes(make_photo(seed))


def table_state(session):
    members = sorted(
        session.execute(select(Member.id, Member.gender, Member.status, Member.updated_at)).all()
    )
    photos = sorted(session.execute(select(Photo.member_id, Photo.kind, Photo.sha256, Photo.current)).all())
    return members, photos


def by_member(reports):
    return {r.member_id: r for r in reports}


def test_csv_import_then_reimport_changes_nothing(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path / "photos", make_photo, range(1, 7))
    csv_path = tmp_path / "members.csv"
    csv_path.write_text(
        HEADER
        + "M001,M,photos/p1.jpg,photos/p2.jpg\nM002,여,photos/p3.jpg,photos/p4.jpg\nM003,female,photos/p5.jpg,photos/p6.jpg\n"
    )

    reports = import_members(session, csv_path, photo_store=photo_store, actor="tester")

    assert [(r.row, r.member_id, r.status) for r in reports] == [
        (2, "M001", IMPORTED),
        (3, "M002", IMPORTED),
        (4, "M003", IMPORTED),
    ]
    members, photos = table_state(session)
    assert [(m.id, m.gender, m.status) for m in members] == [
        ("M001", "M", "pending"),
        ("M002", "F", "pending"),
        ("M003", "F", "pending"),
    ]
    assert len(photos) == 6 and all(p.current for p in photos)
    stored_files = sorted(p for p in photo_store.root.rglob("*.jpg"))
    assert len(stored_files) == 6
    gallery = session.scalar(select(Photo).where(Photo.member_id == "M001", Photo.kind == "gallery"))
    assert gallery.source == "photos/p1.jpg" and gallery.width == 96 and gallery.height == 96
    assert photo_store.read(gallery.stored_path) == make_photo(1)

    again = import_members(session, csv_path, photo_store=photo_store, actor="tester")

    assert [r.status for r in again] == [UNCHANGED] * 3
    assert table_state(session) == (members, photos)
    assert sorted(p for p in photo_store.root.rglob("*.jpg")) == stored_files
    per_member_entries = session.scalar(
        select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "import_member")
    )
    assert per_member_entries == 3, "re-import must not log member changes that did not happen"


def test_reimport_with_changes_reports_updated_and_keeps_history(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path, make_photo, [1, 2, 3])
    csv_path = tmp_path / "members.csv"
    csv_path.write_text(HEADER + "M001,M,p1.jpg,p2.jpg\n")
    import_members(session, csv_path, photo_store=photo_store)

    session.get(Member, "M001").status = "verified"
    session.commit()
    csv_path.write_text(HEADER + "M001,F,p1.jpg,p3.jpg\n")
    (report,) = import_members(session, csv_path, photo_store=photo_store)

    assert report.status == UPDATED
    assert "gender M → F" in report.message and "new verification photo" in report.message
    assert "status verified → pending" in report.message
    assert session.get(Member, "M001").status == "pending"
    photos = session.execute(
        select(Photo.kind, Photo.sha256, Photo.current).where(Photo.member_id == "M001")
    ).all()
    verification = {p.sha256: p.current for p in photos if p.kind == "verification"}
    assert len(verification) == 2 and sorted(verification.values()) == [False, True]
    assert session.get(Member, "M001").gender == "F"

    # The earlier photo coming back is reactivated, not duplicated.
    csv_path.write_text(HEADER + "M001,F,p1.jpg,p2.jpg\n")
    (report,) = import_members(session, csv_path, photo_store=photo_store)
    assert report.status == UPDATED
    assert session.scalar(select(func.count()).select_from(Photo).where(Photo.member_id == "M001")) == 3


def test_xlsx_with_numbers_korean_genders_and_hyperlinks(
    session, photo_store, tmp_path, make_photo, http_server
):
    import openpyxl

    base, routes, _ = http_server
    routes["/xlsx-gallery.jpg"] = (200, "image/jpeg", make_photo(11))
    write_photos(tmp_path / "img", make_photo, [12, 13, 14])
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["Member ID", "Gender", "Gallery Photo", "Verification Photo"])  # header forms vary
    sheet.append([1001, "남", "see link", "img/p12.jpg"])
    sheet["C2"].hyperlink = f"{base}/xlsx-gallery.jpg"  # the visible text is not the link
    sheet.append(["1002", "여성", "img/p13.jpg", "img/p14.jpg"])
    sheet.append([None, None, None, None])  # trailing blank rows are common in sheets
    path = tmp_path / "members.xlsx"
    workbook.save(path)

    reports = import_members(session, path, photo_store=photo_store)

    assert [(r.member_id, r.status) for r in reports] == [("1001", IMPORTED), ("1002", IMPORTED)], reports
    assert session.get(Member, "1001").gender == "M"
    assert session.get(Member, "1002").gender == "F"
    linked = session.scalar(select(Photo).where(Photo.member_id == "1001", Photo.kind == "gallery"))
    assert linked.source == f"{base}/xlsx-gallery.jpg"


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_zip_import_rejects_entries_outside_the_zip(session, photo_store, make_photo):
    nfd_name = unicodedata.normalize("NFD", "사진/김민수.jpg")  # how macOS writes Hangul file names
    photo_zip = make_zip(
        {
            "upload/photos/a.jpg": make_photo(21),
            "upload/photos/b.jpg": make_photo(22),
            nfd_name: make_photo(23),
            "../evil.jpg": make_photo(24),
            "/etc/abs.jpg": make_photo(25),
        }
    )
    table = (
        HEADER + "Z1,M,photos/a.jpg,b.jpg\n"  # found through the wrapping folder
        "Z2,F,사진/김민수.jpg,upload/photos/a.jpg\n"
        "Z3,M,../evil.jpg,b.jpg\n"
        "Z4,M,a.jpg,/etc/abs.jpg\n"
        "Z5,M,a.jpg,missing.jpg\n"
    ).encode()

    reports = by_member(
        import_members(session, table, zip_bytes=photo_zip, filename="members.csv", photo_store=photo_store)
    )

    assert reports["Z1"].status == IMPORTED, reports["Z1"].message
    assert reports["Z2"].status == IMPORTED, reports["Z2"].message
    assert reports["Z3"].status == REJECTED and "outside the ZIP" in reports["Z3"].message
    assert reports["Z4"].status == REJECTED and "outside the ZIP" in reports["Z4"].message
    assert reports["Z5"].status == REJECTED and "not in the photo ZIP" in reports["Z5"].message
    assert session.get(Member, "Z3") is None and session.get(Member, "Z4") is None


@pytest.mark.parametrize(
    "header, hints",
    [
        (
            "member_id,gendr,galery_photo,verification_photo",
            ["Did you mean 'gendr'", "Did you mean 'galery_photo'"],
        ),
        (
            "member,gender,gallery_photo",
            ["'member_id' is missing", "Did you mean 'member'", "'verification_photo' is missing"],
        ),
        ("id,sex,a,b", ["'member_id' is missing", "'gender' is missing"]),
    ],
)
def test_missing_or_misspelt_columns_reject_the_file(session, photo_store, header, hints):
    table = (header + "\nM1,M,a.jpg,b.jpg\n").encode()
    with pytest.raises(ImportFileError) as caught:
        import_members(session, table, filename="members.csv", photo_store=photo_store)
    for hint in hints:
        assert hint in str(caught.value)
    assert "Expected columns: member_id, gender, gallery_photo, verification_photo" in str(caught.value)
    assert session.scalar(select(func.count()).select_from(Member)) == 0


@pytest.mark.parametrize(
    "value, expected",
    [("M", "M"), (" f ", "F"), ("male", "M"), ("Female", "F"), ("MAN", "M"), ("woman", "F")]
    + [("남", "M"), ("여", "F"), ("남성", "M"), ("여성", "F"), ("남자", "M"), ("여자", "F")]
    + [("Ｍ", "M"), ("\u00a0여\u00a0", "F")],  # full-width letter, non-breaking spaces
)
def test_gender_forms_accepted(value, expected):
    assert importer.normalise_gender(value) == expected


@pytest.mark.parametrize("value", ["X", "other", "", "2", "남녀", "mal", None])
def test_gender_forms_rejected(value):
    with pytest.raises(ValueError, match="gender"):
        importer.normalise_gender(value)


def test_bad_rows_get_their_own_message(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path, make_photo, [31, 32, 33, 34])
    (tmp_path / "notes.jpg").write_text("this is a text file, not a photo")
    path = tmp_path / "members.csv"
    path.write_text(
        HEADER + "G1,M,p31.jpg,p32.jpg\n"
        "G2,unknown,p33.jpg,p34.jpg\n"
        "G1,F,p33.jpg,p34.jpg\n"
        "G3,F,p31.jpg,\n"
        ",F,p31.jpg,p32.jpg\n"
        "G4,F,notes.jpg,nowhere.jpg\n"
        '"G5\twith tab",F,p31.jpg,p32.jpg\n'
        "G6,M,ftp://example.com/a.jpg,p32.jpg\n"
    )

    reports = import_members(session, path, photo_store=photo_store)
    rows = {r.row: r for r in reports}

    assert all(r.status == REJECTED for r in reports)
    assert "appears 2 times in this file (rows 2, 4)" in rows[2].message
    assert "appears 2 times" in rows[4].message
    assert "gender 'unknown' is not recognised" in rows[3].message
    assert "verification_photo is empty" in rows[5].message
    assert "member_id is empty" in rows[6].message
    assert "text, not a photo" in rows[7].message and "does not exist" in rows[7].message
    assert "control characters" in rows[8].message
    assert "ftp: links are not supported" in rows[9].message
    assert session.scalar(select(func.count()).select_from(Member)) == 0
    assert session.scalar(select(func.count()).select_from(Photo)) == 0
    assert not list(photo_store.root.rglob("*.jpg")), "no photo of a rejected row may be stored"


def test_links_broken_non_image_and_valid(session, photo_store, make_photo, http_server):
    base, routes, _ = http_server
    routes["/ok-g.jpg"] = (200, "image/jpeg", make_photo(41))
    routes["/ok-v.jpg"] = (200, "image/jpeg", make_photo(42))
    routes["/page"] = (200, "text/html; charset=utf-8", b"<html><body>Sign in to Drive</body></html>")
    routes["/fake.jpg"] = (200, "image/jpeg", b"%PDF-1.4 not an image at all")
    routes["/error"] = (500, "text/plain", b"boom")
    closed_port_url = "http://127.0.0.1:9/x.jpg"  # discard port: nothing listens there
    table = (
        HEADER + f"L1,M,{base}/ok-g.jpg,{base}/ok-v.jpg\n"
        f"L2,M,{base}/missing.jpg,{base}/ok-v.jpg\n"
        f"L3,F,{base}/page,{base}/ok-v.jpg\n"
        f"L4,F,{base}/fake.jpg,{base}/ok-v.jpg\n"
        f"L5,F,{base}/error,{closed_port_url}\n"
    ).encode()

    reports = by_member(import_members(session, table, filename="links.csv", photo_store=photo_store))

    assert reports["L1"].status == IMPORTED
    assert "HTTP 404" in reports["L2"].message
    assert "web page, not an image" in reports["L3"].message
    assert "PDF document, not a photo" in reports["L4"].message
    # Another port of the allow-listed machine is not the photo host: refused, never contacted.
    assert "HTTP 500" in reports["L5"].message and links.REFUSED_MESSAGE in reports["L5"].message
    assert {m for (m,) in session.execute(select(Member.id))} == {"L1"}


def test_existing_member_is_not_half_updated(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path, make_photo, [51, 52, 53])
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "H1,M,p51.jpg,p52.jpg\n")
    import_members(session, path, photo_store=photo_store)
    before = table_state(session)

    # New gender and a new good gallery photo, but a broken verification photo: nothing changes.
    (tmp_path / "broken.jpg").write_bytes(make_photo(54)[:200])
    path.write_text(HEADER + "H1,F,p53.jpg,broken.jpg\n")
    (report,) = import_members(session, path, photo_store=photo_store)

    assert report.status == REJECTED and "damaged" in report.message
    session.expire_all()
    assert table_state(session) == before


def test_uploaded_table_cannot_read_server_files(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path, make_photo, [61, 62])
    table = (HEADER + f"U1,M,{tmp_path / 'p61.jpg'},/etc/passwd\n").encode()
    (report,) = import_members(session, table, filename="upload.csv", photo_store=photo_store)
    assert report.status == REJECTED
    assert "file paths cannot be read from an uploaded table" in report.message


def test_huge_inputs_are_refused(session, photo_store, tmp_path, make_photo, monkeypatch):
    write_photos(tmp_path, make_photo, [71, 72])
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "B1,M,p71.jpg,p72.jpg\n")
    monkeypatch.setattr(importer.photos, "MAX_PHOTO_BYTES", 500)
    (report,) = import_members(session, path, photo_store=photo_store)
    assert report.status == REJECTED and "the limit is" in report.message

    monkeypatch.setattr(importer.table, "MAX_TABLE_BYTES", 10)
    with pytest.raises(ImportFileError, match="limit"):
        import_members(session, path, photo_store=photo_store)

    zip_bomb = make_zip({"big.jpg": b"\0" * 10_000})
    monkeypatch.setattr(importer.table, "MAX_TABLE_BYTES", 20 * 1024 * 1024)
    (report,) = import_members(
        session,
        (HEADER + "B2,M,big.jpg,big.jpg\n").encode(),
        zip_bytes=zip_bomb,
        filename="x.csv",
        photo_store=photo_store,
    )
    assert report.status == REJECTED and "limit is" in report.message


def test_excel_that_unpacks_to_too_much_is_refused(session, photo_store, tmp_path, monkeypatch):
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active.append(list(importer.EXPECTED_COLUMNS))
    path = tmp_path / "m.xlsx"
    workbook.save(path)
    monkeypatch.setattr(importer.table, "MAX_XLSX_UNPACKED_BYTES", 1000)
    with pytest.raises(ImportFileError, match="unpacks to"):
        import_members(session, path, photo_store=photo_store)


def test_wrong_file_types_are_refused(session, photo_store, tmp_path):
    (tmp_path / "renamed.csv").write_bytes(make_zip({"a": b"b"}))
    with pytest.raises(ImportFileError, match="rename it to .xlsx"):
        import_members(session, tmp_path / "renamed.csv", photo_store=photo_store)
    with pytest.raises(ImportFileError, match="xlsx or CSV"):
        import_members(
            session, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1....", filename="old.xls", photo_store=photo_store
        )
    with pytest.raises(ImportFileError, match="no data rows"):
        import_members(session, HEADER.encode(), filename="x.csv", photo_store=photo_store)
    with pytest.raises(ImportFileError, match="cannot be opened"):
        import_members(session, (HEADER + "a,M,b,c\n").encode(), zip_bytes=b"not a zip", filename="x.csv")


def test_korean_excel_csv_and_sql_looking_ids(session, photo_store, tmp_path, make_photo, db_engine):
    write_photos(tmp_path, make_photo, [81, 82])
    path = tmp_path / "회원.csv"
    path.write_bytes(
        (HEADER + "회원_81,남자,p81.jpg,p82.jpg\n'; DROP TABLE members; --,남자,p81.jpg,p82.jpg\n").encode(
            "cp949"
        )
    )

    korean, sql = import_members(session, path, photo_store=photo_store)

    assert korean.status == IMPORTED, korean.message
    assert session.get(Member, "회원_81").gender == "M"
    # Member ids are identifiers: SQL-looking text is refused as an id, and nothing was run.
    assert sql.status == REJECTED and "member_id may hold only letters" in sql.message
    from sqlalchemy import inspect

    assert "members" in inspect(db_engine).get_table_names()


def test_same_photo_for_two_members_is_warned(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path, make_photo, [91, 92, 93])
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "D1,M,p91.jpg,p92.jpg\nD2,M,p91.jpg,p93.jpg\n")
    reports = by_member(import_members(session, path, photo_store=photo_store))
    assert reports["D2"].status == IMPORTED
    assert reports["D2"].warnings == ["the gallery photo is also used by member(s) D1"]
    assert len(list(photo_store.root.rglob("*.jpg"))) == 3, "the shared photo is stored once"


def test_same_file_as_gallery_and_verification_is_warned(session, photo_store, tmp_path, make_photo):
    write_photos(tmp_path, make_photo, [95])
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "S1,F,p95.jpg,p95.jpg\n")
    (report,) = import_members(session, path, photo_store=photo_store)
    assert report.status == IMPORTED
    assert report.warnings == ["the gallery and verification photos are the same file"]


def test_command_line(db_url, tmp_path, make_photo, monkeypatch, capsys):
    write_photos(tmp_path, make_photo, [101, 102, 103, 104])
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "C1,M,p101.jpg,p102.jpg\nC2,X,p103.jpg,p104.jpg\n")
    monkeypatch.setenv("PHOTO_STORE_DIR", str(tmp_path / "store"))

    code = cli.main(["import", str(path), "--url", db_url])

    out = capsys.readouterr().out
    assert code == 1  # one row rejected
    assert "C1" in out and "imported" in out and "gender 'X' is not recognised" in out
    assert "1 imported, 0 updated, 0 unchanged, 1 rejected" in out
    assert cli.main(["import", str(tmp_path / "nope.csv"), "--url", db_url]) == 2


def test_load_sample_members(session, photo_store):
    from core.config import SAMPLE_DIR

    if not (SAMPLE_DIR / "members.csv").exists():
        pytest.skip("data/sample/members.csv not present")
    reports = importer.load_sample_members(session, photo_store=photo_store)
    assert reports and all(r.status == IMPORTED for r in reports), [
        r for r in reports if r.status != IMPORTED
    ]
    assert all(r.status == UNCHANGED for r in importer.load_sample_members(session, photo_store=photo_store))


def test_links_to_the_server_itself_are_refused_and_never_fetched(
    session, photo_store, make_photo, http_server
):
    """Loopback in every spelling, the API's own port, the metadata address: one message, no request."""
    base, routes, requests = http_server
    routes["/ok.jpg"] = (200, "image/jpeg", make_photo(43))
    port = base.rsplit(":", 1)[1]
    refused = [
        f"http://localhost:{port}/ok.jpg",
        f"http://0x7f000001:{port}/ok.jpg",
        f"http://2130706433:{port}/ok.jpg",
        f"http://127.1:{port}/ok.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/ok.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:3306/",
    ]
    table = HEADER + "".join(f"S{i},M,{url},{base}/ok.jpg\n" for i, url in enumerate(refused))
    before = len(requests)
    reports = import_members(session, table.encode(), filename="links.csv", photo_store=photo_store)
    assert [r.status for r in reports] == [REJECTED] * len(refused)
    messages = {r.message.split(": ", 1)[1] for r in reports}
    assert messages == {links.REFUSED_MESSAGE}, messages
    # Only the allow-listed verification links were fetched (rows are validated completely).
    assert set(requests[before:]) == {"/ok.jpg"} and len(requests[before:]) == len(refused)
    assert session.scalar(select(func.count()).select_from(Member)) == 0


@pytest.mark.parametrize(
    "member_id",
    [
        '"=HYPERLINK(""http://evil.example/x"",""click"")"',
        "\"=cmd|' /C calc'!A0\"",
        "@SUM(1+1)",
        "+1-1",
        "-1",
    ],
)
def test_member_ids_that_spreadsheets_would_run_are_rejected(
    session, photo_store, tmp_path, make_photo, member_id
):
    write_photos(tmp_path, make_photo, [81, 82])
    path = tmp_path / "m.csv"
    path.write_text(HEADER + f"{member_id},M,p81.jpg,p82.jpg\n")
    (report,) = import_members(session, path, photo_store=photo_store)
    assert report.status == REJECTED and "member_id may hold only letters" in report.message
    assert session.scalar(select(func.count()).select_from(Member)) == 0


def test_xlsx_formula_cell_refuses_the_file_naming_its_row(session, photo_store, tmp_path, make_photo):
    import openpyxl

    write_photos(tmp_path, make_photo, [83, 84])
    workbook = openpyxl.Workbook()
    workbook.active.append(list(importer.EXPECTED_COLUMNS))
    workbook.active.append(["X1", "M", "p83.jpg", "p84.jpg"])
    workbook.active.append(['=HYPERLINK("http://evil.example/x","click")', "M", "p83.jpg", "p84.jpg"])
    path = tmp_path / "m.xlsx"
    workbook.save(path)
    with pytest.raises(ImportFileError, match=r"Row\(s\) 3 hold formulas \(cells A3\)"):
        import_members(session, path, photo_store=photo_store)
    assert session.scalar(select(func.count()).select_from(Member)) == 0


def test_command_line_paths_stay_inside_the_base_folder(session, photo_store, tmp_path, make_photo):
    base = tmp_path / "table"
    write_photos(base / "photos", make_photo, [95, 96])
    write_photos(tmp_path / "outside", make_photo, [97])
    (base / "link.jpg").symlink_to(tmp_path / "outside" / "p97.jpg")
    path = base / "m.csv"
    path.write_text(
        HEADER + "P1,M,photos/p95.jpg,photos/p96.jpg\n"
        "P2,M,../outside/p97.jpg,photos/p96.jpg\n"
        f"P3,M,{tmp_path / 'outside' / 'p97.jpg'},photos/p96.jpg\n"
        "P4,M,link.jpg,photos/p96.jpg\n"
        "P5,M,photos/../../outside/p97.jpg,photos/p96.jpg\n"
    )
    reports = by_member(import_members(session, path, photo_store=photo_store))
    assert reports["P1"].status == IMPORTED
    for member in ("P2", "P3", "P4", "P5"):
        assert reports[member].status == REJECTED and "outside the base folder" in reports[member].message
        assert str(tmp_path) not in reports[member].message.replace(str(tmp_path / "outside" / "p97.jpg"), "")
    reports = by_member(import_members(session, path, photo_store=photo_store, allow_outside=True))
    assert {m: r.status for m, r in reports.items()} == {
        "P1": UNCHANGED,
        "P2": IMPORTED,
        "P3": IMPORTED,
        "P4": IMPORTED,
        "P5": IMPORTED,
    }


@pytest.mark.slow  # starts `python -m core` in a fresh process: the full run has it
def test_command_line_allow_outside_flag(tmp_path, make_photo, db_url):
    import subprocess
    import sys
    from pathlib import Path

    write_photos(tmp_path / "outside", make_photo, [98, 99])
    (tmp_path / "t").mkdir()
    path = tmp_path / "t" / "m.csv"
    path.write_text(HEADER + "Q1,M,../outside/p98.jpg,../outside/p99.jpg\n")
    root = Path(__file__).resolve().parents[2]
    env = {"PHOTO_STORE_DIR": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}
    base = [sys.executable, "-m", "core", "import", str(path), "--url", db_url]
    refused = subprocess.run(base, capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert refused.returncode == 1 and "outside the base folder" in refused.stdout
    allowed = subprocess.run(
        base + ["--allow-outside"], capture_output=True, text=True, cwd=root, env=env, timeout=300
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
