"""The fraud checks on the pages (issue 12), through streamlit.testing.v1.AppTest with the real model:
the Verify page's pose challenge and the review queue's matched stored photo."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import select
from test_pages import ENGINE_TIMEOUT, SAMPLE, sample_members, texts

from core.dashboard import review, verify
from core.storage.schema import AuditEntry, Photo
from core.storage.schema import VerificationResult as ResultRow
from core.storage.schema_guards import Challenge
from core.verification import features
from core.verification.result import CHALLENGE_FAILED, POSSIBLE_DUPLICATE, REUSED_PHOTO


def most_frontal(prefix: str) -> str:
    """The sample photo of a person whose measured head pose is nearest to straight ahead."""
    poses = {}
    for path in sorted((SAMPLE / "images").glob(f"{prefix}_*.jpg")):
        pose = features.locate(path.read_bytes(), measure_pose=True).pose
        if pose:
            poses[path.name] = pose
    return min(poses, key=lambda n: sum(abs(poses[n][a]) for a in ("yaw", "pitch", "roll")))


def test_camera_mode_shows_the_pose_in_big_words_and_the_photo_is_checked_against_it(app_env, open_page):
    sample_members(app_env)
    # M0003's gallery is Norah_Jones_0004; her most frontal other photo shows none of the poses.
    frontal = most_frontal("Norah_Jones")
    assert frontal != "Norah_Jones_0004.jpg"
    pose = features.locate((SAMPLE / "images" / frontal).read_bytes(), measure_pose=True).pose
    assert all(abs(pose[a]) < 10 for a in ("yaw", "pitch", "roll")), pose

    at = open_page("verify", role="staff", timeout=ENGINE_TIMEOUT)
    at.radio(key="verify_mode").set_value("member").run()
    at.selectbox(key="verify_member").set_value("M0003").run()
    at.radio(key="verify_source_member").set_value("camera").run()
    assert "자세 확인" in texts(at)
    at.button(key="verify_challenge_new").click().run()
    assert not at.exception, [e.value for e in at.exception]
    held = at.session_state["verify_challenge"]
    # The words to read out, large: the page's language (Korean) as a header, English below it.
    assert held.instructions["ko"] in [h.value for h in at.header]
    assert held.instructions["en"] in [h.value for h in at.subheader]
    assert held.member_id == "M0003"

    # AppTest cannot drive st.camera_input; the upload source keeps the same challenge, and the
    # page sends it with the photo the same way.
    at.radio(key="verify_source_member").set_value("upload").run()
    assert at.session_state["verify_challenge"].token == held.token
    photo = (SAMPLE / "images" / frontal).read_bytes()
    at.file_uploader(key="verify_verification_file").set_value(("selfie.jpg", photo, "image/jpeg")).run()
    at.button(key="verify_run").click().run(timeout=ENGINE_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]

    with app_env.session() as session:
        row = session.scalar(select(ResultRow).order_by(ResultRow.id.desc()))
        used = session.scalar(select(Challenge).where(Challenge.token == held.token))
    assert used.used_at is not None and used.result_id == row.id
    assert CHALLENGE_FAILED in {f["code"] for f in row.flags} and row.status == "flagged"
    angle = row.checks["challenge"]["angle"]
    assert row.checks["challenge"]["kind"] == held.kind and abs(angle) < 10
    shown = texts(at)
    assert "요청한 자세가 보이지 않음" in shown and f"{angle:.0f}도" in shown
    assert "요청 자세 불일치" in shown  # the flag itself, in the flag list
    # Used up: the page offers a new pose, and the old one is refused with a clear message.
    assert at.session_state["verify_challenge"] is None
    with pytest.raises(verify.PairInputError) as refused:
        verify.verify_pair(
            app_env.session_factory,
            None,  # the engine is not reached: the challenge is refused first
            app_env.store,
            "staff_user",
            "M0003",
            verification_bytes=photo,
            challenge_token=held.token,
        )
    assert refused.value.key == "verify.challenge_used"
    assert "이미 사진에 사용한" in refused.value.text("ko")


def test_a_pose_asked_for_one_member_is_not_kept_for_another(app_env, open_page):
    sample_members(app_env)
    at = open_page("verify", role="staff", lang="en")
    at.radio(key="verify_mode").set_value("member").run()
    at.selectbox(key="verify_member").set_value("M0003").run()
    at.radio(key="verify_source_member").set_value("camera").run()
    at.button(key="verify_challenge_new").click().run()
    held = at.session_state["verify_challenge"]
    assert held.instructions["en"] in [h.value for h in at.header]  # English first on an English page
    at.selectbox(key="verify_member").set_value("M0002").run()
    assert at.session_state["verify_challenge"] is None
    assert held.instructions["en"] not in [h.value for h in at.header]


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


def current_photo(app_env, member_id: str, kind: str = "gallery") -> tuple[int, bytes]:
    with app_env.session() as session:
        photo = session.scalar(
            select(Photo).where(Photo.member_id == member_id, Photo.kind == kind, Photo.current.is_(True))
        )
        return photo.id, app_env.store.read(photo.stored_path)


def captions(at) -> list[str]:
    return [c for image in at.image for c in image.captions]


def views_of(app_env, member_id: str, photo_id: int) -> list[AuditEntry]:
    with app_env.session() as session:
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "view_photo", AuditEntry.target_id == member_id)
        ).all()
    return [e for e in entries if (e.detail or {}).get("photo_id") == photo_id]


def test_review_queue_shows_the_matched_stored_photo_beside_the_selfie(app_env, engine, open_page):
    sample_members(app_env)
    # M0002 sends M0001's gallery photo as its selfie: a file already stored for another member.
    other_id, other_bytes = current_photo(app_env, "M0001")
    borrowed = verify.verify_pair(
        app_env.session_factory, engine, app_env.store, "test", "M0002", verification_bytes=other_bytes
    )
    # M0003 sends a mirrored copy of its own gallery photo back as its selfie.
    own_id, own_bytes = current_photo(app_env, "M0003")
    mirrored = io.BytesIO()
    Image.open(io.BytesIO(own_bytes)).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored, "JPEG", quality=90)
    reused = verify.verify_pair(
        app_env.session_factory,
        engine,
        app_env.store,
        "test",
        "M0003",
        verification_bytes=mirrored.getvalue(),
    )
    with app_env.session() as session:
        # A file on file for anyone is a replay too: a possible duplicate and a reused photo.
        assert {POSSIBLE_DUPLICATE, REUSED_PHOTO} <= {
            f["code"] for f in session.get(ResultRow, borrowed.result_id).flags
        }
        assert REUSED_PHOTO in {f["code"] for f in session.get(ResultRow, reused.result_id).flags}

    # A manager may not open the review queue, nor see the matched photos through the service.
    with app_env.session() as session:
        with pytest.raises(review.PhotoAccessDenied):
            review.matched_photos(
                session, app_env.store, session.get(ResultRow, borrowed.result_id), "boss", "manager"
            )
    assert views_of(app_env, "M0001", other_id) == []

    at = open_page("review", role="staff", lang="en")
    at.multiselect(key="review_filter_flags").set_value([POSSIBLE_DUPLICATE]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["review_current"] == borrowed.result_id
    shown = captions(at)
    assert f"Possible duplicate · Member M0001's Gallery photo #{other_id}: the same file" in shown, shown
    assert "What the fraud check matched" in texts(at)
    # The other member's photo was seen by this reviewer on this page: in M0001's access history.
    seen = views_of(app_env, "M0001", other_id)
    assert [(e.actor, e.detail["why"]) for e in seen] == [("staff_user", "page:review_queue")]

    at.multiselect(key="review_filter_flags").set_value([REUSED_PHOTO]).run()
    if at.session_state["review_current"] == borrowed.result_id:  # both are reused photos
        at.button(key=f"review_skip_{borrowed.result_id}").click().run()
    assert at.session_state["review_current"] == reused.result_id
    shown = captions(at)
    assert any(c.startswith(f"Reused photo · This member's Gallery photo #{own_id}:") for c in shown), shown
    assert views_of(app_env, "M0003", own_id)
