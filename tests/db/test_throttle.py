"""Sign-in throttling: delays per (name, address), locks per address, an admin's unlock audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from core.storage import throttle
from core.storage import users as user_store
from core.storage.schema import AuditEntry, utcnow
from core.storage.schema_guards import AuthThrottle

USER_PASSWORD = "correct horse battery staple"  # the password of the `users` fixture (conftest)
pytestmark = pytest.mark.usefixtures("quick_password_hashes")  # dozens of sign-ins a test


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
        user_store.authenticate(session, "staff_user", USER_PASSWORD, client="10.0.0.5")
    assert info.value.retry_after == 2
    clock.advance(seconds=3)
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD, client="10.0.0.5")
    # The name's count at this address starts again; the address's own count does not.
    assert [(r.kind, r.failures) for r in session.scalars(select(AuthThrottle))] == [(throttle.CLIENT, 5)]


USER_WAIT = throttle.MAX_DELAY_S[throttle.USER_CLIENT]


def test_twenty_wrong_passwords_from_elsewhere_do_not_keep_the_user_out(session, users, clock):
    """The attack: wrong passwords for a name from one address used to lock the name everywhere
    for 15 minutes. The real user in a fresh browser at another address signs in at once."""
    for _ in range(20):
        fail(session, client="203.0.113.9")
        clock.advance(seconds=USER_WAIT + 1)
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD, client="198.51.100.7")


def test_a_name_at_one_address_waits_longer_and_longer_but_is_never_locked(session, users, clock):
    waits = []
    for _ in range(throttle.FREE_FAILURES):
        fail(session, client="203.0.113.9")
    for _ in range(22):
        fail(session, client="203.0.113.9")
        with pytest.raises(user_store.SignInThrottled) as info:
            user_store.authenticate(session, "staff_user", USER_PASSWORD, client="203.0.113.9")
        assert not info.value.locked
        waits.append(info.value.retry_after)
        clock.advance(seconds=info.value.retry_after + 1)
    assert waits[0] == 1 and waits == sorted(waits) and waits[-1] == USER_WAIT == 300
    assert "5 minutes" in str(info.value)  # the user is told how long to wait
    assert "throttle_locked" not in actions(session, "staff_user")
    assert throttle.locked(session, now=clock.now) == []
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD, client="203.0.113.9")


def test_unknown_names_slow_down_the_same_way(session, users, clock):
    for _ in range(throttle.FREE_FAILURES + 3):
        clock.advance(seconds=10)
        fail(session, name="nobody", client=None)
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "nobody", "anything")
    assert info.value.retry_after == 4


def test_an_administrator_unlocks(session, users, clock):
    fail(session, client=None)
    for _ in range(10):
        clock.advance(seconds=USER_WAIT + 1)
        fail(session, client="203.0.113.9")
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "staff_user", USER_PASSWORD, client="203.0.113.9")
    assert info.value.retry_after == 64
    waiting = {r.subject for r in throttle.waiting(session, now=clock.now)}
    assert "staff_user|203.0.113.9" in waiting
    assert user_store.unlock_sign_in(session, "Staff_User", actor="admin_user") == 2
    clock.advance(seconds=throttle.MAX_DELAY_S[throttle.CLIENT] + 1)  # the address's own delay
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD, client="203.0.113.9")
    entry = session.scalar(select(AuditEntry).where(AuditEntry.action == throttle.UNLOCKED))
    assert entry.actor == "admin_user" and entry.target_id == "staff_user"
    assert user_store.unlock_sign_in(session, "staff_user", actor="admin_user") == 0


def test_an_old_lock_of_a_name_is_unlocked_too(session, users, clock):
    now = clock.now
    session.add(
        AuthThrottle(
            kind=throttle.USER,
            subject="staff_user",
            failures=10,
            first_failed_at=now,
            last_failed_at=now,
            locked_until=now + timedelta(minutes=15),
        )
    )
    session.commit()
    assert user_store.unlock_sign_in(session, "staff_user", actor="admin_user") == 1
    assert throttle.unlock(session, throttle.USER, "staff_user", actor="admin_user") is False


def test_one_client_trying_many_names_is_locked(session, users, clock):
    for i in range(throttle.LOCK_AFTER[throttle.CLIENT]):
        fail(session, name=f"guess{i}", client="203.0.113.9")
        clock.advance(seconds=throttle.MAX_DELAY_S[throttle.CLIENT] + 1)
    with pytest.raises(user_store.SignInThrottled) as info:
        user_store.authenticate(session, "staff_user", USER_PASSWORD, client="203.0.113.9")
    assert info.value.locked
    # Another client signs in as usual.
    assert user_store.authenticate(session, "staff_user", USER_PASSWORD, client="198.51.100.7")


def test_old_failures_are_forgiven(session, users, clock):
    for _ in range(throttle.FREE_FAILURES + 2):
        fail(session)
        clock.advance(seconds=throttle.MAX_DELAY_S[throttle.CLIENT] + 1)
    clock.advance(minutes=16)
    fail(session)
    fail(session)  # counted from one again: still free
