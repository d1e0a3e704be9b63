"""The review queue page: the next flagged pair to decide and its photos.

next_queue_item(session, skipped) -> (QueueItem | None, backlog), load_review_item(session, store, item)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.storage import queries
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import GALLERY, VERIFICATION
from core.storage.schema import VerificationResult as ResultRow


@dataclass
class ReviewItem:
    row: ResultRow
    queue: queries.QueueItem
    gallery_bytes: bytes | None
    verification_bytes: bytes | None
    missing: list[str]


def load_review_item(session: Session, store: PhotoStoreBackend, item: queries.QueueItem) -> ReviewItem:
    row = session.get(ResultRow, item.result_id)
    photos: dict[str, bytes | None] = {}
    missing = []
    for kind, path in ((GALLERY, item.gallery_path), (VERIFICATION, item.verification_path)):
        photos[kind] = None
        if path:
            try:
                photos[kind] = store.read(path)
            except PhotoNotFound:
                missing.append(kind)
        else:
            missing.append(kind)
    return ReviewItem(row, item, photos[GALLERY], photos[VERIFICATION], missing)


def next_queue_item(session: Session, skipped: Iterable[int] = ()) -> tuple[queries.QueueItem | None, int]:
    """The first flagged pair in priority order that the reviewer has not skipped, and the backlog."""
    skipped = set(skipped)
    backlog = queries.backlog_count(session)
    offset = 0
    while True:
        page = queries.review_queue(session, limit=50, offset=offset)
        for item in page:
            if item.result_id not in skipped:
                return item, backlog
        if len(page) < 50:
            return None, backlog
        offset += 50
