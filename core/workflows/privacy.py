"""Members' biometric data: erasure on request, retention rules, audited photo views, export.

    erase_member(session_factory, store, member_id, actor=..., via=...) -> ErasureReport
        the one erasure every caller uses (python -m core erase, the API, the Members page)
    apply_retention(session_factory, store, policy=None, now=None, dry_run=False) -> RetentionReport
        what python -m core retention runs
    show_photo(session, store, photo, viewer, why) -> bytes     a photo read for display, audited
    record_photo_view(session, viewer, photo, why, action=VIEW_PHOTO)
    access_history(session, member_id) -> list[AuditEntry]      who viewed, downloaded, exported
    export_member(session, store, member_id, actor) -> bytes     the member's data as a ZIP

What erasure removes and keeps (the README's privacy section says the same):
  removed  every photo file of the member (unless another member's photo has the same content
           hash: then the file and its embeddings stay until the last owner is gone), the photo
           rows, every embedding row of those photos (search and training cache alike), the
           member's rows in every process's 1:N index, and in each of the member's results the
           per-photo analyses (face boxes, landmarks, quality), the fraud checks' evidence drawn
           from the photos (`checks`) and the links to the photos
  kept     the member row (ID, registered gender, dates; status "erased"), every result's
           decision, similarity, flags and who decided when, reviews, audit entries (unchanged: the
           log is a hash chain; it holds no photo, embedding or face geometry, at most the content
           hash of a photo, which does not give the photo back)
  recorded a member_erasures row (also the signal other processes' indexes act on) and an
           audit entry "erase_member"

Order of work, so that an interruption never leaves bytes behind without a way back: the files go
first, then one transaction changes the database. A crash in between leaves rows pointing at
missing files; running the erasure again finishes it (erasing twice is not an error).
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, null, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core import config
from core.errors import FaceVerifyError
from core.storage import audit, encryption
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend, sha256_hex
from core.storage.schema import (
    GALLERY,
    MEMBER_ERASED,
    MEMBER_REJECTED,
    VERIFICATION,
    AuditEntry,
    Batch,
    BatchItem,
    Embedding,
    Member,
    MemberErasure,
    Photo,
    Review,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.storage.stores import open_photo_store
from core.verification.result import APPROVED, AUTO_APPROVED, AUTO_REJECTED, REJECTED
from core.workflows import search

# Audit actions.
ERASE_MEMBER = "erase_member"
VIEW_PHOTO = "view_photo"  # a photo shown on a page
DOWNLOAD_PHOTO = "download_photo"  # a photo sent through the API
EXPORT_MEMBER = "export_member"
RETENTION = "retention"
ACCESS_ACTIONS = (VIEW_PHOTO, DOWNLOAD_PHOTO, EXPORT_MEMBER, audit.VIEW_MEMBER)

REQUEST, BY_RETENTION = "request", "retention"  # MemberErasure.reason

DECIDED = (AUTO_APPROVED, AUTO_REJECTED, APPROVED, REJECTED)
CHUNK = 200  # photos per retention transaction


class PrivacyError(FaceVerifyError):
    code = "privacy_error"


class UnknownMember(PrivacyError):
    code = "unknown_member"


# ----------------------------------------------------------------------------------------------
# Removing photos (shared by erasure and retention)


@dataclass
class Removed:
    photos: int = 0  # photo rows deleted
    files: int = 0  # files deleted from the store
    files_kept_shared: int = 0  # files kept because another member's photo has the same content
    embeddings: int = 0  # embedding rows deleted
    results: int = 0  # results whose analyses and photo links were cleared

    def add(self, other: Removed) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def _unshared(session: Session, photos: list[Photo]) -> tuple[set[str], set[str]]:
    """(hashes no other photo row holds, hashes another photo row still holds)."""
    ids = {p.id for p in photos}
    shas = {p.sha256 for p in photos}
    if not shas:
        return set(), set()
    others = set(
        session.scalars(select(Photo.sha256).where(Photo.sha256.in_(shas), Photo.id.not_in(ids)).distinct())
    )
    return shas - others, others


def _delete_files(store: PhotoStoreBackend, shas: Iterable[str]) -> int:
    return sum(store.delete(sha) for sha in sorted(shas))


def _remove_photo_rows(
    session: Session, photos: list[Photo], gone: set[str], *, clear_analyses: bool
) -> Removed:
    """Delete these photo rows and everything that points at them (the caller commits).

    `gone` are the hashes whose files were deleted: their embeddings go too.
    clear_analyses: clear the analyses of every result that used one of the photos.
    """
    out = Removed()
    ids = [p.id for p in photos]
    if not ids:
        return out
    if gone:
        out.embeddings = session.execute(delete(Embedding).where(Embedding.photo_sha256.in_(gone))).rowcount
    touched = set(
        session.scalars(
            select(ResultRow.id).where(
                or_(ResultRow.gallery_photo_id.in_(ids), ResultRow.verification_photo_id.in_(ids))
            )
        )
    )
    for column, analysis in (
        (ResultRow.gallery_photo_id, ResultRow.gallery_analysis),
        (ResultRow.verification_photo_id, ResultRow.verification_analysis),
    ):
        values = {column.key: None}
        if clear_analyses:
            values[analysis.key] = null()  # SQL NULL, not the JSON value null
            values[ResultRow.checks.key] = null()  # the fraud checks' evidence drawn from the photos
        session.execute(
            update(ResultRow)
            .where(column.in_(ids))
            .values(**values, version=ResultRow.version + 1)
            .execution_options(synchronize_session=False)
        )
    out.results = len(touched)
    # Batch items need both photos; an item of an erased photo goes (its result keeps batch_id).
    items = session.execute(
        select(BatchItem.id, BatchItem.batch_id, ResultRow.id)
        .outerjoin(ResultRow, ResultRow.batch_item_id == BatchItem.id)
        .where(or_(BatchItem.gallery_photo_id.in_(ids), BatchItem.verification_photo_id.in_(ids)))
    ).all()
    if items:
        item_ids = [i for i, _b, _r in items]
        session.execute(
            update(ResultRow)
            .where(ResultRow.batch_item_id.in_(item_ids))
            .values(batch_item_id=None, version=ResultRow.version + 1)
            .execution_options(synchronize_session=False)
        )
        # A batch's count of items still to run shrinks by the items that never got a result.
        unrun: dict[int, int] = {}
        for _i, batch_id, result_id in items:
            if result_id is None:
                unrun[batch_id] = unrun.get(batch_id, 0) + 1
        for batch_id, n in unrun.items():
            session.execute(update(Batch).where(Batch.id == batch_id).values(n_items=Batch.n_items - n))
        session.execute(delete(BatchItem).where(BatchItem.id.in_(item_ids)))
    out.photos = session.execute(delete(Photo).where(Photo.id.in_(ids))).rowcount
    return out


# ----------------------------------------------------------------------------------------------
# Erasure on request


@dataclass
class ErasureReport:
    member_id: str
    already_erased: bool  # nothing was left to remove
    removed: Removed
    erasure_id: int
    at: datetime

    def to_dict(self) -> dict:
        return {
            "member_id": self.member_id,
            "already_erased": self.already_erased,
            "removed": asdict(self.removed),
            "erasure_id": self.erasure_id,
            "at": self.at.isoformat() + "Z",
        }


def erase_member(
    session_factory: sessionmaker, store: PhotoStoreBackend, member_id: str, *, actor: str, via: str
) -> ErasureReport:
    """Erase a member's biometric data (see the module docstring). Raises UnknownMember."""
    member_id = (member_id or "").strip()
    with session_factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise UnknownMember(f"There is no member {member_id!r}.")
        photos = list(session.scalars(select(Photo).where(Photo.member_id == member_id)))
        gone, shared = _unshared(session, photos)
        session.rollback()  # no snapshot or lock held while the files go

    files = _delete_files(store, gone)  # bytes first: see the module docstring

    now = utcnow()
    with session_factory() as session:
        member = session.get(Member, member_id, with_for_update=True)
        # Photos added meanwhile (a verification in flight) are erased as well.
        photos = list(session.scalars(select(Photo).where(Photo.member_id == member_id)))
        gone_now, shared = _unshared(session, photos)
        files += _delete_files(store, gone_now - gone)
        removed = _remove_photo_rows(session, photos, gone_now, clear_analyses=True)
        # Analyses of results no photo row led to (an earlier, interrupted erasure; removed photos).
        left = [
            rid
            for rid, g, v, c in session.execute(
                select(
                    ResultRow.id,
                    ResultRow.gallery_analysis,
                    ResultRow.verification_analysis,
                    ResultRow.checks,
                ).where(ResultRow.member_id == member_id)
            )
            if g is not None or v is not None or c is not None
        ]
        if left:
            session.execute(
                update(ResultRow)
                .where(ResultRow.id.in_(left))
                .values(
                    gallery_analysis=null(),
                    verification_analysis=null(),
                    checks=null(),
                    version=ResultRow.version + 1,
                )
                .execution_options(synchronize_session=False)
            )
        removed.results += len(left)
        removed.files = files
        removed.files_kept_shared = len(shared)
        already = member.status == MEMBER_ERASED and not any(
            (removed.photos, removed.files, removed.embeddings, removed.results)
        )
        member.status = MEMBER_ERASED
        member.updated_at = now
        record = MemberErasure(
            member_id=member_id,
            at=now,
            actor=actor[:64],
            reason=REQUEST,
            via=via[:32],
            detail=asdict(removed),
        )
        session.add(record)
        audit.log(
            session,
            actor,
            ERASE_MEMBER,
            "member",
            member_id,
            {"via": via, "already_erased": already, **asdict(removed)},
            at=now,
        )
        session.commit()
        erasure_id = record.id
        search.forget_member(session.get_bind(), member_id)
    return ErasureReport(member_id, already, removed, erasure_id, now)


