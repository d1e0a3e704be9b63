"""Sign-in for the dashboard: the form (or the first administrator's), the forced password change,
sign-out, the idle expiry, and the drafts kept across an expired session.

Sign-in state lives in st.session_state (on the server). Widgets whose key starts with KEEP_PREFIX
(e.g. a reviewer's note) are copied aside on every run, so when a session expires in the middle of
typing, the text comes back after signing in again.

A reload opens a new Streamlit session, which would start signed out: so each sign-in also starts a
server-side one (core.storage.sign_in_sessions) whose random token the browser keeps as a cookie
(COOKIE: HttpOnly, SameSite=Strict, Path=/, Secure over https; a tiny component asks the dashboard's
own route to set it, core.dashboard.cookies). A new session reads it from st.context.cookies and
signs the user in again while the server's row holds. Sign-out ends the row and clears the cookie.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st
import streamlit.components.v1 as components
from sqlalchemy.exc import SQLAlchemyError

from core import config
from core.dashboard import access, cookies
from core.dashboard.users import error_text
from core.errors import FaceVerifyError
from core.i18n import LANGUAGES, t

AUTH_KEY = "auth"
DRAFTS_KEY = "drafts"
KEEP_PREFIX = "keep_"
NOTICE_KEY = "auth_notice"
CREATED_KEY = "first_admin_created"
ADMIN_ROLE = "admin"
COOKIE = "faceverify_sign_in"
TOKEN_KEY = "sign_in_token"  # the token to write into the browser's cookie (this session's sign-in)
CLEAR_KEY = "sign_in_cookie_clear"  # the browser's cookie is to be cleared (signed out)
TRIED_KEY = "sign_in_cookie_tried"  # the cookie's token was tried once in this session
SCRIPT_KEY = "sign_in_cookie_script"  # (value, the component's html): one one-time code per change


@dataclass(frozen=True)
class User:
    username: str
    role: str
    display_name: str | None


def idle_minutes() -> float:
    return config.get("SESSION_IDLE_MINUTES")


def save_drafts() -> None:
    drafts = st.session_state.setdefault(DRAFTS_KEY, {})
    for key in list(st.session_state):
        if isinstance(key, str) and key.startswith(KEEP_PREFIX):
            value = st.session_state[key]
            if value not in (None, ""):
                drafts[key] = value


def restore_draft(key: str) -> None:
    """Call before drawing a KEEP_PREFIX widget: puts back what was typed before a sign-in."""
    drafts = st.session_state.get(DRAFTS_KEY, {})
    if key not in st.session_state and key in drafts:
        st.session_state[key] = drafts[key]


def drop_draft(key: str) -> None:
    st.session_state.get(DRAFTS_KEY, {}).pop(key, None)
    st.session_state.pop(key, None)


def _hours() -> float:
    return config.get("SESSION_HOURS")


def _browser_token() -> str | None:
    """The sign-in token the browser sent when this session connected (st.context.cookies)."""
    try:
        jar = st.context.cookies
        value = jar.get(COOKIE) if hasattr(jar, "get") else None
    except Exception:  # outside a browser session
        return None
    return value if isinstance(value, str) and value else None  # AppTest hands out a mock


def _cookie_script(value: str, max_age: int) -> str:
    # The value goes to the dashboard's own route under a one-time code, which answers with an
    # HttpOnly Set-Cookie (ui/app.py): no script on the page can read the token. The component's
    # iframe (sandboxed with allow-scripts and allow-same-origin) shares the dashboard's origin.
    code = cookies.offer(value, max_age)
    return f"""<script>
(() => {{
  const top = window.parent.location;
  const https = top.protocol === "https:" ? "?https=1" : "";
  fetch(top.origin + "{cookies.COOKIE_ROUTE}/{code}" + https, {{method: "POST", credentials: "same-origin"}});
}})();
</script>"""


def keep_in_browser() -> None:
    """Write (after a sign-in) or clear (after a sign-out) the browser's sign-in cookie, once a
    session each: a hidden component whose script asks the dashboard's server to set it."""
    token = st.session_state.get(TOKEN_KEY)
    if token and st.session_state.get(AUTH_KEY):
        if _browser_token() != token:
            script = st.session_state.get(SCRIPT_KEY)
            if script is None or script[0] != token:  # one code a sign-in: the same iframe each run
                script = st.session_state[SCRIPT_KEY] = (token, _cookie_script(token, int(_hours() * 3600)))
            with st.sidebar:
                components.html(script[1], height=0)
    elif st.session_state.get(CLEAR_KEY):
        script = st.session_state.get(SCRIPT_KEY)
        if script is None or script[0] != "":
            script = st.session_state[SCRIPT_KEY] = ("", _cookie_script("", 0))
        with st.sidebar:
            components.html(script[1], height=0)


