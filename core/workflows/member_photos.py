"""A member's current photos: the one place that changes them.

set_current_photos(session, member_id, photos, now, is_new=False) -> PhotosSet
    every writer of a member's photos (the verification use case, the importer) goes through it:
    each photo becomes the current one of its kind, a photo the member had before comes back
    without a second row, the current gallery photo stays the profile's main photo, and the
    warnings say when the same file is sent twice or is also another member's
current_photo(session, member_id, kind) -> Photo | None
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.i18n.notes import Note, note
from core.storage.schema import GALLERY, Photo
from core.workflows import profile_rows


@dataclass
class NewPhoto:
    """A photo to make current: its file is already in the photo store."""

    kind: str
    sha256: str
    stored_path: str
    size_bytes: int
    source: str
    width: int | None = None
    height: int | None = None


@dataclass
class PhotosSet:
    photos: dict[str, Photo]  # kind -> the current photo row
    # What changed and what to warn of, as catalog notes (str() is the English): "new gallery
    # photo", ...; empty: nothing changed. Warnings: the same file twice, a file other members have.
    changes: list[Note]
    warnings: list[Note] = field(default_factory=list)


def set_current_photos(
    session: Session, member_id: str, photos: Iterable[NewPhoto], now: datetime, *, is_new: bool = False
) -> PhotosSet:
    """Make each photo the member's current one of its kind (in the caller's transaction).

    A photo already current stays; a photo the member had before becomes current again (no second
    row); otherwise a new row. The caller checks the gallery lock first (gallery.check_not_replaced).
    """
    photos = list(photos)
    current: dict[str, Photo] = {}
    if not is_new:
        stmt = select(Photo).where(Photo.member_id == member_id, Photo.current.is_(True))
        current = {p.kind: p for p in session.scalars(stmt)}
    changes: list[Note] = []
    out: dict[str, Photo] = dict(current)
    new_shas = []
    for photo in photos:
        old = current.get(photo.kind)
        if old is not None and old.sha256 == photo.sha256:
            continue
        new_shas.append(photo.sha256)
        if old is not None:
            old.current = False
            changes.append(note(f"import.note.new_{photo.kind}_photo"))
        again = None
        if not is_new:  # a photo replaced earlier may come back
            again = session.scalar(
                select(Photo).where(
                    Photo.member_id == member_id, Photo.kind == photo.kind, Photo.sha256 == photo.sha256
                )
            )
        if again is not None:
            again.current = True
            out[photo.kind] = again
            continue
        row = Photo(
            member_id=member_id,
            kind=photo.kind,
            sha256=photo.sha256,
            stored_path=photo.stored_path,
            size_bytes=photo.size_bytes,
            source=photo.source[:2048],
            current=True,
            created_at=now,
            width=photo.width,
            height=photo.height,
        )
        session.add(row)
        out[photo.kind] = row
        if old is None and not is_new:
            changes.append(note(f"import.note.new_{photo.kind}_photo"))
    session.flush()
    if GALLERY in out:  # the current gallery photo is the profile's main photo
        profile_rows.ensure_main_photo(session, member_id, out[GALLERY])

    warnings: list[Note] = []
    if len(photos) == 2 and len({p.sha256 for p in photos}) == 1:
        warnings.append(note("import.warning.same_file"))
    if new_shas:  # the same picture under another member's name: a duplicate or fake account?
        shared = session.execute(
            select(Photo.sha256, Photo.member_id)
            .where(Photo.sha256.in_(new_shas), Photo.member_id != member_id)
            .distinct()
            .limit(10)
        ).all()
        for photo in photos:
            others = sorted({m for sha, m in shared if sha == photo.sha256})[:3]
            if others:
                warnings.append(
                    note(
                        "import.warning.shared_photo",
                        kind=note(f"import.kind.{photo.kind}"),
                        members=", ".join(others),
                    )
                )
    return PhotosSet(out, changes, warnings)


def current_photo(session: Session, member_id: str, kind: str) -> Photo | None:
    """The member's current photo of this kind (the newest row, should there be two), or None."""
    return session.scalar(
        select(Photo)
        .where(Photo.member_id == member_id, Photo.kind == kind, Photo.current.is_(True))
        .order_by(Photo.id.desc())
    )
