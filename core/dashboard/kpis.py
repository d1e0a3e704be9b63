"""The KPI page: the figures per batch or per day behind every chart, the charts with their targets.

kpi_frame(session, ...), KPI_CHARTS, kpi_figure(frame, chart, lang), chart_frame(frame, chart), model_versions(session)
"""

from __future__ import annotations

from datetime import date

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dashboard import kpi_targets
from core.dashboard.formatting import DISPLAY_TZ, local_time, target_text
from core.dashboard.jobs import SINGLE_SOURCE
from core.i18n import t
from core.storage import queries
from core.storage.schema import Batch
from core.storage.schema import VerificationResult as ResultRow

KPI_COLUMNS = [
    "batch_id",
    "batch",
    "first_result",
    "n_results",
    "verification_accuracy",
    "n_verification_truth",
    "gender_accuracy",
    "n_gender_truth",
    "latency_p50_ms",
    "latency_p95_ms",
    "automation_rate",
    "backlog",
    "n_reused_photo",
    "n_stale_photo",
    "n_challenge_failed",
    "n_gallery_photo_differs",
    "model_versions",
]


# chart id -> (columns plotted, target lines)
KPI_CHARTS = {
    "verification_accuracy": (["verification_accuracy"], [kpi_targets.VERIFICATION_ACCURACY]),
    "gender_accuracy": (["gender_accuracy"], [kpi_targets.GENDER_ACCURACY]),
    "latency": (
        ["latency_p50_ms", "latency_p95_ms"],
        [kpi_targets.LATENCY_CONTRACT_MS, kpi_targets.LATENCY_P95_MS],
    ),
    "automation_rate": (["automation_rate"], [kpi_targets.AUTOMATION_RATE]),
    "backlog": (["backlog"], [kpi_targets.BACKLOG]),
}


KPI_CHART_EXTRA = {
    "verification_accuracy": ["n_verification_truth"],
    "gender_accuracy": ["n_gender_truth"],
    "latency": ["n_results"],
    "automation_rate": ["n_results"],
    "backlog": ["n_results"],
}


def model_versions(session: Session) -> list[str]:
    return list(session.scalars(select(ResultRow.model_version).distinct().order_by(ResultRow.model_version)))


def kpi_frame(
    session: Session,
    date_from: date | None = None,
    date_to: date | None = None,
    model_version: str | None = None,
    *,
    per: str = "batch",
    include_single: bool = False,
    tz: str = DISPLAY_TZ,
) -> pd.DataFrame:
    """The figures behind all the KPI charts: one row per batch (oldest first) or per local day.

    Per batch, the one-pair batches of the Verify page are left out unless include_single (each
    would be a point of its own); per day, every result counts.
    """
    filters = {"date_from": date_from, "date_to": date_to, "model_version": model_version or None, "tz": tz}
    if per == "day":
        kpis = queries.kpis_per_day(session, **filters)
        labels = {k.key: (k.label, k.label) for k in kpis}
    else:
        kpis = queries.kpis_per_batch(session, **filters)
        ids = [k.key for k in kpis if k.key is not None]
        info = (
            {
                b_id: (created, source)
                for b_id, created, source in session.execute(
                    select(Batch.id, Batch.created_at, Batch.source).where(Batch.id.in_(ids))
                )
            }
            if ids
            else {}
        )
        if not include_single:
            kpis = [
                k for k in kpis if k.key is not None and info.get(k.key, (None, None))[1] != SINGLE_SOURCE
            ]
        labels = {}
        for k in kpis:
            created = info.get(k.key, (None, None))[0]
            if k.key is None:
                labels[k.key] = ("—", "")
            else:
                name = "" if k.label == f"Batch {k.key}" else f" {k.label}"
                labels[k.key] = (f"#{k.key}{name}", local_time(created))
    rows = []
    for k in kpis:
        label, when = labels[k.key]
        rows.append(
            {
                "batch_id": k.key if per != "day" else None,
                "batch": label,
                "first_result": when,
                "n_results": k.n_results,
                "verification_accuracy": k.verification_accuracy,
                "n_verification_truth": k.n_verification_truth,
                "gender_accuracy": k.gender_accuracy,
                "n_gender_truth": k.n_gender_truth,
                "latency_p50_ms": k.latency_p50_ms,
                "latency_p95_ms": k.latency_p95_ms,
                "automation_rate": k.automation_rate,
                "backlog": k.n_flagged_open,
                **{f"n_{code}": k.fraud_flags.get(code, 0) for code in queries.FRAUD_FLAGS},
                "model_versions": " ".join(k.model_versions),
            }
        )
    return pd.DataFrame(rows, columns=KPI_COLUMNS)


