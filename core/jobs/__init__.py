"""Background work as jobs: batch verification, enrolment, re-verification after a promotion, training.
This package alone decides where a job runs: on the queue, or here (a thread; training, a process
of its own). Domain code creates the rows and returns their ids; the job names are in one table
(core.jobs.tasks.JOBS).

    configured() -> bool                       a broker is set (JOB_BROKER_URL)
    submit_batch(batch_id, actor)              verify a batch (or finish one that stopped)
    run_batch(batch_id, actor, progress, ...)  the same, followed to its end by the calling thread
    submit_enrolment(limit=None)               embed current gallery photos that have none (1:N index)
    start_training(session_factory, actor, choice, params) -> run id
                                               create a training run and train it in the background
    submit_training(run_id)                    train a queued training run
    submit_retention(dry_run=False)            apply the retention settings (core.workflows.privacy);
                                               queue workers also enqueue it every RETENTION_EVERY_HOURS
    submit_self_measurement(actor, version=None, database_url=None)   the false-match rate on the
                                               members' own pairs (core.workflows.self_measurement);
                                               measure_after_promotion(session, version, actor) too
    wait_for_batch(session_factory, batch_id)  poll the database until the batch has finished

With JOB_BROKER_URL=redis://HOST:6379/DB (Redis) or amqp://USER:PASSWORD@HOST:5672/VHOST (RabbitMQ)
a job is a message on a Dramatiq queue (fv_batches, fv_training), run by worker processes that load
the models once. The pages and the API only enqueue and read progress from the database. Without a
broker the same job function runs on a thread of the calling process, and training in a process
started here (core.jobs.local): the embedded default, ./run.sh, needs none.

Every job is idempotent on the database, so a message delivered twice (its worker died half-way
and the broker handed it to another) finishes what is left and redoes nothing: a batch computes
only items without a result and stores each under the item's unique key (core.workflows.batches);
enrolment embeds only photos without an embedding, written insert-or-ignore; a training run is
claimed once (queued -> running) and a run whose worker died is marked failed, never re-run.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from core import config
from core.errors import FaceVerifyError
from core.jobs import tasks
from core.jobs.tasks import ENROL, JOBS, RETENTION, TRAIN, VERIFY_BATCH  # noqa: F401  (the names callers use)


class QueueUnavailable(FaceVerifyError, OSError):
    """The broker cannot take the job (down, refused); nothing was enqueued."""

    code = "queue_unavailable"


def broker_url() -> str | None:
    return config.setting("JOB_BROKER_URL")


def broker_shown() -> str:
    """The broker URL without its password, for messages people see."""
    from urllib.parse import urlsplit, urlunsplit

    url = broker_url() or ""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def configured() -> bool:
    return bool(broker_url())


def _enqueue(kind: str, **kwargs) -> str:
    """A message id on the queue; QueueUnavailable (nothing enqueued) when the broker refuses."""
    from core.jobs import queue

    try:
        return queue.send(kind, **kwargs)
    except FaceVerifyError:
        raise
    except Exception as exc:  # redis.ConnectionError, pika's AMQPError, timeouts: say which broker and why
        raise QueueUnavailable(f"The job queue at {broker_shown()} cannot take the job: {exc}") from exc


def _submit(kind: str, **kwargs) -> str:
    """A message id on the queue, or the name of the thread running it here."""
    if configured():
        return _enqueue(kind, **kwargs)
    thread = threading.Thread(
        target=tasks.run_logged, args=(kind,), kwargs=kwargs, name=f"job-{kind}", daemon=True
    )
    thread.start()
    return thread.name


def submit_batch(batch_id: int, actor: str) -> str:
    return _submit(VERIFY_BATCH, batch_id=int(batch_id), actor=str(actor))


def run_batch(batch_id: int, actor: str, progress=None, *, session_factory, engine, photo_store) -> None:
    """Verify a batch and return when it has finished, for a caller already on a background thread.

    With a broker, a queue worker computes it and this follows its progress in the database (a
    batch that did not complete raises BatchError with the reason). Without one it runs right here,
    with the caller's engine and store, so its errors (BatchInterrupted with its resume token,
    BatchAlreadyRunning) reach the caller as they are.
    """
    from core.storage.schema import BATCH_COMPLETED
    from core.workflows import batches

    if configured():
        _enqueue(VERIFY_BATCH, batch_id=int(batch_id), actor=str(actor))
        state = wait_for_batch(session_factory, batch_id, progress, queued=True)
        if state["status"] != BATCH_COMPLETED:
            raise batches.BatchError(state["error"] or f"Batch {batch_id} {state['status']}.")
        return
    tasks.verify_batch(
        batch_id,
        actor,
        session_factory=session_factory,
        engine=engine,
        photo_store=photo_store,
        progress=progress,
    )


def submit_enrolment(limit: int | None = None) -> str:
    return _submit(ENROL, limit=limit)


def submit_training(run_id: int, session_factory=None, store_dir: Path | str | None = None) -> str:
    """Train a queued run: on the queue, or in a process of its own started here.

    session_factory, store_dir: the database and photo store the process uses (default: the
    settings'); a queue worker uses its own settings."""
    if configured():
        return _enqueue(TRAIN, run_id=int(run_id))
    pid = _launch_training(session_factory, int(run_id), store_dir)
    return f"process-{pid}"


def _launch_training(session_factory, run_id: int, store_dir: Path | str | None) -> int:
    """The training process, with this process's database, models, cache and photo store."""
    from core.jobs import local, resources
    from core.storage.stores import open_photo_store
    from core.training import worker

    factory = session_factory or resources.session_factory()
    bind = factory.kw["bind"]
    store = open_photo_store(store_dir) if store_dir else open_photo_store()
    env = {
        "DATABASE_URL": bind.url.render_as_string(hide_password=False),
        "MODELS_DIR": str(config.models_dir()),
        "CACHE_DIR": str(config.cache_dir()),
        "PHOTO_STORE_URL": store.url,
    }
    log = worker.log_path(run_id)
    child = local.start_process(TRAIN, {"run_id": run_id}, env, log)
    worker.record_launch(factory, run_id, child.pid, socket.gethostname(), log)
    return child.pid


def start_training(
    session_factory, actor: str, choice, params, *, store_dir: Path | str | None = None
) -> int:
    """Create a training run (core.training.worker.start: checks, one at a time) and dispatch it.

    When it cannot be dispatched (no broker answers, no process can start) the run is marked
    failed with the reason and the error is raised (an OSError)."""
    from core.training import worker

    run_id = worker.start(session_factory, actor, choice, params, store_dir=store_dir)
    try:
        submit_training(run_id, session_factory, store_dir)
    except OSError as exc:
        worker.fail_to_start(session_factory, run_id, exc)
        raise
    return run_id


def submit_retention(dry_run: bool = False) -> str:
    return _submit(RETENTION, dry_run=bool(dry_run))


def submit_self_measurement(actor: str, version: str | None = None, database_url: str | None = None) -> str:
    """Measure the false-match rate at approve_at on the members' own pairs (a thread here measures
    database_url, the database it was asked about; queue workers measure their own)."""
    kwargs = {"actor": str(actor), "version": version}
    if database_url and not configured():
        kwargs["database_url"] = database_url
    return _submit(tasks.SELF_MEASURE, **kwargs)


def measure_after_promotion(session, version: str, actor: str) -> str | None:
    """Measure a version as soon as it is promoted (SELF_MEASURE_AFTER_PROMOTION, default on).
    Never raises: a promotion must not fail because its measurement could not be queued."""
    import logging

    if not config.get("SELF_MEASURE_AFTER_PROMOTION"):
        return None
    try:
        url = session.get_bind().engine.url.render_as_string(hide_password=False)
        return submit_self_measurement(actor, version, url)
    except Exception as exc:  # the queue is away: the schedule measures it later
        logging.getLogger(__name__).warning(
            "self-measurement after promoting %s not started: %s", version, exc
        )
        return None


def wait_for_batch(
    session_factory,
    batch_id: int,
    progress=None,
    *,
    queued: bool = False,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> dict:
    """Block until the batch is completed, failed or interrupted; progress(done, total) as it goes.

    What a page's background watcher (or a test) does when the work runs in a queue worker.
    queued: the batch's job is on the queue, which retries an interrupted batch: wait on.
    """
    from core.storage.schema import BATCH_INTERRUPTED, BATCH_PENDING, BATCH_RUNNING
    from core.workflows import batches

    waiting = (BATCH_PENDING, BATCH_RUNNING, BATCH_INTERRUPTED) if queued else (BATCH_PENDING, BATCH_RUNNING)

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with session_factory() as session:
            state = batches.batch_progress(session, batch_id)
        if progress:
            progress(state["done"], state["total"])
        if state["status"] not in waiting:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Batch {batch_id} still {state['status']} after {timeout_s:.0f} s.")
        time.sleep(poll_s)
