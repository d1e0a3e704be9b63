"""Reading stored measurements: the latest, the trend, the pairs at approve_at, the alert state the
banner, KPI page and /health show, and a reviewer's verdict on two members."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import MemberPairVerdict, SelfMeasurement, SelfMeasurementPair, utcnow
from core.workflows.self_measurement.settings import COMPLETED, PAIR_VERDICT, SelfMeasurementError, fmr_target
from core.workflows.self_measurement.stats import NOT_MEASURED, OK, _alert_status

# ----------------------------------------------------------------------------------------------
# Reading results


def latest(session: Session, model_version: str | None = None) -> SelfMeasurement | None:
    stmt = select(SelfMeasurement).where(SelfMeasurement.status == COMPLETED)
    if model_version:
        stmt = stmt.where(SelfMeasurement.model_version == model_version)
    return session.scalar(
        stmt.order_by(SelfMeasurement.finished_at.desc(), SelfMeasurement.id.desc()).limit(1)
    )


def history(session: Session, limit: int = 60) -> list[SelfMeasurement]:
    """Completed measurements, oldest first (the trend)."""
    rows = session.scalars(
        select(SelfMeasurement)
        .where(SelfMeasurement.status == COMPLETED)
        .order_by(SelfMeasurement.finished_at.desc(), SelfMeasurement.id.desc())
        .limit(limit)
    ).all()
    return list(reversed(rows))


def pairs_at_approve(session: Session, run_id: int, limit: int = 200) -> list[SelfMeasurementPair]:
    return list(
        session.scalars(
            select(SelfMeasurementPair)
            .where(SelfMeasurementPair.run_id == run_id)
            .order_by(SelfMeasurementPair.similarity.desc(), SelfMeasurementPair.id)
            .limit(limit)
        )
    )


@dataclass(frozen=True)
class AlertState:
    status: str  # ok / above_target / too_few_pairs / not_measured
    model_version: str | None
    measured_on: str | None
    target: float
    upper: float | None  # the overall 95% bound
    worst_gender: str | None  # the gender whose bound is highest
    worst_upper: float | None
    compared: int
    at_approve: int
    members: int | None = None  # members measured (None before any measurement)

    @property
    def alerting(self) -> bool:
        return self.status != OK

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def active_version(session: Session) -> str | None:
    """The registry's active version as the table says (read only), else the shipped default."""
    from core.storage.schema import ModelVersion as VersionRow
    from core.verification.heads import default_version

    version = session.scalar(
        select(VersionRow.version)
        .where(VersionRow.active.is_(True))
        .order_by(VersionRow.promoted_at.desc(), VersionRow.id.desc())
        .limit(1)
    )
    if version:
        return version
    try:
        return default_version()
    except FaceVerifyError:
        return None


def alert_state(session: Session, model_version: str | None = None) -> AlertState:
    """What the measurement says about the active (or given) model version, for the banner, the
    KPI page and /health: ok, above_target (the bound passes the target), too_few_pairs (not
    enough members to bound anything), not_measured (no measurement of this version yet)."""
    target = fmr_target()
    if model_version is None:
        model_version = active_version(session)
    row = latest(session, model_version) if model_version else None
    if row is None or not row.summary:
        return AlertState(NOT_MEASURED, model_version, None, target, None, None, None, 0, 0)
    summary = row.summary
    worst = max(
        (
            (g, v["at_approve"]["upper"])
            for g, v in summary["genders"].items()
            if v["at_approve"]["upper"] is not None
        ),
        key=lambda t: t[1],
        default=(None, None),
    )
    status = _alert_status(summary["all"]["at_approve"], summary["genders"], target)
    return AlertState(
        status,
        row.model_version,
        row.measured_on,
        target,
        summary["all"]["at_approve"]["upper"],
        worst[0],
        worst[1],
        int(summary["all"]["compared"]),
        int(summary["all"]["at_approve"]["k"]),
        summary.get("members"),
    )


def health_field(session_factory) -> str:
    """The /health field: the alert status of the active model version ('unknown' on a DB error)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with session_factory() as session:
            return alert_state(session).status
    except (SQLAlchemyError, FaceVerifyError):
        return "unknown"


def record_verdict(
    session: Session, member_a: str, member_b: str, same_person: bool, reviewer: str, note: str | None = None
) -> MemberPairVerdict:
    """A reviewer's word on two members (commits, audited). Same person: a duplicate account, left
    out of later measurements; different people: a look-alike, still counted as an impostor pair."""
    if member_a == member_b:
        raise SelfMeasurementError("A verdict needs two different members.")
    a, b = sorted((member_a, member_b))
    row = session.scalar(
        select(MemberPairVerdict).where(
            MemberPairVerdict.member_a_id == a, MemberPairVerdict.member_b_id == b
        )
    )
    if row is None:
        row = MemberPairVerdict(
            member_a_id=a, member_b_id=b, same_person=bool(same_person), decided_by=reviewer
        )
        session.add(row)
    row.same_person, row.decided_by, row.decided_at, row.note = bool(same_person), reviewer, utcnow(), note
    audit.log(session, reviewer, PAIR_VERDICT, "member", a, {"other": b, "same_person": bool(same_person)})
    session.commit()
    return row
