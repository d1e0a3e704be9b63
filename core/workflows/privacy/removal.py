"""Removing a member's photos and all that points at them: shared by erasure and retention.

The audit actions and errors of the privacy workflows live here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sqlalchemy import delete, null, or_, select, update
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import (
    Batch,
    BatchItem,
    Embedding,
    Photo,
    ProfilePhoto,
    ResultAnalysis,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import APPROVED, AUTO_APPROVED, AUTO_REJECTED, REJECTED

# Audit actions.
ERASE_MEMBER = "erase_member"
VIEW_PHOTO = "view_photo"  # a photo shown on a page
DOWNLOAD_PHOTO = "download_photo"  # a photo sent through the API
EXPORT_MEMBER = "export_member"
RETENTION = "retention"
ACCESS_ACTIONS = (VIEW_PHOTO, DOWNLOAD_PHOTO, EXPORT_MEMBER, audit.VIEW_MEMBER)

REQUEST, BY_RETENTION = "request", "retention"  # MemberErasure.reason

DECIDED = (AUTO_APPROVED, AUTO_REJECTED, APPROVED, REJECTED)


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


def unshared(session: Session, photos: list[Photo]) -> tuple[set[str], set[str]]:
    """(hashes no other photo row holds, hashes another photo row still holds)."""
    ids = {p.id for p in photos}
    shas = {p.sha256 for p in photos}
    if not shas:
        return set(), set()
    others = set(
        session.scalars(select(Photo.sha256).where(Photo.sha256.in_(shas), Photo.id.not_in(ids)).distinct())
    )
    return shas - others, others


def delete_files(store: PhotoStoreBackend, shas: Iterable[str]) -> int:
    return sum(store.delete(sha) for sha in sorted(shas))


def remove_photo_rows(
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
        (ResultRow.gallery_photo_id, ResultAnalysis.gallery),
        (ResultRow.verification_photo_id, ResultAnalysis.verification),
    ):
        values = {column.key: None}
        if clear_analyses:
            # The photo's analysis, in the side table (SQL NULL, not the JSON value null).
            session.execute(
                update(ResultAnalysis)
                .where(ResultAnalysis.result_id.in_(select(ResultRow.id).where(column.in_(ids))))
                .values({analysis.key: null()})
                .execution_options(synchronize_session=False)
            )
            values[ResultRow.checks.key] = null()  # the fraud checks' evidence drawn from the photos
        session.execute(
            update(ResultRow)
            .where(column.in_(ids))
            .values(**values, version=ResultRow.version + 1)
            .execution_options(synchronize_session=False)
        )
    if clear_analyses and touched:
        session.execute(
            delete(ResultAnalysis)
            .where(
                ResultAnalysis.result_id.in_(touched),
                ResultAnalysis.gallery.is_(None),
                ResultAnalysis.verification.is_(None),
            )
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
    # Profile rows name the photo; they go with it (SQLite may run without foreign-key cascades).
    session.execute(delete(ProfilePhoto).where(ProfilePhoto.photo_id.in_(ids)))
    out.photos = session.execute(delete(Photo).where(Photo.id.in_(ids))).rowcount
    return out
