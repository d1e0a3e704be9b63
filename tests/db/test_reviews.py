"""Review decisions: exactly one of two simultaneous decisions wins, on SQLite and MariaDB."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm.exc import StaleDataError

from core.storage.schema import AuditEntry, Member, Review
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import reviews
from core.workflows.batches import store_result


def flagged(
    session, make_result, member_id="R1", gallery_photo_id=None, verification_photo_id=None, **kwargs
):
    kwargs.setdefault("status", "flagged")
    kwargs.setdefault("similarity", 0.55)
    row = store_result(
        session,
        make_result(**kwargs),
        member_id=member_id,
        gallery_photo_id=gallery_photo_id,
        verification_photo_id=verification_photo_id,
    )
    session.commit()
    return row.id


def test_approve_records_review_ground_truth_member_and_audit(session, make_result, add_member):
    add_member("R1", "F")
    result_id = flagged(session, make_result, registered_gender="F", predicted_gender="F")
    assert session.get(Member, "R1").status == "in_review"
    stored_version = session.get(ResultRow, result_id).version

    review = reviews.decide(session, result_id, "kim", "approve", "same face, new glasses")

    session.expire_all()
    result = session.get(ResultRow, result_id)
    assert (result.status, result.decided_by, result.ground_truth_same, result.ground_truth_gender) == (
        "approved",
        "kim",
        True,
        "F",
    )
    assert result.version == stored_version + 1  # one decision, one write of the row
    assert review.note == "same face, new glasses" and review.decision == "approve"
    assert session.get(Member, "R1").status == "verified"
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "decide")).one()
    assert (entry.actor, entry.target_id, entry.detail["decision"]) == ("kim", str(result_id), "approve")


def test_reject_with_true_gender(session, make_result, add_member):
    add_member("R1", "M")
    result_id = flagged(session, make_result, flags=("gender_mismatch",), predicted_gender="F")
    reviews.decide(session, result_id, "kim", "reject", true_gender="여", same_person=True)
    session.expire_all()
    result = session.get(ResultRow, result_id)
    assert (result.status, result.ground_truth_same, result.ground_truth_gender) == ("rejected", True, "F")
    assert session.get(Member, "R1").status == "rejected"


def test_second_decision_is_refused_with_a_clear_message(session, make_result, add_member):
    add_member("R1")
    result_id = flagged(session, make_result)
    reviews.decide(session, result_id, "kim", "approve")

    with pytest.raises(reviews.AlreadyDecided) as caught:
        reviews.decide(session, result_id, "lee", "reject", label="different")

    assert caught.value.decided_by == "kim" and caught.value.status == "approved"
    assert f"result {result_id}) was already approved by kim at " in str(caught.value)
    assert "Your decision was not saved" in str(caught.value)
    assert session.scalar(select(func.count()).select_from(Review)) == 1


def test_invalid_decisions(session, make_result, add_member):
    add_member("R1")
    auto_id = store_result(session, make_result(status="auto_approved"), member_id="R1").id
    session.commit()
    with pytest.raises(reviews.NotReviewable, match="decided automatically"):
        reviews.decide(session, auto_id, "kim", "reject")
    with pytest.raises(reviews.ResultNotFound):
        reviews.decide(session, 999_999, "kim", "approve")
    with pytest.raises(ValueError):
        reviews.decide(session, auto_id, "kim", "maybe")
    with pytest.raises(ValueError, match="gender"):
        reviews.decide(session, auto_id, "kim", "approve", true_gender="X")


def test_two_reviewers_at_the_same_moment(session, session_factory, make_result, add_member):
    """Two threads, two sessions, two real connections, released together by a barrier."""
    add_member("R1")
    result_ids = [flagged(session, make_result) for _ in range(6)]

    for result_id in result_ids:
        barrier = threading.Barrier(2)
        outcomes: dict[str, object] = {}

        def reviewer(name, decision, label=None, result_id=result_id, barrier=barrier, outcomes=outcomes):
            with session_factory() as own_session:
                own_session.connection()  # each thread holds its own connection before the race
                own_session.rollback()
                barrier.wait()
                try:
                    outcomes[name] = reviews.decide(own_session, result_id, name, decision, label=label)
                except reviews.AlreadyDecided as exc:
                    outcomes[name] = exc

        threads = [
            threading.Thread(target=reviewer, args=("kim", "approve")),
            threading.Thread(target=reviewer, args=("lee", "reject", "different")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        winners = [name for name, o in outcomes.items() if isinstance(o, Review)]
        losers = [o for o in outcomes.values() if isinstance(o, reviews.AlreadyDecided)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert losers[0].decided_by == winners[0]
        session.expire_all()
        stored = session.scalars(select(Review).where(Review.result_id == result_id)).all()
        assert [r.reviewer for r in stored] == winners
        result = session.get(ResultRow, result_id)
        assert result.decided_by == winners[0]
        assert result.status == ("approved" if winners[0] == "kim" else "rejected")


def test_orm_edits_cannot_overwrite_each_other(session_factory, make_result, add_member, session):
    """The version counter: a stale copy of a result cannot be saved over a newer one."""
    add_member("R1")
    result_id = flagged(session, make_result)
    with session_factory() as first, session_factory() as second:
        a = first.get(ResultRow, result_id)
        b = second.get(ResultRow, result_id)
        a.ground_truth_gender = "M"
        first.commit()
        b.ground_truth_gender = "F"
        with pytest.raises(StaleDataError):
            second.commit()


# ----------------------------------------------------------------------------------------------
# The label of the pair is recorded apart from the decision on the member


def test_duplicate_account_rejection_records_the_same_person(session, make_result, add_member):
    """The machine matched the faces and flagged another account with the same face: rejecting the
    member is about the account, and the two photos are still one person."""
    add_member("R1")
    result_id = flagged(session, make_result, flags=("possible_duplicate",), similarity=0.95)

    review = reviews.decide(session, result_id, "kim", "reject")

    session.expire_all()
    result = session.get(ResultRow, result_id)
    assert (result.status, result.ground_truth_same) == ("rejected", True)
    assert (review.label, review.same_person) == ("same", True)
    assert session.get(Member, "R1").status == "rejected"


def test_rejection_without_a_label_is_refused_and_nothing_is_saved(session, make_result, add_member):
    add_member("R1")
    result_id = flagged(session, make_result, flags=("uncertain_similarity",), similarity=0.45)

    with pytest.raises(reviews.LabelRequired, match="can't tell"):
        reviews.decide(session, result_id, "kim", "reject")

    session.expire_all()
    assert session.get(ResultRow, result_id).status == "flagged"
    assert session.scalar(select(func.count()).select_from(Review)) == 0
    assert session.get(Member, "R1").status == "in_review"


def test_cant_tell_stores_no_ground_truth_and_approve_cannot_contradict(session, make_result, add_member):
    add_member("R1")
    unsure_id = flagged(session, make_result, flags=("gender_mismatch",), similarity=0.55)
    review = reviews.decide(session, unsure_id, "kim", "reject", label="unsure")
    session.expire_all()
    assert review.label == "unsure" and session.get(ResultRow, unsure_id).ground_truth_same is None

    other_id = flagged(session, make_result, similarity=0.45)
    with pytest.raises(reviews.LabelConflict):
        reviews.decide(session, other_id, "kim", "approve", label="different")
    with pytest.raises(ValueError, match="label"):
        reviews.decide(session, other_id, "kim", "reject", label="maybe")
    assert session.get(ResultRow, other_id).status == "flagged"


def test_kpis_and_training_read_the_label_not_the_decision(session, make_result, add_member, photo_store):
    from core.storage import kpi_aggregates
    from core.training.pipeline import reviewed_data

    member = add_member("R1")
    gallery_id, selfie_id = (p.id for p in member.photos)
    result_id = flagged(
        session,
        make_result,
        flags=("possible_duplicate",),
        similarity=0.95,
        gallery_photo_id=gallery_id,
        verification_photo_id=selfie_id,
    )
    reviews.decide(session, result_id, "kim", "reject")

    totals = kpi_aggregates.kpi_totals(session)
    assert totals.verification_accuracy == 1.0  # the engine said "same", the faces are the same
    _photos, pairs = reviewed_data(session, photo_store)
    assert [p.same for p in pairs] == [True]


# ----------------------------------------------------------------------------------------------
# Undo: the reviewer's own decision, within ten minutes, audited; KPIs and training follow


def test_undo_restores_the_pair_the_member_and_the_kpis(session, make_result, add_member):
    from core.storage import kpi_aggregates, queries

    add_member("R1")
    result_id = flagged(session, make_result, similarity=0.45)
    reviews.decide(session, result_id, "kim", "reject", label="different")
    assert kpi_aggregates.kpi_totals(session).verification_accuracy == 1.0

    reviews.undo(session, result_id, "kim")

    session.expire_all()
    result = session.get(ResultRow, result_id)
    assert (result.status, result.decided_by, result.ground_truth_same) == ("flagged", None, None)
    assert session.get(Member, "R1").status == "in_review"
    assert session.scalar(select(func.count()).select_from(Review)) == 0
    assert kpi_aggregates.kpi_totals(session).verification_accuracy is None
    assert [i.result_id for i in queries.review_queue(session)] == [result_id]
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == reviews.UNDO_DECISION)).one()
    assert (entry.actor, entry.detail["decision"], entry.detail["label"]) == ("kim", "reject", "different")

    # Back in the queue: it can be decided again, by anyone.
    reviews.decide(session, result_id, "lee", "approve")
    session.expire_all()
    assert session.get(Member, "R1").status == "verified"


def test_undo_only_by_the_reviewer_within_ten_minutes(session, make_result, add_member):
    from datetime import timedelta

    add_member("R1")
    result_id = flagged(session, make_result)
    review = reviews.decide(session, result_id, "kim", "approve")
    decided_at = review.decided_at

    with pytest.raises(reviews.NotUndoable, match="Only kim"):
        reviews.undo(session, result_id, "lee")
    with pytest.raises(reviews.NotUndoable, match="older than 10 minutes"):
        reviews.undo(session, result_id, "kim", now=decided_at + timedelta(minutes=10, seconds=1))
    reviews.undo(session, result_id, "kim", now=decided_at + timedelta(minutes=9))
    with pytest.raises(reviews.NotUndoable, match="no reviewer's decision"):
        reviews.undo(session, result_id, "kim")
