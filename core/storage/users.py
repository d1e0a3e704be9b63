"""Users, roles and passwords (argon2id hashes only; the password itself is never stored).

create_user(session, username, password, role, display_name=None, actor="system",
            must_change_password=False) -> User    new names follow USERNAME_RULE (BadUsername)
authenticate(session, username, password, client=None) -> User
                                                          raises AuthenticationFailed, or
                                                          SignInThrottled after repeated failures
                                                          for the name or the client (throttle)
change_password(session, username, old_password, new_password) -> None
set_password(session, username, new_password, actor, must_change=True)   (admin reset: the user
                                                          chooses a new password at the next sign-in)
set_role(session, username, role, actor) / set_active(session, username, active, actor)
                                                          LastAdministrator: never the last active admin
set_language(session, username, lang) -> None            the dashboard language the user chose
list_users(session) -> list[User]
has_role(user, *roles) -> bool                            admin is allowed everywhere
unlock_sign_in(session, username, actor) -> int          an administrator clears a name's sign-in
                                                          delays from every address (audited)

Each action commits its own transaction (with its audit entry).

Command line (core.cli.users):
    faceverify users create-admin --username NAME      password from a prompt, or from
                                                       FACEVERIFY_ADMIN_PASSWORD for scripts
    faceverify users create-user --username NAME --role staff
    faceverify users list
"""

from __future__ import annotations

import re
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.storage import audit, sign_in_sessions, throttle
from core.storage.schema import ADMIN, ROLES, User, utcnow

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # argon2 copes with more, but nobody types it and it costs memory
ADMIN_PASSWORD_ENV = "FACEVERIFY_ADMIN_PASSWORD"

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class AuthError(FaceVerifyError):
    code = "auth_error"


class AuthenticationFailed(AuthError):
    """Same message whether the user is unknown, inactive or the password is wrong."""

    code = "authentication_failed"

    def __init__(self):
        super().__init__("Wrong username or password.")


class SignInThrottled(AuthError):
    """Too many failed sign-ins for this name or from this client (core.storage.throttle)."""

    code = "sign_in_throttled"

    def __init__(self, retry_after: int, locked: bool):
        self.retry_after, self.locked = retry_after, locked
        wait = f"{retry_after} s" if retry_after < 120 else f"{-(-retry_after // 60)} minutes"
        super().__init__(f"Too many failed sign-ins; try again in {wait}.")


class UserExists(AuthError):
    code = "user_exists"


class UnknownUser(AuthError):
    code = "unknown_user"


class WeakPassword(AuthError):
    code = "weak_password"


class LastAdministrator(AuthError):
    """The change would leave no active administrator, so nobody could manage the users."""

    code = "last_administrator"


class UnknownRole(AuthError):
    code = "unknown_role"


class BadUsername(AuthError):
    code = "bad_username"


# New names only: ASCII letters, digits and . _ - (no formula character first, no look-alike
# letters from other scripts, nothing a CSV, a log line or an audit entry has to quote).
USERNAME_RULE = "3 to 40 characters: letters a-z, digits and . _ -, starting with a letter or a digit"
_USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{2,39}")


def normalise_username(username: str) -> str:
    """The name as stored: stripped and case-folded, so "Kim" and "kim" cannot be two accounts.

    Lenient on purpose (sign-in, lookups): users created before USERNAME_RULE keep working.
    """
    name = (username or "").strip().lower()
    if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise AuthError("A username is 1 to 64 visible characters without spaces.")
    return name


def check_new_username(username: str) -> str:
    """The normalised name of a user about to be created, or BadUsername naming USERNAME_RULE."""
    name = (username or "").strip().lower()
    if not _USERNAME_RE.fullmatch(name):
        raise BadUsername(f"A username needs {USERNAME_RULE}; {username!r} does not fit.")
    return name


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"The password needs at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"The password may have at most {MAX_PASSWORD_LENGTH} characters.")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UnknownRole(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    return role


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("not-a-real-password-used-only-to-spend-the-same-time")


def _find(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    display_name: str | None = None,
    actor: str = "system",
    must_change_password: bool = False,
) -> User:
    username = check_new_username(username)
    _check_role(role)
    _check_password(password)
    if _find(session, username) is not None:
        raise UserExists(f"A user named {username!r} already exists.")
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        display_name=display_name,
        active=True,
        created_at=utcnow(),
        password_changed_at=utcnow(),
        must_change_password=must_change_password,
    )
    session.add(user)
    audit.log(session, actor, audit.CREATE_USER, "user", username, {"role": role})
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # created by someone else between our check and our insert
        raise UserExists(f"A user named {username!r} already exists.") from None
    return user


