"""Fraud checks on real sample photos: copies made here with Pillow, EXIF dates set with Pillow,
turned faces selected from the sample by their measured pose, and the storing step's checks."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import pandas as pd
import pytest
from PIL import Image, ImageEnhance
from sqlalchemy import func, select

from core.config import SAMPLE_DIR
from core.storage.schema import GALLERY, VERIFICATION, Member, Photo, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.verification import features, fraud
from core.verification.engine import Engine
from core.verification.result import (
    CHALLENGE_FAILED,
    FLAGGED,
    POSSIBLE_DUPLICATE,
    REUSED_PHOTO,
    STALE_PHOTO,
)
from core.workflows import batches

IMAGES = SAMPLE_DIR / "images"
GALLERY_PHOTO = IMAGES / "Kofi_Annan_0026.jpg"  # M0001's gallery photo


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load()


@pytest.fixture(scope="module")
def sample_poses() -> dict[str, dict]:
    """Head pose of every sample photo, as the product measures it."""
    poses = {}
    for path in sorted(IMAGES.glob("*.jpg")):
        analysis = features.locate(path.read_bytes(), measure_pose=True)
        if analysis.pose:
            poses[path.name] = analysis.pose
    return poses


def _jpeg(image: Image.Image, quality: int = 92, exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def copies_of(data: bytes) -> dict[str, bytes]:
    """The copies the issue lists, made the way a member would make them."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    dx, dy = int(w * 0.05), int(h * 0.05)
    screen = Image.new("RGB", (int(w * 1.5) + 40, int(h * 1.5) + 260), (250, 250, 250))
    screen.paste(Image.new("RGB", (screen.width, 90), (30, 30, 30)), (0, 0))  # the status bar
    screen.paste(image.resize((int(w * 1.5), int(h * 1.5)), Image.BICUBIC), (20, 110))
    png = io.BytesIO()
    screen.save(png, "PNG")
    return {
        "same bytes": data,
        "jpeg q60": _jpeg(image, 60),
        "resized to 60%": _jpeg(image.resize((int(w * 0.6), int(h * 0.6)), Image.LANCZOS)),
        "mirrored": _jpeg(image.transpose(Image.FLIP_LEFT_RIGHT)),
        "cropped 10%": _jpeg(image.crop((dx, dy, w - dx, h - dy))),
        "brightness +15%": _jpeg(ImageEnhance.Brightness(image).enhance(1.15)),
        "screenshot": png.getvalue(),
    }


def with_exif_date(data: bytes, taken: datetime) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = taken.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    return _jpeg(Image.open(io.BytesIO(data)).convert("RGB"), 95, exif)


# -- reused photos -------------------------------------------------------------------------


@pytest.mark.parametrize("which", list(copies_of(GALLERY_PHOTO.read_bytes())))
def test_every_copy_of_the_gallery_photo_is_flagged_reused(engine, which):
    gallery = GALLERY_PHOTO.read_bytes()
    result = engine.verify(gallery, copies_of(gallery)[which], "M")
    codes = [f.code for f in result.flags]
    assert REUSED_PHOTO in codes, (which, result.checks["reuse"])
    assert result.status == FLAGGED  # never approved automatically
    match = result.checks["reuse"]["matches"][0]
    assert match["how"] == ("same_file" if which == "same bytes" else match["how"])
    reason = next(f.reason for f in result.flags if f.code == REUSED_PHOTO)
    assert "gallery photo" in reason


def test_genuine_pairs_of_distinct_photos_are_not_flagged_reused(engine):
    pairs = pd.read_csv(SAMPLE_DIR / "pairs.csv")
    same = pairs[pairs.Decision == "Yes"]
    flagged = []
    for x, y in zip(same.file_x, same.file_y, strict=True):
        result = engine.verify(IMAGES / x, IMAGES / y)
        if any(f.code == REUSED_PHOTO for f in result.flags):
            flagged.append((x, y, result.checks["reuse"]))
        assert result.checks["reuse"]["max_distance"] is not None  # the identity limit applies
    assert flagged == []


def test_hash_distances_see_through_a_mirror():
    import numpy as np

    rgb = np.asarray(Image.open(GALLERY_PHOTO).convert("RGB"))
    box = (70, 70, 110, 110)
    chip = rgb[60:210, 50:200]
    hashes, mirrored = fraud.photo_hashes(rgb, box, chip)
    flipped = np.ascontiguousarray(rgb[:, ::-1])
    flipped_box = (rgb.shape[1] - 70 - 110, 70, 110, 110)
    their_hashes, _ = fraud.photo_hashes(flipped, flipped_box, np.ascontiguousarray(chip[:, ::-1]))
    distances = fraud.hash_distances(hashes, mirrored, their_hashes)
    assert distances["whole"] == 0 and distances["chip"] == 0
    # without the mirrored hash the same photo looks different
    assert fraud.hash_distances(hashes, None, their_hashes)["whole"] > fraud.REUSE_BITS["whole"]


