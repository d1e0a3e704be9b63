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


# ----------------------------------------------------------------------------------------------
# The page: the label apart from the decision, Reject confirms, Undo, back to the pair after sign-in


def _page_result(app_env, member_id, flags, similarity):
    from test_pages import flagged_result

    return flagged_result(app_env, member_id, flags=flags, similarity=similarity)


def _shown(at) -> str:
    from test_pages import texts

    return texts(at)


def _stored_review(app_env, result_id):
    from core.storage.schema import Review
    from core.storage.schema import VerificationResult as ResultRow

    with app_env.session() as session:
        row = session.get(ResultRow, result_id)
        review_row = session.query(Review).filter_by(result_id=result_id).one_or_none()
        return row.status, row.ground_truth_same, None if review_row is None else review_row.label


def test_page_duplicate_rejection_confirms_records_same_person_and_can_be_undone(app_env, open_page):
    from test_pages import sample_members

    sample_members(app_env)
    result_id = _page_result(app_env, "M0011", ("possible_duplicate",), 0.95)
    at = open_page("review", role="staff", lang="en")
    assert at.radio(key=f"review_label_{result_id}").value == "same"  # implied by the flag, shown
    assert "Rejecting on this flag records the two photos as the same person" in _shown(at)

    at.button(key=f"review_reject_{result_id}").click().run()  # what Alt+X does
    assert "Reject member M0011? The photos will be recorded as: The same person." in _shown(at)
    assert _stored_review(app_env, result_id) == ("flagged", None, None)  # nothing saved yet

    at.button(key="review_reject_yes").click().run()
    assert not at.exception
    assert "Rejected member M0011" in _shown(at)
    assert _stored_review(app_env, result_id) == ("rejected", True, "same")

    assert "You can undo it for 10 more minute(s)" in _shown(at)
    at.button(key="review_undo").click().run()
    assert "Your decision on member M0011 was undone" in _shown(at)
    assert _stored_review(app_env, result_id) == ("flagged", None, None)
    assert f"result {result_id}" in _shown(at)  # the pair is back on screen


def test_page_rejection_asks_the_label_and_cancel_saves_nothing(app_env, open_page):
    from test_pages import sample_members

    sample_members(app_env)
    result_id = _page_result(app_env, "M0003", ("uncertain_similarity",), 0.45)
    at = open_page("review", role="staff", lang="ko")
    assert at.radio(key=f"review_label_{result_id}").value is None  # no default: it is asked
    at.button(key=f"review_reject_{result_id}").click().run()
    assert "저장되지 않았습니다: 거부만으로는 사진이 어떤 사람인지 알 수 없습니다" in _shown(at)
    assert _stored_review(app_env, result_id) == ("flagged", None, None)

    at.radio(key=f"review_label_{result_id}").set_value("unsure")
    at.button(key=f"review_reject_{result_id}").click().run()
    assert '사진은 "판단할 수 없음"(으)로 기록됩니다' in _shown(at)
    at.button(key="review_reject_no").click().run()
    assert "거부를 취소했습니다" in _shown(at)
    assert _stored_review(app_env, result_id) == ("flagged", None, None)

    at.radio(key=f"review_label_{result_id}").set_value("unsure")
    at.button(key=f"review_reject_{result_id}").click().run()
    at.button(key="review_reject_yes").click().run()
    assert _stored_review(app_env, result_id) == ("rejected", None, "unsure")  # no ground truth


