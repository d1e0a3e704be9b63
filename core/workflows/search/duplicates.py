"""The duplicate-account check run on every stored verification.

    flag_possible_duplicates(session, row, result) -> list[Candidate]
        the hook the one storing path (core.workflows.batches.store_result) calls for every result
    was_checked(row) -> bool

A POSSIBLE_DUPLICATE flag carries its candidates as parameters ({"candidates": [[member_id,
similarity], ...], "threshold": ...}); its English reason is for people only. Candidates are
checked against the database before they are stored, so a stale index row is never reported.
The member's gallery photo joins this process's index once the session commits: a listener on
that session (never on every Session of the process) applies it, or drops it on a rollback.
"""

from __future__ import annotations

import re
import weakref

import numpy as np
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.storage.schema import Member, Photo, PossibleDuplicate
from core.verification.networks import DEFAULT_NETWORKS
from core.verification.result import FLAGGED, POSSIBLE_DUPLICATE, Flag
from core.workflows.search.embeddings import store_embeddings
from core.workflows.search.enrolled import enrolled_photo
from core.workflows.search.index import Candidate
from core.workflows.search.registry import _context, index_for

MAX_CANDIDATES = 5  # possible duplicates stored per result (the closest ones)

# Flags stored before the candidates were carried as parameters name them only in the reason.
_LEGACY_CANDIDATE_RE = re.compile(r"member (\S+) \(similarity ([0-9.]+)\)")


def candidates_of(flag: Flag | dict) -> list[tuple[str, float]]:
    """[(member_id, similarity)] of a possible-duplicate flag, live or stored."""
    params = flag.params if isinstance(flag, Flag) else flag.get("params")
    if params and params.get("candidates") is not None:
        return [(str(member), float(similarity)) for member, similarity in params["candidates"]]
    reason = flag.reason if isinstance(flag, Flag) else flag.get("reason")
    return [(m, float(s)) for m, s in _LEGACY_CANDIDATE_RE.findall(reason or "")]


# Rows already checked, so a caller that calls the hook after store_result (which may call it
# itself) never checks twice.
_checked_rows: weakref.WeakSet = weakref.WeakSet()
_PENDING_KEY = "faceverify.search.pending"
_LISTENING_KEY = "faceverify.search.listening"


def was_checked(row) -> bool:
    return row in _checked_rows


def flag_possible_duplicates(session: Session, row, result) -> list[Candidate]:
    """Search the verification photo against every other enrolled member; flag near matches.

    Called by the storing path for every result, after the row is added to the session and before
    anything reads the result's status (the caller commits). It:
      - stores the pretrained embeddings of both photos (the index is built from them),
      - searches the verification photo's projection, excluding the member's own rows,
      - for candidates at or above the duplicate threshold: adds a POSSIBLE_DUPLICATE flag (naming
        them) to the result and the row, sets both to flagged (the review queue), and adds one
        possible_duplicates row per candidate (at most MAX_CANDIDATES),
      - after the commit, adds the member's gallery photo to this process's index.
    Results without projections (a stand-in engine, no face) are stored unchanged.
    """
    if row in _checked_rows:
        return []
    _checked_rows.add(row)
    gallery, verification = result.gallery, result.verification
    if getattr(verification, "projection", None) is None and getattr(gallery, "projection", None) is None:
        return []
    context = _context(result.model_version)
    store_embeddings(session, [gallery, verification], context.networks if context else DEFAULT_NETWORKS)
    if context is None:
        return []
    bind = session.get_bind()
    index = index_for(bind, result.model_version)
    member_id = row.member_id

    candidates: list[Candidate] = []
    if verification.projection is not None:
        found = index.search_candidates(
            verification.projection,
            MAX_CANDIDATES,
            exclude_member=member_id,
            min_similarity=index.duplicate_threshold,
        )
        candidates = _still_enrolled(session, found)
    if candidates:
        threshold = round(index.duplicate_threshold, 4)
        names = "; ".join(f"member {c.member_id} (similarity {c.similarity:.3f})" for c in candidates)
        flag = Flag(
            POSSIBLE_DUPLICATE,
            f"{names} - at or above the duplicate threshold {index.duplicate_threshold:.3f}",
            "verification",
            params={
                "candidates": [[c.member_id, round(c.similarity, 4)] for c in candidates],
                "threshold": threshold,
            },
        )
        result.flags.append(flag)
        result.status = FLAGGED
        row.flags = list(row.flags or []) + [
            {"code": flag.code, "reason": flag.reason, "photo": flag.photo, "params": flag.params}
        ]
        row.status = FLAGGED
        row.possible_duplicate = True
        for c in candidates:
            row.duplicates.append(PossibleDuplicate(candidate_member_id=c.member_id, similarity=c.similarity))

    if member_id is not None and gallery.projection is not None and row.gallery_photo_id is not None:
        _listen_for_commit(session)
        session.info.setdefault(_PENDING_KEY, []).append(
            (index, member_id, int(row.gallery_photo_id), gallery.sha256, np.array(gallery.projection))
        )
    return candidates


def _still_enrolled(session: Session, found: list[Candidate]) -> list[Candidate]:
    """Keep candidates whose photo is still enrolled for that member (its current gallery photo,
    or a profile photo that shows it): never a stale row."""
    if not found:
        return []
    ids = [c.photo_id for c in found if c.photo_id]
    current = set()
    if ids:
        current = set(
            session.execute(
                select(Photo.id, Photo.member_id).where(Photo.id.in_(ids), enrolled_photo())
            ).all()
        )
    no_photo = [c.member_id for c in found if not c.photo_id]
    existing = set(session.scalars(select(Member.id).where(Member.id.in_(no_photo)))) if no_photo else set()
    return [
        c
        for c in found
        if (c.photo_id and (c.photo_id, c.member_id) in current)
        or (not c.photo_id and c.member_id in existing)
    ]


def _listen_for_commit(session: Session) -> None:
    """Apply the pending index rows when this session commits, drop them when it rolls back."""
    if not session.info.get(_LISTENING_KEY):
        event.listen(session, "after_commit", _apply_pending)
        event.listen(session, "after_rollback", _drop_pending)
        session.info[_LISTENING_KEY] = True


def _apply_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    for index, member_id, photo_id, sha, projection in pending or ():
        index.add(member_id, projection, photo_id, sha)


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
