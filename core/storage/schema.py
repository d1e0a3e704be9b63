"""ORM classes: the tables of the data layer.

The schema itself is created and changed only by the Alembic revisions in core/storage/migrations; these
classes must match the newest revision (tests/db/test_db_schema.py checks that they do).

Who did something is stored as the username string (not a foreign key), so the audit trail and
reviews survive when a user is deactivated or removed.

The tables that guard the service (API keys, pose challenges, throttling, the audit chain's head and
checkpoint) are in core.storage.schema_guards, on the same Base.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

# The declarative base and the column conventions every table shares (core.storage.schema_base).
from core.storage.schema_base import (  # noqa: F401  (re-exported: callers import them from here)
    ID_LEN,
    NAMING_CONVENTION,
    SHA_LEN,
    TABLE_ARGS,
    Base,
    BigId,
    DateTime,
    utcnow,
)

# Roles
STAFF, MANAGER, DATA_SCIENTIST, ADMIN = "staff", "manager", "data_scientist", "admin"
ROLES = (STAFF, MANAGER, DATA_SCIENTIST, ADMIN)

# Member statuses: pending until a verification result exists.
MEMBER_PENDING, MEMBER_IN_REVIEW, MEMBER_VERIFIED, MEMBER_REJECTED = (
    "pending",
    "in_review",
    "verified",
    "rejected",
)
# Erased on request (core.privacy): photos and embeddings gone, decisions and audit kept.
MEMBER_ERASED = "erased"
MEMBER_STATUSES = (MEMBER_PENDING, MEMBER_IN_REVIEW, MEMBER_VERIFIED, MEMBER_REJECTED, MEMBER_ERASED)

GALLERY, VERIFICATION = "gallery", "verification"
PHOTO_KINDS = (GALLERY, VERIFICATION)

# Batch statuses
BATCH_PENDING, BATCH_RUNNING, BATCH_COMPLETED, BATCH_INTERRUPTED, BATCH_FAILED = (
    "pending",
    "running",
    "completed",
    "interrupted",
    "failed",
)

# Training run statuses
TRAINING_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(ID_LEN), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))  # argon2id, never the password
    role: Mapped[str] = mapped_column(sa.String(32))
    display_name: Mapped[str | None] = mapped_column(sa.String(128))
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Set by an administrator's password reset: the next sign-in must choose a new password first.
    must_change_password: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    language: Mapped[str | None] = mapped_column(sa.String(8))  # the dashboard language the user chose

    def __repr__(self) -> str:
        return f"User({self.username!r}, role={self.role!r})"


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)  # the customer's member ID
    gender: Mapped[str] = mapped_column(sa.String(1))  # registered gender, "M" / "F"
    status: Mapped[str] = mapped_column(
        sa.String(20), default=MEMBER_PENDING, server_default=MEMBER_PENDING, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_verified_at: Mapped[datetime | None] = mapped_column(DateTime)
    source: Mapped[str | None] = mapped_column(sa.String(255))  # file the member last came from
    # Revision 0011: optional, from the import; groups the self-measurement's pairs by age band.
    birth_year: Mapped[int | None] = mapped_column(sa.Integer)

    photos: Mapped[list[Photo]] = relationship(back_populates="member", order_by="Photo.id")


class Photo(Base):
    """One photo of one member. The file lives once per content hash in the photo store."""

    __tablename__ = "photos"
    __table_args__ = (
        sa.UniqueConstraint("member_id", "kind", "sha256"),
        sa.Index("ix_photos_kind_current_sha256", "kind", "current", "sha256"),  # revision 0011
        sa.Index("ix_photos_member_kind_current", "member_id", "kind", "current"),  # revision 0013
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # gallery / verification
    sha256: Mapped[str] = mapped_column(sa.String(SHA_LEN), index=True)
    stored_path: Mapped[str] = mapped_column(sa.String(255))  # relative to the photo store
    size_bytes: Mapped[int] = mapped_column(sa.Integer)
    source: Mapped[str | None] = mapped_column(sa.String(2048))  # link or path as the file gave it
    # The member's photo of this kind now; replaced photos stay for the history.
    current: Mapped[bool] = mapped_column(sa.Boolean, default=True, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Added in revision 0002.
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    # Added in revision 0004: perceptual hashes (core.verification.fraud.photo_hashes), set when
    # the photo is first verified; the reuse check compares new photos with them.
    photo_hashes: Mapped[str | None] = mapped_column(sa.String(200))

    member: Mapped[Member] = relationship(back_populates="photos")


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    source: Mapped[str | None] = mapped_column(sa.String(64))  # page, import, api, benchmark...
    created_by: Mapped[str] = mapped_column(sa.String(ID_LEN))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    model_version: Mapped[str] = mapped_column(sa.String(ID_LEN), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default=BATCH_PENDING, server_default=BATCH_PENDING)
    n_items: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Set by the runner that holds the batch; the heartbeat lets a later run take over a dead one.
    run_token: Mapped[str | None] = mapped_column(sa.String(36))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Revision 0007: "<source>:<local day>:<model version>" for the batch that gathers a day's
    # single verifications from one source (core.workflows.batches.add_single_item); else NULL.
    group_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True)

    items: Mapped[list[BatchItem]] = relationship(back_populates="batch", order_by="BatchItem.position")


class BatchItem(Base):
    __tablename__ = "batch_items"
    __table_args__ = (sa.UniqueConstraint("batch_id", "position"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(sa.Integer)
    member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id"), index=True)
    gallery_photo_id: Mapped[int] = mapped_column(sa.ForeignKey("photos.id"))
    verification_photo_id: Mapped[int] = mapped_column(sa.ForeignKey("photos.id"))
    registered_gender: Mapped[str | None] = mapped_column(sa.String(1))

    batch: Mapped[Batch] = relationship(back_populates="items")
    gallery_photo: Mapped[Photo] = relationship(foreign_keys=[gallery_photo_id])
    verification_photo: Mapped[Photo] = relationship(foreign_keys=[verification_photo_id])


class VerificationResult(Base):
    """Everything core.verification.result.VerificationResult says about one pair, plus review state."""

    __tablename__ = "verification_results"
    __table_args__ = (
        sa.Index("ix_verification_results_status_created_at", "status", "created_at"),
        # Revision 0011: each member's newest result, and the reviewed pairs, from indexes alone.
        sa.Index(
            "ix_verification_results_member_newest",
            "member_id",
            "id",
            "model_version",
            "status",
            "similarity",
        ),
        sa.Index(
            "ix_verification_results_kpi",
            "created_at",
            "batch_id",
            "model_version",
            "status",
            "latency_ms",
            "same_person",
            "ground_truth_same",
            "predicted_gender",
            "ground_truth_gender",
        ),
        sa.Index(
            "ix_verification_results_reviewed",
            "decided_by",
            "ground_truth_same",
            "id",
            "member_id",
            "ground_truth_gender",
            "gallery_photo_id",
            "verification_photo_id",
        ),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int | None] = mapped_column(sa.ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    # Unique: the runner's resume relies on "at most one result per batch item".
    batch_item_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("batch_items.id", ondelete="SET NULL"), unique=True
    )
    member_id: Mapped[str | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    gallery_photo_id: Mapped[int | None] = mapped_column(sa.ForeignKey("photos.id"))
    verification_photo_id: Mapped[int | None] = mapped_column(sa.ForeignKey("photos.id"))
    same_person: Mapped[bool | None] = mapped_column(sa.Boolean)
    similarity: Mapped[float | None] = mapped_column(sa.Double)
    threshold: Mapped[float] = mapped_column(sa.Double)
    band_low: Mapped[float] = mapped_column(sa.Double)
    band_high: Mapped[float] = mapped_column(sa.Double)
    predicted_gender: Mapped[str | None] = mapped_column(sa.String(1))
    gender_confidence: Mapped[float | None] = mapped_column(sa.Double)
    registered_gender: Mapped[str | None] = mapped_column(sa.String(1))
    status: Mapped[str] = mapped_column(sa.String(16))
    flags: Mapped[list] = mapped_column(sa.JSON, default=list)
    timings: Mapped[dict | None] = mapped_column(sa.JSON)
    latency_ms: Mapped[float | None] = mapped_column(sa.Double)
    model_version: Mapped[str] = mapped_column(sa.String(ID_LEN), index=True)
    # Copied out of flags at insert time so the review queue can sort on them portably.
    gender_mismatch: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    possible_duplicate: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    ground_truth_same: Mapped[bool | None] = mapped_column(sa.Boolean)
    ground_truth_gender: Mapped[str | None] = mapped_column(sa.String(1))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
    decided_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    # Added in revision 0004: evidence of the fraud checks (reuse matches, EXIF date, challenge).
    checks: Mapped[dict | None] = mapped_column(sa.JSON)
    # Every ORM update checks and bumps it, so two editors can never silently overwrite each other.
    version: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")

    __mapper_args__ = {"version_id_col": version}

    member: Mapped[Member | None] = relationship()
    batch: Mapped[Batch | None] = relationship()
    review: Mapped[Review | None] = relationship(back_populates="result", uselist=False)
    duplicates: Mapped[list[PossibleDuplicate]] = relationship(back_populates="result")
    # Revision 0013: the per-photo analyses live in result_analyses, so a result row stays small.
    # Loaded with the row whenever whole rows are loaded (a page's few results, one query for all,
    # usable after the session closes); scans that select columns never read them.
    analysis: Mapped[ResultAnalysis | None] = relationship(
        back_populates="result",
        uselist=False,
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )

    def _analysis_row(self) -> ResultAnalysis:
        if self.analysis is None:
            self.analysis = ResultAnalysis()
        return self.analysis

    @property
    def gallery_analysis(self) -> dict | None:
        """The gallery photo's analysis (faces, quality, error, timings), from result_analyses."""
        return None if self.analysis is None else self.analysis.gallery

    @gallery_analysis.setter
    def gallery_analysis(self, value: dict | None) -> None:
        if value is not None or self.analysis is not None:
            self._analysis_row().gallery = value

    @property
    def verification_analysis(self) -> dict | None:
        return None if self.analysis is None else self.analysis.verification

    @verification_analysis.setter
    def verification_analysis(self, value: dict | None) -> None:
        if value is not None or self.analysis is not None:
            self._analysis_row().verification = value


