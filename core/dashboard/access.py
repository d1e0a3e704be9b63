"""Who may open which page, sign-in expiry, and the audit lines of sign-out and refused visits.

PAGES, PAGE_BY_KEY, can_open(role, page_key), session_expired(last_seen, now), log_refusal, log_event
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.storage import audit
from core.storage.schema import ADMIN, DATA_SCIENTIST, MANAGER, ROLES, STAFF

SESSION_IDLE_MINUTES = 30


@dataclass(frozen=True)
class PageInfo:
    key: str  # i18n key "page.<key>" is its title
    path: str  # relative to the project root, for st.page_link / st.switch_page
    roles: tuple[str, ...]  # who may open it (admin may open everything)
    icon: str


PAGES = (
    PageInfo("home", "Home.py", ROLES, ":material/home:"),
    PageInfo("verify", "pages/1_Verify.py", (STAFF, ADMIN), ":material/fact_check:"),
    PageInfo("review", "pages/2_Review_Queue.py", (STAFF, ADMIN), ":material/rule:"),
    PageInfo("members", "pages/3_Members.py", (STAFF, ADMIN), ":material/group:"),
    PageInfo("kpis", "pages/4_KPIs.py", (MANAGER, DATA_SCIENTIST, ADMIN), ":material/monitoring:"),
    # Built by the retraining issue; listed here so navigation and the role check are ready.
    PageInfo("retrain", "pages/5_Retrain.py", (DATA_SCIENTIST, ADMIN), ":material/model_training:"),
    PageInfo("users", "pages/6_Users.py", (ADMIN,), ":material/manage_accounts:"),
)


PAGE_BY_KEY = {p.key: p for p in PAGES}


def can_open(role: str | None, page_key: str) -> bool:
    """Server-side role check of a page. Admins may open every page."""
    if role not in ROLES:
        return False
    return role == ADMIN or role in PAGE_BY_KEY[page_key].roles


def session_expired(last_seen: float | None, now: float, idle_minutes: float = SESSION_IDLE_MINUTES) -> bool:
    return last_seen is None or now - last_seen > idle_minutes * 60


def log_refusal(session: Session, username: str | None, page_key: str, role: str | None) -> None:
    """A refused page view goes to the audit log (who tried what)."""
    audit.log(session, username or "anonymous", "access_denied", "page", page_key, {"role": role})
    session.commit()


def log_event(session: Session, username: str, action: str, detail: dict | None = None) -> None:
    audit.log(session, username, action, "user", username, detail)
    session.commit()
