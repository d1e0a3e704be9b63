"""A queue worker process: loads the models once, then runs jobs from the broker until stopped.

    faceverify worker [--queues fv_batches fv_training] [--threads 1]     (core.cli.worker)

Run as many of these as there are cores to spare (each holds one engine, ~1 GB). One job at a
time per thread and one message fetched ahead of none: the others stay in the queue for the other
workers. SIGTERM or SIGINT stops it after the jobs in hand; SIGKILL (or a crash) loses nothing:
the broker gives the unfinished message to another worker, which finishes what is left.

Every worker also keeps the retention clock: once per RETENTION_EVERY_HOURS (default 24, 'off' to
stop) one of them enqueues the retention job (core.workflows.privacy), whichever gets there first,
and the self-measurement clock (SELF_MEASURE_EVERY_HOURS): the active version measured on the members.
"""

from __future__ import annotations

import threading

from core.jobs import queue, resources

RETENTION_CHECK_S = 600.0  # how often a worker looks whether this period's retention job is due


def _retention_clock(stop: threading.Event, every_s: float, log) -> None:
    while not stop.is_set():
        try:
            if queue.schedule_retention(every_s):
                log.info("retention job enqueued (every %.0f h)", every_s / 3600)
        except Exception as exc:  # the broker is away for a moment: try again at the next look
            log.warning("retention not scheduled: %s", exc)
        stop.wait(min(every_s, RETENTION_CHECK_S))


SELF_MEASURE_CHECK_S = 600.0


def _self_measure_clock(stop: threading.Event, log) -> None:
    """Every SELF_MEASURE_CHECK_S, enqueue a measurement of the active version when one is due
    (SELF_MEASURE_EVERY_HOURS). Several workers may enqueue the same one: its run key counts it once."""
    from core import jobs
    from core.workflows import self_measurement

    while not stop.is_set():
        try:
            every = self_measurement.schedule_interval_s()
            if every:
                with resources.session_factory()() as session:
                    version = self_measurement.active_version(session)
                    if version and self_measurement.due(session, every, version):
                        job = jobs.submit_self_measurement("schedule", version)
                        log.info("self-measurement of %s enqueued: %s", version, job)
        except Exception as exc:  # the database or broker is away for a moment: the next look
            log.warning("self-measurement not scheduled: %s", exc)
        stop.wait(SELF_MEASURE_CHECK_S)