# ----------------------------------------------------------------------------------------------
# Retention


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
    for photo_id, kind, current, sha in photos:
        if photo_id in in_rejected:
            continue
        if kind == VERIFICATION and expired(photo_id, policy.verification_photo_days):
            verification_ids.append(photo_id)
        elif not (kind == GALLERY and current) and expired(photo_id, policy.embedding_days):
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
            gone, shared = _unshared(session, photos)
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
        gone, shared = _unshared(session, photos)
        session.rollback()
    files = _delete_files(store, gone)
    with session_factory() as session:
        photos = list(session.scalars(select(Photo).where(Photo.id.in_(photo_ids))))
        gone_now, shared = _unshared(session, photos)
        files += _delete_files(store, gone_now - gone)
        removed = _remove_photo_rows(session, photos, gone_now, clear_analyses=member_id is not None)
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


# ----------------------------------------------------------------------------------------------
# Audited views


VIEW_REPEAT_S = 300.0  # the same user, photo and page within this many seconds is one view
_recent_views: dict[tuple[str, int, str], float] = {}
_recent_lock = threading.Lock()


def record_photo_view(
    session: Session,
    viewer: str,
    photo: Photo,
    why: str,
    *,
    action: str = VIEW_PHOTO,
    repeat_s: float | None = None,
) -> bool:
    """Write who saw which member's photo, when and why (the page or endpoint); commits.

    A page draws again on every interaction: the same viewer, photo and page within VIEW_REPEAT_S
    (repeat_s) is one view. Returns whether an entry was written.
    """
    window = VIEW_REPEAT_S if repeat_s is None else repeat_s
    key = (viewer, int(photo.id), why)
    now = time.monotonic()
    with _recent_lock:
        last = _recent_views.get(key)
        if window > 0 and last is not None and now - last < window:
            return False
    audit.log(
        session,
        viewer,
        action,
        "member",
        photo.member_id,
        {"photo_id": photo.id, "kind": photo.kind, "why": why},
    )
    session.commit()
    with _recent_lock:
        _recent_views[key] = now
        if len(_recent_views) > 10_000:  # forget the oldest half
            for k, _ in sorted(_recent_views.items(), key=lambda kv: kv[1])[:5000]:
                _recent_views.pop(k, None)
    return True


