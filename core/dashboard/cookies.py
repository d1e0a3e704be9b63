"""The sign-in cookie handed to the browser by the dashboard's own server, so it can be HttpOnly.

Streamlit cannot answer with a Set-Cookie, and a cookie a page script writes can be read by any
script on the page. So the page registers the cookie's value here (offer) and a tiny component asks
the dashboard's route (ui/app.py, COOKIE_ROUTE/<code>) to set it: the answer's Set-Cookie carries
the value with HttpOnly, SameSite=Strict and Path=/ (Secure over https). A code works once, for
LIFETIME_S seconds; an empty value with max_age 0 clears the cookie (sign-out).

offer(value, max_age) -> code       take(code) -> (value, max_age) | None
"""

from __future__ import annotations

import secrets
import threading
import time

COOKIE_ROUTE = "/dashboard-cookie"
LIFETIME_S = 60.0

_codes: dict[str, tuple[str, int, float]] = {}
_lock = threading.Lock()


def offer(value: str, max_age: int) -> str:
    now = time.time()
    code = secrets.token_urlsafe(24)
    with _lock:
        for old in [c for c, (_v, _a, until) in _codes.items() if until <= now]:
            del _codes[old]
        _codes[code] = (value, max_age, now + LIFETIME_S)
    return code


def take(code: str) -> tuple[str, int] | None:
    """The value and lifetime for a code, once; None when unknown, used or expired."""
    with _lock:
        found = _codes.pop(code, None)
    if found is None or found[2] <= time.time():
        return None
    return found[0], found[1]