def _verify(user: User | None, password: str) -> bool:
    """Always runs one argon2 verification, so timing does not tell whether the user exists."""
    stored = user.password_hash if user is not None else _dummy_hash()
    try:
        _hasher.verify(stored, password or "")
        return user is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, username: str, password: str, client: str | None = None) -> User:
    """The user, or AuthenticationFailed (same for an unknown name, an inactive user or a wrong
    password). Failures of a name from one address make its next attempts from that address wait
    longer and longer (never a lock: the real user elsewhere is not kept out); failures from one
    address under any names also lock that address for a while. `client` is the address
    (core.storage.client_address); without one, the name's attempts share the "unknown" address."""
    try:
        name = normalise_username(username)
    except AuthError:
        _verify(None, password)
        raise AuthenticationFailed() from None
    subjects = [(throttle.USER_CLIENT, throttle.user_subject(name, client))]
    subjects += [(throttle.CLIENT, client)] if client else []
    try:
        for kind, subject in subjects:
            throttle.check(session, kind, subject)
    except throttle.Throttled as exc:
        session.commit()  # a lock that ran out is recorded even when another one still holds
        raise SignInThrottled(exc.retry_after, exc.locked) from None
    user = _find(session, name)
    ok = _verify(user, password)
    if not ok or user is None or not user.active:
        audit.log(session, name, audit.LOGIN_FAILED, "user", name, {"client": client} if client else None)
        for kind, subject in subjects:
            throttle.record_failure(session, kind, subject, name)
        session.commit()
        raise AuthenticationFailed()
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)  # parameters got stronger since it was hashed
    user.last_login_at = utcnow()
    # The name's failures here are forgiven; the address's are not (one good account must not
    # reset them).
    throttle.record_success(session, throttle.USER_CLIENT, throttle.user_subject(name, client))
    audit.log(session, name, audit.LOGIN, "user", name)
    session.commit()
    return user


def unlock_sign_in(session: Session, username: str, actor: str) -> int:
    """An administrator lets a user sign in again at once: the name's failures from every address
    are forgotten (audited, committed). The number of throttle rows cleared."""
    name = normalise_username(username)
    n = throttle.unlock_user(session, name, actor)
    session.commit()
    return n


def _get(session: Session, username: str) -> User:
    user = _find(session, normalise_username(username))
    if user is None:
        raise UnknownUser(f"There is no user named {username!r}.")
    return user


def change_password(
    session: Session, username: str, old_password: str, new_password: str, keep_sign_in: int | None = None
) -> None:
    """The user's own change: their other sign-ins end (`keep_sign_in`, the one making it, holds)."""
    user = _find(session, normalise_username(username))
    if not _verify(user, old_password) or user is None:
        raise AuthenticationFailed()
    _check_password(new_password)
    if _verify(user, new_password):
        raise WeakPassword("The new password must differ from the old one.")
    user.password_hash = hash_password(new_password)
    user.password_changed_at = utcnow()
    user.must_change_password = False
    sign_in_sessions.end_all_for_user(session, user.id, sign_in_sessions.PASSWORD_CHANGED, keep=keep_sign_in)
    audit.log(session, user.username, audit.CHANGE_PASSWORD, "user", user.username)
    session.commit()


def set_password(
    session: Session, username: str, new_password: str, actor: str, must_change: bool = True
) -> None:
    """An administrator's reset: by default the user must choose a new password at the next sign-in."""
    user = _get(session, username)
    _check_password(new_password)
    user.password_hash = hash_password(new_password)
    user.password_changed_at = utcnow()
    user.must_change_password = bool(must_change)
    sign_in_sessions.end_all_for_user(session, user.id, sign_in_sessions.PASSWORD_CHANGED)
    audit.log(
        session,
        actor,
        audit.CHANGE_PASSWORD,
        "user",
        user.username,
        {"reset": True, "must_change": must_change},
    )
    session.commit()


def _keep_an_administrator(session: Session, user: User) -> None:
    """Refuse (before anything changes) when `user` is the last active administrator. The other
    administrators' rows are locked, so two administrators demoting each other cannot both win."""
    others = session.scalars(
        select(User.id).where(User.role == ADMIN, User.active.is_(True), User.id != user.id).with_for_update()
    ).all()
    if not others:
        session.rollback()
        raise LastAdministrator(
            f"{user.username!r} is the last active administrator; make another administrator first."
        )


def set_role(session: Session, username: str, role: str, actor: str) -> None:
    user = _get(session, username)
    old = user.role
    role = _check_role(role)
    if old == ADMIN and role != ADMIN and user.active:
        _keep_an_administrator(session, user)
    user.role = role
    audit.log(session, actor, audit.CHANGE_ROLE, "user", user.username, {"from": old, "to": role})
    session.commit()


def set_active(session: Session, username: str, active: bool, actor: str) -> None:
    user = _get(session, username)
    if not active and user.active and user.role == ADMIN:
        _keep_an_administrator(session, user)
    user.active = bool(active)
    if not active:
        sign_in_sessions.end_all_for_user(session, user.id, sign_in_sessions.DEACTIVATED)
    audit.log(session, actor, "activate_user" if active else "deactivate_user", "user", user.username)
    session.commit()


def set_language(session: Session, username: str, lang: str) -> None:
    """Remember the dashboard language a user chose (not audited: it changes nothing they may do)."""
    user = _get(session, username)
    if user.language != lang:
        user.language = lang
        session.commit()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def has_role(user: User | None, *roles: str) -> bool:
    """True when the user is active and holds one of the roles; admins may do everything."""
    if user is None or not user.active:
        return False
    return user.role == ADMIN or user.role in roles
