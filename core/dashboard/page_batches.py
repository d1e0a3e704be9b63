"""Batches run on background threads for the pages (Home's sample members, Verify's uploads and
member batches): BatchJobs, one per process, and the phases a page shows.

With a job broker configured (JOB_BROKER_URL, core.jobs) the thread only imports, creates the batch
and enqueues it; a queue worker computes it and the thread follows its progress in the database.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import jobs
from core.errors import FaceVerifyError
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import Batch
from core.workflows import batches, importer


def upload_key(*parts: bytes | str) -> str:
    """Fingerprint of what a batch was made from: the same upload twice is the same batch."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


IMPORTING, RUNNING, DONE, FAILED = "importing", "running", "done", "failed"


class NothingToRun(FaceVerifyError):
    """No member of the selection has both photos (or, for pending only, all are verified)."""

    code = "nothing_to_run"


@dataclass(frozen=True)
class Progress:
    """One reading of a job's count: the page draws the bar and its text from the same one."""

    phase: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total > 0 else 0.0

    @property
    def text_key(self) -> str:
        """i18n key of the line under the bar (it takes done and total)."""
        if self.total <= 0:
            return "batch.preparing"  # the count is not known yet: never "0 of 0"
        return "batch.importing" if self.phase == IMPORTING else "batch.running"


