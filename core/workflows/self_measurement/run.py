"""Running a measurement: claiming the day's row, the resumable block loop, storing the pairs, the
job body and the schedule."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import config, process_memory
from core.storage import audit
from core.storage.schema import SelfMeasurement, SelfMeasurementPair, utcnow
from core.workflows.self_measurement.photos import PhotoSet, load_photo_set, model_scale, reviewed_fnmr
from core.workflows.self_measurement.results import active_version
from core.workflows.self_measurement.scan import add_counts, blocks, empty_counts, scan_block
from core.workflows.self_measurement.settings import (
    COMPLETED,
    DEFAULT_BLOCK_ROWS,
    DEFAULT_PAIRS_KEPT,
    GENDERS,
    INTERRUPTED,
    MAX_SCAN_THREADS,
    RUNNING,
    SELF_MEASURE,
    STALE_AFTER,
    MeasurementRunning,
    _float_setting,
    similarity_floor,
)
from core.workflows.self_measurement.stats import summarise

# ----------------------------------------------------------------------------------------------
# The run


log = logging.getLogger(__name__)


def _run_key(version: str, day: str) -> str:
    return f"{version}:{day}"


def _claim(session_factory, version: str, day: str, points, floor: float, block_rows: int, actor: str):
    """The day's row for this version, claimed for this process: (row id, token, completed?)."""
    token = str(uuid.uuid4())
    key = _run_key(version, day)
    for _attempt in range(3):
        with session_factory() as session:
            row = session.scalar(select(SelfMeasurement).where(SelfMeasurement.run_key == key))
            now = utcnow()
            if row is None:
                row = SelfMeasurement(
                    run_key=key,
                    model_version=version,
                    measured_on=day,
                    status=RUNNING,
                    triggered_by=actor,
                    started_at=now,
                    heartbeat_at=now,
                    run_token=token,
                    approve_at=points.approve_at,
                    reject_below=points.reject_below,
                    floor=floor,
                    block_rows=block_rows,
                )
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue  # another worker created it a moment ago: look again
                return row.id, token, False
            if row.status == COMPLETED:
                return row.id, None, True
            if row.status == RUNNING and row.heartbeat_at and now - row.heartbeat_at < STALE_AFTER:
                raise MeasurementRunning(
                    f"The measurement of {version} for {day} is running in another worker "
                    f"(last sign of life {row.heartbeat_at:%H:%M:%S} UTC)."
                )
            # Compare-and-set on the token: of two workers taking over a dead run, one wins.
            same_token = (
                SelfMeasurement.run_token.is_(None)
                if row.run_token is None
                else SelfMeasurement.run_token == row.run_token
            )
            taken = session.execute(
                update(SelfMeasurement)
                .where(SelfMeasurement.id == row.id, same_token)
                .values(run_token=token, status=RUNNING, heartbeat_at=now, error=None)
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
            if taken == 1:
                return row.id, token, False
    raise MeasurementRunning(f"The measurement of {version} for {day} was taken by another worker.")


def scan_threads() -> int:
    """Blocks scanned at once: one per core this process may use (at most MAX_SCAN_THREADS)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_SCAN_THREADS))


def _scanned(photo_set, all_blocks, first: int, stop: int, scan: tuple, threads: int | None = None):
    """(number, BlockResult) of blocks first..stop-1, in order, several computed at once.

    Each block runs on its own thread with a single-threaded BLAS: the threads never wait for one
    another inside a matrix product, so a core taken by another process slows one block, not every
    product (a multi-threaded BLAS waits at each product for its slowest thread: on a busy machine
    most of its time). NumPy releases the GIL in the products and the passes over the scores. The
    blocks still commit one by one in order, so a run stopped anywhere resumes as before."""
    threads = threads or scan_threads()
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency
    except ImportError:  # the BLAS cannot be made single-threaded: one block at a time
        threads = 1
    if threads == 1 or stop - first <= 1:
        for number in range(first, stop):
            yield number, scan_block(photo_set, all_blocks[number], *scan)
        return
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        submitted = first
        try:
            while pending or submitted < stop:
                while submitted < stop and len(pending) < threads:
                    pending.append(
                        (submitted, pool.submit(scan_block, photo_set, all_blocks[submitted], *scan))
                    )
                    submitted += 1
                number, future = pending.popleft()
                yield number, future.result()
        finally:
            for _number, future in pending:
                future.cancel()


def _points(model):
    return model.operating_points


def measure(
    session_factory,
    model,
    triggered_by: str = "system",
    *,
    day: str | None = None,
    block_rows: int | None = None,
    stop_after_blocks: int | None = None,
    year: int | None = None,
    pairs_kept: int | None = None,
) -> dict:
    """Measure (or finish measuring) the model version on today's members. Returns the summary.

    Idempotent: a completed measurement of the same version and day is returned as it is.
    stop_after_blocks: stop after that many blocks of this call, as a killed worker would (tests,
    and a caller that wants to spread the work); the next call resumes.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    points = _points(model)
    approve_at, reject_below = float(points.approve_at), float(points.reject_below)
    floor = similarity_floor(approve_at)
    near_from = approve_at / 2
    keep = int(pairs_kept or _float_setting("SELF_MEASURE_PAIRS_KEPT", DEFAULT_PAIRS_KEPT))
    block_rows = int(block_rows or _float_setting("SELF_MEASURE_BLOCK_ROWS", DEFAULT_BLOCK_ROWS))
    day = day or utcnow().strftime("%Y-%m-%d")
    run_id, token, done = _claim(session_factory, model.version, day, points, floor, block_rows, triggered_by)
    if done:
        with session_factory() as session:
            return dict(session.get(SelfMeasurement, run_id).summary or {})
    photo_set = None
    try:
        scale = model_scale(model)
        with session_factory() as session:
            photo_set = load_photo_set(session, model, year)
            fnmr = reviewed_fnmr(session, model, reject_below)
            session.rollback()
        process_memory.trim()  # the loading's freed heap back to the system before the scan
        load_seconds = round(time.perf_counter() - started, 3)
        load_cpu_seconds = round(time.process_time() - cpu_started, 3)
        all_blocks = blocks(photo_set, block_rows)
        # ":g" names the block order (the genders in turn): a run begun in another order restarts.
        snapshot = f"{photo_set.fingerprint()[:40]}:{approve_at!r}:{floor!r}:{block_rows}:g"
        with session_factory() as session:
            row = session.get(SelfMeasurement, run_id)
            if row.snapshot != snapshot or row.counts is None or row.block_rows != block_rows:
                # What was measured before is not this photo set: start again, never add to it.
                session.execute(delete(SelfMeasurementPair).where(SelfMeasurementPair.run_id == run_id))
                row.snapshot, row.counts, row.blocks_done = snapshot, empty_counts(photo_set), 0
                row.blocks_total, row.block_rows = len(all_blocks), block_rows
                row.approve_at, row.reject_below, row.floor = approve_at, reject_below, floor
                session.commit()
            counts, first_block = row.counts, row.blocks_done
        stop = len(all_blocks)
        if stop_after_blocks is not None:
            stop = min(stop, first_block + stop_after_blocks)
        scan = (scale, approve_at, near_from, floor, keep)
        for number, result in _scanned(photo_set, all_blocks, first_block, stop, scan):
            counts = add_counts(json.loads(json.dumps(counts)), result.counts)
            with session_factory() as session:
                moved = session.execute(
                    update(SelfMeasurement)
                    .where(
                        SelfMeasurement.id == run_id,
                        SelfMeasurement.run_token == token,
                        SelfMeasurement.blocks_done == number,
                    )
                    .values(counts=counts, blocks_done=number + 1, heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount
                if moved != 1:
                    session.rollback()
                    raise MeasurementRunning(
                        f"Measurement {run_id} was taken over by another worker; this one stops."
                    )
                if result.pairs:
                    session.execute(
                        SelfMeasurementPair.__table__.insert(),
                        [_pair_row(run_id, photo_set, a, b, s) for a, b, s in result.pairs],
                    )
                session.commit()
            if result.pairs:
                _prune_pairs(session_factory, run_id, keep, when_over=2 * keep)
        if stop < len(all_blocks):  # stopped as a killed worker would: the next call resumes
            return {
                "status": RUNNING,
                "run_id": run_id,
                "blocks_done": stop,
                "blocks_total": len(all_blocks),
                "load_seconds": load_seconds,
                "load_cpu_seconds": load_cpu_seconds,
            }
        _prune_pairs(session_factory, run_id, keep, when_over=keep)
        summary = summarise(
            counts, photo_set, approve_at, reject_below, floor, near_from, fnmr, model.version
        )
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["load_seconds"], summary["load_cpu_seconds"] = load_seconds, load_cpu_seconds
        summary["measured_on"] = day
        summary["run_id"] = run_id
        with session_factory() as session:
            summary["pairs_kept"] = int(
                session.scalar(select(func.count()).where(SelfMeasurementPair.run_id == run_id)) or 0
            )
            session.execute(
                update(SelfMeasurement)
                .where(SelfMeasurement.id == run_id, SelfMeasurement.run_token == token)
                .values(status=COMPLETED, summary=summary, finished_at=utcnow(), heartbeat_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            audit.log(
                session,
                triggered_by,
                SELF_MEASURE,
                "model_version",
                model.version,
                {
                    "run_id": run_id,
                    "status": summary["alert"],
                    "at_approve": summary["all"]["at_approve"]["k"],
                },
            )
            session.commit()
        return summary
    except MeasurementRunning:
        raise
    except BaseException as exc:
        # Let the next run take over at once (a retry of the job, or the schedule).
        _release(session_factory, run_id, token, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if photo_set is not None:
            photo_set.close()


def _release(session_factory, run_id: int, token: str, error: str) -> None:
    try:
        with session_factory() as session:
            session.execute(
                update(SelfMeasurement)
                .where(SelfMeasurement.id == run_id, SelfMeasurement.run_token == token)
                .values(status=INTERRUPTED, heartbeat_at=None, error=error[:2000])
                .execution_options(synchronize_session=False)
            )
            session.commit()
    except Exception:  # the database itself is away: the run is taken over when it goes stale
        log.exception("self-measurement %s could not be released", run_id)


def _pair_row(run_id: int, photo_set: PhotoSet, a: int, b: int, similarity: float) -> dict:
    return {
        "run_id": run_id,
        "member_a_id": photo_set.members[int(photo_set.member_index[a])],
        "member_b_id": photo_set.members[int(photo_set.member_index[b])],
        "photo_a_id": int(photo_set.photo_ids[a]),
        "photo_b_id": int(photo_set.photo_ids[b]),
        "gender": GENDERS[int(photo_set.gender[a])],
        "similarity": float(similarity),
    }


def _prune_pairs(session_factory, run_id: int, keep: int, when_over: int) -> None:
    """Keep the run's `keep` most similar pairs (counts keep every pair; only the list is capped)."""
    with session_factory() as session:
        total = session.scalar(select(func.count()).where(SelfMeasurementPair.run_id == run_id)) or 0
        if total <= when_over:
            return
        cut = session.scalar(
            select(SelfMeasurementPair.similarity)
            .where(SelfMeasurementPair.run_id == run_id)
            .order_by(SelfMeasurementPair.similarity.desc(), SelfMeasurementPair.id)
            .offset(keep - 1)
            .limit(1)
        )
        if cut is not None:
            session.execute(
                delete(SelfMeasurementPair).where(
                    SelfMeasurementPair.run_id == run_id, SelfMeasurementPair.similarity < cut
                )
            )
            session.commit()


# ----------------------------------------------------------------------------------------------
# Running it: the job, after a promotion, and on a schedule

JOB_NAME = "self_measure"  # its job in core.jobs.tasks.JOBS


def run_job(actor: str = "queue", version: str | None = None, database_url: str | None = None) -> dict:
    """The job body: measure the given (default: active) model version on the members of the
    configured database (or database_url). A run of the same version and day resumes or returns."""
    from core.jobs import resources
    from core.verification.heads import load_version

    if database_url:
        from core.storage.db import init_db, make_engine
        from core.storage.db import session_factory as make_factory

        factory = make_factory(init_db(make_engine(database_url)))
    else:
        factory = resources.session_factory()
    if version is None:
        with factory() as session:
            version = active_version(session)
    # The heads alone: the measurement needs the tower and the similarity, not the networks.
    model = load_version(version, config.models_dir())
    summary = measure(factory, model, actor)
    log.info(
        "self-measurement of %s: %s of %s pairs at approve_at, bound %s (%s)",
        version,
        summary["all"]["at_approve"]["k"],
        summary["all"]["compared"],
        summary["all"]["at_approve"]["upper"],
        summary["alert"],
    )
    return summary


def due(session: Session, every_s: float, version: str) -> bool:
    """No measurement of this version finished within the interval, and none is running now."""
    since = utcnow() - timedelta(seconds=every_s)
    finished = session.scalar(
        select(func.count()).where(
            SelfMeasurement.model_version == version,
            SelfMeasurement.status == COMPLETED,
            SelfMeasurement.finished_at >= since,
        )
    )
    running = session.scalar(
        select(func.count()).where(
            SelfMeasurement.model_version == version,
            SelfMeasurement.status == RUNNING,
            SelfMeasurement.heartbeat_at >= utcnow() - STALE_AFTER,
        )
    )
    return not finished and not running