# -- EXIF dates ----------------------------------------------------------------------------


def test_exif_date_is_read_and_judged():
    old = datetime(2020, 5, 17, 14, 3, 0)
    data = with_exif_date(GALLERY_PHOTO.read_bytes(), old)
    assert fraud.exif_taken_at(data) == old
    assert fraud.exif_taken_at(GALLERY_PHOTO.read_bytes()) is None  # LFW photos carry no EXIF
    assert fraud.exif_taken_at(b"not a photo") is None
    now = datetime(2026, 12, 1)
    assert "days before the upload" in fraud.stale_reason(old, now, None, timedelta(days=30))
    recent = now - timedelta(days=3)
    assert fraud.stale_reason(recent, now, None, timedelta(days=30)) is None
    assert "before the gallery photo" in fraud.stale_reason(
        recent, now, now - timedelta(hours=1), timedelta(30)
    )
    assert fraud.stale_reason(None, now, now, timedelta(days=30)) is None


# -- pose challenge ------------------------------------------------------------------------


def test_turned_faces_of_the_sample_meet_their_challenge_and_frontal_ones_do_not(sample_poses):
    by_yaw = sorted(sample_poses.items(), key=lambda kv: kv[1]["yaw"])
    most_left, most_right = by_yaw[-1], by_yaw[0]
    frontal = [
        (name, pose)
        for name, pose in sample_poses.items()
        if abs(pose["yaw"]) < 8 and abs(pose["pitch"]) < 8 and abs(pose["roll"]) < 8
    ]
    assert most_left[1]["yaw"] >= fraud.MIN_TURN and most_right[1]["yaw"] <= -fraud.MIN_TURN
    assert len(frontal) >= 5
    assert fraud.challenge_outcome(fraud.TURN_LEFT, fraud.HeadPose(**most_left[1])).met
    assert fraud.challenge_outcome(fraud.TURN_RIGHT, fraud.HeadPose(**most_right[1])).met
    assert not fraud.challenge_outcome(fraud.TURN_RIGHT, fraud.HeadPose(**most_left[1])).met
    for _, pose in frontal:
        for kind in fraud.CHALLENGES:
            assert not fraud.challenge_outcome(kind, fraud.HeadPose(**pose)).met, (kind, pose)


def test_a_tilted_head_meets_the_tilt_challenge(engine, sample_poses):
    frontal = min(sample_poses.items(), key=lambda kv: abs(kv[1]["roll"]) + abs(kv[1]["yaw"]))[0]
    image = Image.open(IMAGES / frontal).convert("RGB")
    tilted = _jpeg(image.rotate(25, resample=Image.BICUBIC, fillcolor=(128, 128, 128)))
    gallery = IMAGES / frontal
    result = engine.verify(gallery, tilted, challenge=fraud.TILT)
    assert result.checks["challenge"]["met"], result.checks["challenge"]
    assert abs(result.checks["challenge"]["roll"]) >= fraud.MIN_TILT
    assert CHALLENGE_FAILED not in [f.code for f in result.flags]
    refused = engine.verify(gallery, _jpeg(image), challenge=fraud.TILT)
    flag = next(f for f in refused.flags if f.code == CHALLENGE_FAILED)
    assert "degrees" in flag.reason and flag.params["angle"] < fraud.MIN_TILT
    assert refused.status == FLAGGED


def test_a_turned_face_still_verifies(engine, sample_poses):
    """The most turned photo of a person against a frontal one of the same person."""
    turned = max(sample_poses.items(), key=lambda kv: abs(kv[1]["yaw"]) if abs(kv[1]["yaw"]) <= 30 else 0)
    person = turned[0].rsplit("_", 1)[0]
    others = [n for n, p in sample_poses.items() if n.startswith(person + "_") and abs(p["yaw"]) < 10]
    assert others
    kind = fraud.TURN_LEFT if turned[1]["yaw"] > 0 else fraud.TURN_RIGHT
    result = engine.verify(IMAGES / others[0], IMAGES / turned[0], challenge=kind)
    assert result.same_person, (turned, others[0], result.similarity)
    assert result.checks["challenge"]["met"]