@dataclass
class Job:
    """One background batch: importing (for uploads), then running; then done or failed."""

    key: str
    actor: str
    phase: str = IMPORTING
    done: int = 0
    total: int = 0
    batch_id: int | None = None
    error: tuple[str, dict] | None = None  # i18n key and params
    rejected: list[importer.RowReport] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    thread: threading.Thread | None = None
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def report(self, done: int, total: int, phase: str | None = None) -> None:
        """The worker thread's count (and phase), set together so no reader sees half of it."""
        with self._count_lock:
            self.done, self.total = done, total
            if phase is not None:
                self.phase = phase

    def progress(self) -> Progress:
        with self._count_lock:
            return Progress(self.phase, self.done, self.total)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class BatchJobs:
    """Runs batches on background threads, one per process (the pages keep it in st.cache_resource).

    A Streamlit rerun (a second click, a change of page, a language switch) stops the script
    that is running, so a batch run inside the script would stop halfway. Here the run goes on
    while the pages only look at its progress. The same upload or member list started twice
    attaches to the job already running instead of making a second batch.
    """

    KEEP_FINISHED = 50

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        # Token of a run that lost its database: resuming with it needs no wait for a stale heartbeat.
        self._resume_tokens: dict[int, str] = {}

    def can_resume_now(self, batch_id: int) -> bool:
        with self._lock:
            return batch_id in self._resume_tokens

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def for_batch(self, batch_id: int) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.batch_id == batch_id), None)

    def _start(self, key: str, actor: str, work: Callable[[Job], None]) -> tuple[Job, bool]:
        """(job, started): started is False when the same work is already running."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and (job.alive or job.phase in (IMPORTING, RUNNING)):
                return job, False
            job = Job(key=key, actor=actor)
            self._jobs[key] = job
            finished = [k for k, j in self._jobs.items() if not j.alive and k != key]
            for old in finished[: max(0, len(self._jobs) - self.KEEP_FINISHED)]:
                self._jobs.pop(old, None)

        def target():
            try:
                work(job)
                job.phase = DONE
            except NothingToRun:
                job.error, job.phase = ("batch.nothing_to_run", {}), FAILED
            except batches.BatchAlreadyRunning as exc:
                job.error, job.phase = ("batch.already_running", {"detail": str(exc)}), FAILED
            except batches.BatchInterrupted as exc:
                with self._lock:
                    self._resume_tokens[exc.batch_id] = exc.token
                job.error, job.phase = ("batch.interrupted", {"detail": str(exc)}), FAILED
            except importer.ImportFileError as exc:
                job.error, job.phase = ("batch.manifest_problem", {"detail": str(exc)}), FAILED
            except FaceVerifyError as exc:
                job.error, job.phase = ("batch.failed", {"detail": str(exc)}), FAILED
            except Exception as exc:  # a background thread must report, never die silently
                traceback.print_exc()
                job.error, job.phase = ("batch.failed", {"detail": f"{type(exc).__name__}: {exc}"}), FAILED

        job.thread = threading.Thread(target=target, name=f"batch-{key[:8]}", daemon=True)
        job.thread.start()
        return job, True

    def _run(self, job: Job, session_factory, engine, store: PhotoStoreBackend, batch_id: int) -> None:
        job.batch_id = batch_id
        with session_factory() as session:
            n_items = session.scalar(select(Batch.n_items).where(Batch.id == batch_id)) or 0
        job.report(0, n_items, RUNNING)  # the import's count ends here: the bar restarts at 0 of n

        def progress(done, total, _row=None):
            job.report(done, total)

        # core.jobs decides: a queue worker (followed here) or this thread.
        jobs.run_batch(
            batch_id, job.actor, progress, session_factory=session_factory, engine=engine, photo_store=store
        )

    def start_upload(
        self,
        session_factory: sessionmaker,
        engine,
        store: PhotoStoreBackend,
        actor: str,
        manifest: bytes,
        manifest_name: str,
        zip_bytes: bytes,
        name: str | None = None,
    ) -> tuple[Job, bool]:
        """Import the manifest's members with their photos, make a batch of them, run it."""
        key = upload_key("upload", manifest, zip_bytes)

        def work(job: Job):
            def progress(done, total):
                job.report(done, total)

            with session_factory() as session:
                reports = importer.import_members(
                    session,
                    manifest,
                    zip_bytes=zip_bytes,
                    actor=actor,
                    filename=manifest_name,
                    photo_store=store,
                    progress=progress,
                )
                job.rejected = [r for r in reports if r.status == importer.REJECTED]
                ids = [r.member_id for r in reports if r.status != importer.REJECTED and r.member_id]
                if not ids:
                    raise NothingToRun("no row of the manifest could be imported")
                items = batches.items_for_members(session, ids)
                batch = batches.create_batch(
                    session, actor, items, engine.model_version, source="upload", name=name or manifest_name
                )
            self._run(job, session_factory, engine, store, batch.id)

        return self._start(key, actor, work)

    def start_members(
        self,
        session_factory: sessionmaker,
        engine,
        store: PhotoStoreBackend,
        actor: str,
        member_ids: Iterable[str] | None,
        *,
        only_pending: bool = False,
        name: str | None = None,
        source: str = "members",
        before: Callable[[Session], list[str] | None] | None = None,
    ) -> tuple[Job, bool]:
        """A batch of members already in the database (their current photos), run in the background.

        member_ids None means every member (with only_pending: every member not verified yet).
        `before(session)` runs first on the job's thread (e.g. loading the sample members) and
        may return the member IDs to use.
        """
        ids = None if member_ids is None else sorted(set(member_ids))
        key = upload_key("members", source, str(only_pending), *(ids or ["<all>"]))

        def work(job: Job):
            chosen = ids
            with session_factory() as session:
                if before is not None:
                    chosen = before(session) or chosen
                items = batches.items_for_members(session, chosen, only_pending=only_pending)
                if not items:
                    raise NothingToRun("nothing to run")
                batch = batches.create_batch(
                    session, actor, items, engine.model_version, source=source, name=name
                )
            self._run(job, session_factory, engine, store, batch.id)

        return self._start(key, actor, work)

    def resume(
        self, session_factory: sessionmaker, engine, store: PhotoStoreBackend, actor: str, batch_id: int
    ) -> tuple[Job, bool]:
        """Run an interrupted batch again: only its items without a result are computed."""
        return self._start(
            upload_key("resume", str(batch_id)),
            actor,
            lambda job: self._run(job, session_factory, engine, store, batch_id),
        )


SINGLE_SOURCE = batches.PAGE_SINGLE  # the Verify page's day batches of single verifications


def batch_state(session: Session, batch_id: int) -> tuple[str, object] | None:
    """(status, heartbeat_at) of a batch, None when there is no such batch."""
    batch = session.get(Batch, batch_id)
    return None if batch is None else (batch.status, batch.heartbeat_at)
