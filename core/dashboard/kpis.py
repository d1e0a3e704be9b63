"""The KPI page: the figures per batch or per day behind every chart, the charts with their targets.

kpi_frame(session, ...), KPI_CHARTS, kpi_figure(frame, chart, lang), chart_frame(frame, chart), model_versions(session)
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from datetime import date

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dashboard import kpi_targets
from core.dashboard.formatting import (
    DISPLAY_TZ,
    Rate,
    basis_text,
    batch_name,
    interval_text,
    local_time,
    milliseconds,
    number,
    percent,
    rate_of,
    target_text,
)
from core.i18n import t
from core.storage import kpi_aggregates, queries
from core.storage.schema import Batch
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import batches, gallery

SINGLE_SOURCES = {batches.PAGE_SINGLE, batches.API_SINGLE, gallery.ADDITION_SOURCE}

KPI_COLUMNS = [
    "batch_id",
    "batch",
    "first_result",
    "n_results",
    "verification_accuracy",
    "n_verification_truth",
    "verification_accuracy_low",
    "verification_accuracy_high",
    "gender_accuracy",
    "n_gender_truth",
    "gender_accuracy_low",
    "gender_accuracy_high",
    "latency_p50_ms",
    "latency_p95_ms",
    "automation_rate",
    "n_auto",
    "automation_rate_low",
    "automation_rate_high",
    "backlog",
    "n_reused_photo",
    "n_stale_photo",
    "n_challenge_failed",
    "n_gallery_photo_differs",
    "model_versions",
]

# rate column -> (the column counting its decisions, what they are: i18n figure.what.<what>)
RATE_BASIS = {
    "verification_accuracy": ("n_verification_truth", "reviewed_pairs"),
    "gender_accuracy": ("n_gender_truth", "gender_truth"),
    "automation_rate": ("n_results", "results"),
}


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
    "verification_accuracy": [
        "n_verification_truth",
        "verification_accuracy_low",
        "verification_accuracy_high",
    ],
    "gender_accuracy": ["n_gender_truth", "gender_accuracy_low", "gender_accuracy_high"],
    "latency": ["n_results"],
    "automation_rate": ["n_results", "n_auto", "automation_rate_low", "automation_rate_high"],
    "backlog": ["n_results"],
}


def _old_batch_of_one(batch: Batch | None) -> bool:
    return batch is not None and batch.group_key is None and batch.source in SINGLE_SOURCES


def model_versions(session: Session) -> list[str]:
    return list(session.scalars(select(ResultRow.model_version).distinct().order_by(ResultRow.model_version)))


# Aggregates already read, until the next result or review: (database, query, marker) -> figures.
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()
DAYS_SHOWN_PER_DAY = 92  # a longer period per day is shown per week


def _cached(session: Session, name: str, compute, **query):
    """compute() once per (database, query) until a result is stored or a review decided."""
    key = (
        str(session.get_bind().url),
        name,
        tuple(sorted(query.items())),
        kpi_aggregates.change_marker(session),
    )
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return copy.deepcopy(_CACHE[key])
    value = compute()
    with _CACHE_LOCK:
        _CACHE[key] = copy.deepcopy(value)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _grouped_in_cache(session: Session, filters: dict) -> list | None:
    """kpi_frame's figures of this period (any grouping), if read since the last change."""
    marker = kpi_aggregates.change_marker(session)
    url = str(session.get_bind().url)
    with _CACHE_LOCK:
        for per in kpi_aggregates.PERIODS:
            key = (url, "grouped", tuple(sorted({**filters, "per": per}.items())), marker)
            if key in _CACHE:
                return copy.deepcopy(_CACHE[key])
    return None


def shown_per(per: str, date_from: date | None, date_to: date | None) -> str:
    """The grouping a period is shown by: per day over more than DAYS_SHOWN_PER_DAY days is per week."""
    if per == "day" and (
        date_from is None or date_to is None or (date_to - date_from).days > DAYS_SHOWN_PER_DAY
    ):
        return "week"
    return per


