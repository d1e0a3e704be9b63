"""The application's state: database, photo store and the engine worker, which runs the engine on one thread
so that concurrent requests share its network calls.

A promotion (or rollback) reaches a running API by itself: a watcher thread reads the registry's
active version every MODEL_POLL_S seconds (default 2), loads the new version completely (heads,
warm-up, its 1:N index) beside the old one, then switches to it. Requests already queued on the old
engine are answered by it; a request arriving at the old worker after the switch is handed to the
new one. Each answer is computed by one engine from start to end, so it names one whole version.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from core import config
from core.api.errors import ApiError
from core.api.settings import ENGINE_BATCH, MAX_QUEUE, STORE_CONCURRENCY
from core.errors import ModelError
from core.storage.photostore import PhotoStoreBackend
from core.workflows import search

log = logging.getLogger(__name__)


@dataclass
class EngineJob:
    photos: list[bytes]
    gender: str | None = None
    pair: bool = True
    challenge: str | None = None  # a pose challenge the second photo must show
    submitted: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)
    model_version: str | None = None  # of the engine that computed it, set before the result
    # Instead of photos: work(engine) run on the worker's thread, its return value the result
    # (a profile verification analyses several photos its own way).
    call: Callable[[Any], Any] | None = None


class EngineWorker:
    """Runs analyze_many + compare for queued requests, up to ENGINE_BATCH requests per network call.

    This is Engine.verify() (analyze both photos, then compare) with the photos of requests that
    arrive together analysed in one call; results are the same as one by one.
    """

    def __init__(self, engine, max_queue: int = MAX_QUEUE):
        self.engine = engine
        self._queue: queue.Queue[EngineJob | None] = queue.Queue()
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._successor: EngineWorker | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._thread.start()

    def submit(self, job: EngineJob) -> Future:
        with self._lock:
            if not self._closed:
                if self._queue.qsize() >= self._max_queue:
                    raise ApiError(
                        503,
                        "busy",
                        f"{self._max_queue} verifications are already waiting for the engine; retry in a few seconds.",
                        headers={"Retry-After": "2"},
                    )
                self._queue.put(job)
                return job.future
            successor = self._successor
        if successor is None:
            raise ApiError(
                503, "model_unavailable", "The engine is shutting down.", headers={"Retry-After": "2"}
            )
        return successor.submit(job)  # this worker was retired by a promotion: the new model answers

    def retire(self, successor: EngineWorker | None) -> None:
        """Answer what is queued, then stop; later submissions go to the successor."""
        with self._lock:
            self._closed, self._successor = True, successor
            self._queue.put(None)

    def stop(self) -> None:
        self.retire(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < ENGINE_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this round
                    break
                jobs.append(nxt)
            try:
                self._process(jobs)
            except BaseException as exc:  # the engine failed: every waiting request hears it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)

    def _process(self, jobs: list[EngineJob]) -> None:
        for job in [j for j in jobs if j.call is not None]:
            try:
                result = job.call(self.engine)
            except Exception as exc:  # this request's failure is its own
                job.future.set_exception(exc)
            else:
                job.model_version = self.engine.model_version
                job.future.set_result(result)
        jobs = [j for j in jobs if j.call is None]
        if not jobs:
            return
        distinct: dict[str, bytes] = {}
        posed: set[str] = set()  # photos whose head pose a challenge needs
        for job in jobs:
            for data in job.photos:
                distinct.setdefault(hashlib.sha256(data).hexdigest(), data)
            if job.challenge and job.pair:
                posed.add(hashlib.sha256(job.photos[1]).hexdigest())
        photos = list(distinct.values())
        if posed:
            analysed = self.engine.analyze_many(photos, measure_pose=[sha in posed for sha in distinct])
        else:
            analysed = self.engine.analyze_many(photos)
        analyses = dict(zip(distinct, analysed, strict=True))
        for job in jobs:
            shas = [hashlib.sha256(d).hexdigest() for d in job.photos]
            if job.pair:
                pair = (analyses[shas[0]], analyses[shas[1]], job.gender)
                result = (
                    self.engine.compare(*pair, job.challenge) if job.challenge else self.engine.compare(*pair)
                )
                wall = (time.perf_counter() - job.submitted) * 1000
                result.timings_ms["queue"] = max(
                    0.0, wall - sum(v for k, v in result.timings_ms.items() if k != "total")
                )
                result.timings_ms["total"] = wall  # what the caller waited, as Engine.verify reports it
                job.model_version = self.engine.model_version
                job.future.set_result(result)
            else:
                job.model_version = self.engine.model_version
                job.future.set_result(analyses[shas[0]])


@dataclass
class AppState:
    factory: sessionmaker
    store: PhotoStoreBackend
    engine: Any = None
    worker: EngineWorker | None = None
    model_error: str | None = None
    loading: bool = False
    reload_error: str | None = None  # why the last promoted version could not be loaded
    stopping: threading.Event = field(default_factory=threading.Event)
    store_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(STORE_CONCURRENCY)
    )

    def set_engine(self, engine) -> None:
        """Switch to a loaded engine (at start, or after a promotion): everything ready first."""
        search.register_engine(engine)
        try:  # build the duplicate index now rather than on the first request
            search.index_for(self.factory.kw["bind"], engine.model_version)
        except (SQLAlchemyError, ModelError) as exc:
            log.warning("search index not built at start: %s", exc)
        new_worker = EngineWorker(engine)
        old_worker = self.worker
        self.worker, self.engine = new_worker, engine
        self.model_error = None
        if old_worker is not None:
            old_worker.retire(new_worker)

    def require_engine(self) -> EngineWorker:
        if self.worker is None:
            if self.loading:
                raise ApiError(
                    503,
                    "model_loading",
                    "The model is still loading; retry in a few seconds.",
                    headers={"Retry-After": "5"},
                )
            # The load error names files and folders: it is in the server log, not in the answer.
            raise ApiError(503, "model_unavailable", "No model is loaded; the server log says why.")
        return self.worker


def load_engine_in_background(state: AppState) -> None:
    state.loading = True

    def load():
        try:
            from core.training import registry
            from core.verification.engine import Engine

            # The registry's active version (models/DEFAULT until a promotion); later promotions
            # are picked up by watch_promotions().
            state.set_engine(Engine.load(registry.current_version(state.factory)))
        except (ModelError, OSError, ValueError, SQLAlchemyError) as exc:
            state.model_error = str(exc)
            log.error("model not loaded: %s", exc)
        finally:
            state.loading = False

    threading.Thread(target=load, name="engine-load", daemon=True).start()


def model_poll_s() -> float:
    return config.get("MODEL_POLL_S")


def watch_promotions(state: AppState, interval_s: float | None = None) -> threading.Thread:
    """Load and switch to the registry's active version whenever it changes (promotion, rollback)."""
    interval_s = model_poll_s() if interval_s is None else interval_s

    def loop():
        from core.training import registry
        from core.verification.engine import Engine

        failed: set[str] = set()
        while not state.stopping.wait(interval_s):
            if state.engine is None or state.loading:
                continue
            try:
                version = registry.current_version(state.factory, max_age_s=0)
            except (ModelError, SQLAlchemyError) as exc:
                log.warning("active model version not read: %s", exc)
                continue
            if version == state.engine.model_version or version in failed:
                continue
            log.info("model %s promoted: loading it", version)
            try:
                state.set_engine(Engine.load(version))
                state.reload_error = None
                log.info("now answering with model %s", version)
            except (ModelError, OSError, ValueError) as exc:
                failed.add(version)  # keep answering with the loaded one; say why in /health
                state.reload_error = f"model {version} could not be loaded: {exc}"
                log.error("%s", state.reload_error)

    thread = threading.Thread(target=loop, name="model-watch", daemon=True)
    thread.start()
    return thread
