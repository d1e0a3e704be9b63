"""Pages and roles, sign-in expiry (core.dashboard.access)."""

from __future__ import annotations

import time

from core.dashboard import access
from core.storage.schema import ADMIN, DATA_SCIENTIST, MANAGER, STAFF


def test_page_roles():
    allowed = {
        page.key: {r for r in (STAFF, MANAGER, DATA_SCIENTIST, ADMIN) if access.can_open(r, page.key)}
        for page in access.PAGES
    }
    assert allowed["home"] == {STAFF, MANAGER, DATA_SCIENTIST, ADMIN}
    assert allowed["verify"] == allowed["review"] == allowed["members"] == {STAFF, ADMIN}
    assert allowed["kpis"] == {MANAGER, DATA_SCIENTIST, ADMIN}
    assert allowed["retrain"] == {DATA_SCIENTIST, ADMIN}
    assert not access.can_open(None, "home") and not access.can_open("intruder", "home")


def test_session_expiry():
    now = time.time()
    assert not access.session_expired(now - 60, now, idle_minutes=30)
    assert access.session_expired(now - 31 * 60, now, idle_minutes=30)
    assert access.session_expired(None, now)
