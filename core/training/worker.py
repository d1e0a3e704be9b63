"""Training runs in the background: one at a time, with progress, heartbeat, cancel and a reason.

    start(session_factory, actor, choice, params) -> run id    the queued run; refuses a second (RunInProgress)
    record_launch(...), fail_to_start(...)                    what core.jobs reports back when it dispatches
    cancel(session_factory, run_id, actor) -> bool            the worker stops at its next check
    reap_stale(session) -> list[int]                          runs whose worker died: failed, with why
    current_run(session) / latest_run(session) / get_run(session, id)
    work(run_id, ...)                                         the worker's body (tests call it directly)

A run is a row of training_runs. start() checks and inserts it under a lock (MySQL GET_LOCK, or
SQLite's write lock), so two people pressing Start at the same moment get one run and one refusal,
and returns its id; core.jobs (start_training) dispatches it: a queue worker, or a process of its
own (it does not belong to the Streamlit script run, the page can be left and reopened), both
calling work(). The worker claims the row (queued -> running), and writes stage, epoch, losses and a heartbeat into progress at every step
and at least every HEARTBEAT_S seconds from a thread. Cancel sets the status to "cancelling"; the
worker's next write matches no running row, so it stops between two chunks or epochs and marks
the run cancelled. A worker that dies without a word (killed, out of memory) stops heartbeating:
after STALE_S (or at once, when its process is gone from this machine) the run is marked failed,
with the tail of its log. A run never changes the active model: it registers a candidate, and
promotion is a separate, confirmed action (core.training.registry).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from core import config
from core.errors import FaceVerifyError
from core.storage import audit
from core.storage.schema import TrainingRun, utcnow

QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
LIVE = (QUEUED, RUNNING, CANCELLING)
HEARTBEAT_S = 5.0
STALE_S = 90.0  # no heartbeat for this long: the worker is dead
START_LOCK = "faceverify_training_start"
START_TRAINING, CANCEL_TRAINING = "start_training", "cancel_training"


class RunInProgress(FaceVerifyError):
    code = "run_in_progress"

    def __init__(self, run: TrainingRun):
        self.run_id = run.id
        self.started_by = run.started_by
        super().__init__(
            f"Training run {run.id} started by {run.started_by} is still {run.status}; "
            "only one run at a time. Wait for it or cancel it."
        )


# ----------------------------------------------------------------------------------------------
# Reading runs


def get_run(session: Session, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id, populate_existing=True)


def current_run(session: Session) -> TrainingRun | None:
    """The live run (queued, running or cancelling), after reaping dead ones."""
    reap_stale(session)
    return session.scalar(
        select(TrainingRun).where(TrainingRun.status.in_(LIVE)).order_by(TrainingRun.id.desc()).limit(1)
    )


def latest_run(session: Session) -> TrainingRun | None:
    return session.scalar(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1))


def recent_runs(session: Session, limit: int = 20) -> list[TrainingRun]:
    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))


def _heartbeat_age(run: TrainingRun) -> float:
    beat = (run.progress or {}).get("heartbeat")
    from datetime import datetime

    last = run.started_at
    if beat:
        try:
            last = datetime.fromisoformat(beat)
        except ValueError:
            pass
    return (utcnow() - last).total_seconds() if last else float("inf")


def _process_gone(run: TrainingRun) -> bool:
    """True when the run's worker ran on this machine and its process no longer exists."""
    progress = run.progress or {}
    pid, host = progress.get("pid"), progress.get("host")
    if not pid or host != socket.gethostname():
        return False
    try:
        state = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(int(pid), 0)
            return False
        except ProcessLookupError:
            return True
        except OSError:
            return False


def _log_tail(run: TrainingRun, lines: int = 8) -> str:
    path = (run.progress or {}).get("log")
    if not path:
        return ""
    try:
        tail = Path(path).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(tail)


