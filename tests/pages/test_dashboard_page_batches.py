"""Background batches for the pages (core.dashboard.page_batches)."""

from __future__ import annotations

import threading

from conftest import engine_result

from core.dashboard import page_batches
from core.verification.result import PhotoAnalysis


class SlowEngine:
    """Enough of core.verification.engine.Engine for run_batch, waiting for a signal before the first photo."""

    model_version = "fake-v1"

    def __init__(self):
        self.go = threading.Event()
        self.calls = 0

    def analyze_many(self, photos):
        self.go.wait(30)
        self.calls += 1
        return [PhotoAnalysis(sha256=str(i)) for i, _ in enumerate(photos)]

    def compare(self, gallery, verification, registered_gender=None):
        return engine_result("auto_approved", 0.9, model_version=self.model_version)


def test_a_second_start_of_the_same_members_attaches_to_the_running_batch(
    session_factory, photo_store, add_member
):
    from sqlalchemy import func, select

    from core.storage.schema import Batch

    for n in range(3):
        add_member(f"J{n}")
    runner, engine = page_batches.BatchJobs(), SlowEngine()
    first, started = runner.start_members(
        session_factory, engine, photo_store, "staff_user", ["J0", "J1", "J2"]
    )
    again, started_again = runner.start_members(
        session_factory, engine, photo_store, "staff_user", ["J2", "J1", "J0"]
    )
    assert started and not started_again and again is first
    engine.go.set()
    first.thread.join(30)
    assert first.phase == page_batches.DONE and first.done == first.total == 3
    with session_factory() as session:
        assert session.scalar(select(func.count(Batch.id))) == 1
    # Once finished, the same selection may run again (a new batch).
    _, started_later = runner.start_members(session_factory, engine, photo_store, "staff_user", ["J0"])
    assert started_later


def test_nothing_to_run_is_reported_not_raised(session_factory, photo_store):
    runner = page_batches.BatchJobs()
    job, _ = runner.start_members(session_factory, SlowEngine(), photo_store, "staff_user", ["nobody"])
    job.thread.join(30)
    assert job.phase == page_batches.FAILED and job.error == ("batch.nothing_to_run", {})