def show_photo(session: Session, store: PhotoStoreBackend, photo: Photo, viewer: str, why: str) -> bytes:
    """The photo's bytes for a page to display, the view recorded. Raises PhotoNotFound."""
    data = store.read(photo.stored_path)
    record_photo_view(session, viewer, photo, why)
    return data


def access_history(session: Session, member_id: str, limit: int = 500) -> list[AuditEntry]:
    """Who looked at the member's data, newest first: photo views, downloads, exports, page opens."""
    stmt = (
        select(AuditEntry)
        .where(
            AuditEntry.target_type == "member",
            AuditEntry.target_id == member_id,
            AuditEntry.action.in_(ACCESS_ACTIONS),
        )
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


# ----------------------------------------------------------------------------------------------
# Export


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def export_member(
    session: Session, store: PhotoStoreBackend, member_id: str, actor: str, why: str = "export"
) -> bytes:
    """A ZIP of the member's data: member.json, photos/, decisions.json, views.csv, audit.json.

    The export itself is recorded (and committed). Raises UnknownMember.
    """
    member = session.get(Member, member_id)
    if member is None:
        raise UnknownMember(f"There is no member {member_id!r}.")
    photos = list(session.scalars(select(Photo).where(Photo.member_id == member_id).order_by(Photo.id)))
    results = list(
        session.scalars(select(ResultRow).where(ResultRow.member_id == member_id).order_by(ResultRow.id))
    )
    reviews = (
        {
            r.result_id: r
            for r in session.scalars(select(Review).where(Review.result_id.in_([r.id for r in results])))
        }
        if results
        else {}
    )
    views = access_history(session, member_id, limit=100_000)
    entries = audit.entries_for(session, "member", member_id, limit=100_000)
    erasures = list(session.scalars(select(MemberErasure).where(MemberErasure.member_id == member_id)))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        photo_list = []
        for p in photos:
            name = (
                f"photos/{p.id}_{p.kind}{'' if p.current else '_replaced'}.{p.stored_path.rsplit('.', 1)[-1]}"
            )
            entry = {
                "file": name,
                "kind": p.kind,
                "current": p.current,
                "sha256": p.sha256,
                "added": _iso(p.created_at),
                "source": p.source,
            }
            try:
                archive.writestr(name, store.read(p.stored_path))
            except PhotoNotFound:
                entry["file"] = None
                entry["missing"] = True
            photo_list.append(entry)
        archive.writestr(
            "member.json",
            json.dumps(
                {
                    "member_id": member.id,
                    "registered_gender": member.gender,
                    "status": member.status,
                    "created_at": _iso(member.created_at),
                    "updated_at": _iso(member.updated_at),
                    "last_verified_at": _iso(member.last_verified_at),
                    "photos": photo_list,
                    "erasures": [
                        {"at": _iso(e.at), "by": e.actor, "reason": e.reason, "via": e.via} for e in erasures
                    ],
                    "exported_at": _iso(utcnow()),
                    "exported_by": actor,
                },
                indent=2,
                ensure_ascii=False,
            ),
        )
        decisions = []
        for r in results:
            review = reviews.get(r.id)
            decisions.append(
                {
                    "result_id": r.id,
                    "created_at": _iso(r.created_at),
                    "status": r.status,
                    "same_person": r.same_person,
                    "similarity": r.similarity,
                    "threshold": r.threshold,
                    "predicted_gender": r.predicted_gender,
                    "registered_gender": r.registered_gender,
                    "flags": r.flags,
                    "model_version": r.model_version,
                    "decided_by": r.decided_by,
                    "decided_at": _iso(r.decided_at),
                    "review": None
                    if review is None
                    else {"reviewer": review.reviewer, "decision": review.decision, "note": review.note},
                }
            )
        archive.writestr("decisions.json", json.dumps(decisions, indent=2, ensure_ascii=False))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["at_utc", "who", "action", "why"])
        for e in views:
            writer.writerow([_iso(e.at), e.actor, e.action, (e.detail or {}).get("why", "")])
        archive.writestr("views.csv", out.getvalue())
        archive.writestr(
            "audit.json",
            json.dumps(
                [
                    {"at": _iso(e.at), "actor": e.actor, "action": e.action, "detail": e.detail}
                    for e in entries
                ],
                indent=2,
                ensure_ascii=False,
            ),
        )
    audit.log(session, actor, EXPORT_MEMBER, "member", member_id, {"why": why, "photos": len(photos)})
    session.commit()
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Encryption at rest: rewriting the store under the current key


