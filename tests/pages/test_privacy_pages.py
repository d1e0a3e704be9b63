"""The pages' side of privacy (AppTest): every member photo a page shows is an audited view; the
Members page shows administrators a member's access history, exports the member's data and erases
the member after a confirmation that names them. Real sample photos, the embedded database.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import USER_PASSWORD, engine_result
from sqlalchemy import func, select
from test_pages import click_row, open_member

from core.dashboard import access, downloads, verify
from core.storage.schema import MEMBER_ERASED, AuditEntry, Member, Photo
from core.workflows import importer

ROOT = Path(__file__).resolve().parents[2]


def views(app_env, member_id: str) -> list[tuple[str, str, str]]:
    with app_env.session() as session:
        entries = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "view_photo", AuditEntry.target_id == member_id)
            .order_by(AuditEntry.id)
        ).all()
    return sorted((e.actor, e.detail["kind"], e.detail["why"]) for e in entries)


def load_sample(app_env) -> None:
    with app_env.session() as session:
        importer.load_sample_members(session, actor="test", photo_store=app_env.store)


def test_members_page_views_are_audited_and_only_admins_see_access_history(app_env, open_page):
    load_sample(app_env)
    staff = open_page("pages/3_Members.py", "staff", "en", timeout=60)
    open_member(staff, "M0007")
    assert len(staff.image) == 3  # the gallery and verification photos, and the profile strip's one photo
    assert views(app_env, "M0007") == [
        ("staff_user", "gallery", "page:members"),
        ("staff_user", "verification", "page:members"),
    ]
    click_row(staff, "M0007")
    staff.run()  # drawn again at once: the same views, not new ones
    assert len(staff.image) == 3
    assert len(views(app_env, "M0007")) == 2
    keys = {b.key for b in staff.button}
    assert "members_erase" not in keys and "members_export" not in keys
    assert "Access history" not in " ".join(m.value for m in staff.markdown)

    admin = open_page("pages/3_Members.py", "admin", "en", timeout=60)
    open_member(admin, "M0007")
    assert "Access history (administrators only)" in " ".join(m.value for m in admin.markdown)
    history = admin.dataframe[-1].value
    assert {"staff_user", "admin_user"} <= set(history["Who"]) and set(history["Where"]) == {"Members page"}


def _link_code(at) -> str:
    links = [el for el in at.get("link_button") if el.proto.url.startswith(downloads.DOWNLOAD_ROUTE + "/")]
    assert len(links) == 1, [el.proto.url for el in at.get("link_button")]
    return links[0].proto.url.rsplit("/", 1)[1]


def test_members_page_export_is_a_one_time_download_of_this_sign_in_never_a_media_file(app_env, open_page):
    """The ZIP never goes through st.download_button (whose /media address answers without a
    sign-in): the page links to the dashboard's own route, which hands it once to the browser that
    holds this sign-in's cookie while the sign-in holds, and audits the download."""
    load_sample(app_env)
    with app_env.session() as session:
        mine, my_token = access.sign_in(session, "admin_user", USER_PASSWORD)
        _other, other_token = access.sign_in(session, "admin_user", USER_PASSWORD)
        _staff, staff_token = access.sign_in(session, "staff_user", USER_PASSWORD)
    admin = open_page("pages/3_Members.py", "admin", "en", timeout=60)
    admin.session_state["auth"]["sign_in"] = mine.sign_in
    open_member(admin, "M0007")
    click_row(admin, "M0007")
    admin.button(key="members_export").click().run()
    assert not admin.exception
    assert not admin.get("download_button"), "no Streamlit download (a /media address) for the ZIP"
    with app_env.session() as session:
        exported = session.scalars(select(AuditEntry).where(AuditEntry.action == "export_member")).one()
    assert (exported.actor, exported.target_id, exported.detail["why"]) == (
        "admin_user",
        "M0007",
        "page:members",
    )
    code = _link_code(admin)
    offered = downloads._offers[code]
    assert offered.path.is_file() and offered.sign_in == mine.sign_in

    # Without the cookie, or with another sign-in's (even the same user's): refused, and the code is spent.
    for token in (None, other_token, staff_token):
        click_row(admin, "M0007")
        admin.button(key="members_export").click().run()
        code = _link_code(admin)
        path = downloads._offers[code].path
        with app_env.session() as session, pytest.raises(downloads.Refused):
            downloads.take(session, code, token, 30)
        assert not path.exists(), "a refused download's file is deleted"
        with app_env.session() as session, pytest.raises(downloads.Refused, match="unknown"):
            downloads.take(session, code, my_token, 30)

    # This sign-in: the ZIP once, audited; the same link again is refused.
    click_row(admin, "M0007")
    admin.button(key="members_export").click().run()
    code = _link_code(admin)
    with app_env.session() as session:
        got = downloads.take(session, code, my_token, 30)
        with zipfile.ZipFile(got.path) as archive:
            assert json.loads(archive.read("member.json"))["member_id"] == "M0007"
        with pytest.raises(downloads.Refused):
            downloads.take(session, code, my_token, 30)
        fetched = session.scalars(select(AuditEntry).where(AuditEntry.action == downloads.DOWNLOAD)).all()
    assert [(e.actor, e.target_id, e.detail["file"]) for e in fetched] == [
        ("admin_user", "M0007", "member-M0007.zip")
    ]
    got.path.unlink()

    # After sign-out the link is dead too.
    click_row(admin, "M0007")
    admin.button(key="members_export").click().run()
    code = _link_code(admin)
    with app_env.session() as session:
        access.sign_out(session, "admin_user", mine.sign_in)
        with pytest.raises(downloads.Refused, match="not_signed_in"):
            downloads.take(session, code, my_token, 30)


