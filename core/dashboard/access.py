"""Who may open which page, sign-in expiry, and the audit lines of sign-out and refused visits.

PAGES, PAGE_BY_KEY, can_open(role, page_key), session_expired(last_seen, now), log_refusal, log_event;
sign_in, find_user, user_count, create_first_admin, change_password, remember_language for the entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.storage import audit, sign_in_sessions, users
from core.storage.client_address import dashboard_client_address
from core.storage.schema import ADMIN, DATA_SCIENTIST, MANAGER, ROLES, STAFF, User

SESSION_IDLE_MINUTES = 30


@dataclass(frozen=True)
class PageInfo:
    key: str  # i18n key "page.<key>" is its title
    path: str  # relative to the project root: the page's script (its URL is /<name without the number>)
    roles: tuple[str, ...]  # who may open it (admin may open everything)
    icon: str


PAGES = (
    PageInfo("home", "pages/0_Start.py", ROLES, ":material/home:"),
    PageInfo("verify", "pages/1_Verify.py", (STAFF, ADMIN), ":material/fact_check:"),
    PageInfo("review", "pages/2_Review_Queue.py", (STAFF, ADMIN), ":material/rule:"),
    PageInfo("members", "pages/3_Members.py", (STAFF, ADMIN), ":material/group:"),
    PageInfo("kpis", "pages/4_KPIs.py", (MANAGER, DATA_SCIENTIST, ADMIN), ":material/monitoring:"),
    PageInfo("retrain", "pages/5_Retrain.py", (DATA_SCIENTIST, ADMIN), ":material/model_training:"),
    PageInfo("users", "pages/6_Users.py", (ADMIN,), ":material/manage_accounts:"),
)


PAGE_BY_KEY = {p.key: p for p in PAGES}


def can_open(role: str | None, page_key: str) -> bool:
    """Server-side role check of a page. Admins may open every page."""
    if role not in ROLES:
        return False
    return role == ADMIN or role in PAGE_BY_KEY[page_key].roles


def pages_for(role: str | None) -> list[PageInfo]:
    """The pages the role may open, in the order the navigation lists them."""
    return [page for page in PAGES if can_open(role, page.key)]


def session_expired(last_seen: float | None, now: float, idle_minutes: float = SESSION_IDLE_MINUTES) -> bool:
    return last_seen is None or now - last_seen > idle_minutes * 60


def log_refusal(session: Session, username: str | None, page_key: str, role: str | None) -> None:
    """A refused page view goes to the audit log (who tried what)."""
    audit.log(session, username or "anonymous", "access_denied", "page", page_key, {"role": role})
    session.commit()


def log_event(session: Session, username: str, action: str, detail: dict | None = None) -> None:
    audit.log(session, username, action, "user", username, detail)
    session.commit()


# ----------------------------------------------------------------------------------------------
# Sign-in, as the dashboard's entry asks for it (the rules themselves are core.storage.users')

AuthError = users.AuthError
AuthenticationFailed = users.AuthenticationFailed
SignInThrottled = users.SignInThrottled


@dataclass(frozen=True)
class SignedIn:
    username: str
    role: str
    display_name: str | None
    language: str | None
    must_change_password: bool
    active: bool = True
    sign_in: int | None = None  # the server-side sign-in (sign_in_sessions row), once started


def _signed_in(user: User, sign_in: int | None = None) -> SignedIn:
    return SignedIn(
        user.username,
        user.role,
        user.display_name,
        user.language,
        bool(user.must_change_password),
        bool(user.active),
        sign_in,
    )


def database_answers(session: Session) -> bool:
    """One round trip (raises the driver's error when the database is down)."""
    return session.execute(text("SELECT 1")).scalar() == 1


def user_count(session: Session) -> int:
    return session.scalar(select(func.count(User.id))) or 0


def find_user(session: Session, username: str) -> SignedIn | None:
    user = session.scalar(select(User).where(User.username == username))
    return None if user is None else _signed_in(user)


def sign_in(
    session: Session, username: str, password: str, client: str | None = None, hours: float = 12.0
) -> tuple[SignedIn, str]:
    """The user, once name and password match (AuthenticationFailed, SignInThrottled otherwise),
    and the token of the server-side sign-in started for them (the browser keeps it as a cookie)."""
    user = users.authenticate(session, username, password, client=client)
    row_id, token = sign_in_sessions.start(session, user, hours)
    return _signed_in(user, row_id), token


def restore_sign_in(session: Session, token: str | None, idle_minutes: float) -> SignedIn | None:
    """The user a browser's sign-in token names while it holds (audited), or None."""
    found = sign_in_sessions.restore(session, token or "", idle_minutes)
    return None if found is None else _signed_in(found[1], found[0].id)


def sign_in_alive(session: Session, sign_in: int, idle_minutes: float) -> bool:
    return sign_in_sessions.alive(session, sign_in, idle_minutes)


def sign_out(session: Session, username: str, sign_in: int | None, reason: str = "signed_out") -> None:
    """End the server-side sign-in (its cookie restores nothing any more) and audit the sign-out."""
    sign_in_sessions.end(session, sign_in, reason)
    audit.log(
        session, username, "logout", "user", username, {"reason": reason} if reason != "signed_out" else None
    )
    session.commit()


def create_first_admin(session: Session, username: str, password: str) -> str | None:
    """The first administrator of an empty embedded database; None when someone was quicker."""
    if user_count(session):
        return None
    return users.create_user(session, username, password, users.ADMIN, actor="first-run").username


def change_password(session: Session, username: str, old: str, new: str, sign_in: int | None = None) -> None:
    """The user's own change; their other sign-ins end, this one holds."""
    users.change_password(session, username, old, new, keep_sign_in=sign_in)


def remember_language(session: Session, username: str, lang: str) -> None:
    users.set_language(session, username, lang)


def sign_in_address(ip_address, headers) -> str | None:
    """The address a sign-in is counted against: Streamlit's peer, or what a trusted proxy forwarded."""
    return dashboard_client_address(ip_address if isinstance(ip_address, str) else None, headers)
