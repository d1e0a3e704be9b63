"""The member import's report on the Members page, in Korean: row messages, warnings and a
refused file's problems all come from the catalogs, with no English sentence left."""

from __future__ import annotations

import io
import zipfile

from test_korean_pages import HANGUL, english_sentences, sentences_without_hangul

from core.config import SAMPLE_DIR
from core.i18n import t

CSV = (
    b"member_id,gender,gallery_photo,verification_photo\n"
    b'K1,M,"a.jpg;missing.jpg;a.jpg",b.jpg\n'  # new; a later profile photo missing; one twice
    b"K2,F,c.jpg,c.jpg\n"  # new, with a warning: the same file twice
    b"K3,X,d.jpg,e.jpg\n"  # rejected: the gender
    b"K4,M,d.jpg,nothere.jpg\n"  # rejected: a photo not in the ZIP
)


def photo_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for letter, path in zip("abcde", sorted((SAMPLE_DIR / "images").glob("*.jpg"))[:5], strict=True):
            archive.write(path, f"{letter}.jpg")
    return buffer.getvalue()


def report_cells(at) -> tuple[list[str], list[str]]:
    """(every cell and header of the report, its status and message columns' cells)."""
    (table,) = [f.value for f in at.dataframe if t("col.import_status", "ko") in f.value.columns]
    cells = [str(c) for c in table.columns] + [str(v) for row in table.values for v in row]
    return cells, [str(v) for v in table.iloc[:, 2]] + [str(v) for v in table.iloc[:, 3]]


def test_the_import_report_and_a_refused_file_are_in_korean(app_env, open_page):
    at = open_page("members", role="admin", lang="ko", timeout=60)
    at.file_uploader(key="members_import_file").set_value(("members.csv", CSV, "text/csv"))
    at.file_uploader(key="members_import_zip").set_value(("photos.zip", photo_zip(), "application/zip")).run()
    at.button(key="members_import_run").click().run(timeout=60)
    first, said = report_cells(at)
    assert all(HANGUL.search(text) for text in said), said
    assert {"추가됨", "거부됨"} <= set(first)
    assert any("갤러리 사진과 인증 사진이 같은 파일입니다" in c for c in first)
    assert any("앞의 사진과 같은 파일이라 건너뛰었습니다" in c for c in first)
    assert any("사진 ZIP에 없습니다" in c for c in first)
    assert any("성별 'X'" in c for c in first)

    at.button(key="members_import_run").click().run(timeout=60)  # the same file again
    again, said = report_cells(at)
    assert all(HANGUL.search(text) for text in said), said
    assert "변경 없음" in again and any("이미 최신 상태입니다" in c for c in again)
    assert english_sentences(first) == [] and english_sentences(again) == []
    assert sentences_without_hangul(at) == []

    at.file_uploader(key="members_import_file").set_value(("empty.csv", b"\n", "text/csv")).run()
    at.button(key="members_import_run").click().run(timeout=60)
    said = [str(m.value) for m in at.markdown] + [str(e.value) for e in at.error]
    assert "- 빈 파일입니다." in said
    assert sentences_without_hangul(at) == []