# -- the storing step ----------------------------------------------------------------------


def _member_with_photos(session, photo_store, member_id, photos, when=None):
    """photos: [(kind, bytes, current[, submitted at])] -> [Photo]."""
    when = when or utcnow()
    session.add(Member(id=member_id, gender="M", created_at=when, updated_at=when))
    rows = []
    for kind, data, current, *submitted in photos:
        stored = photo_store.put(data)
        row = Photo(
            member_id=member_id,
            kind=kind,
            sha256=stored.sha256,
            stored_path=stored.relative_path,
            size_bytes=len(data),
            current=current,
            created_at=submitted[0] if submitted else when,
        )
        session.add(row)
        rows.append(row)
    session.commit()
    return rows


def _store(session, engine, gallery_row, verification_row, gallery_data, verification_data):
    result = engine.verify(gallery_data, verification_data, "M")
    row = batches.store_result(
        session,
        result,
        member_id=verification_row.member_id,
        gallery_photo_id=gallery_row.id,
        verification_photo_id=verification_row.id,
    )
    session.commit()
    return result, session.get(ResultRow, row.id)


def test_a_copy_of_an_older_gallery_photo_is_flagged(session, photo_store, engine):
    """Not the pair's gallery photo but one the member had before: still every photo is compared."""
    old = (IMAGES / "Kofi_Annan_0026.jpg").read_bytes()
    current = (IMAGES / "Kofi_Annan_0014.jpg").read_bytes()
    copy = copies_of(old)["jpeg q60"]
    old_row, current_row, selfie_row = _member_with_photos(
        session,
        photo_store,
        "F1",
        [(GALLERY, old, False), (GALLERY, current, True), (VERIFICATION, copy, True)],
    )
    # the old photo was verified once (so its hashes and embedding are stored)
    _store(session, engine, old_row, current_row, old, current)
    result, row = _store(session, engine, current_row, selfie_row, current, copy)
    assert row.status == FLAGGED
    reused = [f for f in row.flags if f["code"] == REUSED_PHOTO]
    assert reused and f"gallery photo {old_row.id}" in reused[0]["reason"]
    assert any(m["photo_id"] == old_row.id for m in row.checks["reuse"]["matches"])
    assert session.get(Member, "F1").status == "in_review"
    assert session.get(Photo, old_row.id, populate_existing=True).photo_hashes
    # counted on the KPI page
    from core.storage import kpi_aggregates

    assert sum(k.fraud_flags[REUSED_PHOTO] for k in kpi_aggregates.kpis_grouped(session, "batch")) == 1


def test_a_verification_photo_stored_for_another_member_is_a_possible_duplicate(session, photo_store, engine):
    gallery_a, selfie = (
        (IMAGES / "John_Howard_0014.jpg").read_bytes(),
        (IMAGES / "John_Howard_0005.jpg").read_bytes(),
    )
    gallery_b = (IMAGES / "Kofi_Annan_0026.jpg").read_bytes()
    a_gallery, _ = _member_with_photos(
        session, photo_store, "A1", [(GALLERY, gallery_a, True), (VERIFICATION, selfie, True)]
    )
    b_gallery, b_selfie = _member_with_photos(
        session, photo_store, "B1", [(GALLERY, gallery_b, True), (VERIFICATION, selfie, True)]
    )
    _, row = _store(session, engine, b_gallery, b_selfie, gallery_b, selfie)
    dup = [f for f in row.flags if f["code"] == POSSIBLE_DUPLICATE]
    assert dup and "A1" in dup[0]["reason"]
    assert row.possible_duplicate and "A1" in row.checks["shared_file_members"]