def test_page_returns_to_the_same_pair_after_a_reload_and_sign_in(app_env, open_page):
    from test_pages import sample_members

    sample_members(app_env)
    first = _page_result(app_env, "M0011", ("gender_mismatch",), 0.45)
    second = _page_result(app_env, "M0003", ("uncertain_similarity",), 0.5)
    at = open_page("review", role="staff", lang="en")
    assert f"result {first}" in _shown(at)
    at.button(key=f"review_skip_{first}").click().run()
    assert f"result {second}" in _shown(at)
    assert at.query_params["item"] == [str(second)]  # the address names the pair shown

    # A reload is a new browser session on the same address: signed in again, the same pair.
    from conftest import ROOT
    from streamlit.testing.v1 import AppTest

    reloaded = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=30)
    reloaded.query_params["item"] = str(second)
    reloaded.query_params["lang"] = "en"
    reloaded.switch_page("pages/2_Review_Queue.py")
    reloaded.run()
    assert f"result {second}" not in _shown(reloaded)  # signed out: the sign-in form
    reloaded.session_state["auth"] = {
        "username": "staff_user",
        "role": "staff",
        "display_name": None,
        "last_seen": __import__("time").time(),
    }
    reloaded.run()
    assert not reloaded.exception
    assert f"result {second}" in _shown(reloaded)


# ----------------------------------------------------------------------------------------------
# What the photos show, chosen before a language switch, is kept and is what the decision stores


def _switch(at, lang: str) -> None:
    at.radio(key="_lang_widget").set_value(lang).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["lang"] == lang


def test_page_label_chosen_before_a_language_switch_is_kept_and_stored(app_env, open_page):
    from test_language_switch_pages import shown_in_browser
    from test_pages import sample_members

    sample_members(app_env)
    result_id = _page_result(app_env, "M0003", ("uncertain_similarity",), 0.45)
    at = open_page("review", role="staff", lang="ko")
    label, gender = f"review_label_{result_id}", f"review_gender_{result_id}"
    # A form sends its values only when it is submitted: what the photos show must not wait in one,
    # or a language switch (a rerun without a submit) redraws the page without the choice.
    assert at.radio(key=label).form_id == "" and at.selectbox(key=gender).form_id == ""
    assert at.button(key=f"review_reject_{result_id}").form_id  # the decision is still submitted
    at.radio(key=label).set_value("different").run()
    at.selectbox(key=gender).set_value("F").run()
    held = at.radio(key=label).options[at.radio(key=label).index]
    assert held == "다른 사람"

    _switch(at, "en")
    assert at.title[0].value == "Review queue"  # the page is in English now
    radio = at.radio(key=label)
    assert radio.value == "different"
    assert shown_in_browser(radio, "radio", held) == "Different people"  # in the new language's words
    assert at.selectbox(key=gender).value == "F"

    at.button(key=f"review_reject_{result_id}").click().run()
    assert "The photos will be recorded as: Different people." in _shown(at)
    at.button(key="review_reject_no").click().run()  # cancelled: the choices come back as they were
    assert at.radio(key=label).value == "different" and at.selectbox(key=gender).value == "F"
    assert _stored_review(app_env, result_id) == ("flagged", None, None)

    _switch(at, "ko")
    assert at.radio(key=label).value == "different"
    at.button(key=f"review_reject_{result_id}").click().run()
    at.button(key="review_reject_yes").click().run()
    assert not at.exception
    assert _stored_review(app_env, result_id) == ("rejected", False, "different")
    with app_env.session() as session:
        from core.storage.schema import Review

        assert session.query(Review).filter_by(result_id=result_id).one().true_gender == "F"


def test_page_approve_against_the_machine_still_needs_the_confirmation_after_a_switch(app_env, open_page):
    from test_pages import sample_members

    sample_members(app_env)
    result_id = _page_result(app_env, "M0011", ("gender_mismatch",), 0.45)
    at = open_page("review", role="staff", lang="ko")
    label = f"review_label_{result_id}"
    at.radio(key=label).set_value("same").run()
    _switch(at, "en")
    assert at.radio(key=label).value == "same"

    at.button(key=f"review_approve_{result_id}").click().run()  # no "I compared the photos myself"
    assert "Not saved: the machine objects to this pair" in _shown(at)
    assert _stored_review(app_env, result_id) == ("flagged", None, None)
    assert at.radio(key=label).value == "same"

    at.checkbox(key=f"review_confirm_{result_id}").check()
    at.button(key=f"review_approve_{result_id}").click().run()
    assert not at.exception
    assert "Approved member M0011" in _shown(at)
    assert _stored_review(app_env, result_id) == ("approved", True, "same")
