"""The table of server-side dashboard sign-ins (core.storage.sign_in_sessions keeps the rules).

token_hash is the sha256 of the random token the browser holds as a cookie; the token itself is
never stored. A row ends (ended_at, end_reason) and goes with its user.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from core.storage.schema_base import TABLE_ARGS, Base, DateTime, utcnow


class SignInSession(Base):
    __tablename__ = "sign_in_sessions"
    __table_args__ = (TABLE_ARGS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)  # sha256 hex of the token
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    end_reason: Mapped[str | None] = mapped_column(sa.String(32))
