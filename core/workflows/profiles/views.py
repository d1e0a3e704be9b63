"""Reading a profile: profile_view (the API and the pages) and profile_answer (a verification's
per-photo answer)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.workflows import profile_rows
from core.workflows.profile_rows import profile_of
from core.workflows.profiles.verify import ProfileVerified

# ----------------------------------------------------------------------------------------------
# Reading


def profile_view(session: Session, member_id: str, public: bool = False) -> list[dict]:
    """The profile as the API and the pages show it, in order."""
    return [
        {
            "position": r.position,
            "photo_id": r.photo_id,
            "sha256": r.photo.sha256,
            "state": r.state,
            "reason": r.reason,
            "similarity": r.similarity,
            "box": r.face_box,
            "model_version": r.model_version,
            "checked_at": r.checked_at.isoformat() if r.checked_at else None,
            "review_decision": r.review_decision,
            "waiting": not profile_rows.settled(r) and r.review_decision is None,
            "result_id": r.result_id,
        }
        for r in profile_of(session, member_id, public=public)
    ]


def profile_answer(done: ProfileVerified) -> dict:
    """The per-photo answer of a verification (the API and the page give the same)."""
    return {
        "member_id": done.member_id,
        "result_id": done.result_id,
        "status": done.verified.result.status,
        "profile_status": done.profile.status,
        "reasons": done.profile.reasons,
        "flagged_photos": done.profile.flagged_photos,
        "photos": [
            {
                "position": p.position,
                "state": p.state,
                "reason": p.reason,
                "similarity": p.similarity,
                "box": list(p.box) if p.box else None,
                "faces": [list(b) for b in p.faces],
            }
            for p in done.profile.photos
        ],
        "model_version": done.profile.model_version,
    }
