"""Page queries: member list with filters and paging, history, review queue order, KPIs by hand."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlalchemy import func, inspect, select, update

from core.storage import kpi_aggregates, queries
from core.storage.schema import AuditEntry, Batch, Member
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import reviews
from core.workflows.batches import store_result


@pytest.fixture
def members_25(session):
    for i in range(1, 26):
        session.add(
            Member(
                id=f"A{i:03d}",
                gender="M" if i % 2 else "F",
                status="verified" if i <= 5 else "pending",
                created_at=datetime(2026, 3, i % 28 + 1, 12, 0),
                updated_at=datetime(2026, 3, 1),
            )
        )
    session.add(
        Member(id="B_1%", gender="F", created_at=datetime(2026, 4, 1), updated_at=datetime(2026, 4, 1))
    )
    session.commit()


def test_members_paging_and_filters(session, members_25):
    first = queries.list_members(session, page=1, page_size=10)
    assert first.total == 26 and first.pages == 3
    assert [m.id for m in first.items] == [f"A{i:03d}" for i in range(1, 11)]
    last = queries.list_members(session, page=3, page_size=10)
    assert [m.id for m in last.items] == ["A021", "A022", "A023", "A024", "A025", "B_1%"]

    assert queries.list_members(session, search="a01").total == 10  # case-insensitive substring
    assert queries.list_members(session, search="A01", gender="여").total == 5
    assert queries.list_members(session, status="verified").total == 5
    march = queries.list_members(session, created_from=date(2026, 3, 2), created_to=date(2026, 3, 4))
    assert [m.id for m in march.items] == ["A001", "A002", "A003"]
    assert [m.id for m in queries.list_members(session, search="%").items] == ["B_1%"]  # literal %
    assert [m.id for m in queries.list_members(session, search="_1").items] == ["B_1%"]  # literal _
    with pytest.raises(ValueError):
        queries.list_members(session, status="deleted")


@pytest.mark.parametrize(
    "hostile",
    [
        "'; DROP TABLE members; --",
        "' OR '1'='1",
        '" OR ""="',
        "A001' UNION SELECT id, gender FROM members --",
        "\\'; DELETE FROM members; #",
        "%' AND 1=1 AND '%'='",
    ],
)
def test_search_text_full_of_sql_finds_nothing_and_harms_nothing(session, members_25, db_engine, hostile):
    page = queries.list_members(session, search=hostile)
    assert page.total == 0 and page.items == []
    assert session.scalar(select(func.count()).select_from(Member)) == 26
    assert "members" in inspect(db_engine).get_table_names()


def add_result(session, make_result, *, member_id=None, batch_id=None, created_at=None, **kwargs):
    row = store_result(session, make_result(**kwargs), member_id=member_id, batch_id=batch_id)
    session.flush()
    if created_at is not None:
        row.created_at = created_at
    session.commit()
    return row


def test_review_queue_priority_order(session, make_result, add_member):
    add_member("Q")
    t = [datetime(2026, 3, 1, h) for h in range(8)]
    ids = {}
    ids["near_08_new"] = add_result(
        session, make_result, status="flagged", similarity=0.58, created_at=t[5]
    ).id
    ids["mismatch"] = add_result(
        session, make_result, status="flagged", similarity=0.9, flags=("gender_mismatch",), created_at=t[3]
    ).id
    ids["nearest"] = add_result(session, make_result, status="flagged", similarity=0.51, created_at=t[2]).id
    ids["no_face"] = add_result(session, make_result, status="flagged", similarity=None, created_at=t[0]).id
    ids["duplicate"] = add_result(
        session, make_result, status="flagged", similarity=0.2, flags=("possible_duplicate",), created_at=t[1]
    ).id
    add_result(session, make_result, status="auto_approved", similarity=0.95)
    ids["near_08_old"] = add_result(
        session, make_result, status="flagged", similarity=0.58, created_at=t[4]
    ).id
    ids["other_model"] = add_result(
        session, make_result, status="flagged", similarity=0.5, model_version="test-v2", created_at=t[6]
    ).id

    queue = queries.review_queue(session, model_version="test-v1")

    order = {v: k for k, v in ids.items()}
    assert [order[item.result_id] for item in queue] == [
        "duplicate",  # priority group first, closest to the threshold first within it
        "mismatch",
        "nearest",
        "near_08_old",  # same distance: oldest first
        "near_08_new",
        "no_face",  # no similarity: after the ones with one
    ]
    assert queue[0].priority == 0 and queue[2].priority == 1
    assert queue[2].distance_to_threshold == pytest.approx(0.01)
    assert queries.backlog_count(session) == 7
    assert queries.backlog_count(session, model_version="test-v2") == 1
    assert [
        i.result_id for i in queries.review_queue(session, limit=2, offset=1, model_version="test-v1")
    ] == [
        ids["mismatch"],
        ids["nearest"],
    ]


def test_member_history_and_view_audit(session, make_result, add_member):
    add_member("H1", "F")
    add_member("H2", "M")
    first = add_result(session, make_result, member_id="H1", status="flagged", similarity=0.55)
    add_result(session, make_result, member_id="H2", status="auto_approved")
    reviews.decide(session, first.id, "kim", "approve", "looks fine")
    second = add_result(session, make_result, member_id="H1", status="auto_approved")

    history = queries.member_history(session, "H1", viewer="lee")

    assert history.member.id == "H1" and history.member.status == "verified"
    assert [r.id for r in history.results] == [second.id, first.id]
    assert history.results[1].review.reviewer == "kim" and history.results[1].review.note == "looks fine"
    assert history.results[0].review is None
    assert {p.kind for p in history.photos} == {"gallery", "verification"}
    views = session.scalars(select(AuditEntry).where(AuditEntry.action == "view_member")).all()
    assert [(v.actor, v.target_id) for v in views] == [("lee", "H1")]
    assert queries.member_history(session, "nobody") is None


@pytest.fixture
def kpi_results(session, make_result, add_member):
    """Six results in two batches, chosen so every KPI can be checked by hand (see the test)."""
    for m in ("K1", "K2", "K3", "K4", "K5", "K6"):
        add_member(m)
    b1 = Batch(created_by="t", model_version="test-v1", n_items=4, name="March batch")
    b2 = Batch(created_by="t", model_version="test-v2", n_items=2)
    session.add_all([b1, b2])
    session.commit()

    def add(member, batch, created, **kw):
        return add_result(session, make_result, member_id=member, batch_id=batch.id, created_at=created, **kw)

    r1 = add("K1", b1, datetime(2026, 3, 1, 23, 30), status="auto_approved", similarity=0.9, latency_ms=100)
    r2 = add(
        "K2",
        b1,
        datetime(2026, 3, 1, 23, 30),
        status="auto_rejected",
        similarity=0.1,
        predicted_gender="F",
        latency_ms=200,
    )
    add(
        "K3",
        b1,
        datetime(2026, 3, 2, 10),
        status="flagged",
        similarity=0.7,
        predicted_gender="F",
        flags=("gender_mismatch",),
        latency_ms=300,
    )
    r4 = add("K4", b1, datetime(2026, 3, 2, 10), status="flagged", similarity=0.45, latency_ms=400)
    add(
        "K5",
        b2,
        datetime(2026, 3, 2, 15, 30),
        status="auto_approved",
        similarity=0.8,
        model_version="test-v2",
        latency_ms=50,
    )
    r6 = add(
        "K6",
        b2,
        datetime(2026, 3, 3, 9),
        status="flagged",
        similarity=None,
        model_version="test-v2",
        latency_ms=150,
    )
    # Ground truth: r1 labelled same person, r2 labelled same person (the engine said no: wrong).
    session.execute(
        update(ResultRow).where(ResultRow.id == r1.id).values(ground_truth_same=True, ground_truth_gender="M")
    )
    session.execute(update(ResultRow).where(ResultRow.id == r2.id).values(ground_truth_same=True))
    session.commit()
    reviews.decide(session, r4.id, "kim", "approve")  # engine said "not same" (0.45 < 0.5): wrong
    reviews.decide(session, r6.id, "kim", "reject", label="different")  # no face: no engine decision to score
    return b1, b2


def test_kpis_per_batch_by_hand(session, kpi_results):
    b1, b2 = kpi_results
    first, second = kpi_aggregates.kpis_grouped(session, "batch")

    assert (first.key, first.label, second.key, second.label) == (
        b1.id,
        "March batch",
        b2.id,
        f"Batch {b2.id}",
    )
    assert first.n_results == 4 and first.n_auto == 2 and first.automation_rate == 0.5
    assert first.n_flagged_open == 1 and first.n_approved == 1 and first.n_rejected == 0
    # r1 right, r2 wrong, r4 wrong (r3 has no ground truth)
    assert first.n_verification_truth == 3 and first.verification_accuracy == pytest.approx(1 / 3)
    # r1 M=M; r4 approved so truth = registered M, predicted M
    assert first.n_gender_truth == 2 and first.gender_accuracy == 1.0
    assert first.latency_p50_ms == pytest.approx(250.0)  # 100 200 | 300 400
    assert first.latency_p95_ms == pytest.approx(385.0)  # 300 + 0.85 * 100
    assert first.model_versions == ["test-v1"]

    assert second.n_results == 2 and second.automation_rate == 0.5 and second.n_rejected == 1
    assert second.n_flagged_open == 0
    assert second.verification_accuracy is None and second.n_verification_truth == 0
    assert second.latency_p50_ms == pytest.approx(100.0) and second.latency_p95_ms == pytest.approx(145.0)

    totals = kpi_aggregates.kpi_totals(session)
    assert totals.n_results == 6 and totals.automation_rate == 0.5 and totals.n_flagged_open == 1
    assert totals.latency_p50_ms == pytest.approx(175.0) and totals.latency_p95_ms == pytest.approx(375.0)

    only_v2 = kpi_aggregates.kpis_grouped(session, "batch", model_version="test-v2")
    assert [k.key for k in only_v2] == [b2.id]


def test_kpis_per_day_and_time_zone(session, kpi_results):
    utc_days = kpi_aggregates.kpis_grouped(session, "day")
    assert [(k.key, k.n_results) for k in utc_days] == [
        (date(2026, 3, 1), 2),
        (date(2026, 3, 2), 3),
        (date(2026, 3, 3), 1),
    ]
    seoul = kpi_aggregates.kpis_grouped(session, "day", tz="Asia/Seoul")  # UTC+9 moves late results a day on
    assert [(k.key, k.n_results) for k in seoul] == [(date(2026, 3, 2), 4), (date(2026, 3, 3), 2)]
    one_day = kpi_aggregates.kpis_grouped(
        session, "day", date_from=date(2026, 3, 2), date_to=date(2026, 3, 2)
    )
    assert [(k.key, k.n_results, k.n_auto) for k in one_day] == [(date(2026, 3, 2), 3, 1)]


def test_percentile_matches_numpy():
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.5, 2.25]
    for p in (0, 10, 50, 90, 95, 100):
        assert queries.percentile(values, p) == pytest.approx(float(np.percentile(values, p)))
    assert queries.percentile([], 50) is None
