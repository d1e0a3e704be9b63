"""The job bodies and the one table of jobs: plain functions of JSON-able arguments, the same in a
queue worker, on a thread and in a process of their own.

Each takes what it needs (database, photo store, a loaded engine) from core.jobs.resources, which
loads each of them once per process; a caller on this process may hand over its own instead.

    JOBS: name -> JobKind(run, queue, time limit, retries, how it runs without a broker, retry_on)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from core import config
from core.jobs import resources

log = logging.getLogger(__name__)

# A queue worker that stopped heartbeating for this long is dead: another one takes its batch over.
# The in-process default (10 minutes) is longer, because there nobody else could take it over.


def job_stale_after() -> timedelta:
    return timedelta(seconds=config.get("JOB_STALE_S"))


def verify_batch(
    batch_id: int,
    actor: str = "queue",
    *,
    session_factory=None,
    engine=None,
    photo_store=None,
    progress=None,
) -> dict:
    """Run (or finish) a batch on the model version it was created for. Returns its summary.

    session_factory, engine, photo_store, progress: a caller on this process that already holds
    them (a page's background thread); a queue worker passes none and loads its own."""
    from dataclasses import asdict

    from core.storage.schema import Batch
    from core.workflows import batches

    here = session_factory is not None
    factory = session_factory or resources.session_factory()
    if engine is None:
        with factory() as session:
            batch = session.get(Batch, batch_id)
            if batch is None:
                raise batches.BatchNotFound(f"There is no batch {batch_id}.")
            version = batch.model_version
        engine = resources.engine(version)
    summary = batches.run_batch(
        factory,
        engine,
        batch_id,
        progress,
        photo_store=photo_store or resources.photo_store(),
        actor=actor,
        # Nobody else could take over a batch run on this process: the longer default applies.
        stale_after=batches.DEFAULT_STALE_AFTER if here else job_stale_after(),
    )
    return asdict(summary)


def enrol_missing(limit: int | None = None) -> int:
    """Embed every current gallery photo that has no embedding yet (imported members join 1:N)."""
    from core.workflows import search

    return search.enrol_missing(
        resources.session_factory(), resources.engine(), resources.photo_store(), limit=limit
    )


def train(run_id: int) -> str:
    """Train a queued run (claimed once; a run already claimed by a worker that died is not re-run)."""
    from core.training import worker

    return worker.work(run_id, resources.session_factory(), store=resources.photo_store())


def retention(dry_run: bool = False) -> dict:
    """Remove what the retention settings say is past its time (safe to run twice or interrupt),
    then check the audit chain from its checkpoint and move the checkpoint: the daily run keeps the
    Users page's check to a day's entries, not a walk of the whole log on its first visit."""
    from core.workflows import privacy

    report = privacy.apply_retention(resources.session_factory(), resources.photo_store(), dry_run=dry_run)
    for line in report.lines():
        log.info("retention: %s", line)
    out = report.to_dict()
    if not dry_run:
        out["audit_chain"] = _check_audit_chain()
    return out


def _check_audit_chain() -> str:
    from core.storage import audit

    with resources.session_factory()() as session:
        chain = audit.verify_chain(session, from_checkpoint=True)
        if audit.save_checkpoint(session, chain):
            session.commit()
    (log.info if chain.ok else log.error)("retention: %s", chain.summary())
    return chain.summary()


def retention_interval_s() -> float | None:
    """RETENTION_EVERY_HOURS (default 24; 'off': queue workers never schedule it)."""
    raw = config.get("RETENTION_EVERY_HOURS").strip().lower()
    if raw in ("off", "never", "0"):
        return None
    hours = float(raw)
    if hours <= 0:
        raise ValueError(f"RETENTION_EVERY_HOURS must be positive or 'off', not {raw!r}")
    return hours * 3600.0


def self_measure(actor: str = "queue", version: str | None = None, database_url: str | None = None) -> dict:
    """The false-match rate at approve_at on the members' own pairs (core.workflows.self_measurement)."""
    from core.workflows import self_measurement

    return self_measurement.run_job(actor, version, database_url)


def _batch_may_resume(exc: BaseException) -> bool:
    """A batch held by a worker that just died, or stopped by a database or store away: try later."""
    from core.workflows import batches

    return isinstance(exc, batches.BatchAlreadyRunning | batches.BatchInterrupted)


VERIFY_BATCH, ENROL, TRAIN, RETENTION = "verify_batch", "enrol_missing", "train", "retention"
SELF_MEASURE = "self_measure"
QUEUE_BATCHES, QUEUE_TRAINING = "fv_batches", "fv_training"
THREAD, PROCESS = "thread", "process"  # how a job runs without a broker
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class JobKind:
    run: Callable
    queue: str
    time_limit_ms: int
    max_retries: int
    local: str  # THREAD or PROCESS (training: a process of its own, which a page can leave)
    retry_on: Callable[[BaseException], bool] | None = None  # a queue retries these with backoff
    summary: Callable[[dict, object], str] | None = None  # the worker's log line: (arguments, outcome)


JOBS: dict[str, JobKind] = {
    VERIFY_BATCH: JobKind(
        verify_batch,
        QUEUE_BATCHES,
        24 * HOUR_MS,
        200,
        THREAD,
        _batch_may_resume,
        lambda kw, out: (
            f"batch {kw['batch_id']}: {out['processed']} new result(s), {out['already_done']} already done"
        ),
    ),
    ENROL: JobKind(
        enrol_missing,
        QUEUE_BATCHES,
        6 * HOUR_MS,
        20,
        THREAD,
        None,
        lambda kw, n: f"enrolment: {n} photo(s) embedded",
    ),
    TRAIN: JobKind(
        train,
        QUEUE_TRAINING,
        12 * HOUR_MS,
        0,
        PROCESS,
        None,
        lambda kw, status: f"training run {kw['run_id']}: {status}",
    ),
    RETENTION: JobKind(retention, QUEUE_BATCHES, 6 * HOUR_MS, 20, THREAD),
    SELF_MEASURE: JobKind(
        self_measure, QUEUE_BATCHES, 6 * HOUR_MS, 3, THREAD, None, lambda kw, out: f"self-measurement: {out}"
    ),
}


def run_logged(kind: str, **kwargs):
    """Run a job on a thread of this process; a failure is logged (the database row says why)."""
    try:
        return JOBS[kind].run(**kwargs)
    except Exception:
        log.exception("job %s failed", kind)
        return None
