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


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


def test_photos_imported_for_a_verified_member_are_checked_on_arrival(
    session_factory, photo_store, engine, tmp_path, monkeypatch
):
    from core.storage.schema import VerificationResult as ResultRow
    from core.workflows import profiles, reviews, search
    from core.workflows.verification import PhotoInput

    monkeypatch.setenv("CHALLENGE_REQUIRED_API", "0")
    search.reset_indexes()
    search.register_engine(engine)
    done = profiles.verify_profile_member(
        session_factory,
        photo_store,
        "staff",
        "m-kofi",
        PhotoInput("verification", (IMAGES / "Kofi_Annan_0014.jpg").read_bytes()),
        [PhotoInput("gallery", (IMAGES / f"Kofi_Annan_00{n}.jpg").read_bytes()) for n in (16, 27)],
        engine,
        gender="M",
    )
    assert done.profile.status == "auto_approved", done.profile.reasons
    with session_factory() as s:
        assert profiles.badge(s, "m-kofi")

    # The same member again, with two more photos: one of the member, one of a stranger.
    table = tmp_path / "members.csv"
    table.write_text(
        "member_id,gender,gallery_photo_1,gallery_photo_2,gallery_photo_3,gallery_photo_4,verification_photo\n"
        "m-kofi,M,images/Kofi_Annan_0016.jpg,images/Kofi_Annan_0027.jpg,images/Kofi_Annan_0031.jpg,"
        "images/Howard_Dean_0001.jpg,images/Kofi_Annan_0014.jpg\n",
        encoding="utf-8",
    )
    with session_factory() as s:
        (report,) = importer.import_members(
            s, table, base_dir=SAMPLE_DIR, photo_store=photo_store, workers=1, engine=engine
        )
    assert report.status == "updated", report.message
    assert "photo 3: checked, shows the member (shown)" in report.message
    assert "photo 4: checked, Photo 4" in report.message and "waits for a reviewer" in report.message
    with session_factory() as s:
        view = profiles.profile_view(s, "m-kofi")
        assert [v["state"] for v in view[:3]] == ["matches"] * 3
        assert view[3]["state"] in ("does_not_match", "review") and view[3]["waiting"]
        # The stranger's photo waits in the review queue, by the path the API's additions take;
        # the badge is off meanwhile.
        waiting = s.get(ResultRow, view[3]["result_id"])
        assert waiting.status == "flagged" and profiles.is_profile_addition(s, waiting)
        assert s.get(Member, "m-kofi").status == "in_review" and not profiles.badge(s, "m-kofi")
        # The member's photo shows the member: it is a row of the 1:N index.
        index = search.index_for(s.get_bind(), engine.model_version)
        assert view[2]["photo_id"] in index.photos_of("m-kofi")
        assert view[3]["photo_id"] not in index.photos_of("m-kofi")
        reviews.decide(s, waiting.id, "reviewer", "reject", label="different")
    with session_factory() as s:
        # Rejected: out of the public profile, and the badge is back.
        assert s.get(Member, "m-kofi").status == "verified" and profiles.badge(s, "m-kofi")
    search.reset_indexes()


def test_imported_photos_wait_when_there_is_no_model_to_check_them(session, photo_store, tmp_path):
    from core.errors import ModelError

    reports = _import(
        session,
        photo_store,
        tmp_path,
        "member_id,gender,gallery_photo,verification_photo\nK5,M,images/Kofi_Annan_0016.jpg,images/Kofi_Annan_0014.jpg\n",
    )
    assert reports[0].status == "imported"
    session.get(Member, "K5").status = "verified"
    session.commit()

    def no_model():
        raise ModelError("no model version is trained yet")

    table = tmp_path / "again.csv"
    table.write_text(
        "member_id,gender,gallery_photo,verification_photo\n"
        'K5,M,"images/Kofi_Annan_0016.jpg;images/Kofi_Annan_0025.jpg",images/Kofi_Annan_0014.jpg\n',
        encoding="utf-8",
    )
    (report,) = importer.import_members(
        session, table, base_dir=SAMPLE_DIR, photo_store=photo_store, workers=1, engine=no_model
    )
    assert report.status == "updated", report.message
    assert (
        "photo 2: waits to be checked (no model to check it: no model version is trained yet)"
        in report.message
    )
    session.expire_all()
    assert session.get(Member, "K5").status == "in_review"
