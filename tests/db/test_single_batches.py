"""Single verifications (Verify page, API, gallery additions) join one batch per local day, source
and model version instead of a batch each; concurrent ones take distinct positions. On SQLite and
on MariaDB (the db fixtures run each test on both)."""

from __future__ import annotations

import threading
from datetime import datetime

from conftest import engine_result
from sqlalchemy import func, select

from core.dashboard import formatting, kpis, verify
from core.storage.schema import Batch, BatchItem, Member, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches


def _photos(session, member_id):
    member = session.get(Member, member_id)
    return {p.kind: p.id for p in member.photos if p.current}


def test_page_singles_of_a_day_share_one_batch_with_a_readable_name(session, add_member):
    for member_id in ("S1", "S2", "S3"):
        add_member(member_id)
    ids = set()
    for member_id in ("S1", "S2", "S3"):
        photos = _photos(session, member_id)
        batch_id, _ = verify.record_single_result(
            session, "staff", engine_result(), member_id, photos["gallery"], photos["verification"], "M"
        )
        ids.add(batch_id)
    assert len(ids) == 1
    batch = session.get(Batch, ids.pop())
    session.refresh(batch)
    assert batch.n_items == 3 and batch.status == "completed" and batch.source == "verify_page"
    positions = session.scalars(select(BatchItem.position).where(BatchItem.batch_id == batch.id)).all()
    assert sorted(positions) == [0, 1, 2]
    day = batches.local_day(utcnow())
    assert batch.name == f"Single verifications {day} · Verify page"
    assert formatting.batch_name(batch.name, batch.group_key, "ko") == f"단건 인증 {day} · 인증 화면"
    assert session.scalar(select(func.count(ResultRow.id)).where(ResultRow.batch_id == batch.id)) == 3


def test_source_day_and_model_version_each_make_their_own_batch(session, add_member):
    add_member("D1")
    photos = _photos(session, "D1")

    def add(source, when, version="test-v1"):
        item = batches.add_single_item(
            session,
            "someone",
            source,
            version,
            "D1",
            photos["gallery"],
            photos["verification"],
            "M",
            now=when,
        )
        session.commit()
        return item.batch_id

    evening = datetime(2026, 12, 1, 14, 0)  # 23:00 in Seoul, 1 December
    after_midnight = datetime(2026, 12, 1, 15, 30)  # 00:30 in Seoul, 2 December
    page = add(batches.PAGE_SINGLE, evening)
    assert add(batches.PAGE_SINGLE, evening) == page
    api = add(batches.API_SINGLE, evening)
    next_day = add(batches.PAGE_SINGLE, after_midnight)
    new_model = add(batches.PAGE_SINGLE, evening, version="test-v2")
    assert len({page, api, next_day, new_model}) == 4
    names = dict(session.execute(select(Batch.id, Batch.name)).tuples().all())
    assert names[api] == "Single verifications 2026-12-01 · API"
    assert names[next_day] == "Single verifications 2026-12-02 · Verify page"
    session.expire_all()
    assert session.get(Batch, page).n_items == 2


def test_concurrent_singles_take_distinct_positions_in_one_batch(session_factory, session, add_member):
    n = 6
    for i in range(n):
        add_member(f"C{i}")
    photos = {f"C{i}": _photos(session, f"C{i}") for i in range(n)}
    errors, start = [], threading.Barrier(n)

    def one(member_id):
        try:
            with session_factory() as own:
                start.wait()
                item = batches.add_single_item(
                    own,
                    "api-client",
                    batches.API_SINGLE,
                    "test-v1",
                    member_id,
                    photos[member_id]["gallery"],
                    photos[member_id]["verification"],
                    "M",
                )
                batches.store_result(
                    own, engine_result(), batch_id=item.batch_id, batch_item_id=item.id, member_id=member_id
                )
                own.commit()
        except Exception as exc:  # reported below: a thread must not fail silently
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(f"C{i}",)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    session.expire_all()
    rows = session.scalars(select(Batch).where(Batch.source == batches.API_SINGLE)).all()
    assert len(rows) == 1 and rows[0].n_items == n
    positions = session.scalars(select(BatchItem.position).where(BatchItem.batch_id == rows[0].id)).all()
    assert sorted(positions) == list(range(n))


def test_kpis_per_batch_show_the_day_batch_as_one_point(session, add_member):
    for member_id in ("K1", "K2"):
        add_member(member_id)
        photos = _photos(session, member_id)
        verify.record_single_result(
            session, "staff", engine_result(), member_id, photos["gallery"], photos["verification"], "M"
        )
    # A batch of one from before the grouping (no group key) stays out unless asked for.
    old = Batch(name="K1 (1)", source="verify_page", created_by="staff", model_version="test-v1", n_items=1)
    session.add(old)
    session.flush()
    photos = _photos(session, "K1")
    item = BatchItem(
        batch_id=old.id,
        position=0,
        member_id="K1",
        gallery_photo_id=photos["gallery"],
        verification_photo_id=photos["verification"],
    )
    session.add(item)
    session.flush()
    batches.store_result(session, engine_result(), batch_id=old.id, batch_item_id=item.id, member_id="K1")
    session.commit()

    frame = kpis.kpi_frame(session, lang="ko")
    assert len(frame) == 1 and frame.iloc[0]["n_results"] == 2
    assert "단건 인증" in frame.iloc[0]["batch"]
    assert len(kpis.kpi_frame(session, include_single=True)) == 2