def test_stale_exif_dates_are_flagged_and_missing_ones_said(session, photo_store, engine, monkeypatch):
    gallery = (IMAGES / "Norah_Jones_0004.jpg").read_bytes()
    selfie = (IMAGES / "Norah_Jones_0001.jpg").read_bytes()
    now = datetime.now()
    old = with_exif_date(selfie, now - timedelta(days=45))
    recent = with_exif_date(selfie, now - timedelta(days=2))
    g, v_old, v_none = _member_with_photos(
        session,
        photo_store,
        "S1",
        [
            (GALLERY, gallery, True, utcnow() - timedelta(days=60)),
            (VERIFICATION, old, False),
            (VERIFICATION, selfie, True),
        ],
    )
    _, row = _store(session, engine, g, v_old, gallery, old)
    assert STALE_PHOTO in [f["code"] for f in row.flags] and row.checks["exif"]["stale"]
    assert row.checks["exif"]["taken_at"].startswith(str((now - timedelta(days=45)).date()))
    assert "45 days before the upload" in next(f["reason"] for f in row.flags if f["code"] == STALE_PHOTO)
    monkeypatch.setenv("STALE_PHOTO_DAYS", "60")  # the setting moves the limit
    _, row = _store(session, engine, g, v_old, gallery, old)
    assert STALE_PHOTO not in [f["code"] for f in row.flags] and row.checks["exif"]["max_age_days"] == 60
    _, row = _store(session, engine, g, v_none, gallery, selfie)
    assert STALE_PHOTO not in [f["code"] for f in row.flags]
    assert row.checks["exif"]["checked"] is False and "could not be checked" in row.checks["exif"]["note"]
    # taken two days ago, the gallery photo submitted today: taken before it (a day's grace for time zones)
    g2, v2 = _member_with_photos(
        session,
        photo_store,
        "S2",
        [(GALLERY, gallery, True), (VERIFICATION, recent, True)],
    )
    _, row = _store(session, engine, g2, v2, gallery, recent)
    reason = next(f["reason"] for f in row.flags if f["code"] == STALE_PHOTO)
    assert "before the gallery photo was submitted" in reason


# -- the same gallery rule in the importer and on the Verify page ----------------------------


def test_the_importer_never_replaces_an_existing_members_gallery(session, photo_store, tmp_path):
    from core.workflows.importer import IMPORTED, REJECTED, import_members

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (
        "Norah_Jones_0004.jpg",
        "Norah_Jones_0001.jpg",
        "Kofi_Annan_0026.jpg",
        "Kofi_Annan_0014.jpg",
    ):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    table = tmp_path / "members.csv"
    table.write_text(
        "member_id,gender,gallery_photo,verification_photo\nM0003,F,photos/Norah_Jones_0004.jpg,photos/Norah_Jones_0001.jpg\n"
    )
    assert [r.status for r in import_members(session, table, photo_store=photo_store)] == [IMPORTED]
    before = (
        session.execute(
            select(Photo.sha256).where(
                Photo.member_id == "M0003", Photo.kind == GALLERY, Photo.current.is_(True)
            )
        )
        .scalars()
        .all()
    )
    # the swap: the same member with someone else's two photos
    table.write_text(
        "member_id,gender,gallery_photo,verification_photo\nM0003,F,photos/Kofi_Annan_0026.jpg,photos/Kofi_Annan_0014.jpg\n"
    )
    (report,) = import_members(session, table, photo_store=photo_store)
    assert report.status == REJECTED and "gallery" in report.message
    session.expire_all()
    after = (
        session.execute(
            select(Photo.sha256).where(
                Photo.member_id == "M0003", Photo.kind == GALLERY, Photo.current.is_(True)
            )
        )
        .scalars()
        .all()
    )
    assert after == before
    assert session.scalar(select(func.count()).select_from(Photo).where(Photo.member_id == "M0003")) == 2


def test_the_verify_page_never_replaces_an_existing_members_gallery(session_factory, photo_store, engine):
    from core.dashboard.verify import PairInputError, verify_pair

    norah = (IMAGES / "Norah_Jones_0004.jpg").read_bytes(), (IMAGES / "Norah_Jones_0001.jpg").read_bytes()
    first = verify_pair(
        session_factory,
        engine,
        photo_store,
        "staff",
        "M0003",
        registered_gender="F",
        gallery_bytes=norah[0],
        verification_bytes=norah[1],
    )
    with pytest.raises(PairInputError) as refused:
        verify_pair(
            session_factory,
            engine,
            photo_store,
            "staff",
            "M0003",
            gallery_bytes=(IMAGES / "Kofi_Annan_0026.jpg").read_bytes(),
            verification_bytes=(IMAGES / "Kofi_Annan_0014.jpg").read_bytes(),
        )
    assert refused.value.key == "verify.gallery_locked"
    with session_factory() as session:
        current = session.scalars(
            select(Photo.sha256).where(
                Photo.member_id == "M0003", Photo.kind == GALLERY, Photo.current.is_(True)
            )
        ).all()
        assert current == [first.result.gallery.sha256]
    # the stored gallery photo with a new selfie is fine
    again = verify_pair(
        session_factory,
        engine,
        photo_store,
        "staff",
        "M0003",
        verification_bytes=(IMAGES / "Norah_Jones_0005.jpg").read_bytes(),
    )
    assert again.result.gallery.sha256 == first.result.gallery.sha256
