"""API keys (only their sha256 is stored), the caller they name, and which role may call what."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.api.settings import (
    API_ROLES,
    BACKEND,
    CREATE_API_KEY,
    KEY_PREFIX,
    LAST_USED_EVERY,
    READER,
    REVOKE_API_KEY,
)
from core.storage import audit
from core.storage.schema import utcnow
from core.storage.schema_guards import ApiKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, name: str, role: str, actor: str = "cli") -> tuple[str, ApiKey]:
    """A new key: returns (the key itself, shown once; its row, which holds only the hash). Commits."""
    name = (name or "").strip()
    if not name or len(name) > 128:
        raise ValueError("A key needs a name of 1 to 128 characters.")
    if role not in API_ROLES:
        raise ValueError(f"Unknown role {role!r}; use one of {', '.join(API_ROLES)}.")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))):
        raise ValueError(f"An active key named {name!r} exists; revoke it first or pick another name.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        key_hash=hash_key(key),
        key_prefix=key[:12],
        name=name,
        role=role,
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(row)
    audit.log(session, actor, CREATE_API_KEY, "api_key", name, {"role": role, "prefix": key[:12]})
    session.commit()
    return key, row


def list_keys(session: Session) -> list[ApiKey]:
    """Every API key row, oldest first (hashes and prefixes only: the keys themselves are not kept)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, name: str, actor: str = "cli") -> int:
    now = utcnow()
    n = session.execute(
        update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=now)
    ).rowcount
    if n:
        audit.log(session, actor, REVOKE_API_KEY, "api_key", name)
    session.commit()
    return n


@dataclass(frozen=True)
class Caller:
    key_id: int
    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"api:{self.name}"[:64]


def lookup_key(factory: sessionmaker, key: str) -> Caller | None | str:
    """The caller for a key; None when unknown; "revoked" when revoked."""
    with factory() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        if row is None:
            return None
        if row.revoked_at is not None:
            return "revoked"
        now = utcnow()
        if row.last_used_at is None or row.last_used_at < now - LAST_USED_EVERY:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            session.commit()
        return Caller(row.id, row.name, row.role)


# Which roles may call what: (method, path prefix) -> roles. First match wins.
_PERMISSIONS = (
    ("POST", "/v1/verifications", (BACKEND,)),
    ("POST", "/v1/search", (BACKEND,)),
    ("POST", "/v1/photo-checks", (BACKEND,)),
    ("GET", "/v1/", (BACKEND, READER)),
)


def roles_for(method: str, path: str) -> tuple[str, ...]:
    for m, prefix, roles in _PERMISSIONS:
        if method == m and path.startswith(prefix):
            return roles
    return (BACKEND,)
