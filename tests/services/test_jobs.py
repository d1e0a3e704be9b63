"""Background jobs: in-process without a broker; on Redis and on RabbitMQ with real worker
processes, one of them killed (SIGKILL) in the middle of a batch. MariaDB + SeaweedFS + the broker,
the production shape.

The killed worker's message goes back to the queue, a second worker takes the batch over and
finishes it: every item ends with exactly one result, none is lost, none is computed twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.storage.schema import BATCH_COMPLETED, BATCH_RUNNING, Batch
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches, importer

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _unreachable(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: the queue tests must run, not skip)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url():
    """The Redis server of the machine (a database of its own); skipped when down, FAILS with CI=true."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        _unreachable(f"Redis at {REDIS_URL} is not reachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def rabbitmq_url():
    """The RabbitMQ server of the machine; skipped when down, FAILS with CI=true."""
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL + "?socket_timeout=3")).close()
    except Exception as exc:
        _unreachable(f"RabbitMQ at {RABBITMQ_URL} is not reachable: {exc!r}")
    return RABBITMQ_URL


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request):
    return request.getfixturevalue(f"{request.param}_url")


def _clear_queues(url: str) -> None:
    """Empty the queues on the broker at url (this process's broker is made again afterwards)."""
    from core.jobs import queue

    saved = os.environ.get("JOB_BROKER_URL")
    os.environ["JOB_BROKER_URL"] = url
    queue._state.clear()
    try:
        queue.flush()
        queue.broker().close()
    finally:
        queue._state.clear()
        if saved is None:
            os.environ.pop("JOB_BROKER_URL")
        else:
            os.environ["JOB_BROKER_URL"] = saved


def _default_version() -> str:
    from core.verification.heads import default_version

    return default_version(ROOT / "models")