def kpi_frame(
    session: Session,
    date_from: date | None = None,
    date_to: date | None = None,
    model_version: str | None = None,
    *,
    per: str = "batch",
    include_single: bool = False,
    tz: str = DISPLAY_TZ,
    lang: str = "en",
) -> pd.DataFrame:
    """The figures behind all the KPI charts: one row per batch (oldest first) or per local day.

    Per batch, a day's single verifications from one source are one batch ("Single verifications
    2026-12-01 · API"); the batches of one stored before that grouping are left out unless
    include_single (each would be a point of its own). Per day, week (from Monday) or month, every
    result counts. The figures come from SQL aggregates, read once until the next result or review.
    """
    filters = {"date_from": date_from, "date_to": date_to, "model_version": model_version or None, "tz": tz}
    kpis = _cached(
        session, "grouped", lambda: kpi_aggregates.kpis_grouped(session, per, **filters), per=per, **filters
    )
    if per != "batch":
        labels = {k.key: (_period_label(k.key, per), k.label) for k in kpis}
    else:
        ids = [k.key for k in kpis if k.key is not None]
        info = {b.id: b for b in session.scalars(select(Batch).where(Batch.id.in_(ids)))} if ids else {}
        if not include_single:
            # A day's single verifications are one batch (group_key); batches of one made before
            # that grouping would each be a point of their own.
            kpis = [k for k in kpis if k.key is not None and not _old_batch_of_one(info.get(k.key))]
        labels = {}
        for k in kpis:
            batch = info.get(k.key)
            if batch is None:
                labels[k.key] = ("—", "")
            else:
                name = batch_name(batch.name, batch.group_key, lang)
                labels[k.key] = (f"#{k.key} {name}".rstrip(), local_time(batch.created_at))
    rows = []
    for k in kpis:
        label, when = labels[k.key]
        intervals = {}
        for column, rate in (
            ("verification_accuracy", rate_of(k.verification_accuracy, k.n_verification_truth)),
            ("gender_accuracy", rate_of(k.gender_accuracy, k.n_gender_truth)),
            ("automation_rate", Rate(k.n_auto, k.n_results)),
        ):
            low, high = rate.interval or (None, None)
            intervals[f"{column}_low"], intervals[f"{column}_high"] = low, high
        rows.append(
            {
                **intervals,
                "batch_id": k.key if per == "batch" else None,
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
                "n_auto": k.n_auto,
                "backlog": k.n_flagged_open,
                **{f"n_{code}": k.fraud_flags.get(code, 0) for code in queries.FRAUD_FLAGS},
                "model_versions": " ".join(k.model_versions),
            }
        )
    return pd.DataFrame(rows, columns=KPI_COLUMNS)


def _period_label(key: date, per: str) -> str:
    if per == "week":
        year, week, _ = key.isocalendar()
        return f"{year}-W{week:02d}"
    if per == "month":
        return key.strftime("%Y-%m")
    return key.isoformat()


def chart_frame(frame: pd.DataFrame, chart: str) -> pd.DataFrame:
    """The figures behind one chart (for its download)."""
    columns, _ = KPI_CHARTS[chart]
    return frame[["batch_id", "batch", "first_result", *columns, *KPI_CHART_EXTRA[chart], "model_versions"]]


def kpi_figure(frame: pd.DataFrame, chart: str, lang: str, per: str = "batch"):
    """A plotly figure of one KPI per batch, with its target line(s)."""
    import plotly.graph_objects as go

    columns, targets = KPI_CHARTS[chart]
    ratio = targets[0].unit == "ratio"
    # Built from values made here, so plotly's per-value validation (most of a year's chart's
    # time: 366 points, each with its hover text and marker) is skipped.
    fig = go.Figure(_validate=False)
    texts: dict = {}  # hover texts by (hits, n): many points rest on the same counts

    def basis(rate: Rate, what: str) -> str:
        key = (rate.hits, rate.n, what)
        if key not in texts:
            texts[key] = basis_text(rate, what, lang)
        return texts[key]

    def hover_of(n: int) -> str:
        if n not in texts:
            texts[n] = t("kpi.latency_hover", lang, n=n)
        return texts[n]

    full_names = frame["batch"].astype(str).tolist()
    x = short_labels(full_names)  # the axis holds short names; the full one is in the hover text
    for column in columns:
        values = frame[column].astype("float64")
        shown = values * 100 if ratio else values
        extra: dict = {}
        if column in RATE_BASIS:
            # The 95% interval as error bars; points on too few decisions drawn hollow.
            count, what = RATE_BASIS[column]
            rates = [
                Rate(int(hits), int(n))
                for hits, n in zip(
                    (frame["n_auto"] if column == "automation_rate" else (values * frame[count]).round())
                    .fillna(0)
                    .tolist(),
                    frame[count].fillna(0).tolist(),
                    strict=True,
                )
            ]
            low = frame[f"{column}_low"].astype("float64") * 100
            high = frame[f"{column}_high"].astype("float64") * 100
            extra = {
                "error_y": {
                    "type": "data",
                    "array": (high - shown).tolist(),
                    "arrayminus": (shown - low).tolist(),
                    "thickness": 1.5,
                    "width": 4,
                },
                "marker": {
                    "size": 9,
                    "symbol": ["circle" if r.enough else "circle-open" for r in rates],
                },
                "customdata": [basis(r, what) for r in rates],
                "hovertemplate": "%{text}<br>%{y:.1f}%<br>%{customdata}<extra></extra>",
            }
        elif column.endswith("_ms"):
            counts = frame["n_results"].fillna(0).astype(int).tolist()
            extra = {
                "customdata": [hover_of(n) for n in counts],
                "hovertemplate": "%{text}<br>%{y:,.0f} ms<br>%{customdata}<extra></extra>",
            }
        fig.add_trace(
            go.Scatter(
                _validate=False,
                **{
                    "x": x,
                    "y": shown,
                    "mode": "lines+markers",
                    "marker": {"size": 9},
                    "name": t(f"kpi.col.{column}", lang),
                    "connectgaps": False,
                    "text": full_names,
                    "hovertemplate": "%{text}<br>%{y:,.0f}<extra></extra>",
                    **extra,
                },
            )
        )
    for target in targets:
        value = target.value * 100 if ratio else target.value
        colour = "#dc2626" if target.owner == "contract" else "#6b7280"
        # The line carries no label on the plot (it would cover the points): the legend names it.
        fig.add_hline(y=value, line_dash="dash", line_color=colour)
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                line={"dash": "dash", "color": colour},
                name=t(
                    "kpi.target_line",
                    lang,
                    owner=t(f"kpi.owner.{target.owner}", lang),
                    value=target_text(target),
                ),
                hoverinfo="skip",
            )
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
    # The unit reads level above the axis (a sideways title is hard to read and eats width), and
    # the legend sits above the plot, clear of the axis labels at any width.
    fig.add_annotation(
        text=y_title, xref="paper", yref="paper", x=0, y=1, xanchor="left", yanchor="bottom", showarrow=False
    )
    fig.update_layout(
        height=360,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        xaxis_title=t("kpi.day_axis" if per == "day" else "kpi.batch_axis", lang),
        legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.08, "yanchor": "bottom"},
        xaxis={"type": "category", "tickangle": -30, "automargin": True},
    )
    if ratio:
        fig.update_yaxes(range=[0, 101])
    return fig


