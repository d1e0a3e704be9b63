"""The queries the pages need, written once. Every filter is a bound parameter, never pasted text.

list_members(session, search=None, gender=None, status=None, created_from=None, created_to=None,
             page=1, page_size=50) -> Page[MemberRow]
member_history(session, member_id, viewer=None, why=None) -> MemberHistory | None
review_queue(session, limit=50, offset=0, model_version=None, batch_id=None, order="priority") -> list[QueueItem]
queue_flag_counts(session) -> {flag code: waiting pairs}
backlog_count(session, model_version=None, batch_id=None) -> int
KPI figures (a period, or per batch, day, week or month): core.storage.kpi_aggregates

KPI definitions (all over the results created in the date range):
  automation_rate        share of results decided without a person (auto_approved + auto_rejected)
  backlog                flagged results nobody has decided yet
  verification_accuracy  share where the engine's same_person equals the ground truth, among
                         results with both (ground truth comes from reviews or labelled imports)
  gender_accuracy        share where predicted_gender equals the ground-truth gender, among both
  latency p50/p95        percentiles of latency_ms, linear interpolation (numpy's default, as
                         percentile() here), the same figure on SQLite and MySQL
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from core.storage import audit
from core.storage.schema import MEMBER_ERASED, MEMBER_STATUSES, AuditEntry, Member, Photo
from core.storage.schema import VerificationResult as ResultRow
from core.verification.genders import normalise_gender
from core.verification.result import (
    CHALLENGE_FAILED,
    FLAGGED,
    GALLERY_PHOTO_DIFFERS,
    REUSED_PHOTO,
    STALE_PHOTO,
)

MAX_PAGE_SIZE = 500
MAX_SEARCH_LENGTH = 200


@dataclass
class Page:
    items: list
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass
class MemberRow:
    id: str
    gender: str
    status: str
    created_at: datetime
    updated_at: datetime
    last_verified_at: datetime | None
    latest_result_id: int | None
    latest_result_status: str | None
    latest_similarity: float | None


@dataclass
class MemberHistory:
    member: Member
    photos: list[Photo]  # current first, then replaced ones, newest first
    results: list[ResultRow]  # newest first, each with .review loaded
    audit: list[AuditEntry]  # newest first


@dataclass
class QueueItem:
    result_id: int
    member_id: str | None
    batch_id: int | None
    created_at: datetime
    priority: int  # 0: gender mismatch or possible duplicate; 1: the rest
    similarity: float | None
    threshold: float
    distance_to_threshold: float | None
    registered_gender: str | None
    predicted_gender: str | None
    gender_confidence: float | None
    flags: list[dict]
    model_version: str
    gallery_path: str | None  # relative to the photo store
    verification_path: str | None
    version: int  # the row version the reviewer saw


@dataclass
class Kpi:
    key: object  # batch id, day (date) or "all"
    label: str
    n_results: int = 0
    n_auto: int = 0
    n_flagged_open: int = 0  # the backlog
    n_approved: int = 0
    n_rejected: int = 0
    automation_rate: float | None = None
    verification_accuracy: float | None = None
    n_verification_truth: int = 0
    gender_accuracy: float | None = None
    n_gender_truth: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    model_versions: list[str] = field(default_factory=list)
    # results carrying each fraud flag (issue 12), code -> count
    fraud_flags: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Members


def _day_bounds(value: date | datetime | None, *, end: bool, tz: ZoneInfo) -> datetime | None:
    """A date means the whole local day; returned as naive UTC like the stored timestamps."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=tz)
    else:
        moment = datetime.combine(value + timedelta(days=1) if end else value, time.min, tzinfo=tz)
    return moment.astimezone(UTC).replace(tzinfo=None)