@pytest.fixture
def queue_env(db_url, broker_url, seaweedfs, seaweedfs_bucket, monkeypatch, tmp_path):
    """Settings shared by this test process and its worker processes; fresh queues."""
    import uuid

    from core.jobs import queue

    env = {
        "DATABASE_URL": db_url,
        "PHOTO_STORE_URL": f"s3://{seaweedfs_bucket}/jobs-{uuid.uuid4().hex[:8]}",
        "JOB_BROKER_URL": broker_url,
        "JOB_HEARTBEAT_TIMEOUT_MS": "3000",  # Redis: a killed worker's message is handed on within seconds
        "JOB_MAINTENANCE_CHANCE": "1000000",
        "JOB_STALE_S": "5",
        "RETENTION_EVERY_HOURS": "off",  # no retention job among the batches these tests count
        "MODELS_DIR": str(ROOT / "models"),
        "CACHE_DIR": str(ROOT / "data" / "cache"),
        **seaweedfs.env(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear_queues(broker_url)
    queue._state.clear()  # the broker of this process, made again from these settings
    yield env
    queue._state.clear()
    _clear_queues(broker_url)


class WorkerProcess:
    def __init__(self, env: dict, log: Path):
        self.log = log
        full_env = {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "core", "worker", "--queues", "fv_batches"],
                cwd=str(ROOT),
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "worker ready" in text:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"worker not ready after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _sample_batches(session, store, n_batches: int, repeats: int) -> list[int]:
    """Batches of the 20 sample members, each member `repeats` times (long enough to be killed in)."""
    reports = importer.load_sample_members(session, photo_store=store)
    assert all(r.status == importer.IMPORTED for r in reports)
    items = batches.items_for_members(session)
    version = _default_version()
    return [
        batches.create_batch(
            session, "manager_user", items * repeats, version, source="test", name=f"q{i}"
        ).id
        for i in range(n_batches)
    ]


def _results_per_item(session, batch_ids) -> tuple[int, int, int]:
    """(items, results, distinct items with a result) over the batches."""
    items = session.scalar(select(func.sum(Batch.n_items)).where(Batch.id.in_(batch_ids)))
    results = session.scalar(select(func.count(ResultRow.id)).where(ResultRow.batch_id.in_(batch_ids)))
    distinct = session.scalar(
        select(func.count(func.distinct(ResultRow.batch_item_id))).where(ResultRow.batch_id.in_(batch_ids))
    )
    return int(items), int(results), int(distinct)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_without_a_broker_the_job_runs_in_this_process(session, session_factory, photo_store, monkeypatch):
    from core import jobs

    monkeypatch.delenv("JOB_BROKER_URL", raising=False)
    monkeypatch.setenv(
        "DATABASE_URL", str(session_factory.kw["bind"].url.render_as_string(hide_password=False))
    )
    monkeypatch.setenv("PHOTO_STORE_URL", str(photo_store.root))
    monkeypatch.setenv("MODELS_DIR", str(ROOT / "models"))
    assert not jobs.configured()
    [batch_id] = _sample_batches(session, photo_store, 1, 1)
    assert jobs.submit_batch(batch_id, "manager_user").startswith("job-")
    state = jobs.wait_for_batch(session_factory, batch_id, timeout_s=300)
    assert (state["status"], state["done"], state["total"]) == (BATCH_COMPLETED, 20, 20)


@pytest.mark.s3
@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_worker_killed_mid_batch_another_finishes_it_exactly_once(
    session, session_factory, queue_env, tmp_path
):
    from core import jobs
    from core.storage.stores import open_photo_store

    store = open_photo_store()
    batch_ids = _sample_batches(session, store, n_batches=3, repeats=12)  # 3 x 240 pairs
    first = WorkerProcess(queue_env, tmp_path / "worker-1.log")
    second = None
    try:
        first.wait_ready()
        for batch_id in batch_ids:
            jobs.submit_batch(batch_id, "manager_user")
        # Kill the worker once the first batch is part done.
        deadline = time.monotonic() + 240
        while True:
            with session_factory() as s:
                done = batches.batch_progress(s, batch_ids[0])
            if 0 < done["done"] < done["total"] - 20:
                break
            assert done["status"] != BATCH_COMPLETED, "the batch finished before the worker could be killed"
            assert time.monotonic() < deadline, f"no progress: {first.log.read_text()[-2000:]}"
            time.sleep(0.05)
        first.kill()
        with session_factory() as s:
            at_kill = batches.batch_progress(s, batch_ids[0])
        assert at_kill["status"] == BATCH_RUNNING and at_kill["done"] < at_kill["total"]

        second = WorkerProcess(queue_env, tmp_path / "worker-2.log")
        second.wait_ready()
        for batch_id in batch_ids:
            state = jobs.wait_for_batch(session_factory, batch_id, timeout_s=300)
            assert state["status"] == BATCH_COMPLETED, (state, second.log.read_text()[-2000:])

        # The pages' path: the dashboard's thread creates and enqueues, the worker computes.
        from core.dashboard.page_batches import DONE, BatchJobs
        from core.jobs import resources

        page_engine = resources.engine(_default_version())
        job, started = BatchJobs().start_members(session_factory, page_engine, store, "manager_user", None)
        job.thread.join(timeout=300)
        assert started and (job.phase, job.done, job.total) == (DONE, 20, 20), job.error
        batch_ids.append(job.batch_id)
    finally:
        first.kill()
        if second is not None:
            second.stop()

    with session_factory() as s:
        items, results, distinct = _results_per_item(s, batch_ids)
    assert items == results == distinct == 3 * 240 + 20, "every item has exactly one result"
    assert at_kill["done"] > 0, "what the killed worker finished stayed finished"
    found = re.search(
        rf"batch {batch_ids[0]}: (\d+) new result\(s\), (\d+) already done", second.log.read_text()
    )
    assert found, "the second worker ran the killed worker's batch"
    assert (int(found[1]), int(found[2])) == (240 - at_kill["done"], at_kill["done"]), (
        "it did only what was left"
    )


DEAD_BROKERS = {"redis": "redis://127.0.0.1:1/0", "rabbitmq": "amqp://guest:guest@127.0.0.1:1/%2F"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_training_start_enqueues_for_a_queue_worker_and_a_dead_broker_fails_the_run(
    session_factory, broker_url, monkeypatch
):
    from test_training import SAMPLE_CHOICE, fast

    from core import jobs
    from core.jobs import queue
    from core.storage.schema import TrainingRun
    from core.training import worker

    monkeypatch.setenv("JOB_BROKER_URL", broker_url)
    _clear_queues(broker_url)
    queue._state.clear()
    try:
        run_id = jobs.start_training(session_factory, "ds_user", SAMPLE_CHOICE, fast())
        assert queue.queue_sizes()["fv_training"] == 1, (
            "a queue worker will train it; no process launched here"
        )
        with session_factory() as s:
            assert s.get(TrainingRun, run_id).status == worker.QUEUED
            s.get(TrainingRun, run_id).status = worker.CANCELLED  # make room for the next start
            s.commit()

        monkeypatch.setenv("JOB_BROKER_URL", DEAD_BROKERS[queue.kind_of(broker_url)])  # nothing listens
        queue._state.clear()
        with pytest.raises(OSError, match="job queue"):
            jobs.start_training(session_factory, "ds_user", SAMPLE_CHOICE, fast())
        with session_factory() as s:
            last = s.scalar(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1))
            assert last.status == worker.FAILED and "job queue" in last.error
            assert "guest:guest" not in last.error, "the broker's password is not shown"
    finally:
        queue._state.clear()
        _clear_queues(broker_url)


def test_rabbitmq_workers_schedule_retention_once_per_period(rabbitmq_url, monkeypatch):
    """The marker queue takes one message per period; the retention job is enqueued once."""
    import uuid

    from core.jobs import queue

    monkeypatch.setenv("JOB_BROKER_URL", rabbitmq_url)
    _clear_queues(rabbitmq_url)
    queue._state.clear()
    period = 3000 + uuid.uuid4().int % 100_000  # a marker queue of its own (its name holds the period)
    name = f"{queue.NAMESPACE}.retention-scheduled.{period}"
    try:
        assert queue.schedule_retention(period) is True  # the first worker to look enqueues it
        assert queue.schedule_retention(period) is False  # every other worker, this period: not again
        assert queue.queue_sizes()["fv_batches"] == 1, "one retention job on the queue"
    finally:
        queue.broker().channel.queue_delete(name)
        queue._state.clear()
        _clear_queues(rabbitmq_url)


@pytest.mark.parametrize(
    "url, expected",
    [("redis://h:6379/0", "redis"), ("amqp://u:p@h:5672/%2F", "rabbitmq"), ("amqps://h/", "rabbitmq")],
)
def test_the_broker_url_chooses_redis_or_rabbitmq_and_anything_else_is_refused(url, expected):
    from core.errors import FaceVerifyError
    from core.jobs import queue

    assert queue.kind_of(url) == expected
    for bad in ("kafka://h:9092", "127.0.0.1:6379", ""):
        with pytest.raises(FaceVerifyError, match="JOB_BROKER_URL"):
            queue.kind_of(bad)