class ResultAnalysis(Base):
    """A result's per-photo analyses, apart from the result row (revision 0013): the rows the KPIs,
    the review queue and retraining scan stay under 1 KB, and these are read one result at a time.
    A result without any analysis has no row here; erasing a member's photos clears or deletes it."""

    __tablename__ = "result_analyses"
    __table_args__ = (TABLE_ARGS,)

    result_id: Mapped[int] = mapped_column(
        sa.ForeignKey("verification_results.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    # None is SQL NULL (an erased photo's slot), so an empty row is found and removed.
    gallery: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))  # faces, quality, error, timings
    verification: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True))

    result: Mapped[VerificationResult] = relationship(back_populates="analysis")


class PossibleDuplicate(Base):
    __tablename__ = "possible_duplicates"
    __table_args__ = (sa.UniqueConstraint("result_id", "candidate_member_id"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(sa.ForeignKey("verification_results.id", ondelete="CASCADE"))
    candidate_member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id"), index=True)
    similarity: Mapped[float] = mapped_column(sa.Double)

    result: Mapped[VerificationResult] = relationship(back_populates="duplicates")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Unique: one decision per result, a second guard behind the conditional update.
    result_id: Mapped[int] = mapped_column(
        sa.ForeignKey("verification_results.id", ondelete="CASCADE"), unique=True
    )
    reviewer: Mapped[str] = mapped_column(sa.String(ID_LEN), index=True)
    decision: Mapped[str] = mapped_column(sa.String(16))  # approve / reject
    same_person: Mapped[bool | None] = mapped_column(sa.Boolean)
    # What the reviewer said the two photos show: same / different / unsure (NULL: decided before
    # labels were recorded apart from the decision). Independent of the decision on the member.
    label: Mapped[str | None] = mapped_column(sa.String(16))
    # The member's status before this decision changed it (NULL: it did not), so an undo restores it.
    member_status_before: Mapped[str | None] = mapped_column(sa.String(16))
    true_gender: Mapped[str | None] = mapped_column(sa.String(1))
    note: Mapped[str | None] = mapped_column(sa.Text)
    decided_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)

    result: Mapped[VerificationResult] = relationship(back_populates="review")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(sa.String(ID_LEN), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32), default="verifier", server_default="verifier")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    threshold: Mapped[float | None] = mapped_column(sa.Double)
    band_low: Mapped[float | None] = mapped_column(sa.Double)
    band_high: Mapped[float | None] = mapped_column(sa.Double)
    metrics: Mapped[dict | None] = mapped_column(sa.JSON)
    params: Mapped[dict | None] = mapped_column(sa.JSON)
    data_summary: Mapped[dict | None] = mapped_column(sa.JSON)
    path: Mapped[str | None] = mapped_column(sa.String(512))
    active: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime)
    promoted_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    notes: Mapped[str | None] = mapped_column(sa.Text)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    started_by: Mapped[str] = mapped_column(sa.String(ID_LEN))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(sa.String(16), default="queued", server_default="queued")
    stage: Mapped[str | None] = mapped_column(sa.String(64))
    progress: Mapped[dict | None] = mapped_column(sa.JSON)
    params: Mapped[dict | None] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    model_version: Mapped[str | None] = mapped_column(
        sa.ForeignKey("model_versions.version", ondelete="SET NULL")
    )


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_target_type_target_id", "target_type", "target_id"),
        sa.Index("ix_audit_log_action_at", "action", "at"),  # revision 0011
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(ID_LEN), index=True)
    action: Mapped[str] = mapped_column(sa.String(64))  # view_member, decide, import_member, login...
    target_type: Mapped[str | None] = mapped_column(sa.String(32))
    target_id: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    detail: Mapped[dict | None] = mapped_column(sa.JSON)
    # Revision 0005: the hash chain (core.storage.audit). seq orders the chain (commit order),
    # entry_hash = sha256(previous entry_hash + this entry's content).
    seq: Mapped[int | None] = mapped_column(sa.BigInteger, unique=True)
    entry_hash: Mapped[str | None] = mapped_column(sa.String(SHA_LEN))


