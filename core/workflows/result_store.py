"""Storing results: the one path by which a verification result is stored, and the day batches
that single verifications (Verify page, API, gallery additions) join.

store_result(session, result, ...) -> stored row     the one path every result is stored by
store_single_result(session, actor, result, ...) -> (batch id, result id)   a computed single, committed
add_single_item(session, actor, source, model_version, member_id, ...) -> BatchItem
    a single verification joins its day's batch for that source, "Single verifications
    2026-12-01 · API", instead of becoming a batch of its own

core.workflows.batches re-exports these names; batch runs store their results here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import config
from core.storage import audit
from core.storage.schema import (
    BATCH_COMPLETED,
    MEMBER_IN_REVIEW,
    MEMBER_REJECTED,
    MEMBER_VERIFIED,
    Batch,
    BatchItem,
    Member,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import (
    AUTO_APPROVED,
    AUTO_REJECTED,
    FLAGGED,
    GENDER_MISMATCH,
    POSSIBLE_DUPLICATE,
    VerificationResult,
)
from core.workflows import photo_checks, search

_MEMBER_STATUS_AFTER = {
    AUTO_APPROVED: MEMBER_VERIFIED,
    AUTO_REJECTED: MEMBER_REJECTED,
    FLAGGED: MEMBER_IN_REVIEW,
}

PAGE_SINGLE, API_SINGLE = "verify_page", "api"  # Batch.source of the Verify page's and the API's pairs
# The stored (English) name of a day's batch; pages show it in their language from group_key.
_GROUP_NAMES = {
    PAGE_SINGLE: "Single verifications {day} · Verify page",
    API_SINGLE: "Single verifications {day} · API",
    "gallery-addition": "New gallery photos {day} · API",
}


GROUP_SOURCES = tuple(_GROUP_NAMES)


def group_name(source: str, day: str) -> str:
    return _GROUP_NAMES.get(source, "Single verifications {day} · " + source).format(day=day)


def group_key(source: str, day: str, model_version: str) -> str:
    return f"{source}:{day}:{model_version}"[:200]


def parse_group_key(key: str | None) -> tuple[str, str] | None:
    """(source, local day) of a day batch's group key; None for an ordinary batch."""
    if not key:
        return None
    source, day, _version = key.split(":", 2)
    return source, day


def local_day(when: datetime, tz: str | None = None) -> str:
    """The day (YYYY-MM-DD) a naive-UTC time falls on where the staff work (config.DISPLAY_TZ)."""
    return when.replace(tzinfo=UTC).astimezone(ZoneInfo(tz or config.DISPLAY_TZ)).date().isoformat()


def _upsert(session: Session, on_conflict: dict):
    """INSERT INTO batches that, on a duplicate group_key, updates the existing row instead."""
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        return mysql_insert(Batch).on_duplicate_key_update(**on_conflict)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(Batch).on_conflict_do_update(index_elements=[Batch.group_key], set_=on_conflict)


