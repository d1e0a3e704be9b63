"""Every table the pages show goes through core.dashboard.formatting.table: headings and cells in the
page's language, never a stored code (status, source, audit action, gender, flag, role, a dict).
Built from real stored data (sample members, a flagged result, a review with a long note, the audit
trail), in both languages, as each page calls it."""

from __future__ import annotations

import pytest
from conftest import engine_result

from core.dashboard import formatting, members, users, verify
from core.i18n import STRINGS
from core.storage import queries
from core.storage import users as accounts
from core.storage.schema import (
    BATCH_COMPLETED,
    BATCH_FAILED,
    BATCH_INTERRUPTED,
    BATCH_PENDING,
    BATCH_RUNNING,
    MEMBER_STATUSES,
    Member,
)
from core.verification.result import STATUSES
from core.workflows import importer, privacy, reviews

LONG_NOTE = "Same person: the ears and the scar above the left eyebrow match; the photo is older. " * 2
SOURCES = ["upload", "members", "sample", "verify_page", "api", "gallery-addition", "reverify"]


def raw_codes() -> set[str]:
    """Every code a table could leak if a column skipped its label function."""
    batch_statuses = {BATCH_PENDING, BATCH_RUNNING, BATCH_COMPLETED, BATCH_INTERRUPTED, BATCH_FAILED}
    codes = {*STATUSES, *MEMBER_STATUSES, *batch_statuses, *SOURCES, "M", "F", "gallery", "verification"}
    codes |= {
        key.split(".", 1)[1] for key in STRINGS["en"] if key.startswith(("audit_action.", "flag.", "role."))
    }
    codes |= {"shipped", "page:members", "page:verify", "True", "False"}
    return codes


@pytest.fixture
def stored(session, photo_store):
    importer.load_sample_members(session, actor="test", photo_store=photo_store)
    member = session.get(Member, "M0011")
    photos = {p.kind: p.id for p in member.photos if p.current}
    result = engine_result(
        "flagged", 0.9996, flags=("gender_mismatch",), registered_gender="M", predicted_gender="F"
    )
    _, result_id = verify.record_single_result(
        session, "staff_user", result, "M0011", photos["gallery"], photos["verification"], "M"
    )
    reviews.decide(session, result_id, "staff_user", "approve", note=LONG_NOTE, same_person=True)
    accounts.create_user(session, "a_manager", "a-long-password-1", "manager", actor="admin_user")
    history = queries.member_history(session, "M0011", viewer="staff_user", why=members.PAGE)
    members.photos_for_view(session, photo_store, history.photos, "staff_user")  # audited views
    history = queries.member_history(session, "M0011")
    page = queries.list_members(session, page_size=25)
    batch_id = history.results[0].batch_id
    return {
        "members": (members.members_frame(page), {"status": "member_status"}, "col"),
        "history": (members.history_frame(history), None, "col"),
        "audit": (members.audit_frame(history.audit), None, "col"),
        "access": (members.access_frame(privacy.access_history(session, "M0011")), None, "col"),
        "recent": (verify.recent_batches(session), {"status": "batch_status"}, "col"),
        "results": (verify.batch_results_frame(session, batch_id).drop(columns=["reasons"]), None, "col"),
        "users": (users.users_frame(session), None, "users.col"),
    }


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_no_table_shows_a_stored_code_or_a_dict(stored, lang):
    codes = raw_codes()
    for name, (frame, formats, heading) in stored.items():
        assert not frame.empty, name
        shown = formatting.table(frame, lang, formats=formats, heading=heading)
        for column, title in zip(frame.columns, shown.columns, strict=True):
            assert f"{heading}.{column}" in STRINGS[lang], f"{name}: heading {column!r} has no label"
            assert title != column or column in ("ms",), f"{name}: heading {column!r} shown raw"
        for column in shown.columns:
            for cell in shown[column]:
                text = str(cell)
                assert text not in codes, f"{name}.{column}: raw code {text!r}"
                assert not text.startswith("{"), f"{name}.{column}: a dict {text!r}"


def test_similarity_has_one_format_and_the_note_is_whole(stored):
    history, _, _ = stored["history"]
    shown = formatting.table(history, "en")
    assert shown["Similarity"].tolist() == ["1.000"]  # 0.9996, never a bare "1" beside "0.999"
    assert shown["Note"].tolist() == [LONG_NOTE]
    listed = formatting.table(stored["members"][0], "en", formats={"status": "member_status"})
    values = [v for v in listed["Similarity"] if v != "—"]
    assert values and all(len(v.split(".")[1]) == 3 for v in values)


def test_audit_details_and_views_read_as_words():
    detail = {"from": "staff", "to": "manager", "why": "page:members", "accepted": True}
    assert (
        formatting.detail_text(detail, "en")
        == "from: Verification staff · to: Manager · where: Members page · accepted: yes"
    )
    assert formatting.detail_text(detail, "ko").startswith("이전: ")
    assert formatting.why_text("page:members", "ko").endswith("화면")
    assert formatting.actor_text("shipped", "en") == "shipped with the product"
    assert formatting.label("audit_action", "some_new_action", "en") == "some new action"  # never raw


def test_members_page_helpers_open_the_clicked_row_and_put_the_gallery_first():
    import pandas as pd

    frame = pd.DataFrame({"member_id": ["M1", "M2"]})
    assert members.selected_member(frame, [1]) == "M2"
    assert members.selected_member(frame, []) is None and members.selected_member(frame, [5]) is None
    photos = [("verification", True, b"v", ""), ("gallery", True, b"g", "")]
    assert [p[0] for p in members.gallery_first(photos)] == ["gallery", "verification"]
    assert members.table_key(1, ("a",)) != members.table_key(2, ("a",))
