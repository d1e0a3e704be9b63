"""Streamlit helpers every page uses: page setup, sign-in, the role check, language, cached resources.

A page starts with

    ctx = setup_page("verify")      # stops the page unless a signed-in user with the role is there

and then reads input, calls core (its own core.dashboard module and the data layer), renders.

Sign-in state lives in st.session_state (on the server) with an idle expiry. Widgets whose key
starts with KEEP_PREFIX (e.g. a reviewer's note) are copied aside on every run, so when a session
expires in the middle of typing, the text comes back after signing in again.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from core import config
from core.dashboard.access import PAGE_BY_KEY, PAGES, can_open, log_event, log_refusal, session_expired
from core.errors import FaceVerifyError, ModelError
from core.i18n import DEFAULT_LANG, LANGUAGES, t
from core.storage import users
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import User
from core.storage.stores import open_photo_store, photo_store_url

if TYPE_CHECKING:
    from core.dashboard.page_batches import BatchJobs

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _clean_after_script_run() -> None:
    """Streamlit's cleanup after every script run, without its keras.backend.clear_session().

    Streamlit clears Keras after each run for apps that build a model per run. This process loads
    its models once and shares them, and with them loaded the clear costs most of a second of every
    rerun (py-spy: more than the verification itself), so only the matplotlib part is kept.
    """
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def _skip_keras_clear_after_runs() -> None:
    from streamlit.runtime.scriptrunner import script_runner

    # A private hook of Streamlit 1.60: if a later release drops it, there is nothing to skip.
    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = _clean_after_script_run


_skip_keras_clear_after_runs()
AUTH_KEY = "auth"
LANG_KEY = "lang"
DRAFTS_KEY = "drafts"
KEEP_PREFIX = "keep_"
NOTICE_KEY = "auth_notice"
CREATED_KEY = "first_admin_created"


def idle_minutes() -> float:
    return float(config.setting("SESSION_IDLE_MINUTES", "30"))


# ----------------------------------------------------------------------------------------------
# Cached resources: one per process (keyed by their settings, so tests with another database
# or model folder get their own)


@st.cache_resource(show_spinner=False)
def _session_factory(url: str):
    from core.storage.db import init_db, session_factory

    return session_factory(init_db(url))


def get_session_factory():
    return _session_factory(config.database_url())


@st.cache_resource(show_spinner=False)
def _photo_store(url: str) -> PhotoStoreBackend:
    return open_photo_store(url)


def get_store() -> PhotoStoreBackend:
    """The photo store PHOTO_STORE_URL names (a folder by default, or an S3 bucket), once per process."""
    return _photo_store(photo_store_url())


@st.cache_resource(show_spinner=False, max_entries=2)
def _engine(models_dir: str, version: str):
    from core.verification.engine import Engine

    return Engine.load(version, Path(models_dir))


def active_model_version() -> str:
    """The registry's active version (re-read every 2 s, so a promotion is noticed); ModelError if none."""
    from core.training import registry

    return registry.current_version(get_session_factory(), config.models_dir())


def get_engine():
    """The active model version, loaded once per process. Raises ModelError when there is none."""
    return _engine(str(config.models_dir()), active_model_version())


@st.cache_resource(show_spinner=False)
def get_jobs() -> BatchJobs:
    from core.dashboard.page_batches import BatchJobs  # here: pandas and the batch runner load slowly

    return BatchJobs()


# ----------------------------------------------------------------------------------------------
# Language


def lang() -> str:
    value = st.session_state.get(LANG_KEY, DEFAULT_LANG)
    return value if value in LANGUAGES else DEFAULT_LANG


def tr(key: str, **fmt) -> str:
    return t(key, lang(), **fmt)


def _language_switch() -> None:
    # The widget has its own key; the choice is kept under LANG_KEY so it survives page changes
    # (Streamlit forgets a widget's state on pages that do not draw it), in the address (?lang=en)
    # so a reload keeps it, and for a signed-in user in the database (their next sign-in uses it).
    if LANG_KEY not in st.session_state:
        st.session_state[LANG_KEY] = st.query_params.get(LANG_KEY, DEFAULT_LANG)
    st.session_state["_lang_widget"] = lang()
    if st.query_params.get(LANG_KEY) != lang():
        st.query_params[LANG_KEY] = lang()

    def changed():
        st.session_state[LANG_KEY] = st.session_state["_lang_widget"]
        st.query_params[LANG_KEY] = st.session_state[LANG_KEY]
        current = st.session_state.get(AUTH_KEY)
        if current:
            try:
                with get_session_factory()() as session:
                    users.set_language(session, current["username"], st.session_state[LANG_KEY])
            except (SQLAlchemyError, FaceVerifyError):
                pass  # the choice still holds for this session

    st.sidebar.radio(
        ":material/language: Language / 언어",
        list(LANGUAGES),
        format_func=lambda code: LANGUAGES[code],
        key="_lang_widget",
        horizontal=True,
        on_change=changed,
    )


