"""ORM classes of the tables that guard the service: API keys, pose challenges, sign-in and API key
throttling, and the audit chain's head and checkpoint (the audit entries themselves are in
core.storage.schema, with the data they describe).

They share core.storage.schema's Base, so its metadata holds them once this module is imported:
core.storage.db imports it, and so every engine, session and migration sees every table.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from core.storage.schema import ID_LEN, SHA_LEN, TABLE_ARGS, Base, BigId, DateTime, utcnow

# Revision 0002: API keys.


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(SHA_LEN), unique=True)  # sha256 of the key
    key_prefix: Mapped[str] = mapped_column(sa.String(12))  # shown in lists to tell keys apart
    name: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)


# Revision 0004: pose challenges.


class Challenge(Base):
    """A pose challenge handed to a caller: single use, and only until it expires."""

    __tablename__ = "challenges"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(sa.String(64), unique=True)  # random, what the caller sends back
    # Not a foreign key: a member who is being enrolled asks for a challenge before it exists.
    member_id: Mapped[str] = mapped_column(sa.String(ID_LEN), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # core.verification.fraud.CHALLENGES
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(sa.String(ID_LEN))
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)
    result_id: Mapped[int | None] = mapped_column(sa.Integer)  # the verification that used it


# Revision 0005: the audit chain's head and sign-in / API key throttling.


class AuditChainHead(Base):
    """One row (id 1): the newest entry's seq and hash, locked briefly by each committing writer."""

    __tablename__ = "audit_chain"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    # The first entry linked with the audit key (HMAC); entries before it are plain sha256.
    keyed_from: Mapped[int | None] = mapped_column(sa.BigInteger)


class AuditCheckpoint(Base):
    """Revision 0011. One row (id 1): the newest audit entry a check found intact, sealed with
    the audit key (HMAC of seq and hash), so the next check walks only the entries after it."""

    __tablename__ = "audit_checkpoint"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    entry_hash: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    seal: Mapped[str] = mapped_column(sa.String(SHA_LEN))
    verified_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuthThrottle(Base):
    """Failed sign-ins or API key attempts of one user name or one client (core.storage.throttle)."""

    __tablename__ = "auth_throttle"
    __table_args__ = (sa.UniqueConstraint("kind", "subject"), TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # user / client / api_client
    subject: Mapped[str] = mapped_column(sa.String(128))
    failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    first_failed_at: Mapped[datetime] = mapped_column(DateTime)
    last_failed_at: Mapped[datetime] = mapped_column(DateTime)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)
