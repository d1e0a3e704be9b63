"""Privacy of members' biometric data (core.privacy): erasure, retention, audited views, export,
encryption at rest. Real sample photos, the real engine, SQLite and MariaDB, and every photo store.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.storage import audit, encryption, key_rotation
from core.storage.encryption import KeyRing, PhotoKeyError, new_key_text
from core.storage.photostore import PhotoStore, sha256_hex
from core.storage.schema import (
    GALLERY,
    MEMBER_ERASED,
    MEMBER_REJECTED,
    MEMBER_VERIFIED,
    VERIFICATION,
    AuditEntry,
    BatchItem,
    Embedding,
    Member,
    MemberErasure,
    Photo,
    ResultAnalysis,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches, importer, privacy, search, spreadsheets

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "data" / "sample" / "images"
STORES = ["folder", "folder-encrypted", pytest.param("s3", marks=pytest.mark.s3)]


def photo(name: str) -> bytes:
    return (IMAGES / f"{name}.jpg").read_bytes()


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    """Each photo store: the folder, the folder encrypted at rest, an S3 bucket (real SeaweedFS)."""
    if request.param == "s3":
        return request.getfixturevalue("s3_photo_store")
    keys = KeyRing.from_texts(new_key_text() if request.param == "folder-encrypted" else None)
    return PhotoStore(tmp_path / f"store-{request.param}", fsync=False, keys=keys)


@pytest.fixture
def folder_store(tmp_path) -> PhotoStore:
    return PhotoStore(tmp_path / "store", fsync=False, keys=KeyRing.from_texts(None))


@pytest.fixture(scope="module")
def engine():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from core.verification.engine import Engine

    loaded = Engine.load()
    search.register_engine(loaded)
    return loaded


@pytest.fixture(autouse=True)
def _fresh_indexes():
    search.reset_indexes()
    privacy._recent_views.clear()
    yield
    search.reset_indexes()


def verify_members(session_factory, store, engine, member_ids) -> None:
    """The members' pairs through the real batch path: results, analyses, embeddings, index."""
    with session_factory() as session:
        items = batches.items_for_members(session, member_ids)
        batch = batches.create_batch(session, "staff_user", items, engine.model_version)
    batches.run_batch(session_factory, engine, batch.id, photo_store=store)


def other_process_index(db_engine, engine) -> search.SearchIndex:
    """An index loaded the way another process (the API, a second dashboard) loads its own."""
    saved = dict(search._indexes)  # this process's own indexes, put back afterwards
    search._indexes.clear()  # so index_for makes a fresh, separate one
    try:
        return search.index_for(db_engine, engine.model_version)
    finally:
        search._indexes.clear()
        search._indexes.update(saved)


def found_members(index, db_engine, engine, data: bytes) -> list[str]:
    """Members the index finds for the face in the photo, synced first as every search is."""
    index.sync(db_engine, search._context(engine.model_version).project)
    projection = engine.analyze_many([data])[0].projection
    return [c.member_id for c in index.search_candidates(projection, k=50)]


def stored_blobs(store) -> list[bytes]:
    """Every object in the store as stored; for a folder every file under it (temporary ones too)."""
    blobs = [store.read_raw(entry.relative_path) for entry in store.iterate()]
    if isinstance(store, PhotoStore):
        blobs += [p.read_bytes() for p in store.root.rglob("*") if p.is_file()]
    return blobs


def assert_no_byte_left(store, photos: dict[str, bytes]) -> None:
    """Neither through the store interface nor as stored is any of these photos left."""
    hashes = {entry.sha256 for entry in store.iterate()}
    blobs = stored_blobs(store)
    for sha, data in photos.items():
        assert sha not in hashes and not store.exists(sha)
        assert all(data not in blob for blob in blobs)
    for sha in hashes:
        assert store.get(sha) not in photos.values()


# ----------------------------------------------------------------------------------------------
# Erasure


