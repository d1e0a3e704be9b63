"""Stored rows -> response bodies; datetimes as ISO 8601 UTC."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.schema import (
    Batch,
    Photo,
    PossibleDuplicate,
    Review,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import similarity_words


def photo_out(analysis: dict | None) -> dict | None:
    if not analysis:
        return None
    return {
        "sha256": analysis.get("sha256") or "",
        "width": int(analysis.get("width") or 0),
        "height": int(analysis.get("height") or 0),
        "faces": analysis.get("faces") or [],
        "main_face": analysis.get("main_face"),
        "quality": analysis.get("quality"),
        "error": analysis.get("error"),
        "timings_ms": analysis.get("timings_ms") or {},
        "capture": analysis.get("capture"),
    }


def result_out(session: Session, row: ResultRow) -> dict:
    duplicates = session.execute(
        select(PossibleDuplicate.candidate_member_id, PossibleDuplicate.similarity)
        .where(PossibleDuplicate.result_id == row.id)
        .order_by(PossibleDuplicate.similarity.desc())
    ).all()
    review = session.scalar(select(Review).where(Review.result_id == row.id))
    shas = dict(
        session.execute(
            select(Photo.id, Photo.sha256).where(
                Photo.id.in_([row.gallery_photo_id or 0, row.verification_photo_id or 0])
            )
        ).all()
    )
    source = session.scalar(select(Batch.source).where(Batch.id == row.batch_id)) if row.batch_id else None
    return {
        "id": row.id,
        "member_id": row.member_id,
        "batch_id": row.batch_id,
        "source": source,
        "created_at": row.created_at,
        "status": row.status,
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,
        "review": None
        if review is None
        else {
            "decision": review.decision,
            "reviewer": review.reviewer,
            "decided_at": review.decided_at,
            "same_person": review.same_person,
            "true_gender": review.true_gender,
        },
        "same_person": row.same_person,
        "similarity": row.similarity,
        "similarity_words": words_code(row.similarity),
        "threshold": row.threshold,
        "uncertain_band": [row.band_low, row.band_high],
        "predicted_gender": row.predicted_gender,
        "gender_confidence": row.gender_confidence,
        "registered_gender": row.registered_gender,
        "flags": list(row.flags or []),
        "possible_duplicates": [{"member_id": m, "similarity": s} for m, s in duplicates],
        "gallery_photo_sha256": shas.get(row.gallery_photo_id),
        "verification_photo_sha256": shas.get(row.verification_photo_id),
        "gallery": photo_out(row.gallery_analysis),
        "verification": photo_out(row.verification_analysis),
        "timings_ms": row.timings,
        "latency_ms": row.latency_ms,
        "model_version": row.model_version,
        "checks": row.checks,
    }


def jsonable(value):
    """Datetimes as ISO 8601 UTC with Z; everything else JSON-ready."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds") + ("Z" if value.tzinfo is None else "")
    return value


def words_code(similarity: float | None) -> str | None:
    """The similarity in words, as a code an app can translate (very_likely_same ... very_likely_different)."""
    key = similarity_words(similarity)
    return None if key is None else key.split(".", 1)[1]