def list_members(
    session: Session,
    *,
    search: str | None = None,
    gender: str | None = None,
    status: str | None = None,
    created_from: date | datetime | None = None,
    created_to: date | datetime | None = None,
    page: int = 1,
    page_size: int = 50,
    tz: str = "UTC",
) -> Page:
    """Members matching every filter given, ordered by ID; `search` is a case-insensitive ID substring."""
    zone = ZoneInfo(tz)
    conditions = []
    if search:
        text = search.strip()[:MAX_SEARCH_LENGTH].lower()
        if text:
            # autoescape: % and _ in the text are matched literally, not as wildcards.
            conditions.append(func.lower(Member.id).contains(text, autoescape=True))
    if gender:
        conditions.append(Member.gender == normalise_gender(gender))
    if status:
        if status not in MEMBER_STATUSES:
            raise ValueError(f"Unknown member status {status!r}; use one of {', '.join(MEMBER_STATUSES)}.")
        conditions.append(Member.status == status)
    if created_from is not None:
        conditions.append(Member.created_at >= _day_bounds(created_from, end=False, tz=zone))
    if created_to is not None:
        conditions.append(Member.created_at < _day_bounds(created_to, end=True, tz=zone))

    page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
    page = max(1, int(page))
    total = session.scalar(select(func.count()).select_from(Member).where(*conditions)) or 0

    latest = (
        select(ResultRow.member_id, func.max(ResultRow.id).label("result_id"))
        .group_by(ResultRow.member_id)
        .subquery()
    )
    stmt = (
        select(Member, ResultRow.id, ResultRow.status, ResultRow.similarity)
        .outerjoin(latest, latest.c.member_id == Member.id)
        .outerjoin(ResultRow, ResultRow.id == latest.c.result_id)
        .where(*conditions)
        .order_by(Member.id)
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    items = [
        MemberRow(
            m.id, m.gender, m.status, m.created_at, m.updated_at, m.last_verified_at, rid, rstatus, similarity
        )
        for m, rid, rstatus, similarity in session.execute(stmt)
    ]
    return Page(items, total, page, page_size)


def member_history(
    session: Session, member_id: str, viewer: str | None = None, why: str | None = None
) -> MemberHistory | None:
    """Photos, results with their reviews and the audit trail of one member.

    With `viewer`, the viewing itself is written to the audit log (and committed), with `why`
    (the page) when given.
    """
    member = session.get(Member, member_id)
    if member is None:
        return None
    photos = list(
        session.scalars(
            select(Photo).where(Photo.member_id == member_id).order_by(Photo.current.desc(), Photo.id.desc())
        )
    )
    results = list(
        session.scalars(
            select(ResultRow)
            .where(ResultRow.member_id == member_id)
            .options(selectinload(ResultRow.review))  # one query for all reviews, not one per result
            .order_by(ResultRow.id.desc())
        )
    )
    entries = audit.entries_for(session, "member", member_id)
    if viewer:
        audit.log(session, viewer, audit.VIEW_MEMBER, "member", member_id, {"why": why} if why else None)
        session.commit()
    return MemberHistory(member, photos, results, entries)


# ----------------------------------------------------------------------------------------------
# Review queue


QUEUE_ORDERS = ("priority", "risk", "oldest")


def _queue_conditions(model_version: str | None, batch_id: int | None) -> list:
    # An erased member's pairs have no photos left to review (core.workflows.privacy).
    erased = select(Member.id).where(Member.status == MEMBER_ERASED)
    conditions = [
        ResultRow.status == FLAGGED,
        or_(ResultRow.member_id.is_(None), ResultRow.member_id.not_in(erased)),
    ]
    if model_version:
        conditions.append(ResultRow.model_version == model_version)
    if batch_id is not None:
        conditions.append(ResultRow.batch_id == batch_id)
    return conditions


def review_queue(
    session: Session,
    *,
    limit: int = 50,
    offset: int = 0,
    model_version: str | None = None,
    batch_id: int | None = None,
    order: str = "priority",
) -> list[QueueItem]:
    """Flagged, undecided results in the order a reviewer should take them.

    order "priority" (default): gender mismatches and possible duplicates first, then the
    similarity closest to the threshold (the hardest calls), results without a similarity (no
    face) after those, oldest first on ties. "risk": the same first group, then the lowest
    similarity first (the likeliest impostors). "oldest": by time verified.
    """
    if order not in QUEUE_ORDERS:
        raise ValueError(f"order must be one of {', '.join(QUEUE_ORDERS)}, not {order!r}")
    priority = case(
        (or_(ResultRow.gender_mismatch.is_(True), ResultRow.possible_duplicate.is_(True)), 0), else_=1
    )
    distance = func.abs(ResultRow.similarity - ResultRow.threshold)
    ordering = {
        "priority": (priority, ResultRow.similarity.is_(None), distance),
        "risk": (priority, ResultRow.similarity.is_(None), ResultRow.similarity),
        "oldest": (),
    }
    gallery, verification = aliased(Photo), aliased(Photo)
    stmt = (
        select(
            ResultRow,
            priority.label("priority"),
            distance.label("distance"),
            gallery.stored_path,
            verification.stored_path,
        )
        .outerjoin(gallery, gallery.id == ResultRow.gallery_photo_id)
        .outerjoin(verification, verification.id == ResultRow.verification_photo_id)
        .where(*_queue_conditions(model_version, batch_id))
        .order_by(*ordering[order], ResultRow.created_at, ResultRow.id)
        .limit(max(1, min(int(limit), MAX_PAGE_SIZE)))
        .offset(max(0, int(offset)))
    )
    return [
        QueueItem(
            result_id=r.id,
            member_id=r.member_id,
            batch_id=r.batch_id,
            created_at=r.created_at,
            priority=int(prio),
            similarity=r.similarity,
            threshold=r.threshold,
            distance_to_threshold=None if dist is None else float(dist),
            registered_gender=r.registered_gender,
            predicted_gender=r.predicted_gender,
            gender_confidence=r.gender_confidence,
            flags=list(r.flags or []),
            model_version=r.model_version,
            gallery_path=g_path,
            verification_path=v_path,
            version=r.version,
        )
        for r, prio, dist, g_path, v_path in session.execute(stmt)
    ]


def queue_flag_counts(session: Session) -> dict[str, int]:
    """How many waiting pairs carry each flag code (a pair with two flags counts for both)."""
    counts: dict[str, int] = {}
    for flags in session.scalars(select(ResultRow.flags).where(ResultRow.status == FLAGGED)):
        for code in {f.get("code") for f in flags or [] if isinstance(f, dict)}:
            if code:
                counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def backlog_count(session: Session, *, model_version: str | None = None, batch_id: int | None = None) -> int:
    stmt = select(func.count(ResultRow.id)).where(*_queue_conditions(model_version, batch_id))
    return session.scalar(stmt) or 0


# ----------------------------------------------------------------------------------------------
# KPIs


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks, as numpy.percentile does by default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


FRAUD_FLAGS = (REUSED_PHOTO, STALE_PHOTO, CHALLENGE_FAILED, GALLERY_PHOTO_DIFFERS)