SHORT_LABEL = 16  # characters of a batch name on a chart's axis


def short_labels(names: list[str], limit: int = SHORT_LABEL) -> list[str]:
    """Batch names cut to `limit` characters for an axis, still distinct (a category axis would
    merge two batches whose cut names are equal)."""
    shown, seen = [], {}
    for name in names:
        short = name if len(name) <= limit else name[: limit - 1].rstrip() + "…"
        seen[short] = seen.get(short, 0) + 1
        shown.append(short if seen[short] == 1 else f"{short} ({seen[short]})")
    return shown


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


def period_basis(
    session: Session, date_from, date_to, model_version, lang: str, tz: str = DISPLAY_TZ
) -> dict:
    """chart id -> one line on the whole period's figure and what it rests on, for each rate chart."""
    filters = {"date_from": date_from, "date_to": date_to, "model_version": model_version or None, "tz": tz}

    def totals():
        groups = _grouped_in_cache(session, filters)
        if groups is not None:  # the chart's figures of this period: their sums, one query less
            return kpi_aggregates.totals_of(session, groups, **filters)
        return kpi_aggregates.kpi_totals(session, **filters, fraud_flags=False)

    kpi = _cached(session, "totals", totals, **filters)
    rates = {
        "verification_accuracy": rate_of(kpi.verification_accuracy, kpi.n_verification_truth),
        "gender_accuracy": rate_of(kpi.gender_accuracy, kpi.n_gender_truth),
        "automation_rate": Rate(kpi.n_auto, kpi.n_results),
    }
    lines = {
        chart: t(
            "kpi.period_line",
            lang,
            value=percent(rate.value),
            basis=basis_text(rate, RATE_BASIS[chart][1], lang),
        )
        for chart, rate in rates.items()
    }
    lines["latency"] = t(
        "kpi.latency_line",
        lang,
        p50=milliseconds(kpi.latency_p50_ms),
        p95=milliseconds(kpi.latency_p95_ms),
        n=kpi.n_results,
    )
    return lines


def kpi_table(frame: pd.DataFrame, lang: str) -> pd.DataFrame:
    """The KPI figures as the page shows them: formatted in the page's language, each rate beside
    its count and 95% interval, "too few to judge" where it rests on fewer than MIN_COUNT."""
    rows = []
    for record in frame.to_dict("records"):
        row = {
            t("col.batch", lang): record["batch"],
            t("col.first_result", lang): record["first_result"],
            t("col.n_results", lang): number(record["n_results"]),
        }
        for column, (count, _what) in RATE_BASIS.items():
            value = record[column]
            value = None if value is None or pd.isna(value) else float(value)
            if column == "automation_rate":
                rate = Rate(int(record["n_auto"]), int(record["n_results"]))
            else:
                rate = rate_of(value, int(record[count] or 0))
            shown = percent(value)
            if value is not None and not rate.enough:
                shown += " · " + t("kpi.too_few_short", lang)
            row[t(f"col.{column}", lang)] = shown
            if column != "automation_rate":
                row[t(f"col.{count}", lang)] = number(record[count])
            row[t(f"col.{column}_interval", lang)] = interval_text(rate)
        row[t("col.latency_p50_ms", lang)] = milliseconds(record["latency_p50_ms"])
        row[t("col.latency_p95_ms", lang)] = milliseconds(record["latency_p95_ms"])
        row[t("col.backlog", lang)] = number(record["backlog"])
        row[t("col.model_versions", lang)] = record["model_versions"]
        rows.append(row)
    return pd.DataFrame(rows)
