"""Members' biometric data: erasure on request, retention rules, audited photo views, export.

    erasure    erase_member(session_factory, store, member_id, actor=..., via=...) -> ErasureReport
               the one erasure every caller uses (faceverify erase, the API, the Members page)
    retention  apply_retention(session_factory, store, policy=None, now=None, dry_run=False)
               -> RetentionReport: what `faceverify retention` and the retention job run
    views      show_photo(session, store, photo, viewer, why) -> bytes: a photo shown, audited;
               record_photo_view(session, viewer, photo, why, action=VIEW_PHOTO);
               access_history(session, member_id) -> list[AuditEntry]: who viewed, downloaded, exported
    export     export_member_file(session, store, member_id, actor) -> Path: the member's data as a
               ZIP streamed to a temporary file (capped by PRIVACY_EXPORT_MAX_MB, ExportTooLarge);
               export_member(...) -> bytes: the same, read back
    removal    what erasure and retention share: removing photo rows and files; the audit actions

Rewriting the photo store under a new encryption key is core.storage.key_rotation.

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

from core.workflows.privacy.erasure import ErasureReport, erase_member
from core.workflows.privacy.export import ExportTooLarge, export_member, export_member_file
from core.workflows.privacy.removal import (
    ACCESS_ACTIONS,
    BY_RETENTION,
    DECIDED,
    DOWNLOAD_PHOTO,
    ERASE_MEMBER,
    EXPORT_MEMBER,
    REQUEST,
    RETENTION,
    VIEW_PHOTO,
    PrivacyError,
    Removed,
    UnknownMember,
)
from core.workflows.privacy.retention import RetentionPolicy, RetentionReport, apply_retention
from core.workflows.privacy.views import (
    VIEW_REPEAT_S,
    _recent_views,
    access_history,
    record_photo_view,
    show_photo,
)

__all__ = [
    "ACCESS_ACTIONS",
    "BY_RETENTION",
    "DECIDED",
    "DOWNLOAD_PHOTO",
    "ERASE_MEMBER",
    "EXPORT_MEMBER",
    "REQUEST",
    "RETENTION",
    "VIEW_PHOTO",
    "VIEW_REPEAT_S",
    "ErasureReport",
    "ExportTooLarge",
    "PrivacyError",
    "Removed",
    "RetentionPolicy",
    "RetentionReport",
    "UnknownMember",
    "_recent_views",
    "access_history",
    "apply_retention",
    "erase_member",
    "export_member",
    "export_member_file",
    "record_photo_view",
    "show_photo",
]