@dataclass
class RotationReport:
    rewritten: int = 0
    unchanged: int = 0  # already under the current key (or plain, with encryption off)
    failed: list[str] = field(default_factory=list)  # "sha…: reason"


def rotate_store(store: PhotoStoreBackend, *, dry_run: bool = False) -> RotationReport:
    """Rewrite every photo under the current key (PHOTO_ENCRYPTION_KEY), or plain when none is set.

    Old keys (PHOTO_ENCRYPTION_OLD_KEYS) open what they sealed. One photo at a time, each an atomic
    replace (a rename on disk, one PUT on S3): interrupted, every photo still opens with the keys
    configured; run again, it continues. A photo that does not open is reported and left alone.
    """
    report = RotationReport()
    current = store.keys.current
    for entry in store.iterate():
        try:
            blob = store.read_raw(entry.relative_path)
            if encryption.sealed_key_id(blob) == (current.key_id if current else None):
                report.unchanged += 1
                continue
            plain = encryption.unseal(blob, entry.sha256, store.keys)
            if sha256_hex(plain) != entry.sha256:
                raise PhotoNotFound("the plain photo does not match its hash (damaged)")
            if not dry_run:
                sealed = plain if current is None else encryption.seal(plain, entry.sha256, current)
                store.write_raw(entry.relative_path, sealed)
            report.rewritten += 1
        except (FaceVerifyError, OSError) as exc:
            report.failed.append(f"{entry.sha256[:12]}…: {exc}")
    return report


