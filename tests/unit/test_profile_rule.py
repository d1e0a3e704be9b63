"""The profile rule's thresholds are settings (PROFILE_APPROVE_AT, PROFILE_REJECT_BELOW,
PROFILE_CORROBORATE_FROM), the two points capped by the model version's own operating points, and
the use case and the benchmark read them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core import config
from core.verification.policy import OperatingPoints
from core.verification.profile import PROFILE_APPROVE_AT, PROFILE_REJECT_BELOW
from core.workflows import profile_rule


def engine_with(reject_below: float, approve_at: float, version: str = "v-test"):
    model = SimpleNamespace(
        operating_points=OperatingPoints(reject_below=reject_below, approve_at=approve_at)
    )
    return SimpleNamespace(model=model, model_version=version)


def test_the_defaults_are_the_measured_rule():
    assert config.declared("PROFILE_APPROVE_AT").default == PROFILE_APPROVE_AT == 0.85
    assert config.declared("PROFILE_REJECT_BELOW").default == PROFILE_REJECT_BELOW == 0.0125
    rule = profile_rule.rule_for(engine_with(0.00015, 0.6))
    # Corroboration from 0.3, chosen on the shipped version's training people (docs/benchmarks.md).
    assert (rule.approve_at, rule.reject_below, rule.corroborate_from) == (0.85, 0.0125, 0.3)


def test_corroboration_is_a_setting_and_can_be_off(monkeypatch):
    engine = engine_with(0.02, 0.6)
    monkeypatch.setenv("PROFILE_CORROBORATE_FROM", "off")
    assert profile_rule.rule_for(engine).corroborate_from is None
    monkeypatch.setenv("PROFILE_CORROBORATE_FROM", "0.5")
    assert profile_rule.rule_for(engine).corroborate_from == 0.5
    assert profile_rule.rule_for(engine, corroborate_from=None).corroborate_from is None  # given: wins
    monkeypatch.setenv("PROFILE_CORROBORATE_FROM", "often")
    with pytest.raises(config.SettingError, match="PROFILE_CORROBORATE_FROM"):
        profile_rule.rule_for(engine)


def test_settings_move_the_rule_within_the_versions_points(monkeypatch):
    engine = engine_with(0.02, 0.6)
    monkeypatch.setenv("PROFILE_APPROVE_AT", "0.9")
    monkeypatch.setenv("PROFILE_REJECT_BELOW", "0.05")
    rule = profile_rule.rule_for(engine)
    assert (rule.approve_at, rule.reject_below) == (0.9, 0.05)
    # Looser than the version: the version's own points stand.
    monkeypatch.setenv("PROFILE_APPROVE_AT", "0.3")
    monkeypatch.setenv("PROFILE_REJECT_BELOW", "0.001")
    rule = profile_rule.rule_for(engine)
    assert (rule.approve_at, rule.reject_below) == (0.6, 0.02)
    # 0: the version's own approve point; a reject point never reaches the version's approve point.
    monkeypatch.setenv("PROFILE_APPROVE_AT", "0")
    monkeypatch.setenv("PROFILE_REJECT_BELOW", "0.7")
    rule = profile_rule.rule_for(engine)
    assert (rule.approve_at, rule.reject_below) == (0.6, 0.6)
    # Given values (the benchmark's comparisons) win over the settings, still capped.
    rule = profile_rule.rule_for(engine, approve_at=0.95, reject_below=0.03)
    assert (rule.approve_at, rule.reject_below) == (0.95, 0.03)


def test_a_stored_results_approval_point_follows_the_setting(monkeypatch):
    engine = engine_with(0.02, 0.6, version="v-now")
    assert profile_rule.approval_point(engine, "v-now", 0.99) == 0.85
    assert profile_rule.approval_point(engine, "v-older", 0.7) == 0.85
    assert profile_rule.approval_point(engine, "v-older", 0.95) == 0.95
    monkeypatch.setenv("PROFILE_APPROVE_AT", "0.9")
    assert profile_rule.approval_point(None, "v-older", 0.7) == 0.9


@pytest.mark.parametrize("name", ["PROFILE_APPROVE_AT", "PROFILE_REJECT_BELOW"])
def test_a_threshold_outside_0_to_1_names_the_setting(monkeypatch, name):
    monkeypatch.setenv(name, "1.5")
    with pytest.raises(config.SettingError, match=name):
        profile_rule.rule_for(engine_with(0.02, 0.6))
