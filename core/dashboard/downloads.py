"""One-time downloads for a signed-in dashboard user, served by the dashboard's own server.

A file the dashboard builds for a user (a member's privacy export) is not handed to Streamlit's
download button: that would give it a /media address that answers anyone who has it, signed in or
not, for as long as the server holds it. Instead the page offers it here and links to
DOWNLOAD_ROUTE/<code> (ui/app.py serves that route):

- the code is random, used once (taken at the first request, whatever its outcome) and lives
  LIFETIME_S seconds;
- it belongs to one server-side sign-in: the request must carry that sign-in's cookie, the sign-in
  must still hold (not signed out, expired, idle, ended by a password change or a deactivation) and
  its user must still hold a role that may open the page that made the file;
- each download is audited; a file never fetched is deleted once its code runs out.

offer(path, filename, sign_in, username, page_key, target) -> code
take(session, code, cookie_token, idle_minutes) -> Offered      raises Refused (the file is deleted)
sweep() -> int                                                  expired offers deleted
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from core.storage import audit, sign_in_sessions
from core.storage.schema import User

DOWNLOAD_ROUTE = "/dashboard-download"
LIFETIME_S = 120.0
DOWNLOAD = "download"  # the audit action


class Refused(Exception):
    """The download is refused (unknown or used code, expired, no valid sign-in, role)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Offered:
    path: Path
    filename: str
    media_type: str
    sign_in: int
    username: str
    page_key: str  # the page that made it: its roles may fetch it
    target: str  # what it is about (a member id), for the audit
    expires: float


_offers: dict[str, Offered] = {}
_lock = threading.Lock()


def _drop(offered: Offered) -> None:
    offered.path.unlink(missing_ok=True)


def sweep(now: float | None = None) -> int:
    """Delete the files whose code ran out unused; how many."""
    now = time.time() if now is None else now
    with _lock:
        over = [code for code, o in _offers.items() if o.expires <= now]
        gone = [_offers.pop(code) for code in over]
    for offered in gone:
        _drop(offered)
    return len(gone)


def offer(
    path: Path,
    filename: str,
    sign_in: int,
    username: str,
    page_key: str,
    target: str,
    media_type: str = "application/zip",
) -> str:
    """Register a file for one download by this sign-in; the code for the link."""
    sweep()
    code = secrets.token_urlsafe(32)
    with _lock:
        _offers[code] = Offered(
            Path(path), filename, media_type, sign_in, username, page_key, target, time.time() + LIFETIME_S
        )
    return code


def url(code: str) -> str:
    return f"{DOWNLOAD_ROUTE}/{code}"


def pending() -> int:
    with _lock:
        return len(_offers)


def take(session: Session, code: str, cookie_token: str | None, idle_minutes: float) -> Offered:
    """The file for a request, once: the code is spent whatever the outcome; Refused unless the
    request's sign-in cookie is the offer's sign-in, still holding, of a user whose role may open the
    page that made it. The download is audited."""
    from core.dashboard.access import can_open  # its module imports this package's siblings

    with _lock:
        offered = _offers.pop(code, None)
    if offered is None:
        raise Refused("unknown")
    try:
        if offered.expires <= time.time():
            raise Refused("expired")
        found = sign_in_sessions.restore_quietly(session, cookie_token or "", idle_minutes)
        if found is None or found[0].id != offered.sign_in:
            raise Refused("not_signed_in")
        user: User = found[1]
        if not can_open(user.role, offered.page_key):
            raise Refused("role")
        audit.log(
            session,
            user.username,
            DOWNLOAD,
            "member",
            offered.target,
            {"file": offered.filename, "page": offered.page_key},
        )
        session.commit()
    except Refused:
        _drop(offered)
        raise
    return offered
