"""The Verify page in daily use (issue 15): a result belongs to the mode and input it came from, the
results picker follows a new batch, the progress bar and its text read one count, single
verifications gather in the day's batch. Through AppTest with the real engine."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from test_pages import (
    ENGINE_TIMEOUT,
    SAMPLE,
    flagged_result,
    manifest_and_zip,
    sample_members,
    upload_batch,
    wait_for_batch,
)

from core.dashboard import formatting, page_batches, verify
from core.storage.schema import Batch


def _result_shown(at) -> bool:
    return any(m.label == "유사도" for m in at.metric)


def test_a_result_vanishes_when_the_mode_or_the_member_changes(app_env, open_page):
    sample_members(app_env)
    at = open_page("verify", role="staff", timeout=ENGINE_TIMEOUT)
    at.radio(key="verify_mode").set_value("member").run()
    at.selectbox(key="verify_member").set_value("M0002").run()
    at.button(key="verify_run").click().run(timeout=ENGINE_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert _result_shown(at)

    # "Upload two photos": the empty form shows no answer of the member verified before.
    at.radio(key="verify_mode").set_value("upload").run()
    assert not _result_shown(at) and "verify_outcome" not in at.session_state
    # Back to the members: the old answer does not come back either; it was for an input since left.
    at.radio(key="verify_mode").set_value("member").run()
    assert not _result_shown(at)

    # Another member hides the answer too.
    at.selectbox(key="verify_member").set_value("M0002").run()
    at.button(key="verify_run").click().run(timeout=ENGINE_TIMEOUT)
    assert _result_shown(at)
    at.selectbox(key="verify_member").set_value("M0003").run()
    assert not _result_shown(at)


def test_a_new_verification_photo_hides_the_answer_for_the_old_one(app_env, open_page):
    at = open_page("verify", role="staff", lang="en", timeout=ENGINE_TIMEOUT)
    at.radio(key="verify_mode").set_value("upload").run()
    at.text_input(key="verify_new_member").input("W0001").run()
    at.selectbox(key="verify_gender").set_value("F").run()
    images = SAMPLE / "images"
    at.file_uploader(key="verify_gallery_file").set_value(
        ("g.jpg", (images / "Norah_Jones_0004.jpg").read_bytes(), "image/jpeg")
    ).run()
    at.file_uploader(key="verify_verification_file").set_value(
        ("v.jpg", (images / "Norah_Jones_0001.jpg").read_bytes(), "image/jpeg")
    ).run()
    at.button(key="verify_run").click().run(timeout=ENGINE_TIMEOUT)
    assert any(m.label == "Similarity" for m in at.metric)
    at.file_uploader(key="verify_verification_file").set_value(
        ("v2.jpg", (images / "John_Howard_0005.jpg").read_bytes(), "image/jpeg")
    ).run()
    assert not any(m.label == "Similarity" for m in at.metric)


def test_the_results_picker_follows_a_new_batch_once(app_env, open_page):
    sample_members(app_env)
    flagged_result(app_env, "M0011")  # an earlier batch: the day's single verifications
    with app_env.session() as session:
        earlier = session.scalar(select(Batch.id))
    photos = ["John_Howard_0014.jpg", "John_Howard_0005.jpg"]
    manifest, photo_zip = manifest_and_zip([["B1", "M", photos[0], photos[1]]], photos)
    at = open_page("verify", role="staff", timeout=ENGINE_TIMEOUT)
    at.session_state["verify_tab_index"] = 1
    at.run()
    at.selectbox(key="verify_open_select").set_value(earlier).run()
    assert at.selectbox(key="verify_open_select").value == earlier

    upload_batch(at, manifest, photo_zip)
    new = wait_for_batch(app_env)
    at.run(timeout=ENGINE_TIMEOUT)
    at.run(timeout=ENGINE_TIMEOUT)  # the finished job's own rerun
    assert not at.exception, [e.value for e in at.exception]
    assert new.id != earlier and at.selectbox(key="verify_open_select").value == new.id
    # Picking another batch afterwards is not undone by the finished job.
    at.selectbox(key="verify_open_select").set_value(earlier).run()
    at.run()
    assert at.selectbox(key="verify_open_select").value == earlier


def test_recent_batches_name_the_day_batch_and_the_source_in_the_page_language(app_env):
    sample_members(app_env)
    flagged_result(app_env, "M0011")
    flagged_result(app_env, "M0003")
    with app_env.session() as session:
        assert session.scalar(select(func.count(Batch.id))) == 1  # both in the day's batch
        recent = verify.recent_batches(session, lang="ko")
    assert recent.iloc[0]["name"].startswith("단건 인증 ") and recent.iloc[0]["name"].endswith("인증 화면")
    shown = formatting.table(recent, "ko", formats={"status": "batch_status"}).iloc[0].tolist()
    assert "인증 화면" in shown and "완료" in shown and 2 in shown  # source, status, pairs
    assert "verify_page" not in shown and "completed" not in shown


def test_progress_text_and_bar_read_one_count():
    job = page_batches.Job(key="k", actor="staff")
    first = job.progress()
    assert first.text_key == "batch.preparing" and first.fraction == 0.0  # never "0 of 0"
    job.report(1, 5)
    assert job.progress().text_key == "batch.importing"
    job.report(5, 5, page_batches.RUNNING)
    now = job.progress()
    assert (now.phase, now.done, now.total, now.fraction, now.text_key) == (
        page_batches.RUNNING,
        5,
        5,
        1.0,
        "batch.running",
    )
    job.report(1, 5)
    assert job.progress().fraction == 0.2


def _uploaders(at):
    return list(at.get("file_uploader"))


def test_streamlit_texts_a_page_may_set_are_in_the_page_language(app_env, open_page):
    """Upload widgets: label, help (how, types, limit) and the limit Streamlit prints are ours, in
    Korean; multiselects have a Korean placeholder instead of "Choose options"."""
    hangul = re.compile(r"[\uac00-\ud7a3]")
    at = open_page("verify", role="staff")
    at.radio(key="verify_mode").set_value("upload").run()
    at.radio(key="verify_source_upload").set_value("upload").run()
    found = _uploaders(at)  # the gallery and the verification photo
    at.session_state["verify_tab_index"] = 1
    at.run()
    at.radio(key="batch_source").set_value("zip").run()
    found += _uploaders(at)  # the manifest and the ZIP
    members = open_page("members", role="admin")
    found += _uploaders(members)
    limits = {"photo": 25, "table": 20, "zip": 200}
    kinds = {}
    for uploader in found:
        proto = uploader.proto
        assert hangul.search(proto.label) and hangul.search(proto.help), proto.label
        assert "MB" in proto.help and "Upload" in proto.help  # names Streamlit's English button
        kinds[proto.id] = proto.max_upload_size_mb
    assert len(found) >= 6 and set(kinds.values()) == set(limits.values())

    at.session_state["verify_tab_index"] = 1
    at.run()
    at.radio(key="batch_source").set_value("members").run()
    for box in at.multiselect:
        assert box.proto.placeholder and hangul.search(box.proto.placeholder), box.label
    assert at.multiselect, "the member batch has a multiselect"


def _keys_in_order(node) -> list[str]:
    """Widget keys of the page in the order they are drawn."""
    found = []
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for key in sorted(children):
            found += _keys_in_order(children[key])
    elif getattr(node, "key", None):
        found.append(node.key)
    return found


def test_the_pose_check_is_not_between_the_two_upload_fields(app_env, open_page):
    at = open_page("verify", role="staff", lang="en")
    at.radio(key="verify_mode").set_value("upload").run()
    order = _keys_in_order(at.main)
    gallery, selfie = order.index("verify_gallery_file"), order.index("verify_verification_file")
    assert "verify_challenge_new" not in order[gallery:selfie]  # nothing between the two uploads
    assert order.index("verify_challenge_new") > selfie
    at.radio(key="verify_source_upload").set_value("camera").run()
    assert "verify_challenge_new" in _keys_in_order(at.main)  # a photo taken now: the pose is asked


def test_the_answer_is_scrolled_into_view_once(app_env, open_page):
    at = open_page("verify", role="staff", lang="en", timeout=ENGINE_TIMEOUT)
    at.radio(key="verify_mode").set_value("upload").run()
    at.text_input(key="verify_new_member").input("W0002").run()
    at.selectbox(key="verify_gender").set_value("F").run()
    images = SAMPLE / "images"
    at.file_uploader(key="verify_gallery_file").set_value(
        ("g.jpg", (images / "Norah_Jones_0004.jpg").read_bytes(), "image/jpeg")
    ).run()
    at.file_uploader(key="verify_verification_file").set_value(
        ("v.jpg", (images / "Norah_Jones_0001.jpg").read_bytes(), "image/jpeg")
    ).run()
    at.button(key="verify_run").click().run(timeout=ENGINE_TIMEOUT)
    scripts = [e for e in at.get("iframe") if "scrollIntoView" in str(e.proto)]
    assert len(scripts) == 1
    at.run()
    assert not [e for e in at.get("iframe") if "scrollIntoView" in str(e.proto)]  # not on every rerun
