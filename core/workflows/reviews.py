"""Reviewers' decisions on flagged pairs.

decide(session, result_id, reviewer, decision, note=None, true_gender=None, label=None) -> Review
undo(session, result_id, reviewer, now=None) -> ResultRow: the reviewer takes their decision back
implied_label(row, decision) -> the label the decision implies, or None when it must be asked

The decision is about the member (approve or reject); the label is about the two photos (the same
person, different people, can't tell). They are recorded apart: a member rejected as a duplicate
account shows the same face twice, and KPIs and training read only the label (ground_truth_same).

Two reviewers may open the same flagged pair and press a button at the same moment. The decision
is a conditional UPDATE ... WHERE id = :id AND status = 'flagged': the database lets exactly one
of them match the row; the other matches nothing and gets AlreadyDecided naming who decided and
when. The review row, the result's new status and ground truth, the member's status and the audit
entry commit together or not at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import MEMBER_ERASED, MEMBER_REJECTED, MEMBER_VERIFIED, Member, Review, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.verification.genders import normalise_gender
from core.verification.result import APPROVED, FLAGGED, POSSIBLE_DUPLICATE, REJECTED, REUSED_PHOTO
from core.workflows import gallery, profiles

APPROVE, REJECT = "approve", "reject"
DECISIONS = (APPROVE, REJECT)
SAME, DIFFERENT, UNSURE = "same", "different", "unsure"
LABELS = (SAME, DIFFERENT, UNSURE)
# Flags about the account rather than the face: rejecting on them, when the machine found the two
# photos to match, says nothing against the faces being one person.
ACCOUNT_FLAGS = (POSSIBLE_DUPLICATE, REUSED_PHOTO)
UNDO_WINDOW = timedelta(minutes=10)
UNDO_DECISION = "undo_decision"  # the audit action


class ReviewError(FaceVerifyError):
    code = "review_error"


class ResultNotFound(ReviewError):
    code = "result_not_found"


class NotReviewable(ReviewError):
    """The result was decided automatically and never waited for a person."""

    code = "not_reviewable"


class LabelRequired(ReviewError):
    """A rejection that does not say what the two photos show: the reviewer must choose."""

    code = "label_required"


class LabelConflict(ReviewError):
    """Approving a member says the photos show the same person; another label contradicts it."""

    code = "label_conflict"


class NotUndoable(ReviewError):
    """The decision cannot be taken back: someone else's, too old, or already undone."""

    code = "not_undoable"

    def __init__(self, message: str, reason: str):
        self.reason = reason  # none, not_yours, too_old, gallery, undone: for the page's own words
        super().__init__(message)


class AlreadyDecided(ReviewError):
    """Someone else decided this pair first; the caller's decision was not saved."""

    code = "already_decided"

    def __init__(self, result_id: int, decided_by: str | None, decided_at: datetime | None, status: str):
        self.result_id = result_id
        self.decided_by = decided_by
        self.decided_at = decided_at
        self.status = status
        when = f" at {decided_at:%Y-%m-%d %H:%M:%S} UTC" if decided_at else ""
        super().__init__(
            f"This pair (result {result_id}) was already {status} by {decided_by or 'another reviewer'}"
            f"{when}. Your decision was not saved; the queue has been refreshed."
        )


def implied_label(row: ResultRow, decision: str) -> str | None:
    """The label a decision implies without asking: approving says the same person; rejecting a
    duplicate account or a reused photo whose faces the machine matched says the same person too.
    Any other rejection (different faces? wrong gender? can't tell?) needs the reviewer's label."""
    if decision == APPROVE:
        return SAME
    codes = {f.get("code") for f in row.flags or [] if isinstance(f, dict)}
    if codes & set(ACCOUNT_FLAGS) and row.same_person:
        return SAME
    return None


def _label_from(same_person: bool | None) -> str | None:
    return None if same_person is None else (SAME if same_person else DIFFERENT)


