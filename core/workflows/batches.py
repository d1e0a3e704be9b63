"""Verification batches: a list of pairs, run by the engine, each result committed as it comes.

items_for_members(session, member_ids=None, only_pending=False) -> list[BatchItemSpec]
create_batch(session, created_by, items, model_version, source="page", name=None) -> Batch
run_batch(session_factory, engine, batch_id, progress=None, ...) -> BatchRunSummary
store_result, store_single_result, add_single_item and the day batches' names live in
core.workflows.result_store and are re-exported here.

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
from datetime import timedelta

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased, sessionmaker

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
    MEMBER_PENDING,
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
    BAD_IMAGE,
    Flag,
    PhotoAnalysis,
)
from core.workflows.result_store import (  # noqa: F401  re-exported: callers import these from here
    API_SINGLE,
    GROUP_SOURCES,
    PAGE_SINGLE,
    add_single_item,
    group_key,
    group_name,
    local_day,
    parse_group_key,
    store_result,
    store_single_result,
)

DEFAULT_STALE_AFTER = timedelta(minutes=10)
CHUNK_PAIRS = 8  # pairs whose new photos go through the network together


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


def items_statement(member_ids: Iterable[str] | None = None, *, only_pending: bool = False):
    """SELECT member id, gender, gallery photo id, verification photo id: one row per member that
    has a current gallery and a current verification photo (items_for_members reads it)."""
    gallery, verification = aliased(Photo), aliased(Photo)
    stmt = (
        select(
            Member.id.label("member_id"),
            Member.gender.label("gender"),
            gallery.id.label("gallery_photo_id"),
            verification.id.label("verification_photo_id"),
        )
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
    )
    if member_ids is not None:
        stmt = stmt.where(Member.id.in_(list(member_ids)))
    if only_pending:
        stmt = stmt.where(Member.status == MEMBER_PENDING)
    return stmt


def items_for_members(
    session: Session, member_ids: Iterable[str] | None = None, *, only_pending: bool = False
) -> list[BatchItemSpec]:
    """One item per member that has a current gallery and a current verification photo."""
    stmt = items_statement(member_ids, only_pending=only_pending).order_by(Member.id)
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