def test_erasure_removes_photos_embeddings_index_rows_and_analyses(
    session_factory, db_engine, store, engine, users
):
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=store)
        # M0901 holds M0002's gallery photo too (same bytes, same content hash).
        shared = session.scalars(select(Photo).where(Photo.member_id == "M0002", Photo.kind == GALLERY)).one()
        session.add(Member(id="M0901", gender="M", created_at=utcnow(), updated_at=utcnow()))
        session.add(
            Photo(
                member_id="M0901",
                kind=GALLERY,
                sha256=shared.sha256,
                stored_path=shared.stored_path,
                size_bytes=shared.size_bytes,
                current=True,
                created_at=utcnow(),
            )
        )
        session.commit()
    verify_members(session_factory, store, engine, ["M0001", "M0002", "M0003", "M0005"])
    with session_factory() as session:
        m1 = {
            p.sha256: store.read(p.stored_path)
            for p in session.scalars(select(Photo).filter_by(member_id="M0001"))
        }
        decided = {
            r.id: (r.status, r.similarity, r.same_person)
            for r in session.scalars(select(ResultRow).filter_by(member_id="M0001"))
        }
        assert all(r.checks for r in session.scalars(select(ResultRow).filter_by(member_id="M0001")))
        assert decided and all(
            r.gallery_analysis for r in session.scalars(select(ResultRow).filter_by(member_id="M0001"))
        )
        assert (
            session.scalar(select(func.count()).select_from(Embedding).where(Embedding.photo_sha256.in_(m1)))
            == 2
        )
        # As the API's search by photo records it: the photo's hash as the target.
        searched = next(iter(m1))
        audit.log(session, "app-backend", "api_search", "photo", searched, {"k": 5, "candidates": ["M0001"]})
        session.commit()
        audit_before = session.scalar(select(func.count()).select_from(AuditEntry))

    probe = photo("Kofi_Annan_0031")  # another photo of M0001's face, never stored
    here = search.index_for(db_engine, engine.model_version)
    elsewhere = other_process_index(db_engine, engine)
    assert found_members(here, db_engine, engine, probe)[0] == "M0001"
    assert found_members(elsewhere, db_engine, engine, probe)[0] == "M0001"
    reloads = elsewhere.reloads

    report = privacy.erase_member(session_factory, store, "M0001", actor="admin_user", via="test")

    assert not report.already_erased
    assert report.removed.photos == 2 and report.removed.files == 2 and report.removed.embeddings == 2
    assert report.removed.results == len(decided)
    assert_no_byte_left(store, m1)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Photo).filter_by(member_id="M0001")) == 0
        assert (
            session.scalar(select(func.count()).select_from(Embedding).where(Embedding.photo_sha256.in_(m1)))
            == 0
        )
        assert session.scalar(select(func.count()).select_from(BatchItem).filter_by(member_id="M0001")) == 0
        member = session.get(Member, "M0001")
        assert member.status == MEMBER_ERASED and member.gender == "M"
        for r in session.scalars(select(ResultRow).filter_by(member_id="M0001")):
            # The decision stays provable; what the photos showed does not.
            assert (r.status, r.similarity, r.same_person) == decided[r.id]
            assert r.gallery_analysis is None and r.verification_analysis is None and r.checks is None
            assert r.gallery_photo_id is None and r.verification_photo_id is None
        # Nor does the side table hold their analyses any more.
        assert not session.scalars(
            select(ResultAnalysis.result_id).where(ResultAnalysis.result_id.in_(list(decided)))
        ).all()
        erasure = session.scalars(select(MemberErasure).filter_by(member_id="M0001")).one()
        assert (erasure.actor, erasure.reason, erasure.via) == ("admin_user", "request", "test")
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == audit_before + 1
        # The audit log is kept as it was: its hash chain still verifies after the erasure.
        search_entry = session.scalars(select(AuditEntry).filter_by(action="api_search")).one()
        assert (search_entry.actor, search_entry.target_id) == ("app-backend", searched)
        assert audit.verify_chain(session).ok
    # Every process: this one at once, another before its next search (no reload needed).
    assert "M0001" not in found_members(here, db_engine, engine, probe)
    assert "M0001" not in found_members(elsewhere, db_engine, engine, probe)
    assert elsewhere.reloads == reloads
    # A fresh load (a process started later) does not find it either.
    assert "M0001" not in found_members(other_process_index(db_engine, engine), db_engine, engine, probe)

    again = privacy.erase_member(session_factory, store, "M0001", actor="admin_user", via="test")
    assert again.already_erased and again.removed.photos == 0

    # A photo shared by content hash stays until its last owner is gone.
    howard = photo("John_Howard_0010")
    with session_factory() as session:
        sha = session.scalars(select(Photo.sha256).filter_by(member_id="M0901")).one()
    here.sync(db_engine, search._context(engine.model_version).project, force_verify=True)  # a while later
    assert {"M0002", "M0901"} <= set(found_members(here, db_engine, engine, howard)[:2])
    kept = privacy.erase_member(session_factory, store, "M0002", actor="admin_user", via="test")
    assert kept.removed.files_kept_shared == 1 and kept.removed.files == 1  # the verification photo went
    assert store.exists(sha)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Embedding).filter_by(photo_sha256=sha)) == 1
    found = found_members(here, db_engine, engine, howard)
    assert found[0] == "M0901" and "M0002" not in found
    gone = privacy.erase_member(session_factory, store, "M0901", actor="admin_user", via="test")
    assert gone.removed.files == 1 and not store.exists(sha)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Embedding).filter_by(photo_sha256=sha)) == 0
    assert not {"M0002", "M0901"} & set(found_members(here, db_engine, engine, howard))

    with pytest.raises(privacy.UnknownMember):
        privacy.erase_member(session_factory, store, "NOBODY", actor="admin_user", via="test")


