"""faceverify worker [--queues fv_batches fv_training] [--threads 1] [--no-warm-up]
faceverify run-job KIND JSON_ARGUMENTS      (internal: what core.jobs.local starts)

A queue worker process: loads the models once, then runs jobs from the broker until stopped.
Run as many of these as there are cores to spare (each holds one engine, ~1 GB). One job at a
time per thread and one message fetched ahead of none: the others stay in the queue for the other
workers. SIGTERM or SIGINT stops it after the jobs in hand; SIGKILL (or a crash) loses nothing:
the broker gives the unfinished message to another worker, which finishes what is left.

Every worker also keeps the retention clock: once per RETENTION_EVERY_HOURS (default 24, 'off' to
stop) one of them enqueues the retention job, whichever gets there first.

run-job runs one job of core.jobs.tasks.JOBS in this process and exits: core.jobs starts it as a
process of its own for the jobs that get one without a broker (a training run).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from core.cli import command


def register(subparsers) -> None:
    parser = command(
        subparsers, "worker", "run a queue worker: batches and training runs from the broker", run
    )
    parser.add_argument(
        "--queues", nargs="*", default=None, help="queues to take jobs from (default: fv_batches fv_training)"
    )
    parser.add_argument("--threads", type=int, default=1, help="jobs at once in this process (default 1)")
    parser.add_argument("--no-warm-up", action="store_true", help="load the engine at the first job")

    job = command(
        subparsers,
        "run-job",
        "internal: run one job in this process (how core.jobs starts a training run without a broker)",
        run_job,
    )
    job.add_argument("kind", help="a job name of core.jobs.tasks.JOBS (train, ...)")
    job.add_argument("arguments", help="its keyword arguments as a JSON object, e.g. '{\"run_id\": 7}'")


def run_job(args) -> int:
    import json

    from core.jobs import tasks

    if args.kind not in tasks.JOBS:
        args.parser.error(f"no job {args.kind!r}; one of {', '.join(tasks.JOBS)}")
    try:
        kwargs = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        args.parser.error(f"the arguments are not JSON: {exc}")
    if not isinstance(kwargs, dict):
        args.parser.error("the arguments must be a JSON object")
    outcome = tasks.JOBS[args.kind].run(**kwargs)
    print(f"job {args.kind} {args.arguments}: {outcome}", file=sys.stderr)
    return 0


def run(args) -> int:
    import dramatiq

    from core.jobs import queue, resources, tasks
    from core.jobs.worker import _retention_clock, _self_measure_clock

    queues = args.queues or [queue.QUEUE_BATCHES, queue.QUEUE_TRAINING]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("core.jobs.worker")

    broker = queue.broker()
    broker.emit_after("process_boot")
    if not args.no_warm_up:
        try:
            version = resources.engine().model_version
            log.info("engine %s loaded", version)
        except Exception as exc:  # no model yet: jobs that need one will say so
            log.warning("no engine loaded at start: %s", exc)
    worker = dramatiq.Worker(broker, queues=set(queues), worker_threads=max(1, args.threads))
    worker.queue_prefetch = max(1, args.threads)  # not 2x: a long batch must not hold a second one
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    every = tasks.retention_interval_s()
    if every:
        threading.Thread(target=_retention_clock, args=(stop, every, log), daemon=True).start()
    threading.Thread(target=_self_measure_clock, args=(stop, log), daemon=True).start()
    log.info("worker ready on %s", ", ".join(sorted(queues)))
    print("worker ready", flush=True)  # the line tests and process managers wait for
    stop.wait()
    log.info("stopping after the jobs in hand")
    worker.stop()
    broker.close()
    return 0