def chart_frame(frame: pd.DataFrame, chart: str) -> pd.DataFrame:
    """The figures behind one chart (for its download)."""
    columns, _ = KPI_CHARTS[chart]
    return frame[["batch_id", "batch", "first_result", *columns, *KPI_CHART_EXTRA[chart], "model_versions"]]


def kpi_figure(frame: pd.DataFrame, chart: str, lang: str, per: str = "batch"):
    """A plotly figure of one KPI per batch, with its target line(s)."""
    import plotly.graph_objects as go

    columns, targets = KPI_CHARTS[chart]
    ratio = targets[0].unit == "ratio"
    fig = go.Figure()
    x = frame["batch"].astype(str).tolist()
    for column in columns:
        values = frame[column].astype("float64")
        shown = values * 100 if ratio else values
        fig.add_trace(
            go.Scatter(
                x=x,
                y=shown,
                mode="lines+markers",
                marker={"size": 9},
                name=t(f"kpi.col.{column}", lang),
                connectgaps=False,
                hovertemplate="%{x}<br>%{y:.1f}"
                + ("%" if ratio else " ms" if "ms" in column else "")
                + "<extra></extra>",
            )
        )
    for target in targets:
        value = target.value * 100 if ratio else target.value
        fig.add_hline(
            y=value,
            line_dash="dash",
            line_color="#dc2626" if target.owner == "contract" else "#6b7280",
            annotation_text=t(
                "kpi.target_line",
                lang,
                owner=t(f"kpi.owner.{target.owner}", lang),
                value=target_text(target),
            ),
            annotation_position="top left",
        )
    if frame[columns].isna().all().all():
        fig.add_annotation(
            text=t(f"kpi.no_points.{chart}", lang),
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
            font={"size": 14, "color": "#6b7280"},
        )
    y_title = {"ratio": "%", "ms": "ms", "count": t("kpi.count", lang)}[targets[0].unit]
    fig.update_layout(
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis_title=y_title,
        xaxis_title=t("kpi.day_axis" if per == "day" else "kpi.batch_axis", lang),
        legend={"orientation": "h", "y": -0.25},
        xaxis={"type": "category"},
    )
    if ratio:
        fig.update_yaxes(range=[0, 101])
    return fig


def version_comparison(
    session: Session, old: str, new: str, lang: str
) -> tuple[list[dict], list[dict], dict]:
    """(figure rows, changed decisions, summary) of two versions on the members that have both."""
    from core.workflows.reverification import compare_versions

    c = compare_versions(session, old, new)
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    num = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    figures = []
    for key, value in (
        ("approved", lambda s: str(s.approved)),
        ("rejected", lambda s: str(s.rejected)),
        ("flagged", lambda s: str(s.flagged)),
        ("automation", lambda s: pct(s.automation)),
        ("mean_similarity", lambda s: num(s.mean_similarity)),
    ):
        figures.append(
            {
                t("kpi.compare_figure", lang): t(f"kpi.compare.{key}", lang),
                old: value(c.old),
                new: value(c.new),
            }
        )
    changed = [
        {
            t("col.member_id", lang): member,
            old: t(f"status.{before}", lang) if before in STATUS_KEYS else before,
            new: t(f"status.{after}", lang) if after in STATUS_KEYS else after,
        }
        for member, before, after in c.changed
    ]
    return figures, changed, {"members": c.members, "agreement": pct(c.agreement)}


STATUS_KEYS = ("auto_approved", "auto_rejected", "flagged")