def reap_stale(session: Session, stale_after_s: float = STALE_S) -> list[int]:
    """Mark runs whose worker is gone as failed (or cancelled, when a cancel was asked). Commits."""
    reaped = []
    runs = session.scalars(select(TrainingRun).where(TrainingRun.status.in_(LIVE))).all()
    for run in runs:
        age = _heartbeat_age(run)
        gone = _process_gone(run) and age > 2 * HEARTBEAT_S / 5
        if not gone and age <= stale_after_s:
            continue
        stage = run.stage or "starting"
        if run.status == CANCELLING:
            status, why = CANCELLED, f"{run.error or 'Cancelled.'} The worker had stopped (stage {stage})."
        else:
            status = FAILED
            why = (
                f"The training process stopped without reporting (stage {stage}, last sign of life "
                f"{int(age)} s ago): it was killed or ran out of memory. Nothing was registered and the "
                "active model is unchanged."
            )
            tail = _log_tail(run)
            if tail:
                why += "\nLast lines of its log:\n" + tail
        done = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run.id, TrainingRun.status == run.status)
            .values(status=status, error=why, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if done:
            reaped.append(run.id)
    session.commit()
    return reaped


# ----------------------------------------------------------------------------------------------
# Starting and cancelling


@contextmanager
def _start_lock(session: Session):
    """Serialise starters until the caller's commit.

    MySQL/MariaDB: a named lock held on a connection of its own, released only after the session
    committed (a lock released before the commit would let the next starter miss the new row).
    SQLite: a first write takes the database's write lock, held until the session commits.
    """
    bind = session.get_bind()
    if bind.dialect.name in ("mysql", "mariadb"):
        with bind.connect() as conn:
            got = conn.execute(text("SELECT GET_LOCK(:name, 30)"), {"name": START_LOCK}).scalar()
            if got != 1:
                raise FaceVerifyError("Another training start is being processed; try again in a moment.")
            try:
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": START_LOCK})
                conn.commit()
    else:
        session.execute(update(TrainingRun).where(TrainingRun.id == -1).values(stage=None))
        yield


def start(
    session_factory,
    actor: str,
    choice,
    params,
    *,
    store_dir: Path | str | None = None,
) -> int:
    """Check the settings and the data's labels, then create the queued run; its id.

    Raises ValueError with every problem found before any training (bad settings, no data, too
    few people, one gender missing), RunInProgress when a run is live.
    """
    from core.training import pipeline

    problems = pipeline.preflight(choice, params, session_factory, _store(store_dir))
    if problems:
        raise ValueError(" ".join(problems))
    with session_factory() as session:
        reap_stale(session)
        with _start_lock(session):
            live = session.scalar(
                select(TrainingRun).where(TrainingRun.status.in_(LIVE)).order_by(TrainingRun.id).limit(1)
            )
            if live is not None:
                session.rollback()
                raise RunInProgress(live)
            now = utcnow()
            run = TrainingRun(
                started_by=actor,
                started_at=now,
                status=QUEUED,
                stage="queued",
                params={"params": params.to_dict(), "data": choice.to_dict()},
                progress={"stage": "queued", "fraction": 0.0},
            )
            session.add(run)
            session.flush()
            audit.log(
                session,
                actor,
                START_TRAINING,
                "training_run",
                run.id,
                {"data": choice.to_dict(), "params": params.to_dict()},
                at=now,
            )
            session.commit()
        run_id = run.id
    return run_id


def _store(store_dir: Path | str | None):
    """The photo store named by store_dir (a folder or s3:// URL), else the configured one."""
    from core.storage.stores import open_photo_store

    return open_photo_store(store_dir) if store_dir else open_photo_store()


def log_path(run_id: int) -> Path:
    return config.cache_dir() / "training_runs" / f"run-{run_id}.log"


def record_launch(session_factory, run_id: int, pid: int, host: str, log: Path) -> None:
    """The process that will train the run, so a crash before its first heartbeat is seen at once."""
    with session_factory() as session:
        _merge_progress(session, run_id, {"pid": pid, "host": host, "log": str(log)}, LIVE)


def fail_to_start(session_factory, run_id: int, exc: BaseException) -> None:
    with session_factory() as session:
        _finish(session, run_id, FAILED, f"The training process could not be started: {exc}")


def _merge_progress(session: Session, run_id: int, values: dict, statuses) -> int:
    run = session.get(TrainingRun, run_id, populate_existing=True)
    if run is None or run.status not in statuses:
        session.rollback()
        return 0
    progress = {**(run.progress or {}), **values}
    done = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status.in_(list(statuses)))
        .values(progress=progress)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return done


def cancel(session_factory, run_id: int, actor: str) -> bool:
    """Ask the run to stop. False when it had already finished. Commits with an audit entry."""
    with session_factory() as session:
        now = utcnow()
        done = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status.in_([QUEUED, RUNNING]))
            .values(status=CANCELLING, error=f"Cancelled by {actor} at {now:%Y-%m-%d %H:%M:%S} UTC.")
            .execution_options(synchronize_session=False)
        ).rowcount
        if done:
            audit.log(session, actor, CANCEL_TRAINING, "training_run", run_id, None, at=now)
        session.commit()
        return bool(done)