def test_erasure_interrupted_after_the_files_finishes_when_run_again(
    session_factory, folder_store, monkeypatch
):
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
        m3 = {
            p.sha256: folder_store.read(p.stored_path)
            for p in session.scalars(select(Photo).filter_by(member_id="M0003"))
        }

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(privacy.removal, "remove_photo_rows", crash)
        with pytest.raises(KeyboardInterrupt):
            privacy.erase_member(session_factory, folder_store, "M0003", actor="admin_user", via="test")
    assert_no_byte_left(folder_store, m3)  # the bytes went first
    with session_factory() as session:
        assert session.get(Member, "M0003").status != MEMBER_ERASED  # the rows did not
    report = privacy.erase_member(session_factory, folder_store, "M0003", actor="admin_user", via="test")
    assert report.removed.photos == 2 and report.removed.files == 0
    with session_factory() as session:
        assert session.get(Member, "M0003").status == MEMBER_ERASED
        assert session.scalar(select(func.count()).select_from(Photo).filter_by(member_id="M0003")) == 0


def test_erased_members_pairs_leave_the_review_queue_and_stay_erased(session_factory, folder_store, users):
    from core.storage import queries
    from core.workflows import reviews

    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
        photos = {p.kind: p.id for p in session.scalars(select(Photo).filter_by(member_id="M0012"))}
        row = ResultRow(
            member_id="M0012",
            gallery_photo_id=photos[GALLERY],
            verification_photo_id=photos[VERIFICATION],
            same_person=False,
            similarity=0.45,
            threshold=0.5,
            band_low=0.4,
            band_high=0.6,
            status="flagged",
            flags=[{"code": "uncertain_similarity", "reason": "in the band", "photo": None}],
            model_version="test",
            created_at=utcnow(),
        )
        session.add(row)
        session.commit()
        result_id = row.id
        assert [i.result_id for i in queries.review_queue(session)] == [result_id]
    privacy.erase_member(session_factory, folder_store, "M0012", actor="admin_user", via="test")
    with session_factory() as session:
        assert queries.review_queue(session) == [] and queries.backlog_count(session) == 0
        reviews.decide(session, result_id, "staff_user", "reject", label="different")  # had it open
        assert session.get(Member, "M0012").status == MEMBER_ERASED


