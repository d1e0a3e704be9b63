"""The KPI figures computed from every result row in Python: the reference the SQL aggregates of
core.storage.kpi_aggregates are checked against (the product computes them in the database)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.queries import FRAUD_FLAGS, Kpi, _day_bounds, percentile
from core.storage.schema import Batch
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import APPROVED, AUTO_APPROVED, AUTO_REJECTED, FLAGGED, REJECTED


def _kpi(key, label: str, rows: list) -> Kpi:
    kpi = Kpi(key=key, label=label, n_results=len(rows))
    latencies, verification_hits, gender_hits = [], [], []
    versions = set()
    kpi.fraud_flags = dict.fromkeys(FRAUD_FLAGS, 0)
    for r in rows:
        versions.add(r.model_version)
        for code in {f.get("code") for f in (r.flags or []) if isinstance(f, dict)} & set(FRAUD_FLAGS):
            kpi.fraud_flags[code] += 1
        if r.status in (AUTO_APPROVED, AUTO_REJECTED):
            kpi.n_auto += 1
        elif r.status == FLAGGED:
            kpi.n_flagged_open += 1
        elif r.status == APPROVED:
            kpi.n_approved += 1
        elif r.status == REJECTED:
            kpi.n_rejected += 1
        if r.latency_ms is not None:
            latencies.append(float(r.latency_ms))
        if r.same_person is not None and r.ground_truth_same is not None:
            verification_hits.append(bool(r.same_person) == bool(r.ground_truth_same))
        if r.predicted_gender and r.ground_truth_gender:
            gender_hits.append(r.predicted_gender == r.ground_truth_gender)
    if rows:
        kpi.automation_rate = kpi.n_auto / len(rows)
    kpi.n_verification_truth = len(verification_hits)
    if verification_hits:
        kpi.verification_accuracy = sum(verification_hits) / len(verification_hits)
    kpi.n_gender_truth = len(gender_hits)
    if gender_hits:
        kpi.gender_accuracy = sum(gender_hits) / len(gender_hits)
    kpi.latency_p50_ms = percentile(latencies, 50)
    kpi.latency_p95_ms = percentile(latencies, 95)
    kpi.model_versions = sorted(versions)
    return kpi


def _kpi_rows(session: Session, date_from, date_to, model_version, zone: ZoneInfo) -> list:
    stmt = select(
        ResultRow.id,
        ResultRow.batch_id,
        ResultRow.created_at,
        ResultRow.status,
        ResultRow.same_person,
        ResultRow.ground_truth_same,
        ResultRow.predicted_gender,
        ResultRow.ground_truth_gender,
        ResultRow.latency_ms,
        ResultRow.model_version,
        ResultRow.flags,
    ).order_by(ResultRow.created_at, ResultRow.id)
    if date_from is not None:
        stmt = stmt.where(ResultRow.created_at >= _day_bounds(date_from, end=False, tz=zone))
    if date_to is not None:
        stmt = stmt.where(ResultRow.created_at < _day_bounds(date_to, end=True, tz=zone))
    if model_version:
        stmt = stmt.where(ResultRow.model_version == model_version)
    return list(session.execute(stmt))


def kpis_per_batch(
    session: Session,
    *,
    date_from: date | datetime | None = None,
    date_to: date | datetime | None = None,
    model_version: str | None = None,
    tz: str = "UTC",
) -> list[Kpi]:
    """One Kpi per batch (key = batch id; results outside any batch under key None), oldest first."""
    rows = _kpi_rows(session, date_from, date_to, model_version, ZoneInfo(tz))
    groups: dict = defaultdict(list)
    for r in rows:
        groups[r.batch_id].append(r)
    ids = [k for k in groups if k is not None]
    batches = {b.id: b for b in session.scalars(select(Batch).where(Batch.id.in_(ids)))} if ids else {}
    kpis = []
    for batch_id in sorted(groups, key=lambda k: (k is None, k or 0)):
        batch = batches.get(batch_id)
        if batch_id is None:
            label = "single verifications"
        else:
            label = batch.name if batch is not None and batch.name else f"Batch {batch_id}"
        kpis.append(_kpi(batch_id, label, groups[batch_id]))
    return kpis


def kpis_per_day(
    session: Session,
    *,
    date_from: date | datetime | None = None,
    date_to: date | datetime | None = None,
    model_version: str | None = None,
    tz: str = "UTC",
) -> list[Kpi]:
    """One Kpi per calendar day in `tz` (e.g. "Asia/Seoul"), days without results left out."""
    zone = ZoneInfo(tz)
    rows = _kpi_rows(session, date_from, date_to, model_version, zone)
    groups: dict = defaultdict(list)
    for r in rows:
        groups[r.created_at.replace(tzinfo=UTC).astimezone(zone).date()].append(r)
    return [_kpi(day, day.isoformat(), groups[day]) for day in sorted(groups)]


def kpi_totals(
    session: Session,
    *,
    date_from: date | datetime | None = None,
    date_to: date | datetime | None = None,
    model_version: str | None = None,
    tz: str = "UTC",
) -> Kpi:
    rows = _kpi_rows(session, date_from, date_to, model_version, ZoneInfo(tz))
    return _kpi("all", "all results", rows)
