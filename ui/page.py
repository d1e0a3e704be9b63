"""The dashboard's entry and each page's context: language, the database check, sign-in, the
navigation the role may see, and the role check of the page itself.

Home.py (the entry, `streamlit run Home.py`) calls run_app(): it signs the user in and lists, with
st.navigation, only the pages their role may open. The other pages are registered hidden, so a page
reached by its address still runs its own check and refuses (written to the audit log). A page starts
with

    ctx = page_context("verify")    # stops the page unless the signed-in user's role may open it

and then reads input, calls its core.dashboard module, renders.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, time

import streamlit as st
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from core.dashboard.access import PAGE_BY_KEY, PAGES, can_open, log_refusal
from core.errors import ModelError
from core.i18n import DEFAULT_LANG, LANGUAGES, t
from ui import auth, resources

log = logging.getLogger(__name__)

LANG_KEY = "lang"
LANG_WIDGET = "_lang_widget"
APP_ICON = ":material/verified_user:"

# The context the entry built for the page it is running (one script run per thread at a time).
_running = threading.local()


def lang() -> str:
    value = st.session_state.get(LANG_KEY, DEFAULT_LANG)
    return value if value in LANGUAGES else DEFAULT_LANG


def tr(key: str, **fmt) -> str:
    return t(key, lang(), **fmt)


def _set_lang(value: str) -> None:
    st.session_state[LANG_KEY] = value


@dataclass
class PageContext:
    username: str
    role: str
    display_name: str | None
    lang: str
    session_factory: object
    store: object
    sign_in: int | None = None  # the server-side sign-in (a download is bound to it)

    def t(self, key: str, **fmt) -> str:
        return t(key, self.lang, **fmt)

    @contextmanager
    def session(self):
        with self.session_factory() as session:
            yield session

    def can(self, page_key: str) -> bool:
        return can_open(self.role, page_key)


_CHOICE_TYPES = (str, int, float, date, time)


def _keep_choices() -> None:
    """Every choice made on the page, put back by its stable value before the rerun in the new language.

    Streamlit keeps a radio's, select box's or multiselect's choice in the browser as the label it
    shows; after a switch that label is in the other language, matches no option, and the widget
    fell back to its default (or to nothing). Setting each keyed value again from the server's
    state (the option itself, e.g. "day", not its label "일") makes the next run send it in the new
    language. Buttons and checkboxes (True/False), uploads and table selections are left alone:
    their state does not depend on a label, and Streamlit refuses to set some of them.
    """
    for key, value in list(st.session_state.items()):
        if key == LANG_WIDGET or isinstance(value, bool):
            continue
        if isinstance(value, _CHOICE_TYPES) or (
            isinstance(value, (list, tuple))
            and value  # an empty list may be a multi-file upload's, which cannot be set
            and all(isinstance(v, _CHOICE_TYPES) and not isinstance(v, bool) for v in value)
        ):
            st.session_state[key] = value


def _language_switch() -> None:
    # The widget has its own key; the choice is kept under LANG_KEY so it survives page changes
    # (Streamlit forgets a widget's state on pages that do not draw it), in the address (?lang=en)
    # so a reload keeps it, and for a signed-in user in the database (their next sign-in uses it).
    if LANG_KEY not in st.session_state:
        st.session_state[LANG_KEY] = st.query_params.get(LANG_KEY, DEFAULT_LANG)
    st.session_state[LANG_WIDGET] = lang()
    if st.query_params.get(LANG_KEY) != lang():
        st.query_params[LANG_KEY] = lang()

    def changed():
        _keep_choices()
        _set_lang(st.session_state[LANG_WIDGET])
        st.query_params[LANG_KEY] = lang()
        try:
            session_factory = resources.get_session_factory()
        except Exception:  # no database: the choice still holds for this session
            return
        auth.remember_language(session_factory, lang())

    st.sidebar.radio(
        ":material/language: Language / 언어",
        list(LANGUAGES),
        format_func=lambda code: LANGUAGES[code],
        key=LANG_WIDGET,
        horizontal=True,
        on_change=changed,
    )


def service_unavailable() -> None:
    """A plain page in the visitor's language: no traceback, no server path, no driver message."""
    st.title(tr("app.title"))
    st.error(tr("app.service_unavailable"), icon=":material/cloud_off:")
    st.caption(tr("app.service_unavailable_help"))
    st.stop()


def _database():
    """The session factory, or the service-unavailable page (the reason goes to the server's log)."""
    try:
        factory = resources.get_session_factory()
    except Exception as exc:  # any failure to open it: a bad URL, a missing driver, a refused connection
        log.warning("dashboard: the database cannot be opened: %s", exc)
        return None
    if not resources.database_reachable(factory):
        log.warning("dashboard: the database does not answer")
        return None
    return factory


def _navigation(role: str | None, position: str = "sidebar"):
    """Every page, titled in the page's language; those the role may not open are hidden (not
    listed) but registered, so their address reaches the page's own refusal."""
    pages = [
        st.Page(
            info.path,
            title=tr(f"page.{info.key}"),
            icon=info.icon,
            default=info.key == "home",
            visibility="visible" if can_open(role, info.key) else "hidden",
        )
        for info in PAGES
    ]
    return st.navigation(pages, position=position)