# ----------------------------------------------------------------------------------------------
# Command line (python -m core erase | retention | export | photo-key)


def _login_name() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in a container: still say it came from the command line
        return "cli"


def run_command(args) -> int:
    import sys

    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory

    if args.command == "photo-key" and args.action == "new":
        from core.storage.encryption import KEY_SETTING, new_key_text

        print(f"{KEY_SETTING}={new_key_text()}")
        print(
            "Keep it with the other secrets: without it the encrypted photos cannot be read.", file=sys.stderr
        )
        return 0
    try:
        store = open_photo_store()
        if args.command == "photo-key":
            report = rotate_store(store, dry_run=args.dry_run)
            target = f"under key {store.keys.current.label}" if store.keys.current else "plain (no key set)"
            verb = "would rewrite" if args.dry_run else "rewrote"
            print(f"photo store {store.url}: {verb} {report.rewritten}, {report.unchanged} already {target}")
            for line in report.failed:
                print(f"  failed {line}", file=sys.stderr)
            return 1 if report.failed else 0
        factory = make_factory(init_db(args.url))
        actor = getattr(args, "actor", None) or _login_name()
        if args.command == "erase":
            with factory() as session:
                member = session.get(Member, args.member_id)
                if member is None:
                    print(f"There is no member {args.member_id!r}.", file=sys.stderr)
                    return 1
                n_photos = session.scalar(select(func.count(Photo.id)).where(Photo.member_id == member.id))
            if not args.yes:
                if not sys.stdin.isatty():
                    print("Refusing to erase without --yes (no terminal to confirm on).", file=sys.stderr)
                    return 1
                answer = input(
                    f"Erase member {member.id} ({n_photos} photos, their embeddings and analyses)? "
                    "Decisions and the audit log are kept. Type the member ID to confirm: "
                )
                if answer.strip() != member.id:
                    print("Not confirmed; nothing erased.", file=sys.stderr)
                    return 1
            report = erase_member(factory, store, member.id, actor=actor, via="cli")
            print(json.dumps(report.to_dict(), indent=2))
            return 0
        if args.command == "retention":
            report = apply_retention(factory, store, dry_run=args.dry_run)
            for line in report.lines():
                print(line)
            return 0
        if args.command == "export":
            with factory() as session:
                data = export_member(session, store, args.member_id, actor, why="cli")
            with open(args.out, "wb") as f:
                f.write(data)
            print(f"wrote {args.out} ({len(data)} bytes)")
            return 0
    except FaceVerifyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    raise AssertionError(args.command)
