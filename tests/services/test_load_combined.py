"""The combined load test, small: two API workers, a queue worker and a dashboard batch at once on
MariaDB + SeaweedFS + RabbitMQ, the object store and the queue worker SIGKILLed mid-run
(core.benchmarks.load_combined; the benchmark runs the same with more load and prints figures).

Nothing is timed: the checks are that every verification answered is stored exactly once and read
back, a refused one left nothing, every batch item has exactly one result, what was finished
before the kill stayed, and the store still holds every photo after its restart.
With CI=true an unreachable MariaDB or RabbitMQ, or a SeaweedFS that does not start, fails it.
"""

from __future__ import annotations

import pytest
from test_jobs import rabbitmq_url  # noqa: F401 - the broker fixture (skips, or fails with CI=true)

pytestmark = [pytest.mark.mysql, pytest.mark.s3]


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_api_workers_queue_worker_and_a_batch_at_once_with_faults_lose_and_double_nothing(
    db_url,
    rabbitmq_url,  # noqa: F811
    tmp_path,
):
    import os

    from core.benchmarks.load_combined import print_report, run_combined
    from core.jobs import queue

    before = dict(os.environ)
    report = run_combined(
        db_url,
        rabbitmq_url,
        seconds=20,
        rate=1.5,
        batch_repeats=3,  # 60 items: long enough to kill the worker in the middle
        store_down_s=3,
        log_dir=tmp_path / "logs",
        progress_print=lambda *_: None,
    )
    print_report(report)
    assert dict(os.environ) == before, "the process's settings are restored"
    queue._state.clear()

    failed = [name for name, held in report["checks"].items() if not held]
    assert not failed, f"{failed}: {report}"
    assert report["api"]["ok"] > 0 and report["batch"]["results"] == report["batch"]["items"] == 60
    assert 0 < report["batch"]["done_when_worker_killed"] < 60, "killed in the middle of the batch"
    assert report["api_requests_during_store_outage"] > 0, "the API was under load while the store was down"
