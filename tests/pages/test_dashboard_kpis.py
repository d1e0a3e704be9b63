"""The KPI page's figures, charts and targets (core.dashboard.kpis, kpi_targets)."""

from __future__ import annotations

import pytest
from conftest import engine_result

from core.dashboard import kpi_targets, kpis


def test_targets_are_the_agreed_ones():
    assert kpi_targets.GENDER_ACCURACY.value == 0.80 and kpi_targets.GENDER_ACCURACY.owner == "contract"
    assert kpi_targets.LATENCY_CONTRACT_MS.value == 2000 and kpi_targets.LATENCY_P95_MS.value == 80
    assert kpi_targets.VERIFICATION_ACCURACY.met(0.995) and not kpi_targets.VERIFICATION_ACCURACY.met(0.98)
    assert kpi_targets.LATENCY_CONTRACT_MS.met(1999) and not kpi_targets.LATENCY_CONTRACT_MS.met(2001)
    assert kpi_targets.BACKLOG.met(None) is None


def test_kpi_frame_and_figures(session, add_member):
    from core.workflows import batches

    members = [add_member(f"K{n}") for n in range(4)]
    specs = [
        batches.BatchItemSpec(m.id, m.photos[0].id, m.photos[1].id, "M")
        for m in members  # gallery, verification
    ]
    batch = batches.create_batch(session, "t", specs, "v1", source="upload")
    items = sorted(batch.items, key=lambda i: i.position)
    for item, status in zip(
        items, ["auto_approved", "auto_rejected", "flagged", "auto_approved"], strict=True
    ):
        batches.store_result(
            session,
            engine_result(status, 0.9, latency_ms=50.0, model_version="v1"),
            batch_id=batch.id,
            batch_item_id=item.id,
            member_id=item.member_id,
        )
    session.commit()
    frame = kpis.kpi_frame(session)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["n_results"] == 4 and row["automation_rate"] == 0.75 and row["backlog"] == 1
    assert row["latency_p95_ms"] == 50.0
    for chart in kpis.KPI_CHARTS:
        fig = kpis.kpi_figure(frame, chart, "en")
        lines = [shape for shape in fig.layout.shapes if shape.type == "line"]
        assert len(lines) == len(kpis.KPI_CHARTS[chart][1])  # one line per target
        assert list(kpis.chart_frame(frame, chart).columns)[:3] == ["batch_id", "batch", "first_result"]
    # automation 3 of 4: its interval beside it, in the table formatted and marked as too few
    assert row["n_auto"] == 3 and row["automation_rate_low"] == pytest.approx(0.3006, abs=1e-4)
    table = kpis.kpi_table(frame, "en").iloc[0]
    assert table["Automation rate"] == "75.0% · too few" and table["Automation 95% interval"] == "30.1–95.4%"
    assert table["p95 (ms)"] == "50 ms" and table["Verification accuracy"] == "—"
    assert kpis.kpi_table(frame, "ko").iloc[0]["자동화율"] == "75.0% · 너무 적음"
    trace = kpis.kpi_figure(frame, "automation_rate", "en").data[0]
    assert list(trace.marker.symbol) == ["circle-open"]  # too few decisions: hollow
    assert trace.error_y.array[0] == pytest.approx(95.44 - 75, abs=0.01)
    assert trace.customdata[0].startswith("3 of 4 pairs · 95% interval 30.1–95.4%")
    lines = kpis.period_basis(session, None, None, None, "en")
    assert lines["automation_rate"].startswith("Whole period: 75.0% — 3 of 4 pairs")
    assert lines["latency"] == (
        "Whole period: p50 50 ms, p95 50 ms over 4 pairs (engine time per pair; storing not included)"
    )
    assert kpis.kpi_frame(session, model_version="other").empty
    assert len(kpis.kpi_frame(session, per="day")) == 1
