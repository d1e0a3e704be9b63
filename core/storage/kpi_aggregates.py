"""The KPI figures computed by the database (GROUP BY), not from every result row read into Python.

    kpis_grouped(session, per, date_from=None, date_to=None, model_version=None, tz="UTC") -> list[Kpi]
        per "batch" (key = batch id, None for results outside any batch), "day", "week" (key = the
        local Monday) or "month" (key = the local first of the month); oldest first
    kpi_totals(session, ...) -> Kpi      the whole period in one
    totals_of(session, groups, ...) -> Kpi   the same from a period's groups (only the latency
                                             percentiles read again)
    change_marker(session) -> tuple      changes whenever a result is stored or a review decided

The figures equal those computed from every row in Python exactly (tests/kpi_reference.py,
tests/db/test_kpi_aggregates.py):
counts by status and by ground truth are sums in SQL; the latency percentiles are read as the
(at most) two ranked values each needs, found with a window function, and interpolated here as
queries.percentile does; the fraud flags are parsed here, from the few rows whose JSON names one.
Local days follow the zone's UTC offsets, each offset applied to the stretch of time it holds.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Text, and_, case, func, literal, literal_column, or_, select, type_coerce
from sqlalchemy.orm import Session

from core.storage.queries import FRAUD_FLAGS, Kpi, _day_bounds
from core.storage.schema import Batch, Review
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import APPROVED, AUTO_APPROVED, AUTO_REJECTED, FLAGGED, REJECTED

PERIODS = ("batch", "day", "week", "month")
ALL = "all"


def change_marker(session: Session) -> tuple:
    """Newest result id, newest review id and time: a cached figure older than these is stale."""
    results = session.scalar(select(func.max(ResultRow.id)))
    reviews = session.execute(select(func.max(Review.id), func.max(Review.decided_at))).one()
    return (results, reviews[0], str(reviews[1]))


def _filters(date_from, date_to, model_version, zone: ZoneInfo) -> list:
    where = []
    if date_from is not None:
        where.append(ResultRow.created_at >= _day_bounds(date_from, end=False, tz=zone))
    if date_to is not None:
        where.append(ResultRow.created_at < _day_bounds(date_to, end=True, tz=zone))
    if model_version:
        where.append(ResultRow.model_version == model_version)
    return where


def _offset_stretches(start: datetime, end: datetime, zone: ZoneInfo) -> list[tuple[datetime | None, int]]:
    """[(naive UTC instant up to which the offset holds, offset in seconds)]; the last has None."""

    def offset(moment: datetime) -> int:
        return int(moment.replace(tzinfo=UTC).astimezone(zone).utcoffset().total_seconds())

    stretches = []
    current, moment = offset(start), start
    while moment < end:
        step = min(moment + timedelta(days=1), end)
        if offset(step) != current:
            low, high = moment, step  # the change lies in (low, high]: narrow it to the second
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == current else (low, middle)
            stretches.append((high.replace(microsecond=0), current))
            current = offset(high)
        moment = step
    stretches.append((None, current))
    return stretches


def _shifted_date(session: Session, seconds: int):
    """The date of created_at moved by a whole number of seconds (an offset computed here)."""
    if session.get_bind().dialect.name == "sqlite":
        return func.date(ResultRow.created_at, literal(f"{int(seconds):+d} seconds"))
    return func.date(func.date_add(ResultRow.created_at, literal_column(f"INTERVAL {int(seconds)} SECOND")))


def _period_start(session: Session, day, per: str):
    if per == "day":
        return day
    sqlite = session.get_bind().dialect.name == "sqlite"
    if per == "week":  # the Monday of the local day's week
        if sqlite:
            return func.date(day, literal("-6 days"), literal("weekday 1"))
        return func.subdate(day, func.weekday(day))
    if sqlite:
        return func.strftime("%Y-%m-01", day)
    return func.date_format(day, "%Y-%m-01")


def _local_period(session: Session, per: str, date_from, date_to, model_version, zone: ZoneInfo):
    where = _filters(date_from, date_to, model_version, zone)
    first, last = session.execute(
        select(func.min(ResultRow.created_at), func.max(ResultRow.created_at)).where(*where)
    ).one()
    if first is None:
        return None
    stretches = _offset_stretches(first, last, zone)
    day = _shifted_date(session, stretches[-1][1])
    if len(stretches) > 1:
        day = case(
            *[(ResultRow.created_at < until, _shifted_date(session, off)) for until, off in stretches[:-1]],
            else_=day,
        )
    return _period_start(session, day, per)


def _as_date(value) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _is_true(column):
    return and_(column.is_not(None), column != "")


def _percentiles(session: Session, key, where: list, ps=(50, 95)) -> dict:
    """key -> {p: value}: each percentile from the ranked values either side of its rank."""
    ranked = (
        select(
            key.label("k"),
            ResultRow.latency_ms.label("latency"),
            func.row_number().over(partition_by=key, order_by=ResultRow.latency_ms).label("rn"),
            func.count().over(partition_by=key).label("n"),
        )
        .where(ResultRow.latency_ms.is_not(None), *where)
        .subquery()
    )
    near = [
        and_(
            (ranked.c.rn - 1) * 100 >= (ranked.c.n - 1) * p - 100,
            (ranked.c.rn - 1) * 100 <= (ranked.c.n - 1) * p + 100,
        )
        for p in ps
    ]
    values: dict = defaultdict(dict)
    counts: dict = {}
    for k, latency, rn, n in session.execute(
        select(ranked.c.k, ranked.c.latency, ranked.c.rn, ranked.c.n).where(or_(*near))
    ):
        values[k][int(rn) - 1] = float(latency)
        counts[k] = int(n)
    out: dict = {}
    for k, n in counts.items():
        out[k] = {}
        for p in ps:
            rank = (n - 1) * p / 100.0
            low = int(rank)
            high = min(low + 1, n - 1)
            out[k][p] = values[k][low] + (values[k][high] - values[k][low]) * (rank - low)
    return out


def _grouped(session: Session, key, where: list, *, fraud_flags: bool = True) -> dict:
    """key -> Kpi with every figure but its label."""
    verification_known = and_(ResultRow.same_person.is_not(None), ResultRow.ground_truth_same.is_not(None))
    gender_known = and_(_is_true(ResultRow.predicted_gender), _is_true(ResultRow.ground_truth_gender))

    def count_if(condition):
        return func.sum(case((condition, 1), else_=0))

    stmt = (
        select(
            key.label("k"),
            ResultRow.model_version,
            func.count(),
            count_if(ResultRow.status.in_((AUTO_APPROVED, AUTO_REJECTED))),
            count_if(ResultRow.status == FLAGGED),
            count_if(ResultRow.status == APPROVED),
            count_if(ResultRow.status == REJECTED),
            count_if(verification_known),
            count_if(and_(verification_known, ResultRow.same_person == ResultRow.ground_truth_same)),
            count_if(gender_known),
            count_if(and_(gender_known, ResultRow.predicted_gender == ResultRow.ground_truth_gender)),
        )
        .where(*where)
        .group_by(key, ResultRow.model_version)
    )
    kpis: dict = {}
    hits: dict = defaultdict(lambda: [0, 0])
    for k, version, n, auto, flagged, approved, rejected, v_n, v_hits, g_n, g_hits in session.execute(stmt):
        kpi = kpis.setdefault(k, Kpi(key=k, label="", fraud_flags=dict.fromkeys(FRAUD_FLAGS, 0)))
        kpi.n_results += int(n)
        kpi.n_auto += int(auto or 0)
        kpi.n_flagged_open += int(flagged or 0)
        kpi.n_approved += int(approved or 0)
        kpi.n_rejected += int(rejected or 0)
        kpi.n_verification_truth += int(v_n or 0)
        kpi.n_gender_truth += int(g_n or 0)
        hits[k][0] += int(v_hits or 0)
        hits[k][1] += int(g_hits or 0)
        kpi.model_versions.append(version)
    for k, kpi in kpis.items():
        kpi.model_versions = sorted(set(kpi.model_versions))
        kpi.automation_rate = kpi.n_auto / kpi.n_results if kpi.n_results else None
        if kpi.n_verification_truth:
            kpi.verification_accuracy = hits[k][0] / kpi.n_verification_truth
        if kpi.n_gender_truth:
            kpi.gender_accuracy = hits[k][1] / kpi.n_gender_truth
    for k, figures in _percentiles(session, key, where).items():
        kpis[k].latency_p50_ms, kpis[k].latency_p95_ms = figures[50], figures[95]
    if not fraud_flags:  # the one figure that reads the wide rows (their flags JSON): skipped on request
        return kpis
    # Only rows whose JSON names a fraud flag are read, and parsed here exactly as the row path does.
    flags_text = type_coerce(ResultRow.flags, Text)
    mentions = or_(*[flags_text.like(f"%{code}%") for code in FRAUD_FLAGS])
    for k, flags in session.execute(select(key, ResultRow.flags).where(mentions, *where)):
        found = {f.get("code") for f in (flags or []) if isinstance(f, dict)} & set(FRAUD_FLAGS)
        for code in found:
            kpis[k].fraud_flags[code] += 1
    return kpis


def kpis_grouped(
    session: Session,
    per: str,
    *,
    date_from: date | datetime | None = None,
    date_to: date | datetime | None = None,
    model_version: str | None = None,
    tz: str = "UTC",
) -> list[Kpi]:
    if per not in PERIODS:
        raise ValueError(f"per must be one of {PERIODS}, not {per!r}")
    zone = ZoneInfo(tz)
    where = _filters(date_from, date_to, model_version, zone)
    if per == "batch":
        kpis = _grouped(session, ResultRow.batch_id, where)
        ids = [k for k in kpis if k is not None]
        names = (
            dict(session.execute(select(Batch.id, Batch.name).where(Batch.id.in_(ids))).tuples().all())
            if ids
            else {}
        )
        ordered = []
        for batch_id in sorted(kpis, key=lambda k: (k is None, k or 0)):
            kpi = kpis[batch_id]
            if batch_id is None:
                kpi.label = "single verifications"
            else:
                kpi.label = names.get(batch_id) or f"Batch {batch_id}"
            ordered.append(kpi)
        return ordered
    key = _local_period(session, per, date_from, date_to, model_version, zone)
    if key is None:
        return []
    merged: dict = {}
    for raw, kpi in _grouped(session, key, where).items():
        kpi.key = _as_date(raw)
        kpi.label = kpi.key.isoformat()
        merged[kpi.key] = kpi
    return [merged[k] for k in sorted(merged)]


def kpi_totals(
    session: Session,
    *,
    date_from: date | datetime | None = None,
    date_to: date | datetime | None = None,
    model_version: str | None = None,
    tz: str = "UTC",
    fraud_flags: bool = True,
) -> Kpi:
    """The whole period's figures; fraud_flags=False leaves the fraud flag counts at 0 and reads
    the index alone (the period lines under the charts do not show them)."""
    where = _filters(date_from, date_to, model_version, ZoneInfo(tz))
    kpi = _grouped(session, literal(ALL), where, fraud_flags=fraud_flags).get(ALL)
    if kpi is None:
        kpi = Kpi(key=ALL, label="all results", fraud_flags=dict.fromkeys(FRAUD_FLAGS, 0))
    kpi.key, kpi.label = ALL, "all results"
    return kpi


def totals_of(
    session: Session,
    groups: list[Kpi],
    *,
    date_from: date | datetime | None = None,
    date_to: date | datetime | None = None,
    model_version: str | None = None,
    tz: str = "UTC",
) -> Kpi:
    """kpi_totals from kpis_grouped's figures of the same period (any grouping): the counts are
    their sums; only the percentiles, which do not add up, are read from the database."""
    kpi = Kpi(key=ALL, label="all results", fraud_flags=dict.fromkeys(FRAUD_FLAGS, 0))
    verification_hits = gender_hits = 0.0
    versions: set = set()
    for g in groups:
        kpi.n_results += g.n_results
        kpi.n_auto += g.n_auto
        kpi.n_flagged_open += g.n_flagged_open
        kpi.n_approved += g.n_approved
        kpi.n_rejected += g.n_rejected
        kpi.n_verification_truth += g.n_verification_truth
        kpi.n_gender_truth += g.n_gender_truth
        verification_hits += round((g.verification_accuracy or 0) * g.n_verification_truth)
        gender_hits += round((g.gender_accuracy or 0) * g.n_gender_truth)
        versions.update(g.model_versions)
        for code, n in g.fraud_flags.items():
            kpi.fraud_flags[code] = kpi.fraud_flags.get(code, 0) + n
    if not kpi.n_results:
        return kpi
    kpi.model_versions = sorted(versions)
    kpi.automation_rate = kpi.n_auto / kpi.n_results
    if kpi.n_verification_truth:
        kpi.verification_accuracy = int(verification_hits) / kpi.n_verification_truth
    if kpi.n_gender_truth:
        kpi.gender_accuracy = int(gender_hits) / kpi.n_gender_truth
    where = _filters(date_from, date_to, model_version, ZoneInfo(tz))
    figures = _percentiles(session, literal(ALL), where).get(ALL)
    if figures:
        kpi.latency_p50_ms, kpi.latency_p95_ms = figures[50], figures[95]
    return kpi
