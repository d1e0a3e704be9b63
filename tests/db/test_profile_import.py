"""Import of profiles: several photos in the gallery cell or gallery_photo_1 ... N columns, and a
row report that says per photo what happened (real sample photos)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.config import SAMPLE_DIR
from core.storage.schema import Member, Photo, ProfilePhoto
from core.workflows import importer

IMAGES = SAMPLE_DIR / "images"


def _import(session, photo_store, tmp_path, text: str):
    table = tmp_path / "members.csv"
    table.write_text(text, encoding="utf-8")
    return importer.import_members(session, table, base_dir=SAMPLE_DIR, photo_store=photo_store, workers=1)


def _profile(session, member_id):
    rows = session.scalars(
        select(ProfilePhoto).where(ProfilePhoto.member_id == member_id).order_by(ProfilePhoto.position)
    ).all()
    return [session.get(Photo, r.photo_id).source for r in rows]


def test_a_gallery_cell_with_several_photos_and_numbered_columns(session, photo_store, tmp_path):
    reports = _import(
        session,
        photo_store,
        tmp_path,
        "member_id,gender,gallery_photo,verification_photo\n"
        'K1,M,"images/Kofi_Annan_0016.jpg; images/Kofi_Annan_0025.jpg\nimages/missing.jpg;'
        'images/Kofi_Annan_0016.jpg",images/Kofi_Annan_0014.jpg\n',
    )
    report = reports[0]
    assert report.status == "imported", report.message
    assert "photo 2: added to the profile as photo 2" in report.message
    assert "photo 3 'images/missing.jpg'" in report.message and "not added" in report.message
    assert "photo 4: the same file as an earlier photo, skipped" in report.message
    assert _profile(session, "K1") == ["images/Kofi_Annan_0016.jpg", "images/Kofi_Annan_0025.jpg"]
    main = session.scalars(select(Photo).where(Photo.member_id == "K1", Photo.current.is_(True))).all()
    assert sorted(p.kind for p in main) == ["gallery", "verification"]

    # The same member again with numbered columns: the new photo joins the profile; the member,
    # verified meanwhile, waits (the badge is off) until the photo is checked.
    session.get(Member, "K1").status = "verified"
    session.commit()
    reports = _import(
        session,
        photo_store,
        tmp_path,
        "member_id,gender,gallery_photo_1,gallery_photo_2,gallery_photo_3,verification_photo\n"
        "K1,M,images/Kofi_Annan_0016.jpg,images/Kofi_Annan_0025.jpg,images/Kofi_Annan_0026.jpg,"
        "images/Kofi_Annan_0014.jpg\n",
    )
    report = reports[0]
    assert report.status == "updated", report.message
    assert "photo 2: already in the profile" in report.message
    assert "photo 3: added to the profile as photo 3" in report.message
    assert len(_profile(session, "K1")) == 3
    session.expire_all()
    assert session.get(Member, "K1").status == "in_review"


def test_a_bad_main_photo_rejects_the_row_and_both_gallery_forms_are_refused(session, photo_store, tmp_path):
    reports = _import(
        session,
        photo_store,
        tmp_path,
        "member_id,gender,gallery_photo,verification_photo\n"
        'K2,M,"images/missing.jpg;images/Kofi_Annan_0025.jpg",images/Kofi_Annan_0014.jpg\n',
    )
    assert reports[0].status == "rejected" and "missing.jpg" in reports[0].message
    assert session.get(Member, "K2") is None
    with pytest.raises(importer.ImportFileError, match="not both"):
        _import(
            session,
            photo_store,
            tmp_path,
            "member_id,gender,gallery_photo,gallery_photo_1,verification_photo\nK3,M,a.jpg,b.jpg,c.jpg\n",
        )