def _signed_out(session_factory, current: dict, reason: str, notice: str) -> None:
    """This session's sign-in is over: the server's row ended (audited), the cookie to be cleared."""
    st.session_state.pop(AUTH_KEY, None)
    st.session_state.pop(TOKEN_KEY, None)
    st.session_state[CLEAR_KEY] = True
    st.session_state[NOTICE_KEY] = notice
    try:
        with session_factory() as session:
            access.sign_out(session, current["username"], current.get("sign_in"), reason)
    except (SQLAlchemyError, FaceVerifyError):
        pass


def _restore(session_factory) -> dict | None:
    """Sign the browser's user in again from its cookie, once a session, when the server's sign-in
    still holds (after a reload or in a new tab)."""
    token = _browser_token()
    if not token or st.session_state.get(TRIED_KEY) == token:
        return None
    st.session_state[TRIED_KEY] = token
    with session_factory() as session:
        user = access.restore_sign_in(session, token, idle_minutes())
    if user is None:
        st.session_state[CLEAR_KEY] = True
        return None
    st.session_state[AUTH_KEY] = {
        "username": user.username,
        "role": user.role,
        "display_name": user.display_name,
        "last_seen": time.time(),
        "must_change_password": user.must_change_password,
        "sign_in": user.sign_in,
    }
    st.session_state[TOKEN_KEY] = token
    st.session_state.pop(CLEAR_KEY, None)
    st.session_state.pop(NOTICE_KEY, None)
    return st.session_state[AUTH_KEY]


def signed_in_user(session_factory) -> User | None:
    """The signed-in, active user of this browser session (the role re-read from the database on
    every run, so a change or a deactivation takes effect on the next click), or None."""
    current = st.session_state.get(AUTH_KEY) or _restore(session_factory)
    now = time.time()
    if current and access.session_expired(current.get("last_seen"), now, idle_minutes()):
        _signed_out(session_factory, current, "idle", "auth.expired")
        return None
    if not current:
        return None
    with session_factory() as session:
        user = access.find_user(session, current["username"])
        alive = current.get("sign_in") is None or access.sign_in_alive(
            session, current["sign_in"], idle_minutes()
        )
    if user is None or not user.active:
        _signed_out(session_factory, current, "deactivated", "auth.account_disabled")
        return None
    if not alive:  # ended elsewhere: a password change or reset, or its lifetime is over
        _signed_out(session_factory, current, "ended", "auth.expired")
        return None
    current.update(
        role=user.role,
        display_name=user.display_name,
        last_seen=now,
        must_change_password=user.must_change_password,
    )
    return User(user.username, user.role, user.display_name)


def current_sign_in() -> int | None:
    """The server-side sign-in of this session (None for a sign-in held only in this session)."""
    return (st.session_state.get(AUTH_KEY) or {}).get("sign_in")


def must_change_password() -> bool:
    return bool((st.session_state.get(AUTH_KEY) or {}).get("must_change_password"))


def _client_address() -> str | None:
    """The browser's address: Streamlit's peer, or what a trusted proxy (TRUSTED_PROXIES) forwarded."""
    try:
        address, headers = st.context.ip_address, st.context.headers
    except Exception:  # outside a browser session
        return None
    if not isinstance(address, str | None):  # AppTest hands out a mock
        return None
    try:
        return access.sign_in_address(address, dict(headers or {}))
    except TypeError:  # AppTest's mock headers
        return access.sign_in_address(address, {})


