"""Reviewers' decisions on flagged pairs.

decide(session, result_id, reviewer, decision, note=None, true_gender=None, same_person=None) -> Review

Two reviewers may open the same flagged pair and press a button at the same moment. The decision
is a conditional UPDATE ... WHERE id = :id AND status = 'flagged': the database lets exactly one
of them match the row; the other matches nothing and gets AlreadyDecided naming who decided and
when. The review row, the result's new status and ground truth, the member's status and the audit
entry commit together or not at all.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import MEMBER_ERASED, MEMBER_REJECTED, MEMBER_VERIFIED, Member, Review, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.verification.genders import normalise_gender
from core.verification.result import APPROVED, FLAGGED, REJECTED
from core.workflows import gallery, profiles

APPROVE, REJECT = "approve", "reject"
DECISIONS = (APPROVE, REJECT)


class ReviewError(FaceVerifyError):
    code = "review_error"


class ResultNotFound(ReviewError):
    code = "result_not_found"


class NotReviewable(ReviewError):
    """The result was decided automatically and never waited for a person."""

    code = "not_reviewable"


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


def decide(
    session: Session,
    result_id: int,
    reviewer: str,
    decision: str,
    note: str | None = None,
    true_gender: str | None = None,
    *,
    same_person: bool | None = None,
) -> Review:
    """Record a reviewer's decision on a flagged result, exactly once. Commits.

    Ground truth stored for training and KPIs:
      same person: `same_person` when given, else approve -> True, reject -> False (the page asks
                   "same person, but something else is wrong?" to store reject + same_person=True);
      gender:      `true_gender` when given, else approve -> the registered gender, reject -> unknown.
    Raises AlreadyDecided when another decision won, NotReviewable for results never flagged,
    ResultNotFound, ValueError for a decision other than approve/reject.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be 'approve' or 'reject', not {decision!r}")
    if not reviewer:
        raise ValueError("the reviewer's username is required")
    true_gender = normalise_gender(true_gender) if true_gender not in (None, "") else None
    approve = decision == APPROVE
    ground_truth_same = same_person if same_person is not None else approve
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

    review = Review(
        result_id=result_id,
        reviewer=reviewer,
        decision=decision,
        same_person=ground_truth_same,
        true_gender=true_gender,
        note=(note or None),
        decided_at=now,
    )
    session.add(review)
    result = session.get(ResultRow, result_id, populate_existing=True)
    if gallery.is_addition(session, result):
        gallery.on_review(session, result, approve, reviewer)  # a gallery photo, not a verification
    elif profiles.is_profile_addition(session, result):
        profiles.on_review(session, result, approve, reviewer)  # a profile photo added later
    elif result.member_id is not None:
        _update_member(session, result, approve, now)
        profiles.on_verification_review(session, result, approve, reviewer)
    audit.log(
        session,
        reviewer,
        audit.DECIDE,
        "result",
        result_id,
        {
            "decision": decision,
            "member_id": result.member_id,
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


def _update_member(session: Session, result: ResultRow, approve: bool, now: datetime) -> None:
    # Only the member's newest result sets the member's status; deciding an old pair does not.
    newest = session.scalar(select(func.max(ResultRow.id)).where(ResultRow.member_id == result.member_id))
    if newest == result.id:
        session.execute(
            update(Member)
            .where(Member.id == result.member_id, Member.status != MEMBER_ERASED)  # erased stays erased
            .values(
                status=MEMBER_VERIFIED if approve else MEMBER_REJECTED, last_verified_at=now, updated_at=now
            )
        )


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