# Revision 0002: embedding cache (API keys: core.storage.schema_guards).


class Embedding(Base):
    """Pretrained embedding of a photo: the cache for retraining and the 1:N duplicate search."""

    __tablename__ = "embeddings"
    __table_args__ = (sa.UniqueConstraint("photo_sha256", "model_id"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(primary_key=True)
    photo_sha256: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    model_id: Mapped[str] = mapped_column(sa.String(ID_LEN))  # which pretrained network made it
    dim: Mapped[int] = mapped_column(sa.Integer)
    vector: Mapped[bytes] = mapped_column(sa.LargeBinary)  # float32 little-endian, dim * 4 bytes
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# Revision 0003: erasures.


class MemberErasure(Base):
    """One removal of a member's biometric data: an erasure on request or a retention rule.

    Also the erasure generation every process's 1:N index checks before it searches: a row it has
    not seen yet means "drop this member's rows now" (core.search).
    """

    __tablename__ = "member_erasures"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[str] = mapped_column(
        sa.String(ID_LEN), index=True
    )  # no FK: the record outlives anything
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(ID_LEN))
    reason: Mapped[str] = mapped_column(sa.String(16))  # request / retention
    via: Mapped[str] = mapped_column(sa.String(32))  # cli / api / page / retention
    detail: Mapped[dict | None] = mapped_column(sa.JSON)  # what was removed (counts)


# Revision 0011: the self-measurement (core.workflows.self_measurement).


PROFILE_UNCHECKED = "unchecked"
# A reviewer's decision on one profile photo; a rejected one stays out of the public list.
PROFILE_PHOTO_APPROVED, PROFILE_PHOTO_REJECTED = "approved", "rejected"


class ProfilePhoto(Base):
    """One photo of a member's profile, in the member's order (position 1 is the main photo).

    The file and its row live in photos (kind gallery); this row says where it stands in the
    profile and what the last check against the member's verified face found.
    """

    __tablename__ = "profile_photos"
    __table_args__ = (
        sa.UniqueConstraint("member_id", "position"),
        sa.UniqueConstraint("member_id", "photo_id"),
        TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[str] = mapped_column(sa.ForeignKey("members.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(sa.Integer)  # 1-based
    photo_id: Mapped[int] = mapped_column(sa.ForeignKey("photos.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(
        sa.String(16), default=PROFILE_UNCHECKED, server_default=PROFILE_UNCHECKED
    )
    reason: Mapped[str | None] = mapped_column(sa.Text)
    similarity: Mapped[float | None] = mapped_column(sa.Double)
    face_box: Mapped[list | None] = mapped_column(sa.JSON)  # [x, y, width, height] of the member's face
    model_version: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    checked_at: Mapped[datetime | None] = mapped_column(DateTime)
    # The review-queue result of a photo added later (None when it matched at once).
    result_id: Mapped[int | None] = mapped_column(sa.Integer)
    review_decision: Mapped[str | None] = mapped_column(sa.String(16))  # approved / rejected
    reviewed_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    photo: Mapped[Photo] = relationship()


# Tables kept in their own modules (importing this module defines every table): the sign-in
# sessions and the self-measurement tables.
from core.storage.schema_measurements import (  # noqa: E402, F401
    MemberPairVerdict,
    SelfMeasurement,
    SelfMeasurementPair,
)
from core.storage.sign_in_rows import SignInSession  # noqa: E402,F401
