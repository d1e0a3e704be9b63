"""Settings: every one declared once in SETTINGS with its type, default and meaning.

A setting is read from the environment first (so CI and services can override), else from
.streamlit/secrets.toml, else its default:

    get(NAME)            the typed value (int, float, bool, Path or text), parsed once per value
    setting(NAME)        the raw text, for settings with a grammar of their own (lists, keys, "off")
    SETTINGS             the declarations; docs/operations.md's settings table is checked against
                         them (tests/unit/test_settings.py)

Reading an undeclared name is a programming error (KeyError), so a new setting cannot go
undocumented.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
SAMPLE_DIR = DATA_DIR / "sample"
RUNTIME_DIR = DATA_DIR / "runtime"
# The developers' LFW development set beside the checkout (LFW_DEV_DIR names another).
SHARED_LFW_DEV_DIR = PROJECT_ROOT.parent / "shared" / "data" / "lfw_dev"


@lru_cache(maxsize=1)
def _secrets() -> dict:
    path = PROJECT_ROOT / ".streamlit" / "secrets.toml"
    if not path.exists():
        return {}
    with path.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int, float, bool or Path
    default: Any  # None: unset (the reader decides what that means, as `meaning` says)
    meaning: str
    secret: bool = False  # never shown in full


def _setting(name, kind, default, meaning, secret=False) -> Setting:
    return Setting(name, kind, default, meaning, secret)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # Where things are
    _setting("DATABASE_URL", str, None, "SQLAlchemy URL of the database; unset: SQLite in data/runtime", secret=True),
    _setting("PHOTO_STORE_URL", str, None, "where photos are stored: a folder, or s3://BUCKET/PREFIX; unset: PHOTO_STORE_DIR"),
    _setting("PHOTO_STORE_DIR", Path, RUNTIME_DIR / "photos", "the folder form of the photo store"),
    _setting("MODELS_DIR", Path, PROJECT_ROOT / "models", "model versions"),
    _setting("CACHE_DIR", Path, DATA_DIR / "cache", "the networks compiled for TensorFlow Lite"),
    _setting("TRAINING_SETS_DIR", Path, RUNTIME_DIR / "training_sets", "where training sets uploaded on the Retrain page are unpacked"),
    _setting("LFW_DEV_DIR", Path, None, "the development set the Retrain page and benchmarks offer; unset: ../shared/data/lfw_dev"),
    # S3-compatible photo store (boto3's own names)
    _setting("AWS_ENDPOINT_URL_S3", str, None, "the S3 endpoint of a self-hosted store (AWS_ENDPOINT_URL also read)"),
    _setting("AWS_ENDPOINT_URL", str, None, "boto3's general endpoint, used when AWS_ENDPOINT_URL_S3 is unset"),
    _setting("AWS_ACCESS_KEY_ID", str, None, "S3 access key (boto3's credential chain when unset)", secret=True),
    _setting("AWS_SECRET_ACCESS_KEY", str, None, "S3 secret key", secret=True),
    _setting("AWS_SESSION_TOKEN", str, None, "S3 session token", secret=True),
    _setting("AWS_REGION", str, None, "S3 region (AWS_DEFAULT_REGION also read; us-east-1 with an endpoint)"),
    _setting("AWS_DEFAULT_REGION", str, None, "boto3's region, used when AWS_REGION is unset"),
    _setting("PHOTO_ENCRYPTION_KEY", str, None, "URL-safe base64 of 32 bytes: photos encrypted at rest (AES-256-GCM); unset: off", secret=True),
    _setting("PHOTO_ENCRYPTION_OLD_KEYS", str, None, "comma-separated older keys, still read, for rotation", secret=True),
    # Jobs
    _setting("JOB_BROKER_URL", str, None, "redis:// or amqp(s):// URL of the job queue; unset: work runs in the calling process", secret=True),
    _setting("JOB_HEARTBEAT_TIMEOUT_MS", int, 30_000, "Redis: after this silence a dead worker's message goes to another"),
    _setting("JOB_MAINTENANCE_CHANCE", int, 100_000, "Redis: broker commands in a million that also clean up after dead workers"),
    _setting("JOB_STALE_S", float, 60.0, "a batch silent this long is taken over by another worker (seconds)"),
    _setting("RETENTION_EVERY_HOURS", str, "24", "hours between retention runs by queue workers, or off"),
    # HTTP API
    _setting("MODEL_POLL_S", float, 2.0, "how often each API process checks the registry for a promotion (seconds)"),
    _setting("API_MAX_IN_FLIGHT", int, 8, "photo requests one API process serves at once; the next gets 503"),
    _setting("API_ADMISSION_MB", float, 64.0, "request bodies the admission gate lets in at once (MB, weighted by the copies each makes)"),
    _setting("API_MAX_BODY_BYTES", int, 30 * 1024 * 1024, "the API's request body limit (bytes)"),
    _setting("API_DECODE_MEMORY_MB", float, 112.0, "decoder budget of an API process (MB); DECODE_MEMORY_MB wins when set"),
    _setting("API_DOCS", bool, True, "serve /openapi.json, /docs and /redoc (without a key: they hold no data)"),
    _setting("TRUSTED_PROXIES", str, "", "comma-separated proxy addresses or networks whose X-Forwarded-For / X-Real-IP is believed (API and sign-in)"),
    _setting("DECODE_MEMORY_MB", float, None, "decoder memory shared by all photos being decoded in one process (MB); unset: 320, or the API's budget"),
    # Dashboard
    _setting("SESSION_IDLE_MINUTES", float, 30.0, "dashboard sign-in ends after this long without activity (minutes)"),
    _setting("SESSION_HOURS", float, 12.0, "a dashboard sign-in (kept across reloads by a cookie) ends this long after it began (hours)"),
    _setting("FACEVERIFY_WARM_ENGINE", bool, True, "load the models as soon as Home is drawn (off: at the first verification)"),
    _setting("FACEVERIFY_ADMIN_PASSWORD", str, None, "the password `users create-admin` uses instead of asking (scripts)", secret=True),
    _setting("DISPLAY_TIMEZONE", str, "Asia/Seoul", "IANA time zone every page, table and chart shows times and days in, with its abbreviation (the database keeps UTC; a restart applies a change)"),
    # Checks and fraud
    _setting("DUPLICATE_THRESHOLD", str, None, "similarity in (0, 1) at which another member's face is a possible duplicate; unset: from the model version"),
    _setting("STALE_PHOTO_DAYS", str, "30", "a verification photo taken longer ago (EXIF) is flagged stale_photo (days)"),
    _setting("PHOTO_LINK_ALLOW", str, None, "comma-separated private hosts, host:port, addresses or networks an imported photo link may reach"),
    _setting("CHALLENGE_MINUTES", str, "3", "how long a pose challenge stays valid (minutes)"),
    _setting("CHALLENGES_PER_MEMBER_PER_HOUR", str, "5", "pose challenges issued for one member in an hour at most"),
    _setting("CHALLENGES_PER_CALLER_PER_HOUR", str, "300", "pose challenges one API key or user issues in an hour at most"),
    _setting("CHALLENGE_REQUIRED_API", bool, True, "an API verification is approved automatically only with a passed pose challenge"),
    _setting("CHALLENGE_REQUIRED_PAGE", bool, False, "the same for the Verify page"),
    _setting("PROFILE_MAX_PHOTOS", int, 9, "photos a member's profile holds at most"),
    _setting("PROFILE_APPROVE_AT", float, 0.85, "similarity from which a profile photo is the member (the model version's approval point if stricter; 0: the version's own)"),
    _setting("PROFILE_CORROBORATE_FROM", str, "0.3", "a profile photo between the two points is the member when its face is at least this similar to the selfie and matches a photo that matches (at the approve point); off: a person decides"),
    _setting("PROFILE_REJECT_BELOW", float, 0.0125, "best similarity below which a profile photo is a confident non-match (the version's reject point if higher; never above its approval point)"),
    # Privacy
    _setting("RETENTION_VERIFICATION_PHOTO_DAYS", str, "90", "days after the decision that selfies and their embeddings are kept, or off"),
    _setting("RETENTION_REJECTED_MEMBER_DAYS", str, "30", "days a rejected member's photos and embeddings are kept, or off"),
    _setting("RETENTION_EMBEDDING_DAYS", str, "90", "days embeddings of photos no longer current are kept, or off"),
    # Self-measurement on the members' own pairs
    _setting("SELF_MEASURE_EVERY_HOURS", str, "24", "hours between scheduled measurements of the active version by queue workers, or off"),
    _setting("SELF_MEASURE_FMR_TARGET", float, 0.001, "the false-match rate its 95% upper bound must stay under"),
    _setting("SELF_MEASURE_FLOOR", float, 0.1, "similarity below which neighbours are not kept (at most half of approve_at)"),
    _setting("SELF_MEASURE_PAIRS_KEPT", int, 2000, "pairs at or above approve_at kept for review per run (counts cover every pair)"),
    _setting("SELF_MEASURE_BLOCK_ROWS", int, 2048, "photos per block of the measurement (memory ~ rows x 2048 x 5 bytes per core)"),
    _setting("SELF_MEASURE_PHOTOS", str, "all", "all (gallery and verification photos) or gallery (a quarter of the pairs)"),
    _setting("SELF_MEASURE_AFTER_PROMOTION", bool, True, "measure a version as soon as it is promoted"),
    _setting("PRIVACY_EXPORT_MAX_MB", float, 2048.0, "the largest member export (MB); a larger one is refused with a message, no file left"),
    # Audit log
    _setting("AUDIT_KEY", str, None, "the audit chain's HMAC key (32+ characters); unset: AUDIT_KEY_FILE", secret=True),
    _setting("AUDIT_KEY_FILE", Path, RUNTIME_DIR / "audit.key", "file holding the audit key, generated (0600) when missing"),
    _setting("AUDIT_HEAD_FILE", Path, None, "where the chain's head is exported; unset: no automatic export"),
    _setting("AUDIT_HEAD_EVERY_S", float, 60.0, "seconds between automatic head exports at least"),
)
# fmt: on
_DECLARED = {s.name: s for s in SETTINGS}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class SettingError(ValueError):
    """A setting's value cannot be read as its type."""


