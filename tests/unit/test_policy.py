"""The decision policy's operating points and the calibration measures (no networks needed)."""

import numpy as np
import pytest

from core.verification import calibration, policy


def _pairs(seed=0, n=4000):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = np.where(labels == 1, rng.normal(4, 2, n), rng.normal(-4, 2, n))
    return 1 / (1 + np.exp(-logits)), labels


def test_operating_points_meet_their_targets_on_the_pairs_they_were_chosen_on():
    sims, labels = _pairs()
    points = policy.choose_operating_points(sims, labels, max_fmr=0.001, max_fnmr=0.001)
    impostors, genuine = sims[labels == 0], sims[labels == 1]
    assert np.sum(impostors >= points.approve_at) <= np.floor(0.001 * len(impostors))
    assert np.sum(genuine < points.reject_below) <= np.floor(0.001 * len(genuine))
    assert 0 <= points.reject_below <= points.approve_at <= 1
    figures = policy.policy_figures(sims, labels, points)
    assert figures["auto_approve_fmr"] <= 0.001 and figures["auto_reject_fnmr"] <= 0.001
    assert 0 < figures["automation_rate"] < 1


def test_looser_targets_automate_more():
    sims, labels = _pairs(1)
    strict = policy.choose_operating_points(sims, labels, 0.001, 0.001)
    loose = policy.choose_operating_points(sims, labels, 0.02, 0.02)
    assert loose.approve_at <= strict.approve_at and loose.reject_below >= strict.reject_below
    assert (
        policy.policy_figures(sims, labels, loose)["automation_rate"]
        > policy.policy_figures(sims, labels, strict)["automation_rate"]
    )


def test_decide_uses_both_points():
    points = policy.OperatingPoints(reject_below=0.1, approve_at=0.9)
    assert policy.decide(0.95, points) == policy.APPROVE
    assert policy.decide(0.9, points) == policy.APPROVE
    assert policy.decide(0.5, points) == policy.REVIEW
    assert policy.decide(0.1, points) == policy.REVIEW
    assert policy.decide(0.05, points) == policy.REJECT


def test_overlapping_classes_leave_everything_to_review_rather_than_err():
    labels = np.array([0, 1] * 50)
    sims = np.full(100, 0.5)
    points = policy.choose_operating_points(sims, labels)
    figures = policy.policy_figures(sims, labels, points)
    assert figures["auto_approve_fmr"] == 0 and figures["auto_reject_fnmr"] == 0


def test_operating_points_read_from_metadata_and_older_versions_fall_back_to_the_band():
    meta = {
        "uncertain_band": [0.2, 0.8],
        "policy": {"reject_below": 0.01, "approve_at": 0.97, "max_fmr": 0.001},
    }
    points = policy.operating_points(meta)
    assert (points.reject_below, points.approve_at, points.max_fmr) == (0.01, 0.97, 0.001)
    old = policy.operating_points({"uncertain_band": [0.2, 0.8]})
    assert (old.reject_below, old.approve_at) == (0.2, 0.8)


def test_needs_both_kinds_of_pairs():
    with pytest.raises(ValueError, match="both"):
        policy.choose_operating_points([0.1, 0.2], [1, 1])


def test_calibration_error_is_small_for_calibrated_scores_and_large_for_overconfident_ones():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    assert calibration.expected_calibration_error(p, y) < 0.02
    overconfident = np.where(p > 0.5, 1.0, 0.0)
    assert calibration.expected_calibration_error(overconfident, y) > 0.2


def test_reliability_plot_is_a_png(tmp_path):
    p, y = _pairs(4, 2000)
    path = calibration.reliability_plot(p, y, tmp_path / "rel.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = calibration.reliability_table(p, y)
    assert sum(r["n"] for r in rows) == len(p)