def decide(
    session: Session,
    result_id: int,
    reviewer: str,
    decision: str,
    note: str | None = None,
    true_gender: str | None = None,
    *,
    label: str | None = None,
    same_person: bool | None = None,
) -> Review:
    """Record a reviewer's decision on a flagged result, exactly once. Commits.

    Ground truth stored for training and KPIs, never derived from the decision alone:
      label:  `label` (same / different / unsure; `same_person` True/False is the same as same /
              different), else what the decision and the flags imply (implied_label); a rejection
              that implies nothing raises LabelRequired. unsure stores no ground truth.
      gender: `true_gender` when given, else approve -> the registered gender, reject -> unknown.
    Raises AlreadyDecided when another decision won, NotReviewable for results never flagged,
    ResultNotFound, LabelRequired, LabelConflict (approve with another label than same),
    ValueError for a decision other than approve/reject or an unknown label.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be 'approve' or 'reject', not {decision!r}")
    if not reviewer:
        raise ValueError("the reviewer's username is required")
    if label is None:
        label = _label_from(same_person)
    if label is not None and label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
    approve = decision == APPROVE
    if approve and label not in (None, SAME):
        raise LabelConflict(
            "Approving the member says the two photos show the same person; reject instead, "
            "or choose 'same person'."
        )
    row = session.get(ResultRow, result_id)
    if row is not None and label is None:
        label = implied_label(row, decision)
        if label is None and row.status == FLAGGED:
            session.rollback()
            raise LabelRequired(
                f"Say what the two photos of result {result_id} show (the same person, different people, "
                "or can't tell): rejecting the member does not say it."
            )
    session.rollback()  # end the read: the conditional update below must open the transaction
    true_gender = normalise_gender(true_gender) if true_gender not in (None, "") else None
    ground_truth_same = {SAME: True, DIFFERENT: False}.get(label)
    if true_gender is not None:
        ground_truth_gender = true_gender
    else:
        ground_truth_gender = ResultRow.registered_gender if approve else None
    now = utcnow()

    # The conditional update is the first statement of the transaction, so on SQLite the write
    # lock is taken before anything is read, and on MySQL the row lock serialises the two writers.
    claimed = session.execute(
        update(ResultRow)
        .where(ResultRow.id == result_id, ResultRow.status == FLAGGED)
        .values(
            status=APPROVED if approve else REJECTED,
            decided_at=now,
            decided_by=reviewer,
            ground_truth_same=ground_truth_same,
            ground_truth_gender=ground_truth_gender,
            version=ResultRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        session.rollback()
        raise _why_not(session, result_id)

    result = session.get(ResultRow, result_id, populate_existing=True)
    review = Review(
        result_id=result_id,
        reviewer=reviewer,
        decision=decision,
        same_person=ground_truth_same,
        label=label,
        true_gender=true_gender,
        note=(note or None),
        decided_at=now,
    )
    if gallery.is_addition(session, result):
        gallery.on_review(session, result, approve, reviewer)  # a gallery photo, not a verification
    elif profiles.is_profile_addition(session, result):
        profiles.on_review(session, result, approve, reviewer)  # a profile photo added later
    elif result.member_id is not None:
        review.member_status_before = _update_member(session, result, approve, now)
        profiles.on_verification_review(session, result, approve, reviewer)
    session.add(review)
    audit.log(
        session,
        reviewer,
        audit.DECIDE,
        "result",
        result_id,
        {
            "decision": decision,
            "member_id": result.member_id,
            "label": label,
            "same_person": ground_truth_same,
            "true_gender": true_gender,
        },
        at=now,
    )
    try:
        session.commit()
    except IntegrityError:
        # The unique review per result: only reachable if a row was decided outside decide().
        session.rollback()
        raise _why_not(session, result_id) from None
    return review


def undoable(review: Review | None, reviewer: str, now: datetime | None = None) -> bool:
    """Whether `reviewer` may still take this decision back (their own, within UNDO_WINDOW)."""
    if review is None or review.reviewer != reviewer:
        return False
    return (now or utcnow()) - review.decided_at <= UNDO_WINDOW


def undo(session: Session, result_id: int, reviewer: str, now: datetime | None = None) -> ResultRow:
    """Take back `reviewer`'s own decision on a result within UNDO_WINDOW. Commits.

    The pair goes back to the queue as flagged with no ground truth (so KPIs and training drop
    it), the member's status is restored when this decision had changed it, the review row is
    removed and the undo is audited with what was undone. Raises NotUndoable, ResultNotFound.
    """
    now = now or utcnow()
    review = session.scalar(select(Review).where(Review.result_id == result_id))
    if review is None:
        session.rollback()
        raise NotUndoable(f"Result {result_id} has no reviewer's decision to undo.", "none")
    if review.reviewer != reviewer:
        session.rollback()
        raise NotUndoable(
            f"Only {review.reviewer}, who decided result {result_id}, can undo it.", "not_yours"
        )
    if now - review.decided_at > UNDO_WINDOW:
        session.rollback()
        raise NotUndoable(
            f"The decision on result {result_id} is older than {int(UNDO_WINDOW.total_seconds() // 60)} "
            "minutes and can no longer be undone.",
            "too_old",
        )
    result = session.get(ResultRow, result_id)
    if review.decision == APPROVE and gallery.is_addition(session, result):
        session.rollback()
        raise NotUndoable(
            f"Result {result_id} made a new gallery photo current; change the gallery photo on the Members page.",
            "gallery",
        )
    detail = {
        "decision": review.decision,
        "label": review.label,
        "member_id": result.member_id,
        "decided_at": review.decided_at.isoformat(),
    }
    # Conditional on the decision still standing, so two undos (two tabs) restore only once.
    reverted = session.execute(
        update(ResultRow)
        .where(
            ResultRow.id == result_id,
            ResultRow.decided_by == reviewer,
            ResultRow.decided_at == review.decided_at,
        )
        .values(
            status=FLAGGED,
            decided_at=None,
            decided_by=None,
            ground_truth_same=None,
            ground_truth_gender=None,
            version=ResultRow.version + 1,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if reverted != 1:
        session.rollback()
        raise NotUndoable(f"The decision on result {result_id} was already undone.", "undone")
    if review.member_status_before is not None and result.member_id is not None:
        session.execute(
            update(Member)
            .where(Member.id == result.member_id, Member.status != MEMBER_ERASED)
            .values(status=review.member_status_before, updated_at=now)
        )
    session.delete(review)
    audit.log(session, reviewer, UNDO_DECISION, "result", result_id, detail, at=now)
    session.commit()
    return session.get(ResultRow, result_id, populate_existing=True)


def _update_member(session: Session, result: ResultRow, approve: bool, now: datetime) -> str | None:
    """Set the member's status from the decision; the status it had before, or None if unchanged."""
    # Only the member's newest result sets the member's status; deciding an old pair does not.
    newest = session.scalar(select(func.max(ResultRow.id)).where(ResultRow.member_id == result.member_id))
    before = session.scalar(select(Member.status).where(Member.id == result.member_id))
    if newest == result.id and before != MEMBER_ERASED:
        session.execute(
            update(Member)
            .where(Member.id == result.member_id, Member.status != MEMBER_ERASED)  # erased stays erased
            .values(
                status=MEMBER_VERIFIED if approve else MEMBER_REJECTED, last_verified_at=now, updated_at=now
            )
        )
        return before
    return None


def _why_not(session: Session, result_id: int) -> ReviewError:
    row = session.execute(
        select(ResultRow.status, ResultRow.decided_by, ResultRow.decided_at).where(ResultRow.id == result_id)
    ).first()
    session.rollback()  # end the read so the session holds no snapshot or lock
    if row is None:
        return ResultNotFound(f"There is no verification result {result_id}.")
    if row.decided_by is None and row.status != FLAGGED:
        return NotReviewable(
            f"Result {result_id} was decided automatically ({row.status.replace('_', '-')}); "
            "only flagged pairs are reviewed."
        )
    return AlreadyDecided(result_id, row.decided_by, row.decided_at, row.status)


def review_for(session: Session, result_id: int) -> Review | None:
    return session.scalar(select(Review).where(Review.result_id == result_id))