def declared(name: str) -> Setting:
    try:
        return _DECLARED[name]
    except KeyError:
        raise KeyError(f"{name} is not a declared setting: add it to core.config.SETTINGS") from None


def setting(name: str, default: str | None = None) -> str | None:
    """The raw text: environment first (so CI and services can override), then secrets.toml, then
    `default`. The name must be declared."""
    declared(name)
    value = os.environ.get(name)
    if value:
        return value
    value = _secrets().get(name)
    if value:
        return str(value)
    return default


@lru_cache(maxsize=256)
def _parse(name: str, raw: str) -> Any:
    kind = _DECLARED[name].type
    text = raw.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind is Path:
            return Path(text)
        return kind(text)
    except ValueError:
        want = {bool: "on or off", int: "a whole number", float: "a number"}.get(kind, kind.__name__)
        raise SettingError(f"The setting {name} must be {want}, not {raw!r}.") from None


def get(name: str) -> Any:
    """The typed value of a declared setting, or its default when unset."""
    raw = setting(name)
    return declared(name).default if raw is None else _parse(name, raw)


def database_url() -> str:
    return setting("DATABASE_URL") or f"sqlite:///{RUNTIME_DIR / 'faceverify.sqlite3'}"


def photo_store_dir() -> Path:
    return get("PHOTO_STORE_DIR")


