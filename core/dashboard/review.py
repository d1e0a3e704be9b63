"""The review queue page: the next flagged pair to decide, its photos, and the machine's verdict.

next_queue_item(session, skipped, flags=None, order="priority") -> (QueueItem | None, backlog)
load_review_item(session, store, item, viewer) -> ReviewItem (the photos shown are recorded as views)
matched_photos(session, store, row, viewer, role) -> [MatchedPhoto]: the stored photos a reused_photo
    or possible_duplicate flag matched (the member's own or the other member's), audited views
machine_verdict(row) -> "same" | "different" | "none";  verdict_text(row, lang)
approve_needs_confirmation(row): the machine objects, so Approve is never the default
implied_label(row, decision): what the photos show, when the decision and the flag say it
queue_item(session, result_id): a pair still waiting, to return a reviewer to it after sign-in
undo(session, result_id, reviewer), undo_seconds_left(session, result_id, reviewer)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dashboard.access import can_open
from core.dashboard.formatting import describe_flags
from core.i18n import t
from core.storage import queries
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import GALLERY, MEMBER_ERASED, VERIFICATION, Member, Photo, PossibleDuplicate, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import FLAGGED, FRAUD_FLAGS, GENDER_MISMATCH, POSSIBLE_DUPLICATE, REUSED_PHOTO
from core.workflows import privacy, reviews

SAME, DIFFERENT, NO_VERDICT = "same", "different", "none"
# Flags that make a pair checked first and make Approve an explicit choice against the machine.
OBJECTION_FLAGS = (GENDER_MISMATCH, *FRAUD_FLAGS)
PAGE = "page:review_queue"  # why, in the audit entry of each photo shown


@dataclass
class ReviewItem:
    row: ResultRow
    queue: queries.QueueItem
    gallery_bytes: bytes | None
    verification_bytes: bytes | None
    missing: list[str]


def load_review_item(
    session: Session, store: PhotoStoreBackend, item: queries.QueueItem, viewer: str
) -> ReviewItem:
    """The result and its two photos, for `viewer` to see: each photo shown is an audited view."""
    row = session.get(ResultRow, item.result_id)
    photos: dict[str, bytes | None] = {}
    missing = []
    for kind, photo_id in ((GALLERY, row.gallery_photo_id), (VERIFICATION, row.verification_photo_id)):
        photos[kind] = None
        photo = session.get(Photo, photo_id) if photo_id is not None else None
        if photo is None:
            missing.append(kind)
            continue
        try:
            photos[kind] = privacy.show_photo(session, store, photo, viewer, PAGE)
        except PhotoNotFound:
            missing.append(kind)
    return ReviewItem(row, item, photos[GALLERY], photos[VERIFICATION], missing)


MAX_MATCHED = 4  # matched photos shown per flag: enough to judge, and each one is a recorded view
FACE_SEARCH = "face_search"  # how a duplicate was found when it is not the same file


class PhotoAccessDenied(PermissionError):
    """The role may not see members' photos on the review queue (nothing was read or recorded)."""


@dataclass
class MatchedPhoto:
    """A stored photo that a fraud flag says the verification photo matches."""

    flag: str  # REUSED_PHOTO or POSSIBLE_DUPLICATE
    member_id: str  # whose photo: the member under review, or the other member
    own: bool
    photo_id: int
    kind: str  # gallery or verification
    how: str  # same_file, photo_hash, identity (reuse) or face_search (duplicate)
    score: float | None  # embedding distance (reuse) or similarity (duplicate)
    data: bytes | None  # None: no longer in the photo store


def _reuse_matches(session: Session, row: ResultRow) -> list[tuple[Photo, str, float | None]]:
    found = []
    for match in ((row.checks or {}).get("reuse") or {}).get("matches", [])[:MAX_MATCHED]:
        photo = session.get(Photo, match.get("photo_id")) if match.get("photo_id") is not None else None
        if photo is not None and photo.member_id == row.member_id:  # reuse is of the member's own photos
            found.append((photo, match.get("how") or "photo_hash", match.get("embedding_distance")))
    return found


def _duplicate_matches(session: Session, row: ResultRow) -> list[tuple[Photo, str, float | None]]:
    """Per other member named: the photo holding the same file, else its current gallery photo (the
    one the 1:N search compares with)."""
    selfie = session.get(Photo, row.verification_photo_id) if row.verification_photo_id else None
    found = []
    duplicates = session.scalars(
        select(PossibleDuplicate)
        .where(PossibleDuplicate.result_id == row.id)
        .order_by(PossibleDuplicate.similarity.desc())
        .limit(MAX_MATCHED)
    )
    for duplicate in duplicates:
        other = duplicate.candidate_member_id
        photo = None
        if selfie is not None:
            photo = session.scalar(
                select(Photo).where(Photo.member_id == other, Photo.sha256 == selfie.sha256).limit(1)
            )
        how = "same_file" if photo is not None else FACE_SEARCH
        if photo is None:
            photo = session.scalar(
                select(Photo)
                .where(Photo.member_id == other, Photo.kind == GALLERY, Photo.current.is_(True))
                .order_by(Photo.id.desc())
                .limit(1)
            )
        if photo is not None:
            found.append((photo, how, duplicate.similarity))
    return found


