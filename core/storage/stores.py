"""Which photo store the settings name: the folder store (core.storage.photostore) or an
S3-compatible bucket (core.storage.s3store). Both implement PhotoStoreBackend; callers open the
configured one here, so neither backend module needs to know the other."""

from __future__ import annotations

import re
from pathlib import Path

from core import config
from core.storage.photostore import PhotoStore, PhotoStoreBackend
from core.storage.s3store import S3PhotoStore


def photo_store_url() -> str:
    """PHOTO_STORE_URL, else PHOTO_STORE_DIR, else the embedded folder under data/runtime."""
    return config.setting("PHOTO_STORE_URL") or str(config.photo_store_dir())


def open_photo_store(url: str | Path | None = None, *, fsync: bool = True) -> PhotoStoreBackend:
    """The store a URL names: s3://BUCKET/PREFIX, file:///path or a plain folder path."""
    url = str(url) if url is not None else photo_store_url()
    if url.startswith("s3://"):
        return S3PhotoStore.from_url(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]+://", url):
        raise ValueError(f"PHOTO_STORE_URL {url!r}: use a folder path or s3://BUCKET/PREFIX")
    return PhotoStore(url, fsync=fsync)
