"""Who sees which page, and what a visitor can reach without signing in (AppTest):

- the entry lists, with st.navigation, only the pages of the signed-in role, titled in the page's
  language; the others are registered hidden, so their address reaches the page's own refusal;
- member photos reach the browser inline, inside the signed-in session's messages: no /media
  address is made for them, so none answers a request without the session (a plain curl);
- with the database down the visitor sees a plain "service unavailable" in their language, with no
  traceback, path or driver message.
"""

from __future__ import annotations

import base64
import io
import tomllib

import pytest
import streamlit as st
from conftest import ROOT, USER_PASSWORD
from PIL import Image
from sqlalchemy import select
from test_pages import flagged_result, open_member, sample_members, texts

from core.i18n import t
from core.storage.schema import AuditEntry

VISIBLE = {
    "staff": ["home", "verify", "review", "members"],
    "manager": ["home", "kpis"],
    "data_scientist": ["home", "kpis", "retrain"],
    "admin": ["home", "verify", "review", "members", "kpis", "retrain", "users"],
}
ALL_PAGES = VISIBLE["admin"]


@pytest.fixture
def navigation_calls(monkeypatch):
    """Every st.navigation call of the runs: (position, [(title, url_path, visibility, default), ...])."""
    calls = []
    real = st.navigation

    def recording(pages, **kwargs):
        calls.append(
            (kwargs.get("position"), [(p.title, p.url_path, p.visibility, p._default) for p in pages])
        )
        return real(pages, **kwargs)

    monkeypatch.setattr(st, "navigation", recording)
    return calls


@pytest.mark.parametrize("lang", ["ko", "en"])
@pytest.mark.parametrize("role", list(VISIBLE))
def test_the_navigation_lists_only_the_pages_of_the_role_in_the_page_language(
    app_env, open_page, navigation_calls, role, lang
):
    open_page("home", role=role, lang=lang)
    position, pages = navigation_calls[-1]
    assert position == "sidebar"
    assert [title for title, _, visibility, _ in pages if visibility == "visible"] == [
        t(f"page.{key}", lang) for key in VISIBLE[role]
    ]
    # every page is registered, the others hidden: their address runs the page's own refusal
    assert [title for title, *_ in pages] == [t(f"page.{key}", lang) for key in ALL_PAGES]
    assert [url for _, url, *_ in pages] == [
        "",
        "Verify",
        "Review_Queue",
        "Members",
        "KPIs",
        "Retrain",
        "Users",
    ]
    assert [default for *_, default in pages] == [True] + [False] * 6


def test_a_visitor_who_is_not_signed_in_gets_no_page_list(app_env, open_page, navigation_calls):
    at = open_page("home", role=None)
    assert [position for position, _ in navigation_calls] == ["hidden"]  # the address kept, nothing listed
    assert [b.label for b in at.button if b.label == "로그인"]
    assert not at.get("page_link")


def test_signing_in_opens_the_page_of_the_address(app_env, open_page):
    """A visitor who came by /Members (a bookmark, a reload after expiry) lands there once signed in."""
    at = open_page("members", role=None)
    at.text_input(key="login_username").input("staff_user")
    at.text_input(key="login_password").input(USER_PASSWORD)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "회원"


@pytest.mark.parametrize(
    ("page", "role"), [("users", "staff"), ("retrain", "manager"), ("members", "data_scientist")]
)
def test_a_page_not_listed_refuses_when_reached_by_its_address(app_env, open_page, page, role):
    at = open_page(page, role=role)
    assert "이 화면을 열 수 없습니다" in texts(at)
    with app_env.session() as session:
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "access_denied"))
    assert (entry.actor, entry.target_id) == (f"{role}_user", page)


# ----------------------------------------------------------------------------------------------
# Photos


@pytest.fixture
def media_files(monkeypatch):
    """Every file handed to Streamlit's media endpoint (/media/<id>) during the runs: (mimetype, size)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    added = []
    real = MediaFileManager.add

    def recording(self, path_or_data, mimetype, coordinates, file_name=None, is_for_static_download=False):
        added.append((mimetype, len(path_or_data) if isinstance(path_or_data, bytes) else 0))
        return real(self, path_or_data, mimetype, coordinates, file_name, is_for_static_download)

    monkeypatch.setattr(MediaFileManager, "add", recording)
    return added


def inline_photos(at) -> list[Image.Image]:
    """The photos the page sent, decoded from their data: URIs; fails on any other address."""
    found = []
    for element in at.image:
        for image in element.proto.imgs:
            assert image.url.startswith("data:image/jpeg;base64,"), image.url[:60]
            found.append(Image.open(io.BytesIO(base64.b64decode(image.url.split(",", 1)[1]))))
    return found


def test_members_page_photos_have_no_media_address(app_env, open_page, media_files):
    sample_members(app_env)
    at = open_page("members", role="staff")
    open_member(at, "M0011")
    photos = inline_photos(at)
    assert len(photos) >= 2 and all(p.format == "JPEG" and not p.getexif() for p in photos)
    assert not [m for m in media_files if m[0].startswith("image/")], media_files
    with app_env.session() as session:  # still an audited view each
        views = session.scalars(select(AuditEntry).where(AuditEntry.action == "view_photo")).all()
    assert {(v.actor, v.target_id) for v in views} == {("staff_user", "M0011")} and len(views) >= 2


def test_review_queue_photos_have_no_media_address(app_env, open_page, media_files):
    sample_members(app_env)
    flagged_result(app_env, "M0011")
    at = open_page("review", role="staff", lang="en")
    assert len(inline_photos(at)) >= 2
    assert not [m for m in media_files if m[0].startswith("image/")], media_files


def test_verify_page_preview_has_no_media_address(app_env, open_page, media_files):
    sample_members(app_env)
    at = open_page("verify", role="staff")
    at.selectbox(key="verify_member").set_value("M0002").run()
    assert len(inline_photos(at)) >= 1
    assert not [m for m in media_files if m[0].startswith("image/")], media_files


# ----------------------------------------------------------------------------------------------
# The database down


DOWN = {
    "server": "mysql+pymysql://faceverify:secret@127.0.0.1:1/faceverify",  # nothing listens on port 1
    "file": "sqlite:////dev/null/faceverify.sqlite3",  # under a file: cannot be made
}


@pytest.mark.parametrize("lang", ["ko", "en"])
@pytest.mark.parametrize("database", list(DOWN))
@pytest.mark.parametrize("role", [None, "admin"])
def test_with_the_database_down_the_visitor_sees_a_plain_service_unavailable_page(
    tmp_path, monkeypatch, open_page, lang, database, role
):
    monkeypatch.setenv("DATABASE_URL", DOWN[database])
    monkeypatch.setenv("PHOTO_STORE_DIR", str(tmp_path / "photos"))
    monkeypatch.setenv("FACEVERIFY_WARM_ENGINE", "0")
    at = open_page("members" if role else "home", role=role, lang=lang)
    shown = texts(at) + "\n".join(c.value for c in at.code) + "\n".join(str(e.value) for e in at.exception)
    assert t("app.service_unavailable", lang) in shown
    assert t("app.service_unavailable_help", lang) in shown
    for leak in ("Traceback", "Error", "pymysql", "sqlite", "dev/null", "127.0.0.1", "secret", "/", "\\"):
        assert leak not in shown, (leak, shown)
    assert not at.text_input and not at.dataframe  # no sign-in form, no page content


def test_visitors_never_see_error_details():
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["client"]["showErrorDetails"] == "none"