def add_single_item(
    session: Session,
    actor: str,
    source: str,
    model_version: str,
    member_id: str,
    gallery_photo_id: int,
    verification_photo_id: int,
    registered_gender: str | None,
    *,
    now: datetime | None = None,
) -> BatchItem:
    """One single verification as the next item of its day's batch (made on first use); the caller
    stores the result with it and commits.

    The day batch is completed from the start: it counts its items as they come, and its
    finished_at is its latest pair. Counting the pair (an UPDATE) comes first and holds the
    batch row until the caller commits (as the audit chain does), so concurrent singles of the
    same day take positions one after another, each reading back its own count.
    """
    now = now or utcnow()
    key = group_key(source, local_day(now), model_version)
    advance = (
        update(Batch)
        .where(Batch.group_key == key)
        .values(n_items=Batch.n_items + 1, finished_at=now, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    if not session.execute(advance).rowcount:
        # The day's first pair: make the batch, or, when another process just made it, count this
        # pair in it. One upsert, which locks the row exclusively at once: an INSERT that fails on
        # the unique key and then UPDATEs holds a shared lock first, and two such writers deadlock.
        session.execute(
            _upsert(session, {"n_items": Batch.n_items + 1, "finished_at": now, "heartbeat_at": now}),
            {
                "name": group_name(source, local_day(now)),
                "source": source,
                "created_by": actor,
                "created_at": now,
                "model_version": model_version,
                "status": BATCH_COMPLETED,
                "n_items": 1,
                "started_at": now,
                "finished_at": now,
                "heartbeat_at": now,
                "group_key": key,
            },
        )
    batch_id, n_items = session.execute(select(Batch.id, Batch.n_items).where(Batch.group_key == key)).one()
    if n_items == 1:  # this pair made the batch
        audit.log(
            session,
            actor,
            audit.CREATE_BATCH,
            "batch",
            batch_id,
            {"group": key, "model_version": model_version},
        )
    item = BatchItem(
        batch_id=batch_id,
        position=n_items - 1,
        member_id=member_id,
        gallery_photo_id=gallery_photo_id,
        verification_photo_id=verification_photo_id,
        registered_gender=registered_gender,
    )
    session.add(item)
    session.flush()
    return item


# ----------------------------------------------------------------------------------------------
# Storing one result


def _plain(value):
    """Numpy scalars and arrays, tuples and dataclass leftovers -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _float(value) -> float | None:
    return None if value is None else float(value)


def store_result(
    session: Session,
    result: VerificationResult,
    *,
    batch_id: int | None = None,
    batch_item_id: int | None = None,
    member_id: str | None = None,
    gallery_photo_id: int | None = None,
    verification_photo_id: int | None = None,
    latency_ms: float | None = None,
    update_member: bool = True,
    verification_photo_checks: bool = True,
    replayed: list | None = None,
) -> ResultRow:
    """Add the engine's result (every field) to the session; the caller commits. The one path by
    which results are stored: batches, single verifications (core.workflows.verification) and
    gallery additions; the 1:N duplicate check and the fraud checks run here.

    verification_photo_checks=False: the photo is not a verification selfie (a gallery addition),
    so it is not judged as a reused or stale selfie; its file is still looked up among other members.
    replayed: reuse matches for stored rows that already hold the selfie's file (a replay).
    A result that says nothing of a pose challenge (a batch of imported, historical photos) is
    stored saying that none was used and none was required.
    """
    if "challenge_used" not in (result.checks or {}):
        result.checks = {
            **(result.checks or {}),
            "challenge_used": "challenge" in (result.checks or {}),
            "challenge_required": False,
        }
    as_dict = _plain(result.to_dict())
    codes = {flag.code for flag in result.flags}
    if latency_ms is None:
        latency_ms = result.timings_ms.get("total")
    now = utcnow()
    row = ResultRow(
        batch_id=batch_id,
        batch_item_id=batch_item_id,
        member_id=member_id,
        gallery_photo_id=gallery_photo_id,
        verification_photo_id=verification_photo_id,
        same_person=None if result.same_person is None else bool(result.same_person),
        similarity=_float(result.similarity),
        threshold=float(result.threshold),
        band_low=float(result.uncertain_band[0]),
        band_high=float(result.uncertain_band[1]),
        predicted_gender=result.predicted_gender,
        gender_confidence=_float(result.gender_confidence),
        registered_gender=result.registered_gender,
        status=result.status,
        flags=as_dict["flags"],
        gallery_analysis=as_dict["gallery"],
        verification_analysis=as_dict["verification"],
        timings=as_dict["timings_ms"],
        latency_ms=_float(latency_ms),
        model_version=result.model_version,
        gender_mismatch=GENDER_MISMATCH in codes,
        possible_duplicate=POSSIBLE_DUPLICATE in codes,
        created_at=now,
        version=1,
    )
    session.add(row)
    search.flag_possible_duplicates(session, row, result)  # 1:N check; may flag it, so before the member
    photo_checks.apply(
        session, row, result, selfie=verification_photo_checks, replayed=replayed
    )  # may flag it
    if update_member and member_id is not None and result.status in _MEMBER_STATUS_AFTER:
        session.execute(
            update(Member)
            .where(Member.id == member_id)
            .values(status=_MEMBER_STATUS_AFTER[result.status], last_verified_at=now, updated_at=now)
        )
    return row


def store_single_result(
    session: Session,
    actor: str,
    result: VerificationResult,
    member_id: str,
    gallery_photo_id: int,
    verification_photo_id: int,
    registered_gender: str | None,
    source: str = PAGE_SINGLE,
) -> tuple[int, int]:
    """An already computed result as the next item of its day's batch: (batch id, result id).
    The item, the result and the batch's count commit together (nothing half saved)."""
    item = add_single_item(
        session,
        actor,
        source,
        result.model_version,
        member_id,
        gallery_photo_id,
        verification_photo_id,
        registered_gender,
    )
    row = store_result(
        session,
        result,
        batch_id=item.batch_id,
        batch_item_id=item.id,
        member_id=member_id,
        gallery_photo_id=gallery_photo_id,
        verification_photo_id=verification_photo_id,
    )
    session.commit()
    return item.batch_id, row.id