# ----------------------------------------------------------------------------------------------
# Drafts kept across an expired session


def _save_drafts() -> None:
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


# ----------------------------------------------------------------------------------------------
# Page setup, sign-in and roles


@dataclass
class PageContext:
    username: str
    role: str
    display_name: str | None
    lang: str
    session_factory: object
    store: PhotoStoreBackend

    def t(self, key: str, **fmt) -> str:
        return t(key, self.lang, **fmt)

    @contextmanager
    def session(self):
        with self.session_factory() as session:
            yield session

    def can(self, page_key: str) -> bool:
        return can_open(self.role, page_key)


def _embedded_db() -> bool:
    """SQLite: the embedded demo / single-machine database (server databases are MySQL/MariaDB)."""
    from core.storage.db import is_sqlite

    return is_sqlite(config.database_url())


def _login_form(session_factory) -> None:
    notice = st.session_state.get(NOTICE_KEY)
    if notice:
        st.warning(tr(notice))
    created = st.session_state.get(CREATED_KEY)
    if created:
        st.success(tr("auth.admin_created", username=created, role=tr(f"role.{users.ADMIN}")))
    if st.session_state.get(DRAFTS_KEY):
        st.info(tr("auth.drafts_kept"))
    with session_factory() as session:
        n_users = session.scalar(select(func.count(User.id))) or 0
    if n_users == 0:
        _first_admin(session_factory)
        return
    st.subheader(tr("auth.sign_in"))
    with st.form("login", enter_to_submit=True):
        username = st.text_input(tr("auth.username"), key="login_username", autocomplete="username")
        password = st.text_input(
            tr("auth.password"), type="password", key="login_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button(tr("auth.sign_in"), type="primary")
    if submitted:
        with session_factory() as session:
            try:
                user = users.authenticate(session, username, password, client=_client_address())
            except users.SignInThrottled as exc:
                st.error(tr("auth.throttled", seconds=exc.retry_after))
                return
            except users.AuthError:
                st.error(tr("auth.failed"))
                return
            st.session_state[AUTH_KEY] = {
                "username": user.username,
                "role": user.role,
                "display_name": user.display_name,
                "last_seen": time.time(),
                "must_change_password": bool(user.must_change_password),
            }
            if user.language in LANGUAGES:
                st.session_state[LANG_KEY] = user.language
        st.session_state.pop(NOTICE_KEY, None)
        st.session_state.pop(CREATED_KEY, None)
        st.session_state.pop("login_password", None)
        st.rerun()


def _client_address() -> str | None:
    """The browser's address as Streamlit sees it (behind a proxy: the proxy's, unless it forwards)."""
    try:
        address = st.context.ip_address
    except Exception:  # outside a browser session
        return None
    return address if isinstance(address, str) else None  # AppTest hands out a mock


def _first_admin(session_factory) -> None:
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
    if submitted:
        if password != repeat:
            st.error(tr("auth.passwords_differ"))
            return
        with session_factory() as session:
            if session.scalar(select(func.count(User.id))):
                st.error(tr("auth.admin_exists"))
                return
            try:
                user = users.create_user(session, username, password, users.ADMIN, actor="first-run")
            except users.AuthError as exc:
                st.error(str(exc))
                return
            st.session_state[CREATED_KEY] = user.username
        st.rerun()


def _change_password_form(session_factory, username: str) -> None:
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
            users.change_password(session, username, old, new)
        except users.AuthenticationFailed:
            st.error(tr("auth.temporary_wrong"))
            return
        except users.AuthError as exc:
            st.error(tr(f"users.error.{exc.code}", detail=str(exc)))
            return
    for key in ("pw_old", "pw_new", "pw_repeat"):
        st.session_state.pop(key, None)
    st.session_state[AUTH_KEY]["must_change_password"] = False
    st.rerun()


def sign_out(session_factory) -> None:
    current = st.session_state.pop(AUTH_KEY, None)
    if current:
        try:
            with session_factory() as session:
                log_event(session, current["username"], "logout")
        except SQLAlchemyError:
            pass
    st.session_state.pop(DRAFTS_KEY, None)
    st.session_state[NOTICE_KEY] = "auth.signed_out"


def _sidebar(ctx: PageContext, session_factory) -> None:
    sidebar = st.sidebar
    sidebar.markdown(f"**{ctx.display_name or ctx.username}** · {ctx.t(f'role.{ctx.role}')}")
    for page in PAGES:
        if not ctx.can(page.key) or not (PROJECT_ROOT / page.path).exists():
            continue
        sidebar.page_link(page.path, label=ctx.t(f"page.{page.key}"), icon=page.icon)
    if sidebar.button(ctx.t("auth.sign_out"), key="sign_out", icon=":material/logout:"):
        sign_out(session_factory)
        st.rerun()


def setup_page(page_key: str) -> PageContext:
    """Page config, language switch, sign-in, the role check (server side) and the sidebar.

    Returns only when a signed-in, active user whose role may open the page is there; otherwise
    shows the sign-in form or a refusal (written to the audit log) and stops the script.
    """
    info = PAGE_BY_KEY[page_key]
    st.set_page_config(
        page_title=f"{t(f'page.{page_key}', lang())} · FaceVerify", page_icon=info.icon, layout="wide"
    )
    _save_drafts()
    _language_switch()
    try:
        session_factory = get_session_factory()
    except (SQLAlchemyError, FaceVerifyError) as exc:
        st.error(tr("app.db_unavailable", detail=str(exc)))
        st.stop()

    current = st.session_state.get(AUTH_KEY)
    now = time.time()
    if current and session_expired(current.get("last_seen"), now, idle_minutes()):
        st.session_state.pop(AUTH_KEY, None)
        st.session_state[NOTICE_KEY] = "auth.expired"
        current = None
    if current:
        with session_factory() as session:
            user = session.scalar(select(User).where(User.username == current["username"]))
        if user is None or not user.active:
            st.session_state.pop(AUTH_KEY, None)
            st.session_state[NOTICE_KEY] = "auth.account_disabled"
            current = None
        else:
            current.update(
                role=user.role,
                display_name=user.display_name,
                last_seen=now,
                must_change_password=bool(user.must_change_password),
            )
    if not current:
        st.title(tr("app.title"))
        _login_form(session_factory)
        st.stop()
    if current.get("must_change_password"):
        # A reset or new account: nothing else is shown until the user has chosen a password.
        st.title(tr("app.title"))
        _change_password_form(session_factory, current["username"])
        if st.sidebar.button(tr("auth.sign_out"), key="sign_out", icon=":material/logout:"):
            sign_out(session_factory)
            st.rerun()
        st.stop()

    ctx = PageContext(
        username=current["username"],
        role=current["role"],
        display_name=current.get("display_name"),
        lang=lang(),
        session_factory=session_factory,
        store=get_store(),
    )
    _sidebar(ctx, session_factory)
    if not ctx.can(page_key):
        with session_factory() as session:
            log_refusal(session, ctx.username, page_key, ctx.role)
        st.title(ctx.t(f"page.{page_key}"))
        allowed = ", ".join(ctx.t(f"role.{r}") for r in info.roles)
        st.error(ctx.t("auth.refused", role=ctx.t(f"role.{ctx.role}"), allowed=allowed))
        st.stop()
    if page_key == "verify":  # the other pages do not need the models (Home starts them once drawn)
        warm_engine_in_background()
        if engine_warming():
            st.info(ctx.t("engine.warming"), icon=":material/hourglass_top:")
    return ctx


def model_available(ctx: PageContext) -> bool:
    """Cheap check (no loading) that a model version is named; shows why not when there is none."""
    try:
        active_model_version()
        return True
    except ModelError as exc:
        st.warning(ctx.t("engine.missing", detail=str(exc)))
        return False


_warm_lock = threading.Lock()
_warm_started: set[str] = set()
_warm_loading: set[str] = set()


def engine_warming() -> bool:
    """Whether the models are still loading in the background (the Verify page says so)."""
    with _warm_lock:
        return bool(_warm_loading)


def warm_engine_in_background() -> None:
    """Load the model on a background thread once per process, so the first pair is answered fast.

    Called once a page has been drawn (the end of Home) or by the Verify page: importing
    TensorFlow holds the interpreter for seconds, so a page it starts before waits (the sign-in
    form drew in 30 s instead of 4 under load when it started the loading).
    FACEVERIFY_WARM_ENGINE=0 turns it off (the tests load the model only where they need it)."""
    if config.setting("FACEVERIFY_WARM_ENGINE", "1") == "0":
        return
    try:
        key = f"{config.models_dir()}:{active_model_version()}"
    except ModelError:
        return
    with _warm_lock:
        if key in _warm_started:
            return
        _warm_started.add(key)
        _warm_loading.add(key)

    def load():
        try:
            get_engine()
        except Exception:  # the page that needs the model shows the reason
            with _warm_lock:
                _warm_started.discard(key)
        finally:
            with _warm_lock:
                _warm_loading.discard(key)

    threading.Thread(target=load, name="engine-warmup", daemon=True).start()


def engine_or_message(ctx: PageContext):
    """The loaded engine, or None after showing why there is none (no model trained yet)."""
    try:
        with st.spinner(ctx.t("engine.loading")):
            return get_engine()
    except ModelError as exc:
        st.warning(ctx.t("engine.missing", detail=str(exc)))
        return None
