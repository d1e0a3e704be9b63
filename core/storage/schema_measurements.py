"""The self-measurement tables (revision 0009): a run over the members, the pairs it found, and
the verdicts people gave on them. Part of core.storage.schema, which imports this module at its
end; import these classes from core.storage.schema."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from core.storage.schema_base import ID_LEN, TABLE_ARGS, Base, BigId, DateTime, utcnow


class SelfMeasurement(Base):
    """One measurement of the false-match rate on the members' own cross-member pairs.

    run_key ("<model version>:<day>") makes a day's measurement of a model version one row, so a
    job delivered twice or re-run resumes it instead of counting again. counts holds the running
    totals; blocks_done the blocks already in them (each block and its pairs commit together).
    """

    __tablename__ = "self_measurements"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    model_version: Mapped[str] = mapped_column(sa.String(ID_LEN), index=True)
    measured_on: Mapped[str] = mapped_column(sa.String(10))  # UTC day, YYYY-MM-DD
    status: Mapped[str] = mapped_column(sa.String(16))  # running / completed / failed
    triggered_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    run_token: Mapped[str | None] = mapped_column(sa.String(36))
    approve_at: Mapped[float] = mapped_column(sa.Double)
    reject_below: Mapped[float] = mapped_column(sa.Double)
    floor: Mapped[float] = mapped_column(sa.Double)
    block_rows: Mapped[int] = mapped_column(sa.Integer)
    blocks_total: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    blocks_done: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    snapshot: Mapped[str | None] = mapped_column(sa.String(200))  # the photo set and exclusions measured
    counts: Mapped[dict | None] = mapped_column(sa.JSON)
    summary: Mapped[dict | None] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)


class SelfMeasurementPair(Base):
    """A pair of two members' photos that reached the approve point in one measurement."""

    __tablename__ = "self_measurement_pairs"
    __table_args__ = (sa.UniqueConstraint("run_id", "photo_a_id", "photo_b_id"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("self_measurements.id", ondelete="CASCADE"), index=True)
    # No foreign keys to members or photos: a measurement's record outlives an erasure.
    member_a_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    member_b_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    photo_a_id: Mapped[int] = mapped_column(sa.Integer)
    photo_b_id: Mapped[int] = mapped_column(sa.Integer)
    gender: Mapped[str] = mapped_column(sa.String(1))
    similarity: Mapped[float] = mapped_column(sa.Double)


class MemberPairVerdict(Base):
    """A reviewer's word on two members: the same person (a duplicate account) or two people."""

    __tablename__ = "member_pair_verdicts"
    __table_args__ = (sa.UniqueConstraint("member_a_id", "member_b_id"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(primary_key=True)
    member_a_id: Mapped[str] = mapped_column(sa.String(ID_LEN))  # the smaller id of the two
    member_b_id: Mapped[str] = mapped_column(sa.String(ID_LEN))
    same_person: Mapped[bool] = mapped_column(sa.Boolean)
    decided_by: Mapped[str] = mapped_column(sa.String(ID_LEN))
    decided_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(sa.Text)


# Revision 0012: profile photos.

# A profile photo's state (core.verification.profile's, plus "unchecked" for one not yet compared).
