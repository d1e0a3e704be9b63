"""Export: a member's photos, decisions and views as a ZIP, for an administrator."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

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
from core.workflows.privacy.removal import (
    EXPORT_MEMBER,
    UnknownMember,
)
from core.workflows.privacy.views import access_history


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
