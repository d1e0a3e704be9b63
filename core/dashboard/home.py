"""Home: today's figures (Korea time) for the cards against their targets, each with its count.

today_summary(session) -> TodaySummary;  cards(summary) -> [Card]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dashboard import kpi_targets
from core.dashboard.formatting import DISPLAY_TZ, Rate, milliseconds, number, percent, rate_of, today_local
from core.storage import kpi_aggregates, queries
from core.storage.schema import Batch


@dataclass
class TodaySummary:
    kpi: queries.Kpi
    backlog_total: int
    batches_today: int


def demo_data_allowed(role: str | None, database_url: str) -> bool:
    """The LFW demo members may be loaded only by an administrator, and only into the embedded
    (SQLite) database: never into the customer's production server database."""
    from core.storage.db import is_sqlite
    from core.storage.schema import ADMIN

    return role == ADMIN and is_sqlite(database_url)


def demo_data_allowed_here(role: str | None) -> bool:
    """demo_data_allowed for this deployment's database (DATABASE_URL)."""
    from core import config

    return demo_data_allowed(role, config.database_url())


def load_sample(session: Session, actor: str, store) -> dict[str, int]:
    """The demo members imported; the counts by outcome (imported, updated, unchanged, rejected)."""
    from core.workflows import importer

    return importer.summarize(importer.load_sample_members(session, actor=actor, photo_store=store))


def sample_loader(actor: str, store):
    """For a background batch over the demo members: imports them, returns the ids it may verify."""
    from core.workflows import importer

    def load(session: Session) -> list[str]:
        reports = importer.load_sample_members(session, actor=actor, photo_store=store)
        return [r.member_id for r in reports if r.status != importer.REJECTED]

    return load


def today_summary(session: Session, tz: str = DISPLAY_TZ) -> TodaySummary:
    today = today_local(tz)
    kpi = kpi_aggregates.kpi_totals(session, date_from=today, date_to=today, tz=tz)
    start = (
        datetime.combine(today, datetime.min.time(), tzinfo=ZoneInfo(tz)).astimezone(UTC).replace(tzinfo=None)
    )
    n_batches = len(
        session.scalars(
            select(Batch.id).where(Batch.created_at >= start, Batch.created_at < start + timedelta(days=1))
        ).all()
    )
    return TodaySummary(kpi, queries.backlog_count(session), n_batches)


MET, MISSED, NO_DATA, TOO_FEW = "met", "missed", "no_data", "too_few"


@dataclass
class Card:
    """One figure on Home: its label, shown value, target and what it rests on."""

    label: str  # i18n key
    shown: str
    target: kpi_targets.Target
    value: float | None
    rate: Rate | None = None  # rates: hits of n decisions
    what: str = "results"  # what the count counts (i18n figure.what.<what>)
    count: int = 0  # other figures: the pairs behind it

    @property
    def state(self) -> str:
        """met / missed against the target; no_data; too_few for a rate on too few decisions."""
        if self.value is None:
            return NO_DATA
        if self.rate is not None and not self.rate.enough:
            return TOO_FEW
        return MET if self.target.met(self.value) else MISSED


def cards(summary: TodaySummary) -> list[Card]:
    kpi = summary.kpi
    verification = rate_of(kpi.verification_accuracy, kpi.n_verification_truth)
    gender = rate_of(kpi.gender_accuracy, kpi.n_gender_truth)
    automation = Rate(kpi.n_auto, kpi.n_results)
    return [
        Card(
            "kpi.col.verification_accuracy",
            percent(verification.value),
            kpi_targets.VERIFICATION_ACCURACY,
            verification.value,
            verification,
            "reviewed_pairs",
        ),
        Card(
            "kpi.col.gender_accuracy",
            percent(gender.value),
            kpi_targets.GENDER_ACCURACY,
            gender.value,
            gender,
            "gender_truth",
        ),
        Card(
            "kpi.col.latency_p95_ms",
            milliseconds(kpi.latency_p95_ms),
            kpi_targets.LATENCY_CONTRACT_MS,
            kpi.latency_p95_ms,
            count=kpi.n_results,
        ),
        Card(
            "kpi.col.automation_rate",
            percent(automation.value),
            kpi_targets.AUTOMATION_RATE,
            automation.value,
            automation,
            "results",
        ),
        Card("home.backlog", number(summary.backlog_total), kpi_targets.BACKLOG, summary.backlog_total),
    ]