def _finish(session: Session, run_id: int, status: str, error: str | None, **values) -> bool:
    done = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status.in_(list(LIVE)))
        .values(status=status, error=error, finished_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    return bool(done)


# ----------------------------------------------------------------------------------------------
# The worker


class _Lost(Exception):
    """The run's row is no longer ours (cancelled, or reaped as dead)."""


class Reporter:
    """Keeps the run's progress in memory and writes it (with a heartbeat) to its row."""

    def __init__(self, session_factory, run_id: int, progress: dict):
        self.factory = session_factory
        self.run_id = run_id
        self.progress = dict(progress)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.lost = False
        self.last_write = 0.0
        self.stage = None
        self.stage_started = time.perf_counter()

    def write(self, force: bool = False) -> bool:
        """Write the progress if due; False when the run is no longer running (cancelled/reaped)."""
        with self.lock:
            if self.lost:
                return False
            now = time.perf_counter()
            if not force and now - self.last_write < 1.0:
                return True
            self.progress["heartbeat"] = utcnow().isoformat()
            with self.factory() as session:
                done = session.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == self.run_id, TrainingRun.status == RUNNING)
                    .values(progress=dict(self.progress), stage=self.progress.get("stage"))
                    .execution_options(synchronize_session=False)
                ).rowcount
                session.commit()
            self.last_write = now
            if not done:
                self.lost = True
            return bool(done)

    def update(self, stage: str, fraction: float, logs: dict) -> None:
        with self.lock:
            p = self.progress
            if stage != self.stage:
                if self.stage:
                    p.setdefault("stage_seconds", {})[self.stage] = round(
                        time.perf_counter() - self.stage_started, 1
                    )
                self.stage, self.stage_started = stage, time.perf_counter()
            p["stage"], p["fraction"] = stage, float(fraction)
            if stage in ("siamese", "gender") and "loss" in logs:
                epoch = int(logs.get("epoch") or round(fraction * 1000))
                p.setdefault(f"{stage}_loss", []).append([epoch, float(logs["loss"])])
                p["epoch"] = epoch
            if stage == "features" and "total" in logs:
                p["features"] = {"done": int(logs["done"]), "total": int(logs["total"])}
            if "photos" in logs:
                p["photos"] = int(logs["photos"])
                p["reviewed_pairs"] = int(logs.get("reviewed_pairs", 0))
        if not self.write(force=stage in ("siamese", "gender", "evaluate", "save", "compare")):
            raise _Lost()

    def should_stop(self) -> bool:
        return not self.write()

    def beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                self.write(force=True)
            except Exception:  # a database hiccup: the next beat tries again
                pass

    def start(self) -> None:
        threading.Thread(target=self.beat, name=f"training-{self.run_id}-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()


def work(run_id: int, session_factory=None, models_dir: Path | None = None, store=None) -> str:
    """Claim the queued run, train, register the candidate, record the outcome. Returns the status."""
    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory
    from core.training import pipeline
    from core.training.fitting import TrainParams

    factory = session_factory or make_factory(init_db())
    with factory() as session:
        run = get_run(session, run_id)
        if run is None:
            raise SystemExit(f"There is no training run {run_id}.")
        base = {
            **(run.progress or {}),
            "stage": "starting",
            "fraction": 0.0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "heartbeat": utcnow().isoformat(),
        }
        claimed = session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == QUEUED)
            .values(status=RUNNING, stage="starting", progress=base)
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
        if not claimed:
            return get_run(session, run_id).status
        actor, stored = run.started_by, run.params or {}
    reporter = Reporter(factory, run_id, base)
    reporter.start()
    status = FAILED
    try:
        params = TrainParams.from_dict(stored.get("params") or {})
        choice = pipeline.DataChoice.from_dict(stored.get("data") or {})
        outcome = pipeline.run(
            choice,
            params,
            session_factory=factory,
            store=store,
            models_dir=models_dir,
            actor=actor,
            progress=reporter.update,
            should_stop=reporter.should_stop,
        )
        reporter.stop()
        with reporter.lock:
            final = {
                **reporter.progress,
                "stage": "done",
                "fraction": 1.0,
                "heartbeat": utcnow().isoformat(),
                "metrics": outcome.result["metrics"],
                "threshold": outcome.result["threshold"],
                "uncertain_band": list(outcome.result["uncertain_band"]),
                "data": {k: v for k, v in outcome.result["data"].items() if not k.endswith("_people")},
                "comparison": outcome.comparison,
                "timings": outcome.timings,
                "notes": outcome.features.notes,
            }
        with factory() as session:
            if _finish(
                session, run_id, SUCCEEDED, None, model_version=outcome.version, stage="done", progress=final
            ):
                status = SUCCEEDED
            else:  # cancelled (or reaped) at the very end: the candidate does not stay
                from core.training import registry

                registry.discard(session, outcome.version, "system")
                _finish(session, run_id, CANCELLED, "Cancelled at the end; the new version was discarded.")
                status = CANCELLED
    except (pipeline.Cancelled, _Lost):
        reporter.stop()
        with factory() as session:
            run = get_run(session, run_id)
            why = (run.error or "Cancelled.") + (
                f" Stopped during {reporter.progress.get('stage')}; nothing was registered and the active "
                "model is unchanged."
            )
            _finish(session, run_id, CANCELLED, why)
            status = CANCELLED
    except ValueError as exc:  # bad input found once the photos were read: say it as it is
        reporter.stop()
        with factory() as session:
            _finish(session, run_id, FAILED, str(exc))
    except BaseException as exc:
        reporter.stop()
        with factory() as session:
            stage = reporter.progress.get("stage")
            _finish(
                session,
                run_id,
                FAILED,
                f"The run failed during {stage}: {type(exc).__name__}: {exc}. Nothing was registered and the "
                f"active model is unchanged.\n{traceback.format_exc(limit=6)}",
            )
        if not isinstance(exc, Exception):
            raise
    return status


def stale_after() -> timedelta:
    return timedelta(seconds=STALE_S)
