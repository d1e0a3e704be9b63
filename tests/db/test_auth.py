"""Users and roles: argon2 hashes only, one message for every failed login, admin everywhere."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import cli
from core.storage import users as user_store
from core.storage.schema import AuditEntry, User

USER_PASSWORD = "correct horse battery staple"  # the password of the `users` fixture (conftest)
pytestmark = pytest.mark.usefixtures("quick_password_hashes")  # many sign-ins and new passwords


def test_password_is_stored_as_argon2_hash_only(session, users):
    stored = session.scalar(select(User.password_hash).where(User.username == "staff_user"))
    assert stored.startswith("$argon2id$")
    assert USER_PASSWORD not in stored


def test_authenticate_right_and_wrong(session, users):
    user = user_store.authenticate(session, "  Staff_User ", USER_PASSWORD)  # names are case-folded
    assert user.username == "staff_user" and user.last_login_at is not None

    messages = set()
    for name, password in [("staff_user", "wrong password"), ("nobody", USER_PASSWORD), ("", "x")]:
        with pytest.raises(user_store.AuthenticationFailed) as caught:
            user_store.authenticate(session, name, password)
        messages.add(str(caught.value))
    user_store.set_active(session, "staff_user", False, actor="admin_user")
    with pytest.raises(user_store.AuthenticationFailed) as caught:
        user_store.authenticate(session, "staff_user", USER_PASSWORD)
    messages.add(str(caught.value))
    assert messages == {"Wrong username or password."}, "no message may tell which part was wrong"
    actions = session.scalars(select(AuditEntry.action).where(AuditEntry.target_id == "staff_user")).all()
    assert actions.count("login_failed") == 2 and actions.count("login") == 1


def test_roles(session, users):
    assert user_store.has_role(users["staff"], "staff")
    assert not user_store.has_role(users["staff"], "manager", "data_scientist")
    assert user_store.has_role(users["manager"], "manager")
    assert user_store.has_role(users["admin"], "staff") and user_store.has_role(
        users["admin"], "data_scientist"
    )
    assert not user_store.has_role(None, "staff")
    user_store.set_role(session, "staff_user", "manager", actor="admin_user")
    assert user_store.has_role(session.scalar(select(User).where(User.username == "staff_user")), "manager")
    with pytest.raises(user_store.UnknownRole):
        user_store.create_user(session, "someone", USER_PASSWORD, "superuser")


def test_create_and_change_password(session, users):
    with pytest.raises(user_store.UserExists):
        user_store.create_user(session, "STAFF_USER", USER_PASSWORD, "staff")
    with pytest.raises(user_store.WeakPassword):
        user_store.create_user(session, "newbie", "short", "staff")
    with pytest.raises(user_store.AuthenticationFailed):
        user_store.change_password(session, "staff_user", "not the old one", "a brand new password")
    user_store.change_password(session, "staff_user", USER_PASSWORD, "a brand new password")
    assert user_store.authenticate(session, "staff_user", "a brand new password")
    with pytest.raises(user_store.AuthenticationFailed):
        user_store.authenticate(session, "staff_user", USER_PASSWORD)
    assert [u.username for u in user_store.list_users(session)] == sorted(f"{r}_user" for r in users)


def test_create_admin_command(db_url, monkeypatch, capsys):
    monkeypatch.setenv(user_store.ADMIN_PASSWORD_ENV, "admin password 123")
    assert cli.main(["users", "create-admin", "--username", "boss", "--url", db_url]) == 0
    assert "Created admin 'boss'" in capsys.readouterr().out
    assert cli.main(["users", "create-admin", "--username", "boss", "--url", db_url]) == 1
    assert "already exists" in capsys.readouterr().err


def test_a_reset_password_must_be_changed_and_the_last_administrator_stays(session, users):
    user_store.set_password(session, "staff_user", "temporary-pass-1", actor="admin_user")
    staff = user_store.authenticate(session, "staff_user", "temporary-pass-1")
    assert staff.must_change_password
    with pytest.raises(user_store.WeakPassword):  # the same password again is no change
        user_store.change_password(session, "staff_user", "temporary-pass-1", "temporary-pass-1")
    user_store.change_password(session, "staff_user", "temporary-pass-1", "my-own-password")
    session.refresh(staff)
    assert not staff.must_change_password

    assert [u.username for u in user_store.list_users(session) if u.role == "admin"] == ["admin_user"]
    for change in (
        lambda: user_store.set_active(session, "admin_user", False, actor="admin_user"),
        lambda: user_store.set_role(session, "admin_user", "staff", actor="admin_user"),
    ):
        with pytest.raises(user_store.LastAdministrator):
            change()
    admin = session.scalar(select(User).where(User.username == "admin_user"))
    assert admin.active and admin.role == "admin"
    user_store.set_role(session, "manager_user", "admin", actor="admin_user")
    user_store.set_active(session, "admin_user", False, actor="manager_user")  # another admin exists now
    assert not session.scalar(select(User.active).where(User.username == "admin_user"))
    user_store.set_language(session, "manager_user", "en")
    assert session.scalar(select(User.language).where(User.username == "manager_user")) == "en"


@pytest.mark.parametrize(
    "name",
    [
        '=hyperlink("http://e/x")',  # a formula in every CSV that names the user
        "+cmd",
        "ab",  # too short
        "a" * 41,
        "-admin",
        ".admin",
        "аdmin",  # Cyrillic а: looks like admin
        "kim min",
        "김민수",
    ],
)
def test_new_usernames_keep_to_a_safe_alphabet(session, name):
    with pytest.raises(user_store.BadUsername, match="3 to 40 characters"):
        user_store.create_user(session, name, USER_PASSWORD, "staff")
    assert session.scalar(select(User).where(User.username == name.lower())) is None


def test_safe_usernames_are_created_and_older_names_still_sign_in(session, users):
    created = user_store.create_user(session, " Kim.Min-su_2 ", USER_PASSWORD, "staff")
    assert created.username == "kim.min-su_2"
    # A user created before the rule (here written directly) keeps signing in and being managed.
    session.add(
        User(
            username="이전@사용자",
            password_hash=user_store.hash_password(USER_PASSWORD),
            role="staff",
            active=True,
            must_change_password=False,
        )
    )
    session.commit()
    assert user_store.authenticate(session, "이전@사용자", USER_PASSWORD).username == "이전@사용자"
    user_store.set_role(session, "이전@사용자", "manager", actor="admin_user")
