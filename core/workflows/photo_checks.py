"""The storing step's fraud checks, run on every result before it is committed.

    apply(session, row, result)   called by core.workflows.batches.store_result

The engine compares the verification photo with the gallery photo of its pair; here it is
compared with every other photo the member has (gallery and earlier verification photos, by
content hash, perceptual hashes and pretrained embedding), its EXIF date is checked against the upload
and the gallery photo's submission, and its file is looked up among other members' photos. Each
finding adds a flag (so the pair goes to the review queue, never approved automatically) and its
evidence to the row's `checks`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import config
from core.storage.schema import Embedding, Photo, PossibleDuplicate, utcnow
from core.verification import fraud
from core.verification.networks import NETWORKS
from core.verification.result import (
    FLAGGED,
    POSSIBLE_DUPLICATE,
    REUSED_PHOTO,
    STALE_PHOTO,
    Flag,
    VerificationResult,
)
from core.workflows import search

STALE_DAYS_SETTING = "STALE_PHOTO_DAYS"
MAX_OTHER_PHOTOS = 200  # a member with more photos than this is compared with the newest ones


def stale_after() -> timedelta:
    """The STALE_PHOTO_DAYS setting (default 30): how old a verification photo may be."""
    raw = config.setting(STALE_DAYS_SETTING)
    try:
        days = int(raw) if raw else fraud.STALE_AFTER_DAYS
    except ValueError:
        days = fraud.STALE_AFTER_DAYS
    return timedelta(days=max(days, 0))


def _add_flag(row, result: VerificationResult, flag: Flag) -> None:
    result.flags.append(flag)
    result.status = FLAGGED
    row.flags = list(row.flags or []) + [
        {"code": flag.code, "reason": flag.reason, "photo": flag.photo, "params": flag.params}
    ]
    row.status = FLAGGED


def _drop_flag(row, result: VerificationResult, code: str) -> None:
    result.flags = [f for f in result.flags if f.code != code]
    row.flags = [f for f in (row.flags or []) if f.get("code") != code]


# The network lists whose stored embeddings the reuse check reads: dlib's alone (earlier versions)
# or dlib's beside another network's.
STORED_NETWORKS = [("dlib",), *(("dlib", name) for name in NETWORKS if name != "dlib")]


def _embeddings(session: Session, shas: list[str], width: int) -> dict[str, np.ndarray]:
    """Stored pretrained embeddings of these photos from the same networks as the verification's."""
    if not shas:
        return {}
    rows = session.execute(
        select(Embedding.photo_sha256, Embedding.vector).where(
            Embedding.photo_sha256.in_(shas),
            Embedding.model_id.in_([search.pretrained_model_id(networks) for networks in STORED_NETWORKS]),
        )
    )
    vectors = ((sha, np.frombuffer(vector, "<f4")) for sha, vector in rows)
    return {sha: v for sha, v in vectors if len(v) == width}


def _reuse(
    session: Session, row, result: VerificationResult, checks: dict, replayed: list | None = None
) -> None:
    """Every photo of the member against the verification photo; one reused_photo flag for all.

    replayed: the rows that held the selfie's file before it was sent (this member's, whichever
    row it maps to, or another member's): a replay, flagged whatever else is found."""
    verification = result.verification
    # The engine chose the limit for its networks' recipe; without its evidence, no identity limit.
    evidence = checks.get("reuse") or fraud.reuse_evidence([], None)
    limit = None
    if evidence.get("max_distance") is not None:
        limit = (evidence.get("distance_numbers", fraud.DLIB_PART), evidence["max_distance"])  # older: dlib
    matches = [fraud.ReuseMatch(**m) for m in evidence.get("matches", [])]
    for match in matches:  # the engine's match is the pair's gallery photo
        if match.photo_id is None and match.kind == "gallery":
            match.photo_id = row.gallery_photo_id
            match.label = f"gallery photo {row.gallery_photo_id}"
    skip = {row.verification_photo_id, row.gallery_photo_id}
    others = [
        p
        for p in session.execute(
            select(Photo.id, Photo.kind, Photo.sha256, Photo.photo_hashes)
            .where(Photo.member_id == row.member_id)
            .order_by(Photo.id.desc())
            .limit(MAX_OTHER_PHOTOS)
        )
        if p.id not in skip
    ]
    matches += list(replayed or [])
    if others and verification.sha256:
        vectors = {}
        if limit is not None and verification.embedding is not None:
            vectors = _embeddings(session, [p.sha256 for p in others], len(verification.embedding))
        found = fraud.reuse_matches(
            fraud.fingerprint(verification, "verification photo"),
            [
                fraud.Fingerprint(
                    label=f"{p.kind} photo {p.id}",
                    sha256=p.sha256,
                    hashes=p.photo_hashes,
                    embedding=vectors.get(p.sha256),
                    photo_id=p.id,
                    kind=p.kind,
                )
                for p in others
            ],
            limit,
        )
        matches += found
    evidence = fraud.reuse_evidence(matches, limit)
    evidence["compared"] = len(others) + (1 if row.gallery_photo_id is not None else 0)
    checks["reuse"] = evidence
    _drop_flag(row, result, REUSED_PHOTO)
    if matches:
        _add_flag(row, result, fraud.reuse_flag(matches))


