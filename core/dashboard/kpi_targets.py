"""The targets verification is held to, in one place: the KPI charts and Home draw them as lines.

| KPI                     | target        | whose target                                    |
| ----------------------- | ------------- | ----------------------------------------------- |
| verification accuracy   | >= 99 %       | product (against reviewed ground truth)         |
| gender accuracy         | >= 80 %       | the customer contract                           |
| latency per pair        | <= 2000 ms    | the customer contract (checked on p95 and p50)  |
| latency p95             | <= 80 ms      | engineering (warm engine, one pair)             |
| automation rate         | >= 90 %       | operations: share decided without a person      |
| review backlog          | <= 50 pairs   | operations: flagged pairs nobody decided yet    |

Change a figure here and every page follows. No Streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN, MAX = "min", "max"  # the value must be at least / at most the target


@dataclass(frozen=True)
class Target:
    name: str  # its own id (the i18n key "kpi.target_name.<name>")
    key: str  # the Kpi attribute it applies to (core.storage.queries.Kpi)
    value: float
    direction: str  # MIN or MAX
    unit: str  # "ratio" (0..1, shown as %), "ms" or "count"
    owner: str  # product / contract / engineering / operations

    def met(self, observed: float | None) -> bool | None:
        """True / False against the target; None when there is no figure yet."""
        if observed is None:
            return None
        return observed >= self.value if self.direction == MIN else observed <= self.value


VERIFICATION_ACCURACY = Target(
    "verification_accuracy", "verification_accuracy", 0.99, MIN, "ratio", "product"
)
GENDER_ACCURACY = Target("gender_accuracy", "gender_accuracy", 0.80, MIN, "ratio", "contract")
LATENCY_CONTRACT_MS = Target("latency_contract", "latency_p95_ms", 2000.0, MAX, "ms", "contract")
LATENCY_P95_MS = Target("latency_p95", "latency_p95_ms", 80.0, MAX, "ms", "engineering")
AUTOMATION_RATE = Target("automation_rate", "automation_rate", 0.90, MIN, "ratio", "operations")
BACKLOG = Target("backlog", "n_flagged_open", 50, MAX, "count", "operations")

ALL = (
    VERIFICATION_ACCURACY,
    GENDER_ACCURACY,
    LATENCY_CONTRACT_MS,
    LATENCY_P95_MS,
    AUTOMATION_RATE,
    BACKLOG,
)