def matched_photos(
    session: Session, store: PhotoStoreBackend, row: ResultRow, viewer: str, role: str | None
) -> list[MatchedPhoto]:
    """The stored photos behind the result's reused_photo and possible_duplicate flags, for a
    reviewer to see beside the selfie. Only a role that may open the review queue sees them
    (PhotoAccessDenied otherwise); each photo shown is an audited view, under its owner's member
    id, so another member's photo shows in that member's access history."""
    if not can_open(role, "review"):
        raise PhotoAccessDenied(f"role {role!r} may not see members' photos on the review queue")
    codes = set(flag_codes(row))
    wanted = []
    if REUSED_PHOTO in codes:
        wanted += [(REUSED_PHOTO, *m) for m in _reuse_matches(session, row)]
    if POSSIBLE_DUPLICATE in codes:
        wanted += [(POSSIBLE_DUPLICATE, *m) for m in _duplicate_matches(session, row)]
    shown = []
    for flag, photo, how, score in wanted:
        try:
            data = privacy.show_photo(session, store, photo, viewer, PAGE)
        except PhotoNotFound:
            data = None
        shown.append(
            MatchedPhoto(
                flag,
                photo.member_id,
                photo.member_id == row.member_id,
                photo.id,
                photo.kind,
                how,
                None if score is None else float(score),
                data,
            )
        )
    return shown


def matched_caption(match: MatchedPhoto, lang: str) -> str:
    """'Member M0001's gallery photo #12: the same file', in the page's language."""
    how = t(f"review.match_how.{match.how}", lang, score=match.score if match.score is not None else 0.0)
    kind = t(f"photo.{match.kind}", lang)
    key = "review.matched_own" if match.own else "review.matched_other"
    return t(key, lang, member=match.member_id, kind=kind, photo_id=match.photo_id, how=how)


def flag_codes(row_or_item) -> list[str]:
    return [f["code"] for f in row_or_item.flags or [] if isinstance(f, dict) and f.get("code")]


def queue_item(session: Session, result_id: int) -> queries.QueueItem | None:
    """The pair `result_id` as the queue lists it, if it still waits for a decision."""
    row = session.get(ResultRow, result_id)
    if row is None or row.status != FLAGGED:
        return None
    if row.member_id is not None:
        member = session.get(Member, row.member_id)
        if member is not None and member.status == MEMBER_ERASED:
            return None
    paths = {}
    for kind, photo_id in ((GALLERY, row.gallery_photo_id), (VERIFICATION, row.verification_photo_id)):
        photo = session.get(Photo, photo_id) if photo_id is not None else None
        paths[kind] = photo.stored_path if photo is not None else None
    distance = None if row.similarity is None else abs(row.similarity - row.threshold)
    return queries.QueueItem(
        result_id=row.id,
        member_id=row.member_id,
        batch_id=row.batch_id,
        created_at=row.created_at,
        priority=0 if (row.gender_mismatch or row.possible_duplicate) else 1,
        similarity=row.similarity,
        threshold=row.threshold,
        distance_to_threshold=distance,
        registered_gender=row.registered_gender,
        predicted_gender=row.predicted_gender,
        gender_confidence=row.gender_confidence,
        flags=list(row.flags or []),
        model_version=row.model_version,
        gallery_path=paths[GALLERY],
        verification_path=paths[VERIFICATION],
        version=row.version,
    )


def next_queue_item(
    session: Session,
    skipped: Iterable[int] = (),
    flags: Iterable[str] | None = None,
    order: str = "priority",
    resume: int | None = None,
) -> tuple[queries.QueueItem | None, int]:
    """The first flagged pair in `order` that the reviewer has not skipped and that carries one of
    `flags` (any flag when none are chosen), and the whole backlog. `resume`: the pair the
    reviewer had open (after a reload and sign-in), first if it still waits and fits the filter."""
    skipped = set(skipped)
    wanted = set(flags or ())
    backlog = queries.backlog_count(session)
    if resume is not None and resume not in skipped:
        item = queue_item(session, resume)
        if item is not None and (not wanted or wanted & set(flag_codes(item))):
            return item, backlog
    offset = 0
    while True:
        page = queries.review_queue(session, limit=50, offset=offset, order=order)
        for item in page:
            if item.result_id in skipped:
                continue
            if wanted and not wanted & set(flag_codes(item)):
                continue
            return item, backlog
        if len(page) < 50:
            return None, backlog
        offset += 50