def _signed_in_context(entry: bool) -> PageContext:
    """Language, database, sign-in (or the forced password change): the signed-in user's context,
    or the form / the service-unavailable page and a stopped script.

    From the entry, a visitor not signed in yet gets the navigation with no page listed: the
    address they came by (say /Members) is kept, and the sign-in opens that page."""
    auth.save_drafts()
    _language_switch()
    session_factory = _database()
    if session_factory is None:
        service_unavailable()
    user = auth.signed_in_user(session_factory)
    auth.keep_in_browser()  # the sign-in cookie written after a sign-in, cleared after a sign-out
    if user is None or auth.must_change_password():
        if entry:
            _navigation(None, position="hidden")
        st.title(tr("app.title"))
    if user is None:
        auth.login_form(session_factory, lang(), _set_lang)
        st.stop()
    if auth.must_change_password():
        # A reset or new account: nothing else is shown until the user has chosen a password.
        auth.change_password_form(session_factory, lang())
        _sign_out_button(session_factory)
        st.stop()
    return PageContext(
        username=user.username,
        role=user.role,
        display_name=user.display_name,
        lang=lang(),
        session_factory=session_factory,
        store=resources.get_store(),
        sign_in=auth.current_sign_in(),
    )


def _user_sidebar(ctx: PageContext) -> None:
    st.sidebar.markdown(f"**{ctx.display_name or ctx.username}** · {ctx.t(f'role.{ctx.role}')}")
    _sign_out_button(ctx.session_factory)


def run_app() -> None:
    """The entry: language, database, sign-in, then the navigation of the role and the chosen page."""
    st.set_page_config(page_title="FaceVerify", page_icon=APP_ICON, layout="wide")
    try:
        ctx = _signed_in_context(entry=True)
        page = _navigation(ctx.role)
        st.set_page_config(page_title=f"{page.title} · FaceVerify")  # the browser tab's title
        _user_sidebar(ctx)
        _running.ctx = ctx
        page.run()
    except OperationalError as exc:  # the database went away after the check
        log.warning("dashboard: the database failed during a page: %s", exc)
        service_unavailable()
    finally:
        _running.ctx = None


def _sign_out_button(session_factory) -> None:
    if st.sidebar.button(tr("auth.sign_out"), key="sign_out", icon=":material/logout:"):
        auth.sign_out(session_factory)
        st.rerun()


def _without_the_entry() -> None:
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False  # from now on every run starts at the entry


def page_context(page_key: str) -> PageContext:
    """The signed-in user's context for this page; shows a refusal (audited) and stops the page when
    their role may not open it.

    A page script run without the entry (Streamlit runs a pages/ script directly on the very first
    request of a process that `streamlit run Home.py` started; AppTest does on every run) signs in
    itself, and the process's later runs all start at the entry.
    """
    ctx = getattr(_running, "ctx", None)
    if ctx is None:
        _without_the_entry()
        try:
            ctx = _signed_in_context(entry=False)
        except OperationalError as exc:
            log.warning("dashboard: the database failed during sign-in: %s", exc)
            service_unavailable()
        _user_sidebar(ctx)
    if not ctx.can(page_key):
        try:
            with ctx.session() as session:
                log_refusal(session, ctx.username, page_key, ctx.role)
        except SQLAlchemyError as exc:
            log.warning("dashboard: a refused visit could not be audited: %s", exc)
        st.title(ctx.t(f"page.{page_key}"))
        allowed = ", ".join(ctx.t(f"role.{r}") for r in PAGE_BY_KEY[page_key].roles)
        st.error(ctx.t("auth.refused", role=ctx.t(f"role.{ctx.role}"), allowed=allowed))
        st.stop()
    _measurement_alert(ctx)
    if page_key == "verify":  # the other pages do not need the models (Home starts them once drawn)
        resources.warm_engine_in_background()
        if resources.engine_warming():
            st.info(ctx.t("engine.warming"), icon=":material/hourglass_top:")
    return ctx


def _measurement_alert(ctx: PageContext) -> None:
    """Managers and data scientists see, at the top of every page, when the false-match rate
    measured on the members passes its target or cannot be bounded (too few members)."""
    from core.dashboard import self_measurement

    if not self_measurement.sees_banner(ctx.role):
        return
    try:
        with ctx.session() as session:
            text = self_measurement.header_banner(session, ctx.lang, ctx.role)
    except SQLAlchemyError as exc:  # the page still opens; the KPI page says the rest
        log.warning("dashboard: the self-measurement alert could not be read: %s", exc)
        return
    if text:
        st.warning(text, icon=":material/warning:")


def model_available(ctx: PageContext) -> bool:
    """Cheap check (no loading) that a model version is named; shows why not when there is none."""
    try:
        resources.active_model_version()
        return True
    except ModelError as exc:
        st.warning(ctx.t("engine.missing", detail=str(exc)))
        return False


def engine_or_message(ctx: PageContext):
    """The loaded engine, or None after showing why there is none (no model trained yet)."""
    try:
        with st.spinner(ctx.t("engine.loading")):
            return resources.get_engine()
    except ModelError as exc:
        st.warning(ctx.t("engine.missing", detail=str(exc)))
        return None