def models_dir() -> Path:
    return get("MODELS_DIR")


def cache_dir() -> Path:
    return get("CACHE_DIR")


def display_timezone() -> str:
    """DISPLAY_TIMEZONE, checked: an IANA name such as Asia/Seoul (ValueError naming the setting)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = get("DISPLAY_TIMEZONE").strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"DISPLAY_TIMEZONE {name!r} is not a time zone; use an IANA name such as Asia/Seoul or Europe/Berlin."
        ) from None
    return name


def _default_text(item: Setting) -> str:
    if item.default is None:
        return "unset"
    if isinstance(item.default, Path):
        try:
            return f"`{item.default.relative_to(PROJECT_ROOT)}`"
        except ValueError:
            return f"`{item.default}`"
    if isinstance(item.default, bool):
        return "on" if item.default else "off"
    return f"`{item.default}`"


def settings_table() -> str:
    """Every setting as a Markdown table (docs/operations.md holds this very text)."""
    kinds = {str: "text", int: "integer", float: "number", bool: "on/off", Path: "path"}
    rows = ["| setting | type | default | meaning |", "| --- | --- | --- | --- |"]
    for item in SETTINGS:
        rows.append(f"| `{item.name}` | {kinds[item.type]} | {_default_text(item)} | {item.meaning} |")
    return "\n".join(rows) + "\n"


def shown_value(item: Setting) -> str:
    """The setting's value in force, with secrets masked, for `faceverify settings`."""
    raw = setting(item.name)
    if raw is None:
        return f"{_default_text(item).strip('`')} (default)"
    return "****" if item.secret else raw


# Read once at start: days are grouped and times shown in it everywhere (a restart applies a change).
DISPLAY_TZ = display_timezone()
