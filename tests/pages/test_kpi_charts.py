"""KPI charts readable at 1024 px: one per row, short batch names with the full one on hover, the
legend above the plot (clear of the axis labels), targets named in the legend rather than over the
points, and the unit written level above the axis."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from core.dashboard import kpis

ROOT = Path(__file__).resolve().parents[2]
LONG = [
    "Spring re-verification of the Busan members 2026-03",
    "Spring re-verification of the Busan members 2026-04",
    "B2",
]


def frame_of(names: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({column: [None] * len(names) for column in kpis.KPI_COLUMNS})
    frame["batch"] = names
    frame["batch_id"] = range(1, len(names) + 1)
    for column in (
        "n_results",
        "n_auto",
        "n_flagged_open",
        "backlog",
        "n_verification_truth",
        "n_gender_truth",
    ):
        if column in frame:
            frame[column] = [10] * len(names)
    frame["automation_rate"] = [0.7, 0.8, 0.9]
    for column in ("automation_rate_low", "automation_rate_high"):
        if column in frame:
            frame[column] = [0.5, 0.6, 0.7] if column.endswith("low") else [0.8, 0.9, 0.95]
    frame["latency_p50_ms"] = [80.0, 90.0, 100.0]
    frame["latency_p95_ms"] = [120.0, 130.0, 140.0]
    return frame


def test_short_labels_stay_distinct_and_the_full_name_is_on_hover():
    frame = frame_of(LONG)
    for chart in kpis.KPI_CHARTS:
        fig = kpis.kpi_figure(frame, chart, "ko")
        data = [trace for trace in fig.data if trace.x and trace.x[0] is not None]
        for trace in data:
            assert all(len(label) <= kpis.SHORT_LABEL + 4 for label in trace.x)
            assert len(set(trace.x)) == 3  # two names equal in their first characters stay two points
            assert list(trace.text) == LONG and "%{text}" in trace.hovertemplate


def test_legend_above_the_plot_targets_in_the_legend_and_a_level_unit():
    frame = frame_of(LONG)
    for chart, (_columns, targets) in kpis.KPI_CHARTS.items():
        fig = kpis.kpi_figure(frame, chart, "en")
        assert fig.layout.legend.y >= 1 and fig.layout.legend.yanchor == "bottom"
        assert not [a for a in fig.layout.annotations if a.yref != "paper"]  # nothing written over the data
        names = [trace.name for trace in fig.data]
        assert sum("target" in (name or "").lower() for name in names) == len(targets)
        assert not fig.layout.yaxis.title.text  # no sideways axis title
        assert any(a.y == 1 and a.yanchor == "bottom" for a in fig.layout.annotations)


def test_the_kpi_page_draws_one_chart_per_row():
    page = (ROOT / "pages" / "4_KPIs.py").read_text(encoding="utf-8")
    chart_loop = page[page.index("for chart in svc.KPI_CHARTS") :]
    assert not re.search(r"st\.columns\(", chart_loop.split("with st.expander")[0])
