"""What the Retrain page shows, without Streamlit: settings with their explanations, loss curves,
the new-versus-active comparison, the version list, the data available.

    SETTINGS                              the form's fields: name, kind, bounds, step (labels in i18n)
    data_available(session) -> dict       LFW development set present? how many reviewed pairs?
    loss_figure(progress, lang) -> go.Figure
    comparison_rows(comparison, lang) -> list[dict]
    versions_rows(versions, lang) -> list[dict]
    stage_text(run, lang) -> str
    start_run(session_factory, actor, choice, params, store_url) -> run id   created and dispatched
    start_reverify(session_factory, actor, version, scope) -> batch id | None    the same
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core import jobs
from core.i18n import t
from core.storage.schema import MemberErasure, Photo, Review
from core.storage.schema import VerificationResult as ResultRow
from core.training import registry, worker
from core.training.fitting import AUGMENTATIONS, NETWORK_CHOICES, TrainParams
from core.workflows import self_measurement


@dataclass(frozen=True)
class Setting:
    name: str  # TrainParams field; labels are "retrain.set.<name>" and "retrain.help.<name>"
    kind: str  # "int", "float", "choice", "multi"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    options: tuple = ()
    advanced: bool = False


SETTINGS = (
    Setting("networks", "choice", options=NETWORK_CHOICES),
    Setting("loss", "choice", options=("contrastive", "triplet")),
    Setting("epochs", "int", 1, 500, 1),
    Setting("augment", "multi", options=AUGMENTATIONS),
    Setting("augment_views", "int", 1, 4, 1),
    Setting("reviewed_weight", "int", 1, 50, 1),
    Setting("seed", "int", 0, 2**31 - 1, 1),
    Setting("margin", "float", 0.05, 2.0, 0.05, advanced=True),
    Setting("learning_rate", "float", 1e-5, 0.1, 1e-4, advanced=True),
    Setting("identity_weight", "float", 0.0, 1.0, 0.05, advanced=True),
    Setting("positives_per_person", "int", 1, 10000, 10, advanced=True),
    Setting("negatives_per_positive", "int", 1, 20, 1, advanced=True),
    Setting("gender_epochs", "int", 1, 1000, 10, advanced=True),
    Setting("gender_init", "choice", options=("auto", "pretrained", "random"), advanced=True),
    Setting("gender_hidden", "int", 0, 1024, 16, advanced=True),
    Setting("gender_l2", "float", 0.0, 1.0, 1e-3, advanced=True),
    Setting("holdout_fraction", "float", 0.05, 0.5, 0.05, advanced=True),
    Setting("max_auto_fmr", "float", 0.0001, 0.1, 0.0005, advanced=True),
    Setting("max_auto_fnmr", "float", 0.0001, 0.1, 0.0005, advanced=True),
)

DEFAULTS = TrainParams()


# Counts that read much of the results table, kept until a result, review, photo or erasure is
# written: (database, what, arguments, change marker) -> value.
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _change_marker(session: Session) -> tuple:
    """Newest result, review, photo and erasure: every count here changes only with one of them."""
    return session.execute(
        select(
            select(func.max(ResultRow.id)).scalar_subquery(),
            select(func.max(Review.id)).scalar_subquery(),
            select(func.max(Review.decided_at)).scalar_subquery(),
            select(func.max(Photo.id)).scalar_subquery(),
            select(func.max(MemberErasure.id)).scalar_subquery(),
        )
    ).one()


def _cached(session: Session, what: str, compute, *args):
    key = (str(session.get_bind().url), what, args)
    marker = tuple(_change_marker(session))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0] == marker:
        return dict(hit[1])
    value = compute()
    with _CACHE_LOCK:
        _CACHE[key] = (marker, dict(value))
    return value


@functools.lru_cache(maxsize=4)
def _lfw_photos(folder: str, modified: float) -> int:
    from core.training.pipeline import LFW_NAME

    return sum(1 for p in (Path(folder) / "images").iterdir() if LFW_NAME.match(p.name))


def data_available(session: Session) -> dict:
    """The sources a run can use: the LFW development set (if on this machine) and reviewed pairs."""
    from core.training.pipeline import lfw_dev_dir

    folder = lfw_dev_dir()
    photos = 0
    if folder is not None:
        photos = _lfw_photos(str(folder), (folder / "images").stat().st_mtime)

    def reviewed_counts() -> dict:
        # One pass over the index (decided_by, ground_truth_same, ...), both counts at once.
        reviewed, same = session.execute(
            select(
                func.count(),
                func.sum(case((ResultRow.ground_truth_same.is_(True), 1), else_=0)),
            ).where(ResultRow.ground_truth_same.is_not(None), ResultRow.decided_by.is_not(None))
        ).one()
        return {"reviewed_pairs": int(reviewed or 0), "reviewed_same": int(same or 0)}

    return {
        "lfw_dir": str(folder) if folder else None,
        "lfw_photos": photos,
        **_cached(session, "reviewed", reviewed_counts),
    }


def loss_figure(progress: dict, lang: str) -> go.Figure:
    """Loss by epoch: the Siamese head (left) and the gender head (right), each on its own axes."""
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(t("retrain.loss.siamese", lang), t("retrain.loss.gender", lang)),
        horizontal_spacing=0.12,
    )
    for col, key in ((1, "siamese_loss"), (2, "gender_loss")):
        points = (progress or {}).get(key) or []
        fig.add_trace(
            go.Scatter(
                x=[e for e, _ in points],
                y=[v for _, v in points],
                mode="lines+markers" if len(points) <= 30 else "lines",
                name=t(f"retrain.loss.{key.split('_')[0]}", lang),
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=t("retrain.loss.epoch", lang), row=1, col=col)
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


# Metric, whether higher is better, how to show it.
COMPARED = (
    ("verification_accuracy", True, "pct"),
    ("verification_auc", True, "f4"),
    ("fnmr_at_fmr_0_001", False, "pct"),
    ("gender_accuracy", True, "pct"),
    ("gender_balanced_accuracy", True, "pct"),
    ("latency_p50_ms", False, "ms"),
    ("latency_p95_ms", False, "ms"),
    ("calibration_error", False, "pct"),
    ("automation_rate", True, "pct"),
    ("automatic_decision_accuracy", True, "pct"),
    ("approve_at", None, "f4"),
    ("reject_below", None, "f4"),
    ("n_pairs", None, "int"),
    ("n_gender", None, "int"),
    ("heldout_people_seen_in_training", None, "int"),
)


def _shown(value, how: str) -> str:
    if value is None:
        return "—"
    if how == "pct":
        return f"{value * 100:.2f}%"
    if how == "ms":
        return f"{value:,.0f} ms"
    if how == "int":
        return f"{int(value):,}"
    return f"{value:.4f}"


def comparison_rows(comparison: dict, lang: str) -> list[dict]:
    """One row per figure: new, active, and which is better (latency within 10% counts as equal)."""
    new = comparison.get("new") or {}
    active = comparison.get("active") or {}
    col_new = t("retrain.cmp.new", lang, version=new.get("model_version", ""))
    col_active = t("retrain.cmp.active", lang, version=active.get("model_version", "—"))
    rows = []
    for key, higher, how in COMPARED:
        a, b = new.get(key), active.get(key)
        verdict = ""
        if higher is not None and a is not None and b is not None:
            tolerance = 0.1 * max(abs(b), 1e-9) if how == "ms" else 1e-9
            if abs(a - b) <= tolerance:
                verdict = t("retrain.cmp.same", lang)
            elif (a > b) == higher:
                verdict = t("retrain.cmp.better", lang)
            else:
                verdict = t("retrain.cmp.worse", lang)
        rows.append(
            {
                t("retrain.cmp.metric", lang): t(f"retrain.metric.{key}", lang),
                col_new: _shown(a, how),
                col_active: _shown(b, how),
                t("retrain.cmp.verdict", lang): verdict,
            }
        )
    return rows


def versions_rows(versions, lang: str) -> list[dict]:
    from core.dashboard.formatting import actor_text, local_time

    rows = []
    for v in versions:
        m = v.metrics or {}
        rows.append(
            {
                t("retrain.ver.version", lang): v.version,
                t("retrain.ver.status", lang): t(f"retrain.status.{v.status}", lang),
                t("retrain.ver.created", lang): local_time(v.created_at),
                t("retrain.ver.by", lang): actor_text(v.created_by, lang),
                t("retrain.metric.verification_accuracy", lang): _shown(
                    m.get("verification_accuracy"), "pct"
                ),
                t("retrain.metric.verification_auc", lang): _shown(m.get("verification_auc"), "f4"),
                t("retrain.metric.fnmr_at_fmr_0_001", lang): _shown(m.get("fnmr_at_fmr_0_001"), "pct"),
                t("retrain.metric.gender_accuracy", lang): _shown(m.get("gender_accuracy"), "pct"),
                t("retrain.ver.promoted", lang): local_time(v.promoted_at),
                t("retrain.ver.promoted_by", lang): actor_text(v.promoted_by, lang),
            }
        )
    return rows


def stage_text(progress: dict, lang: str) -> str:
    """'Training the Siamese head: epoch 3 of 10' and the like."""
    progress = progress or {}
    stage = progress.get("stage") or "queued"
    text = t(f"retrain.stage.{stage}", lang)
    if stage == "features" and progress.get("features"):
        f = progress["features"]
        text += " · " + t("retrain.stage.photos", lang, done=f["done"], total=f["total"])
    elif stage in ("siamese", "gender") and progress.get("epoch"):
        text += " · " + t("retrain.stage.epoch", lang, epoch=progress["epoch"])
    return text


# Share of the whole run each stage ends at (features dominate on a cold cache).
STAGE_END = {
    "queued": 0.0,
    "starting": 0.01,
    "data": 0.02,
    "features": 0.6,
    "siamese": 0.85,
    "gender": 0.93,
    "evaluate": 0.95,
    "save": 0.96,
    "compare": 0.995,
    "done": 1.0,
}


def overall_fraction(progress: dict) -> float:
    """0..1 for the whole run, from the stage and the fraction of that stage."""
    progress = progress or {}
    stages = list(STAGE_END)
    stage = progress.get("stage") or "queued"
    if stage not in STAGE_END:
        return 0.0
    k = stages.index(stage)
    start = STAGE_END[stages[k - 1]] if k else 0.0
    fraction = min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0)
    return start + (STAGE_END[stage] - start) * fraction


# ----------------------------------------------------------------------------------------------
# Re-verification after a promotion


def reverify_counts(session: Session, version: str) -> dict[str, int]:
    """Members each scope would re-run on `version` (for the choice on the page)."""
    from core.workflows import reverification

    return _cached(session, "reverify", lambda: reverification.count_to_reverify(session, version), version)


def reverify_batches(session: Session, limit: int = 5) -> list[dict]:
    """The latest re-verification batches with their progress, newest first."""
    from core.storage.schema import Batch
    from core.workflows import batches, reverification

    rows = session.scalars(
        select(Batch).where(Batch.source == reverification.SOURCE).order_by(Batch.id.desc()).limit(limit)
    ).all()
    return [batches.batch_progress(session, b.id) | {"model_version": b.model_version} for b in rows]


# ----------------------------------------------------------------------------------------------
# What the Retrain page asks of the training layer: core.training runs, registers and switches
# versions (each audited there); these names are the page's only way in.

ACTIVE, CANDIDATE, PREVIOUS, DISCARDED = (
    registry.ACTIVE,
    registry.CANDIDATE,
    registry.PREVIOUS,
    registry.DISCARDED,
)
LIVE, CANCELLING, CANCELLED, FAILED = worker.LIVE, worker.CANCELLING, worker.CANCELLED, worker.FAILED
RunInProgress = worker.RunInProgress
HISTORY_ACTIONS = (
    registry.REGISTER,
    registry.PROMOTE,
    registry.ROLLBACK,
    registry.DISCARD,
    worker.START_TRAINING,
    worker.CANCEL_TRAINING,
    self_measurement.REFIT,  # approve_at re-fitted on the members
)
VERSION_TARGET = registry.TARGET

current_run, latest_run, cancel = worker.current_run, worker.latest_run, worker.cancel
list_versions, discard, rollback = registry.list_versions, registry.discard, registry.rollback


def promote(session: Session, version: str, actor: str, expected_active: str | None = None, models_dir=None):
    """Make the version active (audited in the registry), then measure it on the members at once."""
    row = registry.promote(session, version, actor, expected_active=expected_active, models_dir=models_dir)
    jobs.measure_after_promotion(session, version, actor)
    return row


def lfw_photo_set():
    """(images folder, people.csv) of the LFW development set on this machine."""
    from core.training.pipeline import lfw_dev_dir

    folder = lfw_dev_dir()
    return folder / "images", folder / "people.csv"


def data_choice(images, people, reviewed: bool):
    """What a run trains on: a photo set (or None) and/or the reviewed decisions."""
    from core.training.pipeline import DataChoice

    return DataChoice(images, people, reviewed=reviewed)


def poll_run(session: Session, run_id: int):
    """The run's row, after marking runs whose worker stopped answering as failed."""
    worker.reap_stale(session)
    return worker.get_run(session, run_id)


