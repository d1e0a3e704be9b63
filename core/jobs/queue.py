"""The Dramatiq broker and actors behind core.jobs when JOB_BROKER_URL is set.

Settings (environment, then secrets.toml):
    JOB_BROKER_URL            redis://HOST:6379/DB
    JOB_HEARTBEAT_TIMEOUT_MS  a worker silent this long is dead: the broker hands its messages to
                              another worker (default 30000)
    JOB_MAINTENANCE_CHANCE    per million broker calls, how often that check runs (default 100000)
    JOB_STALE_S               see core.jobs.tasks (a dead worker's batch is taken over after it)

Messages are acknowledged only when the job returns, so a worker killed half-way loses nothing: its
message goes back to the queue. A job that meets a batch still held by a worker that just died,
or a database or photo store that is away, raises TryAgain and is retried with backoff; a job that
cannot succeed (no such batch, a model version that is gone) stops, and the database says why.
"""

from __future__ import annotations

import logging
import threading

from core import config
from core.errors import FaceVerifyError
from core.jobs import tasks

log = logging.getLogger(__name__)

NAMESPACE = "fv_dramatiq"
QUEUE_BATCHES, QUEUE_TRAINING = "fv_batches", "fv_training"
HOUR_MS = 3_600_000

_lock = threading.Lock()
_state: dict = {}


class TryAgain(Exception):
    """Not a FaceVerifyError on purpose: Dramatiq retries it (see `throws` below)."""


def _int_setting(name: str, default: int) -> int:
    value = config.setting(name)
    return int(value) if value else default


def _verify_batch(batch_id: int, actor: str) -> None:
    from core.workflows import batches

    try:
        summary = tasks.verify_batch(batch_id, actor)
        log.info(
            "batch %s: %s new result(s), %s already done",
            batch_id,
            summary["processed"],
            summary["already_done"],
        )
    except (batches.BatchAlreadyRunning, batches.BatchInterrupted) as exc:
        raise TryAgain(str(exc)) from exc


def _enrol(limit: int | None) -> None:
    log.info("enrolment: %s photo(s) embedded", tasks.enrol_missing(limit))


def _train(run_id: int) -> None:
    log.info("training run %s: %s", run_id, tasks.train(run_id))


def _retention(dry_run: bool = False) -> None:
    tasks.retention(dry_run)


def broker():
    """The process's broker with the actors declared on it (made once)."""
    with _lock:
        if "broker" in _state:
            return _state["broker"]
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        url = config.setting("JOB_BROKER_URL")
        if not url:
            raise FaceVerifyError("No job broker is configured (set JOB_BROKER_URL=redis://HOST:6379/DB).")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise FaceVerifyError(f"JOB_BROKER_URL {url!r}: only Redis (redis://HOST:PORT/DB) is supported.")
        b = RedisBroker(
            url=url,
            namespace=NAMESPACE,
            heartbeat_timeout=_int_setting("JOB_HEARTBEAT_TIMEOUT_MS", 30_000),
            maintenance_chance=_int_setting("JOB_MAINTENANCE_CHANCE", 100_000),
        )
        dramatiq.set_broker(b)
        common = {"broker": b, "throws": (FaceVerifyError,), "max_backoff": 30_000}
        _state["actors"] = {
            tasks_name: dramatiq.actor(
                fn,
                actor_name=f"fv_{tasks_name}",
                queue_name=queue_name,
                time_limit=time_limit,
                max_retries=max_retries,
                min_backoff=1_000,
                **common,
            )
            for tasks_name, fn, queue_name, time_limit, max_retries in (
                ("verify_batch", _verify_batch, QUEUE_BATCHES, 24 * HOUR_MS, 200),
                ("enrol_missing", _enrol, QUEUE_BATCHES, 6 * HOUR_MS, 20),
                ("train", _train, QUEUE_TRAINING, 12 * HOUR_MS, 0),
                ("retention", _retention, QUEUE_BATCHES, 6 * HOUR_MS, 20),
            )
        }
        _state["broker"] = b
        return b


def actors() -> dict:
    broker()
    return _state["actors"]


def send(kind: str, **kwargs) -> str:
    """Enqueue a job; its message id."""
    return actors()[kind].send(**kwargs).message_id


def schedule_retention(every_s: float) -> bool:
    """Enqueue the retention job unless some worker already did in this period: a Redis key set
    only if absent, expiring after the period, so many workers enqueue it once per period."""
    if not broker().client.set(f"{NAMESPACE}:retention-scheduled", "1", nx=True, ex=max(1, int(every_s))):
        return False
    send("retention")
    return True


def queue_sizes() -> dict[str, int]:
    """Messages waiting per queue (for a status display and the tests)."""
    b = broker()
    return {name: b.do_qsize(name) for name in (QUEUE_BATCHES, QUEUE_TRAINING)}
