"""Deadlocks and lock waits retried with backoff until a deadline, then a clear "busy, retry".

    with_retry(fn, deadline_s=DEADLINE_S) -> fn()'s result     raises DatabaseBusy after the deadline
    is_lock_conflict(exc) -> bool                               MySQL 1213/1205, SQLite "locked"

A deadlock is not the database being down: the answer for it is 503 "database_busy" with
Retry-After, never "database_unavailable". fn must run its own transaction from the start
(a deadlock rolls the whole transaction back).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from core.errors import FaceVerifyError

DEADLINE_S = 15.0
FIRST_DELAY_S = 0.02
MAX_DELAY_S = 0.5
_LOCK_CODES = {1213, 1205}  # ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT

T = TypeVar("T")


class DatabaseBusy(FaceVerifyError):
    code = "database_busy"

    def __init__(self):
        super().__init__(
            "The database is busy with other requests for the same data; nothing was stored. Retry."
        )


def is_lock_conflict(exc: BaseException) -> bool:
    if not isinstance(exc, OperationalError | DBAPIError):
        return False
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _LOCK_CODES:
        return True
    text = str(orig or exc).lower()
    return "deadlock" in text or "lock wait timeout" in text or "database is locked" in text


def with_retry(fn: Callable[[], T], *, deadline_s: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + deadline_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            if not is_lock_conflict(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseBusy() from exc
        # Full jitter: concurrent losers of one deadlock do not come back in step.
        time.sleep(random.uniform(delay / 2, delay))
        delay = min(MAX_DELAY_S, delay * 2)
