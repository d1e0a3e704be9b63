"""Home: today's figures (Korea time) for the cards against their targets.

today_summary(session) -> TodaySummary
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dashboard.formatting import DISPLAY_TZ, today_local
from core.storage import queries
from core.storage.schema import Batch


@dataclass
class TodaySummary:
    kpi: queries.Kpi
    backlog_total: int
    batches_today: int


def today_summary(session: Session, tz: str = DISPLAY_TZ) -> TodaySummary:
    today = today_local(tz)
    kpi = queries.kpi_totals(session, date_from=today, date_to=today, tz=tz)
    start = (
        datetime.combine(today, datetime.min.time(), tzinfo=ZoneInfo(tz)).astimezone(UTC).replace(tzinfo=None)
    )
    n_batches = len(
        session.scalars(
            select(Batch.id).where(Batch.created_at >= start, Batch.created_at < start + timedelta(days=1))
        ).all()
    )
    return TodaySummary(kpi, queries.backlog_count(session), n_batches)
