"""The batch upload check: every problem listed, nothing written (core.dashboard.uploads)."""

from __future__ import annotations

import csv
import io
import zipfile

from conftest import ROOT

from core.dashboard import uploads
from core.workflows import importer

SAMPLE = ROOT / "data" / "sample" / "images"


def _upload(rows, entries: dict[str, bytes], header=importer.EXPECTED_COLUMNS):
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return table.getvalue().encode(), buffer.getvalue()


def _keys(check):
    return [key for key, _ in check.problems]


def test_check_upload_accepts_a_good_upload():
    a, b = (SAMPLE / "John_Howard_0014.jpg").read_bytes(), (SAMPLE / "John_Howard_0005.jpg").read_bytes()
    manifest, photo_zip = _upload(
        [["M1", "남", "a.jpg", "photos/b.jpg"]], {"pics/a.jpg": a, "photos/b.jpg": b}
    )
    check = uploads.check_batch_upload(manifest, "m.csv", photo_zip)
    assert check.ok and check.rows == 1


def test_check_upload_refuses_an_empty_or_missing_zip():
    manifest, _ = _upload([["M1", "M", "a.jpg", "b.jpg"]], {})
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    assert _keys(uploads.check_batch_upload(manifest, "m.csv", empty.getvalue())) == ["batch.zip_empty"]
    assert _keys(uploads.check_batch_upload(manifest, "m.csv", None)) == ["batch.zip_missing"]
    assert _keys(uploads.check_batch_upload(manifest, "m.csv", b"not a zip")) == ["batch.zip_unreadable"]


def test_check_upload_lists_every_problem_of_the_manifest():
    a = (SAMPLE / "John_Howard_0014.jpg").read_bytes()
    manifest, photo_zip = _upload(
        [
            ["M1", "M", "a.jpg", "nowhere.jpg"],
            ["M1", "M", "a.jpg", "a.jpg"],
            ["", "Q", "a.jpg", "notes.txt"],
            ["M3", "F", "", "../../etc/passwd"],
        ],
        {"a.jpg": a, "notes.txt": b"just text"},
    )
    check = uploads.check_batch_upload(manifest, "m.csv", photo_zip)
    keys = _keys(check)
    assert not check.ok
    assert "batch.row_photo_missing" in keys  # nowhere.jpg
    assert "batch.row_duplicate" in keys  # M1 twice
    assert "batch.row_no_member" in keys and "batch.row_gender" in keys
    assert "batch.row_photo_unusable" in keys  # notes.txt is not a photo
    assert "batch.row_photo_empty" in keys and "batch.row_photo_bad" in keys  # '..' path refused


def test_check_upload_refuses_wrong_columns():
    manifest, photo_zip = _upload([["M1", "M", "a.jpg"]], {"a.jpg": b"x"}, header=("member", "sex", "photo"))
    check = uploads.check_batch_upload(manifest, "m.csv", photo_zip)
    assert set(_keys(check)) == {"batch.manifest_problem"}
