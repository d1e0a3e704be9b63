"""Gallery integrity: an existing member's gallery changes only through its own, checked call.

    check_not_replaced(session, member_id, gallery_sha256)   raises GalleryLocked when a request
        for an existing member brings a gallery photo other than its current one (API, importer and
        the Verify page all call this before they store anything)
    store_addition(session, actor, member_id, photo, result) -> ResultRow
        a new gallery photo compared with the member's current one: same person, nothing flagged ->
        it becomes the current gallery photo at once; otherwise it waits in the review queue
        (flag gallery_photo_differs) and becomes current only when a reviewer approves
    is_addition(session, row) -> bool, on_review(session, row, approve)   used by core.workflows.reviews

So a verification is always against photos the member had before the request, and a member never
becomes verified on a face its gallery did not already show: an addition never changes the
member's status, and the photo it brings counts only once accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import GALLERY, Batch, Member, Photo, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import (
    AUTO_APPROVED,
    FLAGGED,
    GALLERY_PHOTO_DIFFERS,
    REUSED_PHOTO,
    Flag,
    VerificationResult,
)
from core.workflows import batches

ADDITION_SOURCE = "gallery-addition"  # Batch.source of an addition's batch of one
ADD_GALLERY_PHOTO, ACCEPT_GALLERY_PHOTO = "add_gallery_photo", "accept_gallery_photo"


class GalleryLocked(FaceVerifyError):
    """A request for an existing member brought a gallery photo other than its current one."""

    code = "gallery_locked"


class AlreadyInGallery(FaceVerifyError):
    code = "already_in_gallery"


def current_gallery(session: Session, member_id: str) -> Photo | None:
    return session.scalar(
        select(Photo)
        .where(Photo.member_id == member_id, Photo.kind == GALLERY, Photo.current.is_(True))
        .order_by(Photo.id.desc())
    )


def check_not_replaced(session: Session, member_id: str, gallery_sha256: str | None) -> None:
    """Refuse a gallery photo for an existing member unless it is the member's current one."""
    if gallery_sha256 is None or session.get(Member, member_id) is None:
        return
    current = current_gallery(session, member_id)
    if current is not None and current.sha256 == gallery_sha256:
        return
    raise GalleryLocked(
        f"Member {member_id!r} already exists, so its gallery is not replaced by a verification or an "
        "import: the verification photo is compared with the gallery photo the member already has. "
        f"A new gallery photo is added on its own (API: POST /v1/members/{member_id}/gallery-photos); "
        "it is compared with the member's photos and goes to review when they differ."
    )


@dataclass
class NewPhoto:
    sha256: str
    stored_path: str
    size_bytes: int
    width: int | None = None
    height: int | None = None
    source: str = "api"


def store_addition(
    session: Session,
    actor: str,
    member_id: str,
    photo: NewPhoto,
    result: VerificationResult,
    gallery_photo: Photo,
) -> ResultRow:
    """Store an addition compared (engine: current gallery vs. the new photo) in `result`. Commits.

    Raises AlreadyInGallery when the photo is one of the member's photos or a copy of one.
    """
    if any(f.code == REUSED_PHOTO for f in result.flags) or session.scalar(
        select(Photo.id).where(
            Photo.member_id == member_id, Photo.kind == GALLERY, Photo.sha256 == photo.sha256
        )
    ):
        session.rollback()
        raise AlreadyInGallery(
            f"This photo is already in member {member_id!r}'s gallery (or is a copy of a photo there)."
        )
    now = utcnow()
    row = Photo(
        member_id=member_id,
        kind=GALLERY,
        sha256=photo.sha256,
        stored_path=photo.stored_path,
        size_bytes=photo.size_bytes,
        source=photo.source,
        current=False,  # counts only once accepted
        created_at=now,
        width=photo.width,
        height=photo.height,
    )
    session.add(row)
    session.flush()
    item = batches.add_single_item(
        session,
        actor,
        ADDITION_SOURCE,
        result.model_version,
        member_id,
        gallery_photo.id,
        row.id,
        result.registered_gender,
        now=now,
    )
    if result.status != AUTO_APPROVED:
        similarity = result.similarity if result.similarity is not None else 0.0
        result.flags.append(
            Flag(
                GALLERY_PHOTO_DIFFERS,
                f"The new gallery photo was compared with the member's gallery photo {gallery_photo.id}: "
                f"similarity {similarity:.3f}, not clearly the same person; it joins the gallery only if "
                "a reviewer approves.",
                "verification",
                params={"similarity": similarity},
            )
        )
        result.status = FLAGGED
    stored = batches.store_result(
        session,
        result,
        batch_id=item.batch_id,
        batch_item_id=item.id,
        member_id=member_id,
        gallery_photo_id=gallery_photo.id,
        verification_photo_id=row.id,
        update_member=False,
        verification_photo_checks=False,
    )
    session.flush()
    accepted = stored.status == AUTO_APPROVED
    if accepted:
        _make_current(session, member_id, row.id)
    audit.log(
        session,
        actor,
        ADD_GALLERY_PHOTO,
        "member",
        member_id,
        {"photo_id": row.id, "result_id": stored.id, "accepted": accepted, "status": stored.status},
    )
    session.commit()
    return stored


def _make_current(session: Session, member_id: str, photo_id: int) -> None:
    session.execute(
        update(Photo)
        .where(Photo.member_id == member_id, Photo.kind == GALLERY, Photo.id != photo_id)
        .values(current=False)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Photo)
        .where(Photo.id == photo_id)
        .values(current=True)
        .execution_options(synchronize_session=False)
    )


def is_addition(session: Session, row: ResultRow) -> bool:
    if row.batch_id is None:
        return False
    return session.scalar(select(Batch.source).where(Batch.id == row.batch_id)) == ADDITION_SOURCE


def on_review(session: Session, row: ResultRow, approve: bool, reviewer: str) -> None:
    """A reviewer decided an addition: approved, the photo becomes the current gallery photo."""
    if approve and row.member_id is not None and row.verification_photo_id is not None:
        _make_current(session, row.member_id, row.verification_photo_id)
        audit.log(
            session,
            reviewer,
            ACCEPT_GALLERY_PHOTO,
            "member",
            row.member_id,
            {"photo_id": row.verification_photo_id, "result_id": row.id},
        )
