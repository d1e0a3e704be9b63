"""KPI figures from SQL aggregates equal the figures from the rows, on SQLite and MariaDB."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import kpi_reference as reference
import pytest

from core.storage import kpi_aggregates
from core.storage.schema import Batch, Member, Review
from core.storage.schema import VerificationResult as ResultRow

STATUSES = ("auto_approved", "auto_rejected", "flagged", "approved", "rejected")
FRAUD = ("reused_photo", "stale_photo", "challenge_failed", "gallery_photo_differs")


def seed(session, n: int = 600) -> None:
    """Results over a year and a half around DST changes: mixed batches, versions, truths, ties."""
    rng = random.Random(7)
    session.add_all([Member(id=f"A{i}", gender="F") for i in range(20)])
    batches = [Batch(name=f"b{i}" if i % 2 else None, created_by="t", model_version="v1") for i in range(6)]
    session.add_all(batches)
    session.flush()
    start = datetime(2025, 10, 20)
    for _ in range(n):
        flags = []
        if rng.random() < 0.2:
            flags.append({"code": rng.choice(FRAUD), "detail": "x"})
        if rng.random() < 0.1:
            flags.append({"code": "gender_mismatch"})
        if rng.random() < 0.05:
            flags.append({"code": "note", "message": "mentions reused_photo in text only"})
        same = rng.choice([True, False, None])
        session.add(
            ResultRow(
                batch_id=rng.choice([None, *[b.id for b in batches]]),
                member_id=f"A{rng.randrange(20)}",
                same_person=same,
                similarity=rng.random(),
                threshold=0.5,
                band_low=0.4,
                band_high=0.6,
                predicted_gender=rng.choice(["M", "F", None, ""]),
                registered_gender="F",
                status=rng.choice(STATUSES),
                flags=flags,
                latency_ms=rng.choice([None, 50.0, float(rng.randrange(20, 900)), rng.random() * 1000]),
                model_version=rng.choice(["v1", "v2"]),
                ground_truth_same=rng.choice([True, False, None]),
                ground_truth_gender=rng.choice(["M", "F", None]),
                # Minutes apart and some on the hour, so local midnights and DST changes are crossed.
                created_at=start + timedelta(minutes=rng.randrange(0, 60 * 24 * 540)),
            )
        )
    session.commit()


def _same(a, b) -> None:
    assert asdict(a) == asdict(b)  # exactly: counts, rates, percentiles, versions, fraud flags


@pytest.mark.parametrize("tz", ["Asia/Seoul", "Europe/Berlin", "America/St_Johns"])
def test_aggregates_equal_the_row_figures(session, tz):
    seed(session)
    for filters in (
        {},
        {"date_from": date(2026, 3, 1), "date_to": date(2026, 11, 30)},
        {"model_version": "v2", "date_from": date(2025, 10, 25)},
    ):
        old = reference.kpis_per_batch(session, tz=tz, **filters)
        new = kpi_aggregates.kpis_grouped(session, "batch", tz=tz, **filters)
        assert [k.key for k in new] == [k.key for k in old]
        for a, b in zip(new, old, strict=True):
            _same(a, b)
        old = reference.kpis_per_day(session, tz=tz, **filters)
        new = kpi_aggregates.kpis_grouped(session, "day", tz=tz, **filters)
        assert [k.key for k in new] == [k.key for k in old]
        for a, b in zip(new, old, strict=True):
            _same(a, b)
        totals = reference.kpi_totals(session, tz=tz, **filters)
        _same(kpi_aggregates.kpi_totals(session, tz=tz, **filters), totals)
        # The totals summed from a period's groups (the KPI page's period line) are the same.
        for per in ("batch", "day", "month"):
            groups = kpi_aggregates.kpis_grouped(session, per, tz=tz, **filters)
            _same(kpi_aggregates.totals_of(session, groups, tz=tz, **filters), totals)
    assert sum(k.fraud_flags["reused_photo"] for k in new) > 0


def test_weeks_and_months_equal_the_row_figures(session):
    seed(session, 400)
    tz = "Europe/Berlin"
    zone = ZoneInfo(tz)
    rows = reference._kpi_rows(session, None, None, None, zone)
    for per, start_of in (
        ("week", lambda d: d - timedelta(days=d.weekday())),
        ("month", lambda d: d.replace(day=1)),
    ):
        groups = defaultdict(list)
        for r in rows:
            groups[start_of(r.created_at.replace(tzinfo=UTC).astimezone(zone).date())].append(r)
        new = kpi_aggregates.kpis_grouped(session, per, tz=tz)
        assert [k.key for k in new] == sorted(groups)
        for kpi in new:
            _same(kpi, reference._kpi(kpi.key, kpi.key.isoformat(), groups[kpi.key]))


def test_empty_and_change_marker(session):
    assert kpi_aggregates.kpis_grouped(session, "day") == []
    assert kpi_aggregates.kpi_totals(session).n_results == 0
    before = kpi_aggregates.change_marker(session)
    seed(session, 5)
    after = kpi_aggregates.change_marker(session)
    assert after != before
    result = session.query(ResultRow).first()
    session.add(Review(result_id=result.id, reviewer="r", decision="approve"))
    session.commit()
    assert kpi_aggregates.change_marker(session) != after
    with pytest.raises(ValueError):
        kpi_aggregates.kpis_grouped(session, "year")


def test_totals_without_fraud_flags_keep_every_other_figure(session):
    seed(session, 200)
    full = kpi_aggregates.kpi_totals(session, tz="Asia/Seoul")
    lean = kpi_aggregates.kpi_totals(session, tz="Asia/Seoul", fraud_flags=False)
    assert any(full.fraud_flags.values()) and not any(lean.fraud_flags.values())
    lean.fraud_flags = full.fraud_flags
    assert asdict(lean) == asdict(full)
