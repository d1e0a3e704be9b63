"""The member import's words: every row message, warning and file problem is a catalog key with
values, said in English for the command line exactly as before and in Korean on the Members page."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import update
from test_korean_pages import HANGUL, english_sentences

from core.config import SAMPLE_DIR
from core.storage.schema import Member, utcnow
from core.workflows.importer import ImportFileError, format_report, import_members

HEADER = "member_id,gender,gallery_photo,verification_photo,birth_year\n"
FIRST = HEADER + (
    'N1,M,"a.jpg;b.jpg;missing.jpg;a.jpg",c.jpg,\n'
    "N2,F,d.jpg,d.jpg,\n"
    "N3,X,e.jpg,f.jpg,\n"
    "N4,M,e.jpg,nothere.jpg,\n"
    "N5,M,c.jpg,e.jpg,\n"
    "N6,M,f.jpg,a.jpg,1800\n"
)
THIRD = HEADER + 'N1,F,"a.jpg;b.jpg;g.jpg",c.jpg,1980\nN2,F,d.jpg,e.jpg,\n'


@pytest.fixture
def photos(tmp_path):
    for letter, path in zip("abcdefg", sorted((SAMPLE_DIR / "images").glob("*.jpg"))[:7], strict=True):
        shutil.copy(path, tmp_path / f"{letter}.jpg")
    return tmp_path


def run(session, folder, text, name, store):
    (folder / name).write_text(text)
    return import_members(session, folder / name, photo_store=store, engine=RuntimeError("no model"))


def test_the_english_report_reads_as_before_and_every_note_has_korean(session, photo_store, photos):
    year = utcnow().year
    first = run(session, photos, FIRST, "m1.csv", photo_store)
    again = run(session, photos, FIRST, "m1.csv", photo_store)
    session.execute(update(Member).values(status="verified"))
    session.commit()
    third = run(session, photos, THIRD, "m3.csv", photo_store)

    assert format_report(first).splitlines()[2:] == [
        "  2  N1         imported  new member with gallery and verification photos; photo 3 'missing.jpg': "
        "file 'missing.jpg' does not exist, not added; photo 4: the same file as an earlier photo, skipped; "
        "photo 2: added to the profile as photo 2, waits to be checked",
        "  3  N2         imported  new member with gallery and verification photos "
        "[warning: the gallery and verification photos are the same file]",
        "  4  N3         rejected  gender 'X' is not recognised: use M or F (also male/female, man/woman, "
        "남/여, 남성/여성, 남자/여자)",
        "  5  N4         rejected  verification_photo 'nothere.jpg': file 'nothere.jpg' does not exist",
        "  6  N5         imported  new member with gallery and verification photos "
        "[warning: the gallery photo is also used by member(s) N1]",
        f"  7  N6         rejected  birth_year '1800' is not a year between 1900 and {year}",
    ]
    assert format_report(again).splitlines()[2:5] == [
        "  2  N1         unchanged  already up to date; photo 3 'missing.jpg': file 'missing.jpg' does not "
        "exist, not added; photo 4: the same file as an earlier photo, skipped; photo 2: already in the profile",
        "  3  N2         unchanged  already up to date [warning: the gallery and verification photos are the same file]",
        "  4  N3         rejected   gender 'X' is not recognised: use M or F (also male/female, man/woman, "
        "남/여, 남성/여성, 남자/여자)",
    ]
    assert format_report(third).splitlines()[2:] == [
        "  2  N1         updated  gender M → F; birth year - → 1980; 1 profile photo(s) added; status verified "
        "→ pending (verify again); photo 2: already in the profile, waits to be checked; photo 3: added to "
        "the profile as photo 3, waits to be checked",
        "  3  N2         updated  new verification photo; status verified → pending (verify again) "
        "[warning: the verification photo is also used by member(s) N5]",
    ]

    korean = [r.message_in("ko") for r in first + again + third]
    korean += [w for r in first + again + third for w in r.warnings_in("ko")]
    for text in korean:
        for part in text.split("; "):
            assert HANGUL.search(part), part
    assert english_sentences(korean) == []
    assert "이미 최신 상태입니다" in again[0].message_in("ko")
    assert "상태 인증 완료 → 미인증" in third[0].message_in("ko")


@pytest.mark.parametrize(
    ("text", "english", "korean"),
    [
        ("", ["The file is empty."], ["빈 파일입니다."]),
        (HEADER, ["The file has a header but no data rows."], ["머리글만 있고 데이터 행이 없는 파일입니다."]),
        (
            "member_id,gendr,gallery_photo\n",
            [
                "Column 'gender' is missing. Did you mean 'gendr'? Rename it to 'gender'.",
                "Column 'verification_photo' is missing.",
                "Expected columns: member_id, gender, gallery_photo, verification_photo; found: member_id, "
                "gendr, gallery_photo.",
            ],
            None,
        ),
    ],
)
def test_a_refused_file_says_why_in_both_languages(session, photo_store, tmp_path, text, english, korean):
    with pytest.raises(ImportFileError) as refused:
        run(session, tmp_path, text, "t.csv", photo_store)
    assert refused.value.problems == english
    assert str(refused.value) == " ".join(english)
    said = refused.value.texts("ko")
    if korean is not None:
        assert said == korean
    assert len(said) == len(english) and all(HANGUL.search(p) for p in said)
    assert english_sentences(said) == []
