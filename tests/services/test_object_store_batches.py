"""Imports and batches on the S3 backend (a real SeaweedFS), and what happens when it is killed mid-batch.

The object store dies (SIGKILL, as a crash) after a batch has stored some results: the batch stops
with BatchInterrupted, keeps what it finished, an import meanwhile rejects its rows with a clear
reason and stores nothing half-way; after the restart the same batch finishes the rest, with every
item stored exactly once and every photo readable back.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from test_batches import FakeEngine, count_results, make_batch

from core.storage.schema import BATCH_COMPLETED, BATCH_INTERRUPTED, Batch, Member, Photo
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches
from core.workflows.importer import IMPORTED, REJECTED, import_members

pytestmark = pytest.mark.s3


@pytest.fixture
def photo_store(s3_photo_store):
    """add_member and the other shared fixtures store their photos in SeaweedFS here."""
    return s3_photo_store


def _members_csv(tmp_path, make_photo, ids, first_seed):
    rows = ["member_id,gender,gallery_photo,verification_photo"]
    for i, member_id in enumerate(ids):
        for kind, seed in (("g", first_seed + 2 * i), ("v", first_seed + 2 * i + 1)):
            (tmp_path / f"{member_id}-{kind}.jpg").write_bytes(make_photo(seed))
        rows.append(f"{member_id},F,{member_id}-g.jpg,{member_id}-v.jpg")
    path = tmp_path / f"members-{first_seed}.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_import_and_batch_on_s3(session, session_factory, photo_store, tmp_path, make_photo):
    csv_path = _members_csv(tmp_path, make_photo, ["S1", "S2", "S3"], 900)
    reports = import_members(session, csv_path, photo_store=photo_store, actor="tester")
    assert [r.status for r in reports] == [IMPORTED] * 3
    assert len(list(photo_store.iterate())) == 6
    items = batches.items_for_members(session)
    batch = batches.create_batch(session, "tester", items, FakeEngine.model_version, source="test")
    summary = batches.run_batch(session_factory, FakeEngine(), batch.id, photo_store=photo_store)
    assert (summary.processed, summary.status) == (3, BATCH_COMPLETED)
    for photo in session.scalars(select(Photo)):
        assert photo_store.get(photo.sha256, verify=True)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # a restart costs ~17 s: once is enough
def test_store_killed_mid_batch_loses_nothing_and_stores_nothing_twice(
    session, session_factory, photo_store, add_member, seaweedfs, tmp_path, make_photo
):
    batch = make_batch(session, add_member, n=8, shared_gallery=False)
    engine = FakeEngine()

    def kill_after_three(done, total, row):
        if done == 3 and seaweedfs.process is not None:
            seaweedfs.kill()

    try:
        with pytest.raises(batches.BatchInterrupted, match="photo store could not be reached"):
            batches.run_batch(
                session_factory, engine, batch.id, kill_after_three, photo_store=photo_store, chunk_pairs=2
            )
        # Chunks of two pairs: the chunk being worked on when the store died is finished (its
        # photos were already read), the next one cannot read its photos.
        assert count_results(session, batch.id) == 4
        assert session.get(Batch, batch.id, populate_existing=True).status == BATCH_INTERRUPTED

        csv_path = _members_csv(tmp_path, make_photo, ["K1", "K2"], 700)
        reports = import_members(session, csv_path, photo_store=photo_store, actor="tester")
        assert [r.status for r in reports] == [REJECTED, REJECTED]
        assert all("photo store" in r.message for r in reports), reports[0].message
        assert (
            session.scalar(select(func.count()).select_from(Member).where(Member.id.in_(["K1", "K2"]))) == 0
        )
    finally:
        seaweedfs.restart()

    summary = batches.run_batch(session_factory, engine, batch.id, photo_store=photo_store)
    assert (summary.processed, summary.already_done, summary.status) == (4, 4, BATCH_COMPLETED)
    item_ids = session.scalars(select(ResultRow.batch_item_id).where(ResultRow.batch_id == batch.id)).all()
    assert len(item_ids) == len(set(item_ids)) == 8, "every item stored exactly once"
    for photo in session.scalars(select(Photo)):
        assert photo_store.get(photo.sha256, verify=True), "every photo readable after the restart"
    reports = import_members(session, csv_path, photo_store=photo_store, actor="tester")
    assert [r.status for r in reports] == [IMPORTED, IMPORTED]
