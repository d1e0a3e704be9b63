"""The product's profile rule: core.verification.profile.ProfileRule with its thresholds from the
settings, capped by the model version's own operating points.

    approve_at_setting() / reject_below_setting()   PROFILE_APPROVE_AT / PROFILE_REJECT_BELOW
    corroborate_setting()                           PROFILE_CORROBORATE_FROM (a number, or off)
    rule_for(engine, approve_at=None, reject_below=None) -> ProfileRule
        a photo matches at the setting's similarity, or at the version's approve point if stricter;
        it is a confident non-match below the setting's, or below the version's reject point if
        higher, and never from the version's approve point up
    approval_point(engine, model_version, band_high) -> float
        the approval point of the rule for the version that computed a stored result

Every verification, photo added later and benchmark of a profile uses this rule (the library's
ProfileRule.of keeps the measured defaults for callers without settings).
"""

from __future__ import annotations

from core import config
from core.verification.profile import ProfileRule

APPROVE_SETTING = "PROFILE_APPROVE_AT"
REJECT_SETTING = "PROFILE_REJECT_BELOW"
CORROBORATE_SETTING = "PROFILE_CORROBORATE_FROM"
SETTING = object()  # rule_for's corroborate_from: the setting's


def _fraction(name: str, value: float | None = None) -> float:
    value = config.get(name) if value is None else value
    if not 0.0 <= float(value) <= 1.0:
        raise config.SettingError(f"{name} must be a similarity between 0 and 1, not {value!r}.")
    return float(value)


def approve_at_setting() -> float:
    """PROFILE_APPROVE_AT (default 0.85; 0 leaves the version's own approve point)."""
    return _fraction(APPROVE_SETTING)


def reject_below_setting() -> float:
    """PROFILE_REJECT_BELOW (default 0.0125)."""
    return _fraction(REJECT_SETTING)


def corroborate_setting() -> float | None:
    """PROFILE_CORROBORATE_FROM: a similarity, or None (off)."""
    raw = str(config.get(CORROBORATE_SETTING) or "off").strip().lower()
    if raw in ("off", "none", ""):
        return None
    try:
        return _fraction(CORROBORATE_SETTING, float(raw))
    except ValueError:
        raise config.SettingError(
            f"{CORROBORATE_SETTING} must be a similarity or off, not {raw!r}."
        ) from None


def rule_for(
    engine,
    approve_at: float | None = None,
    reject_below: float | None = None,
    corroborate_from=SETTING,
) -> ProfileRule:
    """The rule on this engine's operating points. approve_at / reject_below / corroborate_from:
    the settings' unless given (the benchmark compares others; corroborate_from None: off); the
    two points capped by the version's either way."""
    points = engine.model.operating_points
    floor = _fraction(APPROVE_SETTING, approve_at)
    reject = max(points.reject_below, _fraction(REJECT_SETTING, reject_below))
    corroborate = corroborate_setting() if corroborate_from is SETTING else corroborate_from
    return ProfileRule(max(points.approve_at, floor), min(reject, points.approve_at), corroborate)


def approval_point(engine, model_version: str, band_high: float) -> float:
    """The rule's approval point for the version that computed a result: the engine's rule when it
    is that version, else the result's own approve point (band_high) or the setting if stricter."""
    if engine is not None and getattr(engine, "model_version", None) == model_version:
        return rule_for(engine).approve_at
    return max(band_high, approve_at_setting())
