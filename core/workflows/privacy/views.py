"""Audited views: who saw which member's photo, when and why, and the access history of a member."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage import audit
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import (
    AuditEntry,
    Photo,
)
from core.workflows.privacy.removal import (
    ACCESS_ACTIONS,
    VIEW_PHOTO,
)

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
