"""The review queue page: the next flagged pair to decide, its photos, and the machine's verdict.

next_queue_item(session, skipped, flags=None, order="priority") -> (QueueItem | None, backlog)
load_review_item(session, store, item, viewer) -> ReviewItem (the photos shown are recorded as views)
machine_verdict(row) -> "same" | "different" | "none";  verdict_text(row, lang)
approve_needs_confirmation(row): the machine objects, so Approve is never the default
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.dashboard.formatting import describe_flags
from core.i18n import t
from core.storage import queries
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import GALLERY, VERIFICATION, Photo
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import FRAUD_FLAGS, GENDER_MISMATCH
from core.workflows import privacy

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


def flag_codes(row_or_item) -> list[str]:
    return [f["code"] for f in row_or_item.flags or [] if isinstance(f, dict) and f.get("code")]


def next_queue_item(
    session: Session,
    skipped: Iterable[int] = (),
    flags: Iterable[str] | None = None,
    order: str = "priority",
) -> tuple[queries.QueueItem | None, int]:
    """The first flagged pair in `order` that the reviewer has not skipped and that carries one of
    `flags` (any flag when none are chosen), and the whole backlog."""
    skipped = set(skipped)
    wanted = set(flags or ())
    backlog = queries.backlog_count(session)
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
