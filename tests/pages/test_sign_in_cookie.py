"""The sign-in kept across reloads, as the pages drive it (AppTest): a sign-in through the form
starts a server-side sign-in, and a component asks the dashboard's route to set its token as an
HttpOnly cookie (the page holds only a one-time code, never the token); the sign-out ends it and
clears the cookie; a reset password elsewhere signs this session out. (The reload itself and the
cookie's attributes, in a real browser: tests/e2e/test_daily_use.py.)"""

from __future__ import annotations

import re

from conftest import USER_PASSWORD
from sqlalchemy import select

from core.dashboard import cookies
from core.storage import sign_in_sessions as sis
from core.storage import users as user_store


def _cookie_writes(at) -> list[tuple[str, int] | None]:
    """What each hidden component asks the cookie route to set: (value, max_age) for its one-time
    code (None when the code is spent); the page's html never holds the token itself."""
    writes = []
    for element in at.get("iframe"):
        html = getattr(element.proto, "srcdoc", "") or ""
        for code in re.findall(rf"{re.escape(cookies.COOKIE_ROUTE)}/([A-Za-z0-9_-]+)", html):
            writes.append(cookies.take(code))
    return writes


def _sign_in(at) -> None:
    at.text_input(key="login_username").input("staff_user")
    at.text_input(key="login_password").input(USER_PASSWORD)
    at.button[0].click().run()
    assert not at.exception


def test_sign_in_writes_the_cookie_of_a_server_side_sign_in_and_sign_out_clears_it(app_env, open_page):
    at = open_page("home", role=None)
    assert not _cookie_writes(at)
    _sign_in(at)
    html = " ".join(getattr(e.proto, "srcdoc", "") for e in at.get("iframe"))
    assert at.session_state["sign_in_token"] not in html, "the token never goes into the page"
    writes = _cookie_writes(at)
    assert len(writes) == 1, writes
    token, max_age = writes[0]
    assert max_age == 12 * 3600
    with app_env.session() as session:
        row = session.scalar(select(sis.SignInSession))
    assert row.token_hash == sis.token_hash(token) and row.ended_at is None
    assert at.session_state["auth"]["sign_in"] == row.id
    at.run()  # drawn again on every run (the iframe must live to run its script), the code spent
    assert _cookie_writes(at) == [None]

    at.button(key="sign_out").click().run()
    assert _cookie_writes(at) == [("", 0)]
    with app_env.session() as session:
        row = session.get(sis.SignInSession, row.id)
    assert row.ended_at is not None and row.end_reason == sis.SIGNED_OUT


def test_a_password_reset_elsewhere_ends_this_sign_in_at_the_next_click(app_env, open_page):
    at = open_page("home", role=None)
    _sign_in(at)
    with app_env.session() as session:
        user_store.set_password(session, "staff_user", "a new password 123", actor="admin_user")
    at.run()
    assert "auth" not in at.session_state
    assert at.text_input(key="login_username")  # the sign-in form again
    assert _cookie_writes(at) == [("", 0)]
