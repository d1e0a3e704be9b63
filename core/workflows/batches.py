"""Verification batches: a list of pairs, run by the engine, each result committed as it comes.

items_for_members(session, member_ids=None, only_pending=False) -> list[BatchItemSpec]
create_batch(session, created_by, items, model_version, source="page", name=None) -> Batch
run_batch(session_factory, engine, batch_id, progress=None, ...) -> BatchRunSummary
store_result(session, result, ...) -> stored row     the one path every result is stored by
store_single_result(session, actor, result, ...) -> (batch id, result id)   a computed single, committed
add_single_item(session, actor, source, model_version, member_id, ...) -> BatchItem
    a single verification (Verify page, API, gallery addition) joins its day's batch for that
    source, "Single verifications 2026-12-01 · API", instead of becoming a batch of its own

run_batch processes only items that have no stored result yet, so running an interrupted batch
again resumes it. Every result is committed on its own as soon as it is computed: when the
database connection drops halfway, or the photo store stops answering, everything finished before
stays, and BatchInterrupted says so.
A batch runs at most once at a time: starting it is a compare-and-set on its status, and a
runner that died is taken over only when its heartbeat is older than `stale_after`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker

from core import config
from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend, PhotoStoreUnavailable
from core.storage.schema import (
    BATCH_COMPLETED,
    BATCH_FAILED,
    BATCH_INTERRUPTED,
    BATCH_PENDING,
    BATCH_RUNNING,
    GALLERY,
    MEMBER_IN_REVIEW,
    MEMBER_PENDING,
    MEMBER_REJECTED,
    MEMBER_VERIFIED,
    VERIFICATION,
    Batch,
    BatchItem,
    Member,
    Photo,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.storage.stores import open_photo_store
from core.verification.result import (
    AUTO_APPROVED,
    AUTO_REJECTED,
    BAD_IMAGE,
    FLAGGED,
    GENDER_MISMATCH,
    POSSIBLE_DUPLICATE,
    Flag,
    PhotoAnalysis,
    VerificationResult,
)
from core.workflows import photo_checks, search

DEFAULT_STALE_AFTER = timedelta(minutes=10)
CHUNK_PAIRS = 8  # pairs whose new photos go through the network together

_MEMBER_STATUS_AFTER = {
    AUTO_APPROVED: MEMBER_VERIFIED,
    AUTO_REJECTED: MEMBER_REJECTED,
    FLAGGED: MEMBER_IN_REVIEW,
}


class BatchError(FaceVerifyError):
    code = "batch_error"


class BatchNotFound(BatchError):
    code = "batch_not_found"


class BatchAlreadyRunning(BatchError):
    code = "batch_running"


class BatchInterrupted(BatchError):
    """The database went away during the run; finished results are stored, run it again to resume."""

    code = "batch_interrupted"

    def __init__(
        self,
        batch_id: int,
        done: int,
        remaining: int,
        cause: str,
        token: str,
        what: str = "the database connection was lost",
    ):
        self.batch_id, self.done, self.remaining = batch_id, done, remaining
        # Pass as run_batch(..., resume_token=) to resume at once, even if the database never
        # heard that this run stopped (it still says "running").
        self.token = token
        super().__init__(
            f"Batch {batch_id} stopped: {what} ({cause}). "
            f"{done} result(s) of this run are saved; run the batch again to finish the other {remaining}."
        )


@dataclass(frozen=True)
class BatchItemSpec:
    member_id: str
    gallery_photo_id: int
    verification_photo_id: int
    registered_gender: str | None = None


@dataclass
class BatchRunSummary:
    batch_id: int
    processed: int  # results computed and stored by this run
    already_done: int  # items that had a result before this run started
    total: int
    status: str
    seconds: float


# ----------------------------------------------------------------------------------------------
# Creating


def items_for_members(
    session: Session, member_ids: Iterable[str] | None = None, *, only_pending: bool = False
) -> list[BatchItemSpec]:
    """One item per member that has a current gallery and a current verification photo."""
    gallery, verification = aliased(Photo), aliased(Photo)
    stmt = (
        select(Member.id, Member.gender, gallery.id, verification.id)
        .join(
            gallery, and_(gallery.member_id == Member.id, gallery.kind == GALLERY, gallery.current.is_(True))
        )
        .join(
            verification,
            and_(
                verification.member_id == Member.id,
                verification.kind == VERIFICATION,
                verification.current.is_(True),
            ),
        )
        .order_by(Member.id)
    )
    if member_ids is not None:
        stmt = stmt.where(Member.id.in_(list(member_ids)))
    if only_pending:
        stmt = stmt.where(Member.status == MEMBER_PENDING)
    return [BatchItemSpec(m, g_id, v_id, gender) for m, gender, g_id, v_id in session.execute(stmt)]


def create_batch(
    session: Session,
    created_by: str,
    items: Iterable[BatchItemSpec | dict],
    model_version: str,
    source: str = "page",
    name: str | None = None,
) -> Batch:
    """Store a batch and its items (one transaction). Commits."""
    specs = [item if isinstance(item, BatchItemSpec) else BatchItemSpec(**item) for item in items]
    if not specs:
        raise BatchError("A batch needs at least one pair.")
    batch = Batch(
        name=name,
        source=source,
        created_by=created_by,
        created_at=utcnow(),
        model_version=model_version,
        status=BATCH_PENDING,
        n_items=len(specs),
    )
    session.add(batch)
    session.flush()
    # One multi-row INSERT instead of a round trip per item.
    session.execute(
        insert(BatchItem),
        [
            {
                "batch_id": batch.id,
                "position": position,
                "member_id": spec.member_id,
                "gallery_photo_id": spec.gallery_photo_id,
                "verification_photo_id": spec.verification_photo_id,
                "registered_gender": spec.registered_gender,
            }
            for position, spec in enumerate(specs)
        ],
    )
    audit.log(
        session,
        created_by,
        audit.CREATE_BATCH,
        "batch",
        batch.id,
        {"items": len(specs), "model_version": model_version},
    )
    session.commit()
    return batch


# ----------------------------------------------------------------------------------------------
# Single verifications: one batch per local day, source and model version, not a batch each

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


# ----------------------------------------------------------------------------------------------
# Running


def _claim(
    session: Session, batch_id: int, token: str, stale_after: timedelta, resume_token: str | None
) -> None:
    now = utcnow()
    may_take = [
        Batch.status != BATCH_RUNNING,
        Batch.heartbeat_at.is_(None),
        Batch.heartbeat_at < now - stale_after,
    ]
    if resume_token:
        may_take.append(Batch.run_token == resume_token)
    claimed = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            or_(*may_take),
        )
        .values(
            status=BATCH_RUNNING,
            run_token=token,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            error=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    if claimed == 1:
        return
    batch = session.get(Batch, batch_id, populate_existing=True)
    session.rollback()
    if batch is None:
        raise BatchNotFound(f"There is no batch {batch_id}.")
    raise BatchAlreadyRunning(
        f"Batch {batch_id} is already running (last sign of life {batch.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC). "
        "Wait for it to finish; a runner that died is taken over automatically after "
        f"{int(stale_after.total_seconds() // 60)} minutes."
    )


def _release(
    session_factory: sessionmaker, batch_id: int, token: str, status: str, error: str | None = None
) -> bool:
    """Set the final status if we still hold the batch. Best effort: the database may be gone."""
    try:
        with session_factory() as session:
            session.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.run_token == token)
                .values(status=status, finished_at=utcnow(), heartbeat_at=utcnow(), error=error)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        return True
    except SQLAlchemyError:
        return False


@dataclass
class _PendingItem:
    item_id: int
    member_id: str
    registered_gender: str | None
    gallery_photo_id: int
    verification_photo_id: int
    gallery_sha: str
    gallery_path: str
    verification_sha: str
    verification_path: str


def _pending_items(session: Session, batch_id: int) -> tuple[list[_PendingItem], int]:
    gallery, verification = aliased(Photo), aliased(Photo)
    stmt = (
        select(
            BatchItem.id,
            BatchItem.member_id,
            BatchItem.registered_gender,
            gallery.id,
            verification.id,
            gallery.sha256,
            gallery.stored_path,
            verification.sha256,
            verification.stored_path,
        )
        .join(gallery, gallery.id == BatchItem.gallery_photo_id)
        .join(verification, verification.id == BatchItem.verification_photo_id)
        .outerjoin(ResultRow, ResultRow.batch_item_id == BatchItem.id)
        .where(BatchItem.batch_id == batch_id, ResultRow.id.is_(None))
        .order_by(BatchItem.position)
    )
    pending = [_PendingItem(*row) for row in session.execute(stmt)]
    total = session.scalar(select(Batch.n_items).where(Batch.id == batch_id)) or 0
    return pending, total - len(pending)


def _unreadable(sha256: str, message: str) -> PhotoAnalysis:
    analysis = PhotoAnalysis(sha256=sha256, error=message)
    analysis.flags.append(Flag(BAD_IMAGE, message))
    return analysis


def _analyse(
    engine, store: PhotoStoreBackend, photos: dict[str, str], cache: dict[str, PhotoAnalysis]
) -> None:
    """Analyse each photo (sha -> stored path) not yet in the cache; once per photo per run."""
    todo = {sha: path for sha, path in photos.items() if sha not in cache}
    if not todo:
        return
    readable: dict[str, bytes] = {}
    for sha, path in todo.items():
        try:
            readable[sha] = store.read(path)
        except PhotoNotFound as exc:
            cache[sha] = _unreadable(sha, str(exc))
    if not readable:
        return
    if hasattr(engine, "analyze_many"):  # one network call for the chunk's faces
        analyses = engine.analyze_many(list(readable.values()))
    else:
        analyses = [engine.analyze(data) for data in readable.values()]
    for sha, analysis in zip(readable, analyses, strict=True):
        analysis.crop = None  # the chips are not stored; dropping them keeps memory flat
        analysis.chips = {}
        cache[sha] = analysis


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # Server gone, connection killed, lock wait timeout: the run cannot go on right now.
    return isinstance(exc, OperationalError | InterfaceError)


def run_batch(
    session_factory: sessionmaker,
    engine,
    batch_id: int,
    progress: Callable[[int, int, ResultRow], None] | None = None,
    *,
    photo_store: PhotoStoreBackend | None = None,
    actor: str = "runner",
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    chunk_pairs: int = CHUNK_PAIRS,
    resume_token: str | None = None,
) -> BatchRunSummary:
    """Run the items of a batch that have no result yet. progress(done, total, stored_row).

    Each distinct photo is analysed once per run; each result is committed on its own.
    resume_token: the .token of a BatchInterrupted from an earlier call, to resume that run at
    once even though the database still says it is running (it never heard that it stopped).
    Raises BatchAlreadyRunning, BatchNotFound, BatchError (engine of another model version),
    BatchInterrupted when the database connection is lost or the photo store cannot be reached
    (results so far are kept).
    """
    started = time.perf_counter()
    store = photo_store or open_photo_store()
    token = uuid.uuid4().hex
    with session_factory() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchNotFound(f"There is no batch {batch_id}.")
        if batch.model_version and batch.model_version != engine.model_version:
            raise BatchError(
                f"Batch {batch_id} was created for model {batch.model_version}, but the loaded engine is "
                f"{engine.model_version}. Load that model version, or create a new batch."
            )
        session.rollback()
        _claim(session, batch_id, token, stale_after, resume_token)
        pending, already_done = _pending_items(session, batch_id)
        session.commit()
        audit.log(
            session,
            actor,
            audit.RUN_BATCH,
            "batch",
            batch_id,
            {"pending": len(pending), "resumed": already_done > 0},
        )
        session.commit()

    total = already_done + len(pending)
    done_now = 0
    cache: dict[str, PhotoAnalysis] = {}
    session = session_factory()
    try:
        for first in range(0, len(pending), chunk_pairs):
            chunk = pending[first : first + chunk_pairs]
            photos = {}
            for item in chunk:
                photos[item.gallery_sha] = item.gallery_path
                photos[item.verification_sha] = item.verification_path
            _analyse(engine, store, photos, cache)
            for item in chunk:
                result = engine.compare(
                    cache[item.gallery_sha], cache[item.verification_sha], item.registered_gender
                )
                row = store_result(
                    session,
                    result,
                    batch_id=batch_id,
                    batch_item_id=item.item_id,
                    member_id=item.member_id,
                    gallery_photo_id=item.gallery_photo_id,
                    verification_photo_id=item.verification_photo_id,
                )
                still_ours = session.execute(
                    update(Batch)
                    .where(Batch.id == batch_id, Batch.run_token == token)
                    .values(heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount
                if still_ours != 1:
                    session.rollback()
                    raise BatchError(f"Batch {batch_id} was taken over by another runner; this run stopped.")
                try:
                    session.commit()  # this result is safe from here on
                except IntegrityError:
                    session.rollback()  # another runner stored this item meanwhile: not ours to redo
                    continue
                done_now += 1
                if progress:
                    progress(already_done + done_now, total, row)
    except SQLAlchemyError as exc:
        _safe_rollback(session)
        if _is_connection_error(exc):
            _release(session_factory, batch_id, token, BATCH_INTERRUPTED, "database connection lost")
            cause = type(getattr(exc, "orig", None) or exc).__name__
            raise BatchInterrupted(batch_id, done_now, len(pending) - done_now, cause, token) from exc
        _release(session_factory, batch_id, token, BATCH_FAILED, str(exc)[:2000])
        raise
    except PhotoStoreUnavailable as exc:
        _safe_rollback(session)
        _release(session_factory, batch_id, token, BATCH_INTERRUPTED, "photo store unavailable")
        raise BatchInterrupted(
            batch_id,
            done_now,
            len(pending) - done_now,
            str(exc),
            token,
            "the photo store could not be reached",
        ) from exc
    except BaseException as exc:
        _safe_rollback(session)
        _release(session_factory, batch_id, token, BATCH_FAILED, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        session.close()

    _release(session_factory, batch_id, token, BATCH_COMPLETED)
    return BatchRunSummary(
        batch_id, done_now, already_done, total, BATCH_COMPLETED, time.perf_counter() - started
    )


def _safe_rollback(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        pass  # the connection is already gone; the pool discards it


def batch_progress(session: Session, batch_id: int) -> dict:
    """Status and counts for a progress display."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise BatchNotFound(f"There is no batch {batch_id}.")
    done = session.scalar(select(func.count(ResultRow.id)).where(ResultRow.batch_id == batch_id)) or 0
    return {
        "batch_id": batch_id,
        "status": batch.status,
        "done": done,
        "total": batch.n_items,
        "started_at": batch.started_at,
        "finished_at": batch.finished_at,
        "error": batch.error,
    }
