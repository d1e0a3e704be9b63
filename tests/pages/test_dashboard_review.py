"""The review queue's services: the machine's verdict in words, when Approve needs a confirmation,
the queue filtered by flag and sorted by risk (core.dashboard.review, core.storage.queries)."""

from __future__ import annotations

import pytest
from conftest import engine_result

from core.dashboard import review
from core.storage import queries
from core.workflows import batches


def _stored(session, add_member, member_id, similarity, flags, registered="M", predicted="M"):
    member = add_member(member_id)
    result = engine_result(
        "flagged", similarity, flags=flags, registered_gender=registered, predicted_gender=predicted
    )
    spec = batches.BatchItemSpec(member.id, member.photos[0].id, member.photos[1].id, registered)
    batch = batches.create_batch(session, "t", [spec], "test-v1", source="upload")
    row = batches.store_result(
        session, result, batch_id=batch.id, batch_item_id=batch.items[0].id, member_id=member.id
    )
    session.commit()
    return row


@pytest.mark.parametrize(
    ("similarity", "flags", "needs", "en", "ko"),
    [
        (
            0.03,
            ("uncertain_similarity",),
            True,
            "Machine's verdict: different people (similarity 0.030, threshold 0.500). Reject if you agree;",
            "기계 판정: 다른 사람 (유사도 0.030, 기준값 0.500). 동의하면 거부하세요.",
        ),
        (
            0.55,
            ("uncertain_similarity",),
            False,
            "Machine's verdict: the same person (similarity 0.550, threshold 0.500). Approve if you agree.",
            "기계 판정: 같은 사람 (유사도 0.550, 기준값 0.500). 동의하면 승인하세요.",
        ),
        (
            0.95,
            ("possible_duplicate",),
            True,
            "Machine's verdict: the same person (similarity 0.950, threshold 0.500). It objects: Possible duplicate.",
            "기계의 이의: 중복 가입 의심.",
        ),
        (
            None,
            ("no_face",),
            True,
            "Machine's verdict: none, it could not compare the faces (No face).",
            "없음",
        ),
    ],
)
def test_verdict_first_and_approve_never_the_default_against_the_machine(
    session, add_member, similarity, flags, needs, en, ko
):
    row = _stored(session, add_member, "R1", similarity, flags)
    assert review.approve_needs_confirmation(row) is needs
    assert review.verdict_text(row, "en").startswith(en) or en in review.verdict_text(row, "en")
    assert ko in review.verdict_text(row, "ko")


def test_a_gender_mismatch_is_an_objection(session, add_member):
    row = _stored(session, add_member, "R2", 0.9, ("gender_mismatch",), registered="F", predicted="M")
    assert review.machine_verdict(row) == review.SAME
    assert review.objections(row) == ["gender_mismatch"] and review.approve_needs_confirmation(row)


def test_queue_filtered_by_flag_and_ordered(session, add_member):
    hard = _stored(session, add_member, "Q1", 0.49, ("uncertain_similarity",))
    risky = _stored(session, add_member, "Q2", 0.41, ("uncertain_similarity",))
    dup = _stored(session, add_member, "Q3", 0.97, ("possible_duplicate",))
    faceless = _stored(session, add_member, "Q4", None, ("no_face",))
    first = lambda **kw: review.next_queue_item(session, **kw)[0].result_id  # noqa: E731
    assert first() == dup.id  # fraud and gender mismatch first in every order but "oldest"
    assert [i.result_id for i in queries.review_queue(session)] == [dup.id, hard.id, risky.id, faceless.id]
    assert [i.result_id for i in queries.review_queue(session, order="risk")] == [
        dup.id,
        risky.id,
        hard.id,
        faceless.id,
    ]
    assert [i.result_id for i in queries.review_queue(session, order="oldest")] == [
        hard.id,
        risky.id,
        dup.id,
        faceless.id,
    ]
    assert first(flags=["no_face"]) == faceless.id
    assert first(flags=["uncertain_similarity"], order="risk") == risky.id
    assert review.next_queue_item(session, [hard.id, risky.id], flags=["uncertain_similarity"])[0] is None
    item, backlog = review.next_queue_item(session, flags=["several_faces"])
    assert item is None and backlog == 4
    assert queries.queue_flag_counts(session) == {
        "uncertain_similarity": 2,
        "no_face": 1,
        "possible_duplicate": 1,
    }
    with pytest.raises(ValueError):
        queries.review_queue(session, order="random")
