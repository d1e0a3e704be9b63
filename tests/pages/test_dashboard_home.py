"""Home's cards: each figure against its target, with what it rests on (core.dashboard.home)."""

from __future__ import annotations

from core.dashboard import home
from core.dashboard.formatting import MIN_COUNT
from core.storage.queries import Kpi


def _summary(**figures) -> home.TodaySummary:
    return home.TodaySummary(Kpi(key="all", label="today", **figures), backlog_total=3, batches_today=1)


def test_two_reviewed_pairs_are_too_few_to_judge():
    cards = {
        c.label: c
        for c in home.cards(
            _summary(
                n_results=40,
                n_auto=38,
                automation_rate=0.95,
                verification_accuracy=0.5,
                n_verification_truth=2,
                latency_p95_ms=61.2,
            )
        )
    }
    accuracy = cards["kpi.col.verification_accuracy"]
    assert accuracy.shown == "50.0%" and accuracy.rate.n == 2 and accuracy.state == home.TOO_FEW
    automation = cards["kpi.col.automation_rate"]
    assert automation.rate.n == 40 >= MIN_COUNT and automation.state == home.MET
    assert cards["kpi.col.gender_accuracy"].state == home.NO_DATA
    latency = cards["kpi.col.latency_p95_ms"]
    assert latency.shown == "61 ms" and latency.count == 40 and latency.state == home.MET
    assert cards["home.backlog"].shown == "3" and cards["home.backlog"].state == home.MET
