"""Self-measurement settings, constants, audit actions and errors."""

from __future__ import annotations

from datetime import timedelta

from core import config
from core.errors import FaceVerifyError
from core.storage.schema import GALLERY, VERIFICATION

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"
GENDERS = ("F", "M")
CONFIDENCE = 0.95
DEFAULT_EVERY_HOURS = 24.0
DEFAULT_FMR_TARGET = 0.001
DEFAULT_FLOOR = 0.1
DEFAULT_PAIRS_KEPT = 2000
DEFAULT_BLOCK_ROWS = 2048
# Columns per matrix product: block x chunk float32 scores at a time. 2048 keeps a 2048-row block's
# scores (16 MB) near the cache, so the threshold pass after the product reads them fast.
COLUMN_CHUNK = 2048
MAX_SCAN_THREADS = 8  # blocks scanned at once at most (one per core)
LOAD_CHUNK = 20000  # photos per database fetch
HISTOGRAM_BINS = 4000  # distance bins from 0 to the floor's distance (the re-fit reads them)
STALE_AFTER = timedelta(minutes=5)  # a running measurement silent this long is taken over
# The tail of the score distribution: pairs at or above each similarity (plus approve_at itself).
TAIL_THRESHOLDS = (0.1, 0.3, 0.5, 0.9, 0.99, 0.999)
# Age bands by age in the year measured; a pair belongs to a band when both members are in it.
AGE_BANDS = ((0, 40, "under 40"), (40, 50, "40s"), (50, 60, "50s"), (60, 70, "60s"), (70, 200, "70+"))
EXACT_CHUNK = 8192  # pairs rescored in float64 at a time
EXACT_MARGIN = 1e-3  # squared-distance slack: pairs this close to a cut are rescored in float64

# Audit actions
REFIT = "refit_approve_at"
PAIR_VERDICT = "member_pair_verdict"
SELF_MEASURE = "self_measure"


class SelfMeasurementError(FaceVerifyError):
    code = "self_measurement_error"


class MeasurementRunning(SelfMeasurementError):
    """Another worker is measuring the same model version today and is alive."""

    code = "self_measurement_running"


# ----------------------------------------------------------------------------------------------
# Settings


def _float_setting(name: str, default: float) -> float:
    raw = config.setting(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SelfMeasurementError(f"{name} must be a number, not {raw!r}.") from None


def schedule_interval_s() -> float | None:
    """SELF_MEASURE_EVERY_HOURS (default 24; 'off': never scheduled, still run after a promotion)."""
    raw = (config.setting("SELF_MEASURE_EVERY_HOURS") or str(DEFAULT_EVERY_HOURS)).strip().lower()
    if raw in ("off", "never", "0"):
        return None
    hours = float(raw)
    if hours <= 0:
        raise SelfMeasurementError(f"SELF_MEASURE_EVERY_HOURS must be positive or 'off', not {raw!r}.")
    return hours * 3600.0


def photo_kinds() -> tuple[str, ...]:
    """SELF_MEASURE_PHOTOS: "all" (gallery and verification photos, the default) or "gallery"
    (one photo per member: a quarter of the pairs, for a million members on two cores)."""
    raw = (config.setting("SELF_MEASURE_PHOTOS") or "all").strip().lower()
    if raw == "all":
        return (GALLERY, VERIFICATION)
    if raw == GALLERY:
        return (GALLERY,)
    raise SelfMeasurementError(f"SELF_MEASURE_PHOTOS must be 'all' or 'gallery', not {raw!r}.")


def fmr_target() -> float:
    value = _float_setting("SELF_MEASURE_FMR_TARGET", DEFAULT_FMR_TARGET)
    if not 0.0 < value < 1.0:
        raise SelfMeasurementError(f"SELF_MEASURE_FMR_TARGET must be between 0 and 1, not {value}.")
    return value


def similarity_floor(approve_at: float) -> float:
    value = _float_setting("SELF_MEASURE_FLOOR", DEFAULT_FLOOR)
    if not 0.0 < value < 1.0:
        raise SelfMeasurementError(f"SELF_MEASURE_FLOOR must be between 0 and 1, not {value}.")
    return min(value, approve_at / 2)  # always well below the approve point