def login_form(session_factory, lang: str, set_lang) -> None:
    """The sign-in form, or the first administrator's on an empty embedded database."""
    tr = lambda key, **fmt: t(key, lang, **fmt)  # noqa: E731
    notice = st.session_state.get(NOTICE_KEY)
    if notice:
        st.warning(tr(notice))
    created = st.session_state.get(CREATED_KEY)
    if created:
        st.success(tr("auth.admin_created", username=created, role=tr(f"role.{ADMIN_ROLE}")))
    if st.session_state.get(DRAFTS_KEY):
        st.info(tr("auth.drafts_kept"))
    with session_factory() as session:
        n_users = access.user_count(session)
    if n_users == 0:
        _first_admin(session_factory, lang, tr)
        return
    st.subheader(tr("auth.sign_in"))
    with st.form("login", enter_to_submit=True):
        username = st.text_input(tr("auth.username"), key="login_username", autocomplete="username")
        password = st.text_input(
            tr("auth.password"), type="password", key="login_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button(tr("auth.sign_in"), type="primary")
    if not submitted:
        return
    with session_factory() as session:
        try:
            user, token = access.sign_in(
                session, username, password, client=_client_address(), hours=_hours()
            )
        except access.SignInThrottled as exc:
            st.error(tr("auth.throttled", seconds=exc.retry_after))
            return
        except access.AuthError:
            st.error(tr("auth.failed"))
            return
    st.session_state[AUTH_KEY] = {
        "username": user.username,
        "role": user.role,
        "display_name": user.display_name,
        "last_seen": time.time(),
        "must_change_password": user.must_change_password,
        "sign_in": user.sign_in,
    }
    st.session_state[TOKEN_KEY] = token
    st.session_state[TRIED_KEY] = _browser_token()  # an older cookie is not tried after this
    st.session_state.pop(CLEAR_KEY, None)
    if user.language in LANGUAGES:
        set_lang(user.language)
    st.session_state.pop(NOTICE_KEY, None)
    st.session_state.pop(CREATED_KEY, None)
    st.session_state.pop("login_password", None)
    st.rerun()


def _embedded_db() -> bool:
    """SQLite: the embedded demo / single-machine database (server databases are MySQL/MariaDB)."""
    return config.database_url().startswith("sqlite")


def _first_admin(session_factory, lang: str, tr) -> None:
    st.subheader(tr("auth.no_users_title"))
    st.markdown(tr("auth.no_users_cli"))
    st.code(".venv/bin/python -m core users create-admin --username admin", language="bash")
    if not _embedded_db():
        return
    # Only on the embedded (SQLite) database: a server database gets its first admin from the
    # command line, so nobody who merely reaches the server can make themselves admin.
    st.caption(tr("auth.first_admin_demo"))
    with st.form("first_admin"):
        username = st.text_input(tr("auth.username"), value="admin")
        password = st.text_input(tr("auth.password"), type="password")
        repeat = st.text_input(tr("auth.password_repeat"), type="password")
        submitted = st.form_submit_button(tr("auth.create_admin"), type="primary")
    if not submitted:
        return
    if password != repeat:
        st.error(tr("auth.passwords_differ"))
        return
    with session_factory() as session:
        try:
            created = access.create_first_admin(session, username, password)
        except access.AuthError as exc:
            st.error(error_text(exc, lang))
            return
    if created is None:
        st.error(tr("auth.admin_exists"))
        return
    st.session_state[CREATED_KEY] = created
    st.rerun()


def change_password_form(session_factory, lang: str) -> None:
    tr = lambda key, **fmt: t(key, lang, **fmt)  # noqa: E731
    username = st.session_state[AUTH_KEY]["username"]
    sign_in = st.session_state[AUTH_KEY].get("sign_in")
    st.subheader(tr("auth.change_title"))
    st.info(tr("auth.change_needed"))
    with st.form("change_password", enter_to_submit=True):
        old = st.text_input(tr("auth.temporary_password"), type="password", key="pw_old")
        new = st.text_input(
            tr("auth.new_password"), type="password", key="pw_new", autocomplete="new-password"
        )
        repeat = st.text_input(tr("auth.password_repeat"), type="password", key="pw_repeat")
        submitted = st.form_submit_button(tr("auth.change_button"), type="primary")
    if not submitted:
        return
    if new != repeat:
        st.error(tr("auth.passwords_differ"))
        return
    with session_factory() as session:
        try:
            access.change_password(session, username, old, new, sign_in=sign_in)
        except access.AuthenticationFailed:
            st.error(tr("auth.temporary_wrong"))
            return
        except access.AuthError as exc:
            st.error(error_text(exc, lang))
            return
    for key in ("pw_old", "pw_new", "pw_repeat"):
        st.session_state.pop(key, None)
    st.session_state[AUTH_KEY]["must_change_password"] = False
    st.rerun()


def sign_out(session_factory) -> None:
    current = st.session_state.get(AUTH_KEY)
    if current:
        _signed_out(session_factory, current, "signed_out", "auth.signed_out")
    st.session_state.pop(DRAFTS_KEY, None)
    st.session_state[NOTICE_KEY] = "auth.signed_out"


def remember_language(session_factory, lang: str) -> None:
    """A signed-in user's language choice, kept for their next sign-in."""
    current = st.session_state.get(AUTH_KEY)
    if not current:
        return
    try:
        with session_factory() as session:
            access.remember_language(session, current["username"], lang)
    except (SQLAlchemyError, FaceVerifyError):
        pass  # the choice still holds for this session