def machine_verdict(row: ResultRow) -> str:
    """What the engine said about identity: same person, different people, or nothing (no face)."""
    if row.same_person is None or row.similarity is None:
        return NO_VERDICT
    return SAME if row.same_person else DIFFERENT


def objections(row: ResultRow) -> list[str]:
    """The flags on which the machine objects to approving (gender mismatch, fraud)."""
    return [code for code in flag_codes(row) if code in OBJECTION_FLAGS]


def approve_needs_confirmation(row: ResultRow) -> bool:
    """Approve is an explicit choice against the machine: when it said "different people", could
    not tell, or raised a gender mismatch or a fraud flag."""
    return machine_verdict(row) != SAME or bool(objections(row))


def verdict_text(row: ResultRow, lang: str) -> str:
    """The machine's verdict first, in one sentence, then what deciding along with it means:
    "Machine's verdict: different people (similarity 0.030, threshold 0.359). Reject if you agree."
    """
    verdict = machine_verdict(row)
    if verdict == NO_VERDICT:
        described = describe_flags(row, lang)
        reasons = "; ".join(f["title"] for f in described) or t("review.verdict.no_reason", lang)
        first = t("review.verdict.none", lang, reasons=reasons)
    else:
        first = t(f"review.verdict.{verdict}", lang, similarity=row.similarity, threshold=row.threshold)
    found = objections(row)
    if found:
        names = ", ".join(t(f"flag.{code}", lang) for code in found)
        advice = t("review.advice.objection", lang, flags=names)
    elif verdict == SAME:
        advice = t("review.advice.approve", lang)
    elif verdict == DIFFERENT:
        advice = t("review.advice.reject", lang)
    else:
        advice = t("review.advice.none", lang)
    return f"{first} {advice}"


# ----------------------------------------------------------------------------------------------
# The decision, as the Review queue page submits it (core.workflows.reviews decides and writes)

APPROVE, REJECT = reviews.APPROVE, reviews.REJECT
LABELS = reviews.LABELS  # same, different, unsure: what the two photos show
AlreadyDecided = reviews.AlreadyDecided
NotReviewable = reviews.NotReviewable
ResultNotFound = reviews.ResultNotFound
LabelRequired = reviews.LabelRequired
LabelConflict = reviews.LabelConflict
NotUndoable = reviews.NotUndoable
UNDO_WINDOW = reviews.UNDO_WINDOW


def implied_label(row: ResultRow, decision: str) -> str | None:
    """The label the decision implies on this pair (approve: same; rejecting a duplicate account
    whose faces match: same), or None when the reviewer must say what the photos show."""
    return reviews.implied_label(row, decision)


QUEUE_ORDERS = queries.QUEUE_ORDERS


def flag_counts(session: Session) -> dict[str, int]:
    """How many waiting pairs carry each flag (the filter's choices)."""
    return queries.queue_flag_counts(session)


def needs_confirmation(session: Session, result_id: int) -> bool:
    """Whether approving this pair needs the reviewer's explicit "I compared the photos myself"."""
    row = session.get(ResultRow, result_id)
    return row is not None and approve_needs_confirmation(row)


def decision_context(session: Session, result_id: int, decision: str) -> tuple[bool, str | None]:
    """For a submitted decision: whether approving needs the explicit confirmation, and the label
    the decision implies on this pair (None: the reviewer must choose one)."""
    row = session.get(ResultRow, result_id)
    if row is None:
        return False, None
    return approve_needs_confirmation(row), implied_label(row, decision)


def decide(session: Session, result_id: int, reviewer: str, decision: str, **labels):
    """The reviewer's decision (and labels: note, true_gender, label), audited."""
    return reviews.decide(session, result_id, reviewer, decision, **labels)


def undo(session: Session, result_id: int, reviewer: str):
    """Take back the reviewer's own decision (within UNDO_WINDOW), audited: the pair waits again."""
    return reviews.undo(session, result_id, reviewer)


def undo_seconds_left(session: Session, result_id: int, reviewer: str) -> int:
    """How long `reviewer` may still undo their decision on the pair (0: not theirs, or too late)."""
    review = reviews.review_for(session, result_id)
    if not reviews.undoable(review, reviewer):
        return 0
    return max(0, int((review.decided_at + UNDO_WINDOW - utcnow()).total_seconds()))
