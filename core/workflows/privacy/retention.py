"""Retention: what the retention settings say is past its time, removed in bounded transactions.

apply_retention(session_factory, store, policy=None, now=None, dry_run=False) -> RetentionReport
    what `faceverify retention` and the workers' retention job run
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from core import config
from core.storage import audit
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import (
    GALLERY,
    MEMBER_REJECTED,
    VERIFICATION,
    Embedding,
    Member,
    MemberErasure,
    Photo,
    ProfilePhoto,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import search
from core.workflows.privacy import removal
from core.workflows.privacy.removal import (
    BY_RETENTION,
    DECIDED,
    RETENTION,
    PrivacyError,
    Removed,
)

CHUNK = 200  # photos per retention transaction


def _days(name: str, default: int | None) -> int | None:
    raw = config.setting(name)
    if raw is None:
        return default
    if raw.strip().lower() in ("off", "never", "none"):
        return None
    try:
        days = int(raw)
    except ValueError:
        raise PrivacyError(f"{name} must be a whole number of days or 'off', not {raw!r}.") from None
    if days < 0:
        raise PrivacyError(f"{name} cannot be negative ({days}).")
    return days


@dataclass(frozen=True)
class RetentionPolicy:
    """Days after the decision that data is kept; None keeps it for good."""

    verification_photo_days: int | None = 90
    rejected_member_days: int | None = 30
    embedding_days: int | None = 90

    SETTINGS = {
        "verification_photo_days": "RETENTION_VERIFICATION_PHOTO_DAYS",
        "rejected_member_days": "RETENTION_REJECTED_MEMBER_DAYS",
        "embedding_days": "RETENTION_EMBEDDING_DAYS",
    }

    @classmethod
    def from_settings(cls) -> RetentionPolicy:
        defaults = cls()
        return cls(**{f: _days(s, getattr(defaults, f)) for f, s in cls.SETTINGS.items()})


@dataclass
class RetentionReport:
    dry_run: bool
    policy: RetentionPolicy
    verification_photos: int = 0  # verification photos past their time
    rejected_member_photos: int = 0  # photos of rejected members past their time
    rejected_members: list[str] = field(default_factory=list)
    embeddings_only: int = 0  # embeddings of kept photos past their time
    removed: Removed = field(default_factory=Removed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["policy"] = asdict(self.policy)
        return out

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        r = self.removed
        return [
            f"verification photos decided more than {self.policy.verification_photo_days} days ago: "
            f"{self.verification_photos}",
            f"photos of members rejected more than {self.policy.rejected_member_days} days ago: "
            f"{self.rejected_member_photos} ({len(self.rejected_members)} members)",
            f"embeddings of kept photos decided more than {self.policy.embedding_days} days ago: "
            f"{self.embeddings_only}",
            f"{verb}: {r.photos} photo rows, {r.files} files ({r.files_kept_shared} kept, shared with "
            f"another photo), {r.embeddings} embedding rows; {r.results} results cleared",
        ]


def _decision_times(session: Session):
    """Per photo id: the newest decision time among its results, and whether any is undecided."""
    decided_at = func.coalesce(ResultRow.decided_at, ResultRow.created_at)
    rows = {}
    for column in (ResultRow.gallery_photo_id, ResultRow.verification_photo_id):
        stmt = (
            select(
                column,
                func.max(decided_at),
                func.sum(case((ResultRow.status.not_in(DECIDED), 1), else_=0)),
            )
            .where(column.is_not(None))
            .group_by(column)
        )
        for photo_id, when, open_count in session.execute(stmt):
            old = rows.get(photo_id)
            open_count = int(open_count or 0)
            if old is None:
                rows[photo_id] = (when, open_count)
            else:
                rows[photo_id] = (max(old[0], when), old[1] + open_count)
    return rows


def _retention_candidates(session: Session, policy: RetentionPolicy, now: datetime):
    """(verification photo ids, {rejected member: photo ids}, photo shas whose embeddings expire)."""
    verification_ids: list[int] = []
    rejected: dict[str, list[int]] = {}
    embedding_shas: set[str] = set()
    decisions = _decision_times(session)

    def expired(photo_id: int, days: int | None) -> bool:
        if days is None or photo_id not in decisions:
            return False  # kept for good, or never decided
        when, open_count = decisions[photo_id]
        return open_count == 0 and when <= now - timedelta(days=days)

    if policy.rejected_member_days is not None:
        cutoff = now - timedelta(days=policy.rejected_member_days)
        latest = (
            select(ResultRow.member_id, func.max(func.coalesce(ResultRow.decided_at, ResultRow.created_at)))
            .join(Member, Member.id == ResultRow.member_id)
            .where(Member.status == MEMBER_REJECTED)
            .group_by(ResultRow.member_id)
        )
        old = [m for m, when in session.execute(latest) if when is not None and when <= cutoff]
        for first in range(0, len(old), 500):
            for member_id, photo_id in session.execute(
                select(Photo.member_id, Photo.id).where(Photo.member_id.in_(old[first : first + 500]))
            ):
                rejected.setdefault(member_id, []).append(photo_id)
    in_rejected = {pid for ids in rejected.values() for pid in ids}
    photos = session.execute(select(Photo.id, Photo.kind, Photo.current, Photo.sha256)).all()
    # A photo the member shows in its profile is checked like the current gallery photo: kept.
    shown = set(session.scalars(select(ProfilePhoto.photo_id)))
    for photo_id, kind, current, sha in photos:
        if photo_id in in_rejected:
            continue
        if kind == VERIFICATION and expired(photo_id, policy.verification_photo_days):
            verification_ids.append(photo_id)
        elif not (kind == GALLERY and (current or photo_id in shown)) and expired(
            photo_id, policy.embedding_days
        ):
            embedding_shas.add(sha)
    # A hash that is some member's current gallery photo is what the 1:N search needs: kept.
    if embedding_shas:
        needed = set(
            session.scalars(
                select(Photo.sha256).where(
                    Photo.sha256.in_(embedding_shas), Photo.kind == GALLERY, Photo.current.is_(True)
                )
            )
        )
        needed |= set(
            session.scalars(
                select(Photo.sha256)
                .join(ProfilePhoto, ProfilePhoto.photo_id == Photo.id)
                .where(Photo.sha256.in_(embedding_shas))
            )
        )
        embedding_shas -= needed
    return verification_ids, rejected, embedding_shas


def apply_retention(
    session_factory: sessionmaker,
    store: PhotoStoreBackend,
    policy: RetentionPolicy | None = None,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    actor: str = "retention",
) -> RetentionReport:
    """Remove what the retention policy says is past its time, in small transactions.

    Safe to run twice (what is gone is not found again) and to interrupt (each chunk of photos
    is files-then-rows like an erasure, so the next run finishes a chunk that was cut short).
    """
    policy = policy or RetentionPolicy.from_settings()
    now = now or utcnow()
    with session_factory() as session:
        verification_ids, rejected, embedding_shas = _retention_candidates(session, policy, now)
        session.rollback()
    report = RetentionReport(dry_run, policy)
    report.verification_photos = len(verification_ids)
    report.rejected_member_photos = sum(len(v) for v in rejected.values())
    report.rejected_members = sorted(rejected)
    if dry_run:
        with session_factory() as session:
            photos = list(session.scalars(select(Photo).where(Photo.id.in_(verification_ids))))
            for ids in rejected.values():
                photos += list(session.scalars(select(Photo).where(Photo.id.in_(ids))))
            gone, shared = removal.unshared(session, photos)
            report.removed.photos = len(photos)
            report.removed.files = len(gone)
            report.removed.files_kept_shared = len(shared)
            report.removed.embeddings = (
                session.scalar(
                    select(func.count(Embedding.id)).where(Embedding.photo_sha256.in_(gone | embedding_shas))
                )
                or 0
            )
            report.embeddings_only = len(embedding_shas)
            session.rollback()
        return report

    for first in range(0, len(verification_ids), CHUNK):
        report.removed.add(
            _purge(session_factory, store, verification_ids[first : first + CHUNK], None, actor, now)
        )
    for member_id, ids in sorted(rejected.items()):
        report.removed.add(_purge(session_factory, store, ids, member_id, actor, now))
    shas = sorted(embedding_shas)
    for first in range(0, len(shas), 500):
        with session_factory() as session:
            n = session.execute(
                delete(Embedding).where(Embedding.photo_sha256.in_(shas[first : first + 500]))
            ).rowcount
            session.commit()
        report.removed.embeddings += n
        report.embeddings_only += n
    if any(asdict(report.removed).values()):
        with session_factory() as session:
            audit.log(session, actor, RETENTION, "retention", None, report.to_dict(), at=now)
            session.commit()
    return report


def _purge(session_factory, store, photo_ids: list[int], member_id: str | None, actor: str, now) -> Removed:
    """Files then rows for one chunk of photo ids; a member's gallery leaving is recorded as an erasure."""
    with session_factory() as session:
        photos = list(session.scalars(select(Photo).where(Photo.id.in_(photo_ids))))
        gone, shared = removal.unshared(session, photos)
        session.rollback()
    files = removal.delete_files(store, gone)
    with session_factory() as session:
        photos = list(session.scalars(select(Photo).where(Photo.id.in_(photo_ids))))
        gone_now, shared = removal.unshared(session, photos)
        files += removal.delete_files(store, gone_now - gone)
        removed = removal.remove_photo_rows(session, photos, gone_now, clear_analyses=member_id is not None)
        removed.files, removed.files_kept_shared = files, len(shared)
        if member_id is not None:
            session.add(
                MemberErasure(
                    member_id=member_id,
                    at=now,
                    actor=actor,
                    reason=BY_RETENTION,
                    via="retention",
                    detail=asdict(removed),
                )
            )
            audit.log(session, actor, RETENTION, "member", member_id, asdict(removed), at=now)
        session.commit()
        if member_id is not None:
            search.forget_member(session.get_bind(), member_id)
    return removed