def test_members_page_export_past_the_size_cap_is_refused_with_a_message(app_env, monkeypatch, open_page):
    load_sample(app_env)
    monkeypatch.setenv("PRIVACY_EXPORT_MAX_MB", "0.01")
    admin = open_page("pages/3_Members.py", "admin", "en")
    with app_env.session() as session:
        admin.session_state["auth"]["sign_in"] = access.sign_in(session, "admin_user", USER_PASSWORD)[
            0
        ].sign_in
    open_member(admin, "M0007")
    click_row(admin, "M0007")
    admin.button(key="members_export").click().run()
    assert not admin.exception
    assert any("larger than the export limit" in e.value for e in admin.error)
    assert not admin.get("download_button") and not admin.get("link_button")
    with app_env.session() as session:
        assert not session.scalars(select(AuditEntry).where(AuditEntry.action == "export_member")).all()


def test_members_page_erases_a_member_after_typing_their_id(app_env, open_page):
    load_sample(app_env)
    with app_env.session() as session:
        paths = [p.stored_path for p in session.scalars(select(Photo).where(Photo.member_id == "M0003"))]
    assert all((app_env.store_dir / p).exists() for p in paths)
    at = open_page("pages/3_Members.py", "admin", "en", timeout=60)
    open_member(at, "M0003")
    assert "Erase member M0003 now" in [b.label for b in at.button]
    assert at.button(key="members_erase").disabled
    click_row(at, "M0003")
    at.text_input(key="members_erase_typed_M0003").input("M0033").run()
    assert at.button(key="members_erase").disabled  # another ID: still refused
    click_row(at, "M0003")
    at.text_input(key="members_erase_typed_M0003").input("M0003").run()
    assert not at.button(key="members_erase").disabled
    click_row(at, "M0003")
    at.button(key="members_erase").click().run()
    assert not at.exception
    assert any("Member M0003 erased: 2 photos" in s.value for s in at.success)
    with app_env.session() as session:
        assert session.get(Member, "M0003").status == MEMBER_ERASED
        assert session.scalar(select(func.count()).select_from(Photo).where(Photo.member_id == "M0003")) == 0
        erased = session.scalars(select(AuditEntry).where(AuditEntry.action == "erase_member")).one()
    assert (erased.actor, erased.detail["via"]) == ("admin_user", "page")
    assert not any((app_env.store_dir / p).exists() for p in paths)
    # The member still opens: status erased, no photos, the history kept.
    open_member(at, "M0003")
    assert len(at.image) == 0 and not at.exception


def test_review_queue_and_verify_page_views_are_audited(app_env, open_page):
    load_sample(app_env)
    with app_env.session() as session:
        member = session.get(Member, "M0011")
        photos = {p.kind: p.id for p in member.photos if p.current}
        result = engine_result("flagged", 0.45, flags=("uncertain_similarity",), registered_gender="M")
        verify.record_single_result(
            session, "test", result, "M0011", photos["gallery"], photos["verification"], "M"
        )
    review = open_page("pages/2_Review_Queue.py", "staff", "en", timeout=60)
    assert len(review.image) >= 2
    assert views(app_env, "M0011") == [
        ("staff_user", "gallery", "page:review_queue"),
        ("staff_user", "verification", "page:review_queue"),
    ]
    # The Verify page previews the first member's stored photos before a run.
    open_page("pages/1_Verify.py", "staff", "en", timeout=60)
    assert views(app_env, "M0001") == [
        ("staff_user", "gallery", "page:verify"),
        ("staff_user", "verification", "page:verify"),
    ]