def _stale(session: Session, row, result: VerificationResult, checks: dict) -> None:
    taken_raw = result.verification.taken_at
    if not taken_raw:
        checks["exif"] = {
            "taken_at": None,
            "checked": False,
            "note": "The verification photo has no EXIF date, so when it was taken could not be checked.",
        }
        return
    taken_at = datetime.fromisoformat(taken_raw)
    submitted = dict(
        session.execute(
            select(Photo.id, Photo.created_at).where(
                Photo.id.in_([i for i in (row.gallery_photo_id, row.verification_photo_id) if i])
            )
        ).all()
    )
    uploaded_at = submitted.get(row.verification_photo_id) or utcnow()
    gallery_at = submitted.get(row.gallery_photo_id)
    max_age = stale_after()
    reason = fraud.stale_reason(taken_at, uploaded_at, gallery_at, max_age)
    checks["exif"] = {
        "taken_at": taken_raw,
        "checked": True,
        "uploaded_at": uploaded_at.isoformat(),
        "gallery_submitted_at": gallery_at.isoformat() if gallery_at else None,
        "max_age_days": max_age.days,
        "stale": reason is not None,
    }
    if reason:
        params = {"taken_at": taken_at.date().isoformat(), "days": (uploaded_at - taken_at).days}
        _add_flag(row, result, Flag(STALE_PHOTO, reason, "verification", params=params))


def _shared_file(session: Session, row, result: VerificationResult, checks: dict) -> None:
    """The verification photo's file stored for another member: a possible duplicate account."""
    sha = result.verification.sha256
    if not sha:
        return
    owners = sorted(
        set(
            session.scalars(
                select(Photo.member_id).where(Photo.sha256 == sha, Photo.member_id != row.member_id).limit(20)
            )
        )
    )[: search.MAX_CANDIDATES]
    checks["shared_file_members"] = owners
    known = {d.candidate_member_id for d in row.duplicates}
    new = [m for m in owners if m not in known]
    if not new:
        return
    names = "; ".join(f"member {m} (similarity 1.000)" for m in new)
    flag = Flag(
        POSSIBLE_DUPLICATE,
        f"{names} - the same photo file is already stored for that member",
        "verification",
        params={"members": new, "same_file": True},
    )
    _add_flag(row, result, flag)
    row.possible_duplicate = True
    for member in new:
        row.duplicates.append(PossibleDuplicate(candidate_member_id=member, similarity=1.0))


def _remember_hashes(session: Session, row, result: VerificationResult) -> None:
    for photo_id, analysis in (
        (row.gallery_photo_id, result.gallery),
        (row.verification_photo_id, result.verification),
    ):
        if photo_id is not None and analysis.hashes:
            session.execute(
                update(Photo)
                .where(Photo.id == photo_id, Photo.photo_hashes.is_(None))
                .values(photo_hashes=analysis.hashes)
                .execution_options(synchronize_session=False)
            )


def apply(
    session: Session, row, result: VerificationResult, selfie: bool = True, replayed: list | None = None
) -> None:
    """Run the checks on a result row that is in the session (not yet committed); flags in place.

    selfie=False (a gallery addition): only the other members' files are looked up.
    replayed: reuse matches for rows that already held the selfie's file (see _reuse).
    """
    checks = dict(result.checks or {})
    # No autoflush: the new row is inserted once, with its final flags (not inserted, then updated,
    # which would count as an edit in its version).
    with session.no_autoflush:
        _remember_hashes(session, row, result)
        if row.member_id is not None and selfie:
            _reuse(session, row, result, checks, replayed)
        if row.member_id is not None:
            _shared_file(session, row, result, checks)
        if selfie:
            _stale(session, row, result, checks)
    result.checks = checks
    row.checks = _json_ready(checks)


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
