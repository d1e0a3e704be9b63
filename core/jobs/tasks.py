"""The job bodies: plain functions of JSON-able arguments, the same in a queue worker and in-process.

Each takes what it needs (database, photo store, a loaded engine) from core.jobs.resources, which
loads each of them once per process.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from core import config
from core.jobs import resources

log = logging.getLogger(__name__)

# A queue worker that stopped heartbeating for this long is dead: another one takes its batch over.
# The in-process default (10 minutes) is longer, because there nobody else could take it over.
DEFAULT_JOB_STALE_S = 60.0


def job_stale_after() -> timedelta:
    return timedelta(seconds=float(config.setting("JOB_STALE_S") or DEFAULT_JOB_STALE_S))


def verify_batch(batch_id: int, actor: str = "queue") -> dict:
    """Run (or finish) a batch on the model version it was created for. Returns its summary."""
    from dataclasses import asdict

    from core.storage.schema import Batch
    from core.workflows import batches

    factory = resources.session_factory()
    with factory() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise batches.BatchNotFound(f"There is no batch {batch_id}.")
        version = batch.model_version
    summary = batches.run_batch(
        factory,
        resources.engine(version),
        batch_id,
        photo_store=resources.photo_store(),
        actor=actor,
        stale_after=job_stale_after(),
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
    """Remove what the retention settings say is past its time (safe to run twice or interrupt)."""
    from core.workflows import privacy

    report = privacy.apply_retention(resources.session_factory(), resources.photo_store(), dry_run=dry_run)
    for line in report.lines():
        log.info("retention: %s", line)
    return report.to_dict()


def retention_interval_s() -> float | None:
    """RETENTION_EVERY_HOURS (default 24; 'off': queue workers never schedule it)."""
    raw = (config.setting("RETENTION_EVERY_HOURS") or "24").strip().lower()
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


TASKS = {"verify_batch": verify_batch, "enrol_missing": enrol_missing, "train": train, "retention": retention}
TASKS["self_measure"] = self_measure


def run_logged(kind: str, **kwargs):
    """Run a job on a thread of this process; a failure is logged (the database row says why)."""
    try:
        return TASKS[kind](**kwargs)
    except Exception:
        log.exception("job %s %s failed", kind, kwargs)
        return None
