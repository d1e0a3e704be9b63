"""The Dramatiq broker and actors behind core.jobs when JOB_BROKER_URL is set.

Settings (environment, then secrets.toml):
    JOB_BROKER_URL            redis://HOST:6379/DB (Redis) or amqp://USER:PASSWORD@HOST:5672/VHOST
                              (RabbitMQ; amqps:// for TLS)
    JOB_HEARTBEAT_TIMEOUT_MS  Redis: a worker silent this long is dead: the broker hands its
                              messages to another worker (default 30000)
    JOB_MAINTENANCE_CHANCE    Redis: per million broker calls, how often that check runs (default 100000)
    JOB_STALE_S               see core.jobs.tasks (a dead worker's batch is taken over after it)

Messages are acknowledged only when the job returns, so a worker killed half-way loses nothing: its
message goes back to the queue (Redis: after the heartbeat timeout; RabbitMQ: as soon as the dead
worker's connection closes). RabbitMQ confirms every enqueued message (publisher confirms), so a
submission that returned is on the queue. RabbitMQ's own consumer_timeout (30 min by default) must
exceed the longest batch, or it takes the message back from a worker that is still busy with it. A job that meets a batch still held by a worker that just died,
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
REDIS_SCHEMES, AMQP_SCHEMES = ("redis", "rediss", "unix"), ("amqp", "amqps")
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


def kind_of(url: str | None) -> str:
    """'redis' or 'rabbitmq' from the broker URL's scheme; a clear error for anything else."""
    if not url:
        raise FaceVerifyError(
            "No job broker is configured (set JOB_BROKER_URL=redis://HOST:6379/DB or amqp://USER:PASSWORD@HOST:5672/)."
        )
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in REDIS_SCHEMES:
        return "redis"
    if scheme in AMQP_SCHEMES:
        return "rabbitmq"
    raise FaceVerifyError(
        f"JOB_BROKER_URL {url!r}: a Redis (redis://HOST:PORT/DB) or RabbitMQ (amqp://USER:PASSWORD@HOST:PORT/VHOST) URL is needed."
    )


def _make_broker(url: str | None):
    if kind_of(url) == "redis":
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(
            url=url,
            namespace=NAMESPACE,
            heartbeat_timeout=_int_setting("JOB_HEARTBEAT_TIMEOUT_MS", 30_000),
            maintenance_chance=_int_setting("JOB_MAINTENANCE_CHANCE", 100_000),
        )
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=url, confirm_delivery=True)


def broker():
    """The process's broker with the actors declared on it (made once)."""
    with _lock:
        if "broker" in _state:
            return _state["broker"]
        import dramatiq

        b = _make_broker(config.setting("JOB_BROKER_URL"))
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
                ("self_measure", tasks.self_measure, QUEUE_BATCHES, 6 * HOUR_MS, 3),
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
    """Enqueue the retention job unless some worker already did in this period, so many workers
    enqueue it once per period. Redis: a key set only if absent, expiring after the period.
    RabbitMQ: a marker queue holding at most one message that expires after the period; a second
    marker is refused (x-overflow reject-publish, seen through the publisher confirm)."""
    b = broker()
    period = max(1, int(every_s))
    if kind_of(config.setting("JOB_BROKER_URL")) == "redis":
        if not b.client.set(f"{NAMESPACE}:retention-scheduled", "1", nx=True, ex=period):
            return False
    elif not _rabbitmq_mark_period(b, period):
        return False
    send("retention")
    return True


def _rabbitmq_mark_period(b, period_s: int) -> bool:
    import pika.exceptions

    name = f"{NAMESPACE}.retention-scheduled.{period_s}"  # the TTL is part of the queue's identity
    channel = b.channel  # in confirm mode (confirm_delivery=True)
    channel.queue_declare(
        name,
        durable=True,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish", "x-message-ttl": period_s * 1000},
    )
    try:
        channel.basic_publish("", name, b"1", pika.BasicProperties(delivery_mode=2), mandatory=True)
    except pika.exceptions.NackError:
        return False  # this period's marker is there: another worker scheduled it
    return True


def queue_sizes() -> dict[str, int]:
    """Messages waiting per queue (for a status display and the tests)."""
    b = broker()
    if kind_of(config.setting("JOB_BROKER_URL")) == "redis":
        return {name: b.do_qsize(name) for name in (QUEUE_BATCHES, QUEUE_TRAINING)}
    # ready + delayed (retries waiting for their backoff), as Redis's do_qsize counts them
    return {name: sum(b.get_queue_message_counts(name)[:2]) for name in (QUEUE_BATCHES, QUEUE_TRAINING)}


def flush() -> None:
    """Drop every waiting message of these queues (tests; an operator starting over)."""
    b = broker()
    if kind_of(config.setting("JOB_BROKER_URL")) == "redis":
        keys = list(b.client.scan_iter(f"{NAMESPACE}*"))
        if keys:
            b.client.delete(*keys)
        return
    for name in (QUEUE_BATCHES, QUEUE_TRAINING):
        b.flush(name)
