"""Export: a member's photos, decisions and views as a ZIP, for an administrator.

export_member_file(session, store, member_id, actor, why) -> Path   the ZIP, streamed to a temporary
    file photo by photo (one photo in memory at a time) and refused past PRIVACY_EXPORT_MAX_MB with
    no file left behind; the caller serves it from disk and deletes it.
export_member(...) -> bytes   the same ZIP read back, for callers that must hand over bytes (a
    dashboard download button); it obeys the same cap.

PRIVACY_EXPORT_MAX_MB   the largest export in MB (default 2048): a member with hundreds of large
                        photos is refused with a message naming the setting instead of filling the
                        disk or the memory of the process serving it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import config
from core.storage import audit
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import (
    Member,
    MemberErasure,
    Photo,
    ProfilePhoto,
    Review,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import spreadsheets
from core.workflows.privacy.removal import (
    EXPORT_MEMBER,
    PrivacyError,
    UnknownMember,
)
from core.workflows.privacy.views import access_history

MAX_MB_SETTING = "PRIVACY_EXPORT_MAX_MB"
DEFAULT_MAX_MB = 2048
# Photos are JPEG, PNG or WebP: already compressed, so stored as they are (deflating them again
# costs CPU for ~1%); the JSON and CSV parts are deflated.
_PHOTO_COMPRESSION = zipfile.ZIP_STORED
_ENTRY_OVERHEAD = 512  # a ZIP entry's local header, directory record and name, generously


class ExportTooLarge(PrivacyError):
    """The export would pass PRIVACY_EXPORT_MAX_MB; nothing was written or recorded."""

    code = "export_too_large"


def max_export_bytes() -> int:
    """PRIVACY_EXPORT_MAX_MB in bytes (ValueError naming the setting when it is not a positive number)."""
    raw = config.setting(MAX_MB_SETTING)
    if raw is None:
        return DEFAULT_MAX_MB * 1024 * 1024
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not mb > 0:
        raise ValueError(f"{MAX_MB_SETTING} must be a positive number of MB, not {raw!r}.")
    return int(mb * 1024 * 1024)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def export_member(
    session: Session, store: PhotoStoreBackend, member_id: str, actor: str, why: str = "export"
) -> bytes:
    """export_member_file's ZIP as bytes (within PRIVACY_EXPORT_MAX_MB); the file is removed."""
    path = export_member_file(session, store, member_id, actor, why)
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


class _Capped:
    """Writes to the archive that refuse, before writing, anything that would pass the cap."""

    def __init__(self, archive: zipfile.ZipFile, file, limit: int):
        self.archive, self.file, self.limit = archive, file, limit

    def write(self, name: str, data: bytes | str, compress_type: int = zipfile.ZIP_DEFLATED) -> None:
        size = len(data.encode("utf-8") if isinstance(data, str) else data)
        # Stored entries take their size; deflated ones at most that (plus a little), so the check
        # is made on the uncompressed size and the cap is never passed.
        if self.file.tell() + size + _ENTRY_OVERHEAD > self.limit:
            raise ExportTooLarge(
                f"The export is larger than {self.limit / 2**20:,.0f} MB ({MAX_MB_SETTING}); nothing was "
                f"exported. Raise {MAX_MB_SETTING} if the disk allows it."
            )
        self.archive.writestr(name, data, compress_type=compress_type)


def export_member_file(
    session: Session,
    store: PhotoStoreBackend,
    member_id: str,
    actor: str,
    why: str = "export",
    *,
    directory: str | Path | None = None,
    max_bytes: int | None = None,
) -> Path:
    """A ZIP of the member's data (member.json, photos/, decisions.json, views.csv, audit.json)
    written to a new temporary file in `directory` (default: the system's), which the caller
    serves and deletes.

    Photos are read and written one at a time, so memory stays at one photo whatever the member
    holds. Past max_bytes (default PRIVACY_EXPORT_MAX_MB) raises ExportTooLarge and removes the
    partial file. The export is recorded (and committed) only once the file is complete.
    Raises UnknownMember.
    """
    limit = max_export_bytes() if max_bytes is None else int(max_bytes)
    member = session.get(Member, member_id)
    if member is None:
        raise UnknownMember(f"There is no member {member_id!r}.")
    photos = list(session.scalars(select(Photo).where(Photo.member_id == member_id).order_by(Photo.id)))
    profile = {
        r.photo_id: r
        for r in session.scalars(select(ProfilePhoto).where(ProfilePhoto.member_id == member_id))
    }
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

    handle, name = tempfile.mkstemp(prefix="member-export-", suffix=".zip", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            _write_archive(
                file, limit, store, member, photos, profile, results, reviews, views, entries, erasures, actor
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    audit.log(session, actor, EXPORT_MEMBER, "member", member_id, {"why": why, "photos": len(photos)})
    session.commit()
    return path


def _write_archive(
    file, limit, store, member, photos, profile, results, reviews, views, entries, erasures, actor
):
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
        capped = _Capped(archive, file, limit)
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
            if p.id in profile:  # shown in the profile: where, and what its check found
                shown = profile[p.id]
                entry["profile"] = {
                    "position": shown.position,
                    "state": shown.state,
                    "reason": shown.reason,
                    "similarity": shown.similarity,
                    "review_decision": shown.review_decision,
                }
            try:
                data = store.read(p.stored_path)
            except PhotoNotFound:
                data = None
            if data is not None:
                capped.write(name, data, _PHOTO_COMPRESSION)
                del data  # one photo in memory at a time
            else:
                entry["file"] = None
                entry["missing"] = True
            photo_list.append(entry)
        capped.write(
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
        capped.write("decisions.json", json.dumps(decisions, indent=2, ensure_ascii=False))
        # Names and reasons come from users and callers: escaped, so a spreadsheet shows them as text.
        rows = [["at_utc", "who", "action", "why"]]
        rows += [[_iso(e.at), e.actor, e.action, (e.detail or {}).get("why", "")] for e in views]
        capped.write("views.csv", spreadsheets.csv_text(rows))
        capped.write(
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