@pytest.mark.slow  # starts `python -m core` in a fresh process: the full run has it
def test_erase_command_confirms_and_erases(tmp_path, db_url, session_factory):
    store = PhotoStore(tmp_path / "cli_store", fsync=False)
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=store)
    env = {**os.environ, "PHOTO_STORE_DIR": str(store.root), "DATABASE_URL": db_url}
    env.pop("PHOTO_ENCRYPTION_KEY", None)
    command = [sys.executable, "-m", "core", "erase", "M0004", "--url", db_url]
    refused = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert refused.returncode == 1 and "--yes" in refused.stderr
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Photo).filter_by(member_id="M0004")) == 2
    done = subprocess.run(
        [*command, "--yes", "--actor", "admin_user"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"]["photos"] == 2
    twice = subprocess.run([*command, "--yes"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert twice.returncode == 0 and json.loads(twice.stdout)["already_erased"] is True
    unknown = subprocess.run(
        [sys.executable, "-m", "core", "erase", "NOBODY", "--yes", "--url", db_url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 1 and "NOBODY" in unknown.stderr


# ----------------------------------------------------------------------------------------------
# Retention


def _decide_all(session_factory, store, *, rejected: set[str], days_ago: int) -> None:
    """A decided result for every sample member, decided `days_ago` days ago."""
    when = utcnow() - timedelta(days=days_ago)
    with session_factory() as session:
        for member in session.scalars(select(Member)):
            photos = {p.kind: p for p in member.photos if p.current}
            reject = member.id in rejected
            session.add(
                ResultRow(
                    member_id=member.id,
                    gallery_photo_id=photos[GALLERY].id,
                    verification_photo_id=photos[VERIFICATION].id,
                    same_person=not reject,
                    similarity=0.2 if reject else 0.9,
                    threshold=0.5,
                    band_low=0.4,
                    band_high=0.6,
                    status="rejected" if reject else "approved",
                    flags=[],
                    gallery_analysis={"faces": [{"box": [1, 2, 3, 4]}]},
                    verification_analysis={"faces": [{"box": [1, 2, 3, 4]}]},
                    model_version="test",
                    created_at=when,
                    decided_at=when,
                    decided_by="staff_user",
                )
            )
            member.status = MEMBER_REJECTED if reject else MEMBER_VERIFIED
        session.commit()


def test_retention_removes_what_is_past_its_time_and_is_safe_to_repeat(
    session_factory, store, warm_cache, monkeypatch
):
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=store)
    warm_cache(session_factory)  # the training cache's embeddings of every sample photo
    _decide_all(session_factory, store, rejected={"M0010", "M0011"}, days_ago=40)
    with session_factory() as session:
        photos = {
            p.id: (p.member_id, p.kind, p.sha256, store.read(p.stored_path))
            for p in session.scalars(select(Photo))
        }
        embeddings_before = session.scalar(select(func.count()).select_from(Embedding))
    policy = privacy.RetentionPolicy(verification_photo_days=90, rejected_member_days=30, embedding_days=90)

    # 40 days after the decision: only the rejected members' photos are past their 30 days.
    dry = privacy.apply_retention(session_factory, store, policy, dry_run=True)
    assert dry.rejected_members == ["M0010", "M0011"] and dry.rejected_member_photos == 4
    assert dry.verification_photos == 0 and dry.removed.photos == 4
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Photo)) == len(photos)  # dry: nothing removed
    first = privacy.apply_retention(session_factory, store, policy)
    assert first.removed.photos == 4 and first.removed.files == 4
    rejected_photos = {sha: data for _pid, (m, _k, sha, data) in photos.items() if m in ("M0010", "M0011")}
    assert_no_byte_left(store, rejected_photos)
    with session_factory() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(Embedding).where(Embedding.photo_sha256.in_(rejected_photos))
            )
            == 0
        )
        assert session.get(Member, "M0010").status == MEMBER_REJECTED  # the decision is kept
        assert session.scalars(select(MemberErasure.reason).filter_by(member_id="M0010")).all() == [
            "retention"
        ]
    second = privacy.apply_retention(session_factory, store, policy)
    assert second.removed.photos == 0 and second.removed.files == 0

    # 91 days after: every verification photo goes, interrupted once half-way; gallery photos stay.
    later = utcnow() + timedelta(days=51)
    calls = {"n": 0}
    real = privacy.removal.remove_photo_rows

    def crash_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(privacy.retention, "CHUNK", 5)
    with monkeypatch.context() as patch:
        patch.setattr(privacy.removal, "remove_photo_rows", crash_on_second_chunk)
        with pytest.raises(KeyboardInterrupt):
            privacy.apply_retention(session_factory, store, policy, now=later)
    resumed = privacy.apply_retention(session_factory, store, policy, now=later)
    assert resumed.verification_photos == 18 - 5  # the first chunk was done before the interruption
    with session_factory() as session:
        left = {(p.member_id, p.kind) for p in session.scalars(select(Photo))}
        assert left == {
            (m, GALLERY) for m, k, _s, _d in photos.values() if m not in ("M0010", "M0011") and k == GALLERY
        }
        kept_shas = set(session.scalars(select(Photo.sha256)))
        assert (
            set(
                session.scalars(
                    select(Embedding.photo_sha256).where(
                        Embedding.photo_sha256.in_([s for _m, _k, s, _d in photos.values()])
                    )
                )
            )
            == kept_shas
        )
        assert session.scalar(select(func.count()).select_from(ResultRow)) == 20  # decisions kept
        assert session.scalar(select(func.count()).select_from(Embedding)) < embeddings_before
    verification = {
        sha: data for _m, k, sha, data in photos.values() if k == VERIFICATION and sha not in kept_shas
    }
    assert_no_byte_left(store, verification)
    for _member, _kind, sha, data in photos.values():
        if sha in kept_shas:
            assert store.get(sha) == data
    assert privacy.apply_retention(session_factory, store, policy, now=later).removed.photos == 0


def test_retention_settings_have_documented_defaults_and_refuse_nonsense(monkeypatch):
    for name in privacy.RetentionPolicy.SETTINGS.values():
        monkeypatch.delenv(name, raising=False)
    assert privacy.RetentionPolicy.from_settings() == privacy.RetentionPolicy(90, 30, 90)
    monkeypatch.setenv("RETENTION_EMBEDDING_DAYS", "off")
    monkeypatch.setenv("RETENTION_VERIFICATION_PHOTO_DAYS", "0")
    assert privacy.RetentionPolicy.from_settings() == privacy.RetentionPolicy(0, 30, None)
    monkeypatch.setenv("RETENTION_REJECTED_MEMBER_DAYS", "thirty")
    with pytest.raises(privacy.PrivacyError, match="RETENTION_REJECTED_MEMBER_DAYS"):
        privacy.RetentionPolicy.from_settings()


# ----------------------------------------------------------------------------------------------
# Views audited, export


def test_photo_views_are_audited_and_listed_as_access_history(session_factory, folder_store, users):
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
        gallery = session.scalars(select(Photo).filter_by(member_id="M0007", kind=GALLERY)).one()
        assert privacy.show_photo(session, folder_store, gallery, "staff_user", "page:review_queue") == photo(
            "Venus_Williams_0009"
        )
        # Drawn again by the same page for the same user at once: one view, not two.
        privacy.show_photo(session, folder_store, gallery, "staff_user", "page:review_queue")
        privacy.show_photo(session, folder_store, gallery, "admin_user", "page:members")
        assert privacy.record_photo_view(session, "staff_user", gallery, "page:review_queue", repeat_s=0)
        history = privacy.access_history(session, "M0007")
    assert [(e.actor, e.action, e.detail["why"]) for e in history] == [
        ("staff_user", "view_photo", "page:review_queue"),
        ("admin_user", "view_photo", "page:members"),
        ("staff_user", "view_photo", "page:review_queue"),
    ]
    assert all(e.detail["kind"] == GALLERY and e.at is not None for e in history)


def test_export_holds_photos_decisions_and_views(session_factory, folder_store, users):
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
    _decide_all(session_factory, folder_store, rejected=set(), days_ago=1)
    with session_factory() as session:
        gallery = session.scalars(select(Photo).filter_by(member_id="M0017", kind=GALLERY)).one()
        privacy.show_photo(session, folder_store, gallery, "staff_user", "page:members")
        data = privacy.export_member(session, folder_store, "M0017", "admin_user")
        with pytest.raises(privacy.UnknownMember):
            privacy.export_member(session, folder_store, "NOBODY", "admin_user")
        exported = privacy.access_history(session, "M0017")[0]
    archive = zipfile.ZipFile(io.BytesIO(data))
    member = json.loads(archive.read("member.json"))
    assert member["member_id"] == "M0017" and len(member["photos"]) == 2
    files = {p["kind"]: archive.read(p["file"]) for p in member["photos"]}
    assert files == {
        GALLERY: photo("Gloria_Macapagal_Arroyo_0024"),
        VERIFICATION: photo("Gloria_Macapagal_Arroyo_0017"),
    }
    assert sha256_hex(files[GALLERY]) == gallery.sha256
    decisions = json.loads(archive.read("decisions.json"))
    assert [(d["status"], d["decided_by"]) for d in decisions] == [("approved", "staff_user")]
    views = archive.read("views.csv").decode().splitlines()
    assert views[0] == "at_utc,who,action,why" and "staff_user,view_photo,page:members" in views[1]
    assert (exported.actor, exported.action) == ("admin_user", "export_member")


def test_export_views_csv_never_holds_a_formula(session_factory, folder_store, users):
    """A viewer named like a formula (a user from before the username rule, or a caller's reason)
    is written as text in views.csv, as every dashboard CSV is."""
    import csv

    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
        gallery = session.scalars(select(Photo).filter_by(member_id="M0017", kind=GALLERY)).one()
        privacy.record_photo_view(session, '=hyperlink("http://e/x","x")', gallery, "@SUM(A1)", repeat_s=0)
        session.commit()
        data = privacy.export_member(session, folder_store, "M0017", "admin_user")
    text = zipfile.ZipFile(io.BytesIO(data)).read("views.csv").decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert ['\'=hyperlink("http://e/x","x")', "view_photo", "'@SUM(A1)"] in [r[1:] for r in rows]
    assert not any(cell.startswith(spreadsheets.FORMULA_PREFIXES) for row in rows for cell in row)


def large_photo(seed: int, width: int = 2600, height: int = 2000) -> bytes:
    """A real JPEG of noise (it does not compress: about 8 MB at quality 95)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


def add_photos(session_factory, store, member_id: str, photos: list[bytes]) -> None:
    with session_factory() as session:
        for data in photos:
            blob = store.put(data)
            session.add(
                Photo(
                    member_id=member_id,
                    kind=VERIFICATION,
                    sha256=blob.sha256,
                    stored_path=blob.relative_path,
                    size_bytes=blob.size_bytes,
                    current=False,
                )
            )
        session.commit()


def test_export_streams_photo_by_photo_to_a_file(session_factory, folder_store, users, tmp_path):
    """Five ~8 MB photos: the ZIP is on disk with all of them, while memory holds one at a time."""
    import tracemalloc

    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
    big = [large_photo(seed) for seed in range(5)]
    add_photos(session_factory, folder_store, "M0017", big)
    out = tmp_path / "exports"
    out.mkdir()
    with session_factory() as session:
        tracemalloc.start()
        try:
            path = privacy.export_member_file(session, folder_store, "M0017", "admin_user", directory=out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    total = sum(map(len, big))
    assert path.parent == out and path.stat().st_size > total
    # Built in memory, the ZIP alone held every photo (and getvalue() a second copy of it).
    assert peak < 3 * max(map(len, big)), f"peak {peak / 1e6:.0f} MB for {total / 1e6:.0f} MB of photos"
    with zipfile.ZipFile(path) as archive:
        member = json.loads(archive.read("member.json"))
        kept = [archive.read(p["file"]) for p in member["photos"] if not p["current"]]
        assert kept == big and archive.testzip() is None


def test_an_export_past_the_size_cap_is_refused_and_leaves_nothing(
    session_factory, folder_store, users, tmp_path, monkeypatch
):
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=folder_store)
    add_photos(session_factory, folder_store, "M0017", [large_photo(1, 1200, 900), large_photo(2, 1200, 900)])
    out = tmp_path / "exports"
    out.mkdir()
    monkeypatch.setenv("PRIVACY_EXPORT_MAX_MB", "2")
    with session_factory() as session:
        with pytest.raises(privacy.ExportTooLarge, match=r"larger than 2 MB \(PRIVACY_EXPORT_MAX_MB\)"):
            privacy.export_member_file(session, folder_store, "M0017", "admin_user", directory=out)
        assert list(out.iterdir()) == []  # no partial file
        recorded = session.scalars(select(AuditEntry).where(AuditEntry.action == "export_member")).all()
        assert recorded == []  # nothing was exported, so nothing is recorded as exported
        # Under the cap the same member exports, and the file is a complete ZIP.
        monkeypatch.setenv("PRIVACY_EXPORT_MAX_MB", "20")
        path = privacy.export_member_file(session, folder_store, "M0017", "admin_user", directory=out)
        assert path.stat().st_size <= 20 * 2**20 and zipfile.ZipFile(path).testzip() is None
    for nonsense in ("0", "-5", "lots"):
        monkeypatch.setenv("PRIVACY_EXPORT_MAX_MB", nonsense)
        with pytest.raises(ValueError, match="PRIVACY_EXPORT_MAX_MB must be a positive number"):
            privacy.export.max_export_bytes()


@pytest.mark.slow  # starts `python -m core` in a fresh process: the full run has it
def test_export_command_writes_the_file_or_refuses_leaving_nothing(tmp_path, db_url, session_factory):
    store = PhotoStore(tmp_path / "cli_store", fsync=False)
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=store)
    add_photos(session_factory, store, "M0004", [large_photo(3, 1200, 900)])
    env = {**os.environ, "PHOTO_STORE_DIR": str(store.root), "DATABASE_URL": db_url}
    env.pop("PHOTO_ENCRYPTION_KEY", None)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "core", "export", "M0004", "--out", str(out / "m.zip"), "--url", db_url]
    refused = subprocess.run(
        command, cwd=ROOT, env={**env, "PRIVACY_EXPORT_MAX_MB": "0.5"}, capture_output=True, text=True
    )
    assert refused.returncode == 1 and "PRIVACY_EXPORT_MAX_MB" in refused.stderr
    assert "Traceback" not in refused.stderr and list(out.iterdir()) == []
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.iterdir()] == ["m.zip"]  # the file asked for, no temporary left
    with zipfile.ZipFile(out / "m.zip") as archive:
        assert len(json.loads(archive.read("member.json"))["photos"]) == 3


# ----------------------------------------------------------------------------------------------
# Encryption at rest


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.s3)])
def reopen(request, tmp_path):
    """reopen(keys) -> the same store (folder or SeaweedFS bucket) opened with other keys."""
    if request.param == "s3":
        from core.storage.s3store import S3PhotoStore

        first = request.getfixturevalue("s3_photo_store")
        return lambda keys: S3PhotoStore(first.bucket, first.prefix, client=first.client, keys=keys)
    return lambda keys: PhotoStore(tmp_path / "enc", fsync=False, keys=keys)


def test_encrypted_store_seals_photos_and_rotates_keys(reopen):
    first, second = new_key_text(), new_key_text()
    plain_store = reopen(KeyRing.from_texts(None))
    names = ["Norah_Jones_0005", "Kofi_Annan_0016", "Julianne_Moore_0003"]
    before = plain_store.put(photo(names[0]))  # a photo stored before encryption was switched on
    store = reopen(KeyRing.from_texts(first))
    stored = [before] + [store.put(photo(n)) for n in names[1:]]
    for s, name in zip(stored, names, strict=True):
        assert s.sha256 == sha256_hex(photo(name))  # the content hash is of the plain bytes
        assert store.get(s.sha256, verify=True) == photo(name) == store.read(s.relative_path)
    raw = store.read_raw(stored[1].relative_path)
    assert raw.startswith(encryption.MAGIC) and photo(names[1])[:200] not in raw
    assert not store.put(photo(names[1])).created  # the same photo again: the sealed file is kept

    assert key_rotation.rotate_store(store, dry_run=True).rewritten == 1  # the plain one
    assert store.read_raw(stored[0].relative_path) == photo(names[0])  # dry run: untouched
    assert key_rotation.rotate_store(store).rewritten == 1
    assert key_rotation.rotate_store(store).rewritten == 0  # twice: nothing left to do
    assert all(store.read_raw(s.relative_path).startswith(encryption.MAGIC) for s in stored)

    rotated = reopen(KeyRing.from_texts(second, first))
    # Interrupted after one photo: both keys still open everything.
    rotated.write_raw(
        stored[0].relative_path, encryption.seal(photo(names[0]), stored[0].sha256, rotated.keys.current)
    )
    assert [rotated.get(s.sha256) for s in stored] == [photo(n) for n in names]
    report = key_rotation.rotate_store(rotated)
    assert (report.rewritten, report.unchanged, report.failed) == (2, 1, [])
    only_new = reopen(KeyRing.from_texts(second))
    assert [only_new.get(s.sha256) for s in stored] == [photo(n) for n in names]
    with pytest.raises(PhotoKeyError, match="not configured"):
        reopen(KeyRing.from_texts(first)).get(stored[0].sha256)
    with pytest.raises(PhotoKeyError, match="not configured"):
        plain_store.read(stored[0].relative_path)

    # A sealed file copied under another photo's name does not open.
    only_new.write_raw(stored[2].relative_path, only_new.read_raw(stored[1].relative_path))
    with pytest.raises(PhotoKeyError, match="damaged"):
        only_new.get(stored[2].sha256)

    # Switching encryption off again: the old key opens, rotation writes plain files; the
    # damaged one is reported, not a crash, and left as it was.
    off = reopen(KeyRing.from_texts(None, second))
    report = key_rotation.rotate_store(off)
    assert report.rewritten == 2 and len(report.failed) == 1 and stored[2].sha256[:12] in report.failed[0]
    assert off.read_raw(stored[0].relative_path) == photo(names[0])
    assert off.read_raw(stored[2].relative_path).startswith(encryption.MAGIC)


def test_key_settings_are_checked(monkeypatch):
    monkeypatch.setenv("PHOTO_ENCRYPTION_KEY", "not base64 !!")
    with pytest.raises(PhotoKeyError, match="PHOTO_ENCRYPTION_KEY"):
        KeyRing.from_settings()
    monkeypatch.setenv("PHOTO_ENCRYPTION_KEY", "c2hvcnQ")  # 5 bytes
    with pytest.raises(PhotoKeyError, match="32 bytes"):
        KeyRing.from_settings()
    monkeypatch.delenv("PHOTO_ENCRYPTION_KEY")
    monkeypatch.delenv("PHOTO_ENCRYPTION_OLD_KEYS", raising=False)
    assert not KeyRing.from_settings().enabled


# ----------------------------------------------------------------------------------------------
# Retention as a job (core.jobs): in-process without a broker, scheduled once per period on Redis

RETENTION_REDIS_URL = os.environ.get("TEST_RETENTION_REDIS_URL", "redis://127.0.0.1:6379/7")


def test_retention_job_runs_and_workers_schedule_it_once_per_period(
    db_url, session_factory, tmp_path, monkeypatch
):
    import threading

    from core import jobs
    from core.jobs import queue, resources

    store_dir = tmp_path / "job_store"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("PHOTO_STORE_DIR", str(store_dir))
    monkeypatch.delenv("PHOTO_STORE_URL", raising=False)
    monkeypatch.delenv("JOB_BROKER_URL", raising=False)
    monkeypatch.setenv("RETENTION_REJECTED_MEMBER_DAYS", "0")
    store = PhotoStore(store_dir, fsync=False, keys=KeyRing.from_texts(None))
    with session_factory() as session:
        importer.load_sample_members(session, actor="staff_user", photo_store=store)
    _decide_all(session_factory, store, rejected={"M0015"}, days_ago=1)

    name = jobs.submit_retention()  # no broker: a thread of this process runs the same job
    next(t for t in threading.enumerate() if t.name == name).join(timeout=120)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Photo).filter_by(member_id="M0015")) == 0
        assert session.scalar(select(func.count()).select_from(Photo)) == 38
        # The run also checked the audit chain and moved its checkpoint to the newest entry, so
        # the Users page walks only what is written after it.
        newest = session.scalar(select(func.max(AuditEntry.seq)))
        chain = audit.verify_chain(session, from_checkpoint=True)
        assert chain.ok and chain.from_seq == newest, chain.summary()
    resources._factory.cache_clear()
    resources._store.cache_clear()

    import redis

    client = redis.Redis.from_url(RETENTION_REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {RETENTION_REDIS_URL} is not reachable: {exc}", pytrace=False)
        pytest.skip(f"Redis at {RETENTION_REDIS_URL} is not reachable: {exc}")
    monkeypatch.setenv("JOB_BROKER_URL", RETENTION_REDIS_URL)
    monkeypatch.setattr(queue, "_state", {})
    try:
        for key in client.scan_iter(f"{queue.NAMESPACE}*"):
            client.delete(key)
        assert queue.schedule_retention(3600) is True  # the first worker to look enqueues it
        assert queue.schedule_retention(3600) is False  # every other worker, this period: not again
        assert queue.queue_sizes()[queue.QUEUE_BATCHES] == 1
        assert 0 < client.ttl(f"{queue.NAMESPACE}:retention-scheduled") <= 3600
    finally:
        for key in client.scan_iter(f"{queue.NAMESPACE}*"):
            client.delete(key)
        queue.broker().close()
        client.close()
