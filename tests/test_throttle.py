"""Sign-in and API key throttling: slow down, lock, the lock's end and an admin's unlock audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core.storage import throttle
from core.storage import users as user_store
from core.storage.schema import AuditEntry, utcnow

USER_PASSWORD = "correct horse battery staple"  # the password of the `users` fixture (conftest)


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, **kwargs):
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(throttle, "utcnow", c)
    return c


def fail(session, name="staff_user", client="10.0.0.5"):
    with pytest.raises(user_store.AuthenticationFailed):
        user_store.authenticate(session, name, "wrong password", client=client)


def actions(session, subject):
    return session.scalars(
        select(AuditEntry.action).where(AuditEntry.target_id == subject).order_by(AuditEntry.seq)
    ).all()


def test_failures_slow_down_then_the_right_password_works_again(session, users, clock):
    for _ in range(throttle.FREE_FAILURES):
        fail(session)  # no waiting for the first few
    fail(session)  # the 4th: the next attempt must wait 1 s
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "staff_user", USER_PASSWORD, client="10.0.0.5")
    assert info.value.retry_after == 1 and not info.value.locked
    clock.advance(seconds=2)
    fail(session)  # 5th: 2 s
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "staff_user", USER_PASSWORD)
    assert info.value.retry_after == 2
    clock.advance(seconds=3)
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD).username == "staff_user"
    clock.advance(seconds=1)
    fail(session)  # the name's count started again
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD)


def test_lock_after_ten_failures_its_end_audited(session, users, clock):
    for _ in range(throttle.LOCK_AFTER[throttle.USER]):
        fail(session, client=None)
        clock.advance(seconds=throttle.MAX_DELAY_S + 1)
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "staff_user", USER_PASSWORD)
    assert info.value.locked and 13 * 60 < info.value.retry_after <= 15 * 60
    assert "throttle_locked" in actions(session, "staff_user")
    assert [r.subject for r in throttle.locked(session, now=clock.now)] == ["staff_user"]
    clock.advance(minutes=15)
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD)
    assert actions(session, "staff_user")[-2:] == ["throttle_lock_ended", "login"]


def test_unknown_names_lock_the_same_way(session, users, clock):
    for _ in range(throttle.LOCK_AFTER[throttle.USER]):
        fail(session, name="nobody", client=None)
        clock.advance(seconds=throttle.MAX_DELAY_S + 1)
    with pytest.raises(user_store.SignInThrottled):
        user_store.authenticate(session, "nobody", "anything")


def test_an_administrator_unlocks(session, users, clock):
    for _ in range(throttle.LOCK_AFTER[throttle.USER]):
        fail(session, client=None)
        clock.advance(seconds=throttle.MAX_DELAY_S + 1)
    assert throttle.unlock(session, throttle.USER, "staff_user", actor="admin_user")
    session.commit()
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD)
    entry = session.scalar(select(AuditEntry).where(AuditEntry.action == throttle.UNLOCKED))
    assert entry.actor == "admin_user" and entry.target_id == "staff_user"
    assert not throttle.unlock(session, throttle.USER, "staff_user", actor="admin_user")


def test_one_client_trying_many_names_is_locked(session, users, clock):
    for i in range(throttle.LOCK_AFTER[throttle.CLIENT]):
        fail(session, name=f"guess{i}", client="203.0.113.9")
        clock.advance(seconds=throttle.MAX_DELAY_S + 1)
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "staff_user", USER_PASSWORD, client="203.0.113.9")
    assert info.value.locked
    # Another client signs in as usual.
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD, client="198.51.100.7")


def test_old_failures_are_forgiven(session, users, clock):
    for _ in range(throttle.FREE_FAILURES + 2):
        fail(session)
        clock.advance(seconds=throttle.MAX_DELAY_S + 1)
    clock.advance(minutes=16)
    fail(session)
    fail(session)  # counted from one again: still free