def train_params(values: dict) -> TrainParams:
    """The form's settings as training parameters; ValueError names the one out of range."""
    return TrainParams.from_dict(values)


def start_run(session_factory, actor: str, choice, params: TrainParams, store_url: str) -> int:
    """Starts a run in the background (core.jobs decides where); RunInProgress when one is running."""
    return jobs.start_training(session_factory, actor, choice, params, store_dir=store_url)


def reverify_scopes() -> list[str]:
    from core.workflows import reverification

    return list(reverification.SCOPES[::-1])


def start_reverify(session_factory, actor: str, version: str, scope: str) -> int | None:
    """Re-runs members on the version as a background batch; None when there is nothing to run."""
    from core.workflows import reverification

    batch_id = reverification.create(session_factory, actor, version, scope)
    if batch_id is not None:
        jobs.submit_batch(batch_id, actor)
    return batch_id


def history(session: Session, limit: int = 30) -> list:
    """The latest registrations, promotions, rollbacks, discards, starts and cancels, newest first."""
    from core.storage.schema import AuditEntry

    return session.scalars(
        select(AuditEntry)
        .where(AuditEntry.action.in_(HISTORY_ACTIONS))
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .limit(limit)
    ).all()


def problem_text(problem: str, lang: str) -> str:
    """One reason the data are not enough, in the page's language when the catalog has it."""
    key = getattr(problem, "key", None)
    if not key:
        return str(problem)
    params = getattr(problem, "params", {})
    if params.get("n") == 1 and t(f"{key}.one", lang) != f"{key}.one":
        key = f"{key}.one"
    return t(key, lang, **params)


def problems_text(problems: list[str], lang: str, sep: str = "; ") -> str:
    return sep.join(problem_text(p, lang) for p in problems)


def table_height(n_rows: int) -> int:
    """Pixels for a table to show its header and every row without a scroll bar of its own."""
    return 38 * (n_rows + 1) + 4
