"""Server-side sign-ins: a token restores its user until sign-out, expiry, idleness, a password
change or a deactivation; only the token's hash is stored; each restore is audited."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from core.dashboard import access
from core.storage import sign_in_sessions as sis
from core.storage import users as user_store
from core.storage.schema import AuditEntry, User, utcnow

USER_PASSWORD = "correct horse battery staple"  # the password of the `users` fixture (conftest)


def _sign_in(session, name="staff_user"):
    return access.sign_in(session, name, USER_PASSWORD, hours=12)


def test_a_token_restores_its_user_and_only_its_hash_is_stored(session, users):
    signed, token = _sign_in(session)
    assert signed.username == "staff_user" and signed.sign_in is not None
    row = session.get(sis.SignInSession, signed.sign_in)
    assert row.token_hash == sis.token_hash(token) and token not in row.token_hash
    assert len(token) >= 40  # 32 random bytes
    assert row.expires_at - row.created_at == timedelta(hours=12)

    restored = access.restore_sign_in(session, token, idle_minutes=30)
    assert restored.username == "staff_user" and restored.sign_in == signed.sign_in
    assert access.restore_sign_in(session, token + "x", idle_minutes=30) is None
    assert access.restore_sign_in(session, "", idle_minutes=30) is None
    actions = session.scalars(select(AuditEntry.action).where(AuditEntry.target_id == "staff_user")).all()
    assert actions.count("login") == 1 and actions.count(sis.RESTORE) == 1

    access.sign_out(session, "staff_user", signed.sign_in)
    assert access.restore_sign_in(session, token, idle_minutes=30) is None
    session.expire_all()
    row = session.get(sis.SignInSession, signed.sign_in)
    assert row.ended_at is not None and row.end_reason == sis.SIGNED_OUT
    assert not access.sign_in_alive(session, signed.sign_in, 30)
    actions = session.scalars(select(AuditEntry.action).where(AuditEntry.target_id == "staff_user")).all()
    assert actions.count("logout") == 1 and actions.count(sis.RESTORE) == 1


def test_expired_and_idle_sign_ins_do_not_restore(session, users):
    user = session.scalar(select(User).where(User.username == "staff_user"))
    long_ago = utcnow() - timedelta(hours=13)
    _old_id, old = sis.start(session, user, hours=12, now=long_ago)
    assert sis.restore(session, old, idle_minutes=24 * 60) is None  # past its 12 hours
    idle_id, idle = sis.start(session, user, hours=12, now=utcnow() - timedelta(minutes=45))
    assert sis.restore(session, idle, idle_minutes=30) is None  # 45 minutes without activity
    session.expire_all()
    assert session.get(sis.SignInSession, idle_id).end_reason == sis.IDLE
    assert session.get(sis.SignInSession, _old_id).end_reason == sis.EXPIRED
    fresh_id, fresh = sis.start(session, user, hours=12, now=utcnow() - timedelta(minutes=20))
    assert sis.alive(session, fresh_id, idle_minutes=30)
    row = session.get(sis.SignInSession, fresh_id)
    assert utcnow() - row.last_seen_at < timedelta(minutes=1)  # the run refreshed its activity
    assert sis.restore(session, fresh, idle_minutes=30) is not None


def test_a_password_change_or_reset_or_deactivation_ends_the_sign_ins(session, users):
    mine, mine_token = _sign_in(session)
    other, other_token = _sign_in(session)
    # The user's own change: the other browser is signed out, the one making the change holds.
    access.change_password(session, "staff_user", USER_PASSWORD, "a brand new password", sign_in=mine.sign_in)
    assert access.restore_sign_in(session, other_token, 30) is None
    assert access.sign_in_alive(session, mine.sign_in, 30)
    # An administrator's reset ends every sign-in of the user.
    user_store.set_password(session, "staff_user", "reset password 123", actor="admin_user")
    assert not access.sign_in_alive(session, mine.sign_in, 30)
    assert access.restore_sign_in(session, mine_token, 30) is None
    # A deactivation too.
    manager, token = _sign_in(session, "manager_user")
    user_store.set_active(session, "manager_user", False, actor="admin_user")
    assert not access.sign_in_alive(session, manager.sign_in, 30)
    assert access.restore_sign_in(session, token, 30) is None
    session.expire_all()
    reasons = {r.id: r.end_reason for r in session.scalars(select(sis.SignInSession))}
    assert reasons == {
        mine.sign_in: sis.PASSWORD_CHANGED,
        other.sign_in: sis.PASSWORD_CHANGED,
        manager.sign_in: sis.DEACTIVATED,
    }
