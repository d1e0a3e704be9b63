"""Settings read from one place: environment variables, else .streamlit/secrets.toml, else defaults.

DATABASE_URL     SQLAlchemy URL, e.g. mysql+pymysql://user:pass@host/db (default: SQLite under data/runtime)
PHOTO_STORE_URL  where photos are stored by content hash: a folder path, or s3://BUCKET/PREFIX for an
                 S3-compatible object store (core.storage.s3store); default: PHOTO_STORE_DIR
PHOTO_STORE_DIR  the folder form of the same (default: data/runtime/photos)
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
                 boto3's own settings for an s3:// store (also read from secrets.toml)
MODELS_DIR       versioned model artifacts (default: models/)
CACHE_DIR        derived caches such as the converted pretrained weights (default: data/cache)
DISPLAY_TIMEZONE the IANA time zone every page, table and chart shows times and days in, with
                 its abbreviation (default: Asia/Seoul, shown as KST); the database keeps UTC
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
SAMPLE_DIR = DATA_DIR / "sample"
RUNTIME_DIR = DATA_DIR / "runtime"
# The developers' LFW development set beside the checkout (LFW_DEV_DIR names another).
SHARED_LFW_DEV_DIR = PROJECT_ROOT.parent / "shared" / "data" / "lfw_dev"
DEFAULT_DISPLAY_TIMEZONE = "Asia/Seoul"  # the staff work in Korea: days and times shown (and grouped) in KST


@lru_cache(maxsize=1)
def _secrets() -> dict:
    path = PROJECT_ROOT / ".streamlit" / "secrets.toml"
    if not path.exists():
        return {}
    with path.open("rb") as f:
        return tomllib.load(f)


def setting(name: str, default: str | None = None) -> str | None:
    """Environment first (so CI and services can override), then secrets.toml, then the default."""
    value = os.environ.get(name)
    if value:
        return value
    value = _secrets().get(name)
    if value:
        return str(value)
    return default


def database_url() -> str:
    return setting("DATABASE_URL") or f"sqlite:///{RUNTIME_DIR / 'faceverify.sqlite3'}"


def photo_store_dir() -> Path:
    return Path(setting("PHOTO_STORE_DIR") or RUNTIME_DIR / "photos")


def models_dir() -> Path:
    return Path(setting("MODELS_DIR") or PROJECT_ROOT / "models")


def cache_dir() -> Path:
    return Path(setting("CACHE_DIR") or DATA_DIR / "cache")


def display_timezone() -> str:
    """DISPLAY_TIMEZONE, checked: an IANA name such as Asia/Seoul (ValueError naming the setting)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = (setting("DISPLAY_TIMEZONE") or DEFAULT_DISPLAY_TIMEZONE).strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"DISPLAY_TIMEZONE {name!r} is not a time zone; use an IANA name such as Asia/Seoul or Europe/Berlin."
        ) from None
    return name


# Read once at start: days are grouped and times shown in it everywhere (a restart applies a change).
DISPLAY_TZ = display_timezone()
