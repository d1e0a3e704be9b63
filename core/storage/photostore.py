"""Photos stored once per content hash: <store>/ab/cd/<sha256>.<ext>, in a folder or a bucket.

The database keeps only the hash and the relative path, which is the same in every backend.
open_photo_store() picks the backend from one setting, PHOTO_STORE_URL: a folder path (the
embedded default, data/runtime/photos; PHOTO_STORE_DIR is still read) or s3://BUCKET/PREFIX for an
S3-compatible object store (core.storage.s3store). Both implement the same interface:

    put(data, ext) -> StoredPhoto      once per hash; atomic; created=False when already there
    get(sha256, verify=False) -> bytes
    read(relative_path) -> bytes       by the path the database stored, never outside the store
    exists(sha256) -> bool
    delete(sha256) -> int              files removed (erasure)
    iterate() -> Iterator[StoredEntry] every stored photo
    url                                where it is, as PHOTO_STORE_URL would name it
    read_raw(relative_path) / write_raw(relative_path, blob)   the bytes as stored (key rotation)
    keys                               encryption at rest (core.storage.encryption): with
                                       PHOTO_ENCRYPTION_KEY set, put() seals and get()/read() open;
                                       the hash and the path are always those of the plain photo

Writing to a folder is atomic (temporary file, then rename) and idempotent (same bytes, same
file), so a crash never leaves a half-written photo under its final name, and two imports of the
same photo share one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core import config
from core.errors import FaceVerifyError
from core.storage import encryption
from core.storage.encryption import KeyRing

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")
_CONTENT_PATH_RE = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,8})$")


class PhotoNotFound(FaceVerifyError):
    code = "photo_not_found"


class PhotoStoreUnavailable(FaceVerifyError, OSError):
    """The store cannot be reached or refuses us (an OSError, as a full disk is for the folder)."""

    code = "photo_store_unavailable"


@dataclass(frozen=True)
class StoredPhoto:
    sha256: str
    relative_path: str  # with forward slashes, relative to the store root
    size_bytes: int
    created: bool  # False when the file was already there


@dataclass(frozen=True)
class StoredEntry:
    sha256: str
    relative_path: str
    size_bytes: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_path(sha256: str, ext: str) -> str:
    """ab/cd/<sha256>.<ext>, the relative path of a photo in every backend."""
    if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    ext = ext.lower().lstrip(".") or "bin"
    if not _EXT_RE.match(ext):
        raise ValueError(f"unusable file extension: {ext!r}")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


def parse_content_path(relative_path: str) -> str | None:
    """The hash of a well-formed relative path (its folders matching the hash), else None."""
    match = _CONTENT_PATH_RE.match(relative_path or "")
    if not match or match[3][:2] != match[1] or match[3][2:4] != match[2]:
        return None
    return match[3]


class PhotoStoreBackend(Protocol):
    url: str
    keys: KeyRing

    def put(self, data: bytes, ext: str = "jpg") -> StoredPhoto: ...
    def get(self, sha256: str, *, verify: bool = False) -> bytes: ...
    def read(self, relative_path: str) -> bytes: ...
    def exists(self, sha256: str) -> bool: ...
    def delete(self, sha256: str) -> int: ...
    def iterate(self) -> Iterator[StoredEntry]: ...
    def read_raw(self, relative_path: str) -> bytes: ...
    def write_raw(self, relative_path: str, blob: bytes) -> None: ...


class Sealing:
    """Encryption at rest, the same for every backend: sealed on the way in, opened on the way out.

    keys: a core.storage.encryption.KeyRing; by default from the settings (no key: plain files,
    as before; a sealed file then fails with a clear PhotoKeyError rather than as a bad image).
    """

    keys: KeyRing

    def _init_keys(self, keys: KeyRing | None) -> None:
        self.keys = keys if keys is not None else KeyRing.from_settings()

    def _seal(self, data: bytes, sha256: str) -> bytes:
        if self.keys.current is None:
            return data
        return encryption.seal(data, sha256, self.keys.current)

    def _open(self, blob: bytes, sha256: str) -> bytes:
        return encryption.unseal(blob, sha256, self.keys)

    @staticmethod
    def _already_stored(size: int | None, plain_size: int) -> bool:
        """A stored object of this size is this photo (plain, or sealed under some key)."""
        return size in (plain_size, plain_size + encryption.OVERHEAD)


class PhotoStore(Sealing):
    """The folder backend."""

    def __init__(self, root: str | Path | None = None, *, fsync: bool = True, keys: KeyRing | None = None):
        self.root = Path(root) if root is not None else config.photo_store_dir()
        self.fsync = fsync
        self._init_keys(keys)

    @property
    def url(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"PhotoStore({str(self.root)!r})"

    def relative_path(self, sha256: str, ext: str) -> str:
        return content_path(sha256, ext)

    def put(self, data: bytes, ext: str = "jpg") -> StoredPhoto:
        sha = sha256_hex(data)
        rel = self.relative_path(sha, ext)
        final = self.root / rel
        if final.exists() and self._already_stored(final.stat().st_size, len(data)):
            return StoredPhoto(sha, rel, len(data), created=False)
        self._write(final, self._seal(data, sha))
        return StoredPhoto(sha, rel, len(data), created=True)

    def _write(self, final: Path, blob: bytes) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            # os.replace is atomic; a concurrent writer of the same bytes just wins the same name.
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _files_for(self, sha256: str) -> list[Path]:
        if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        folder = self.root / sha256[:2] / sha256[2:4]
        return sorted(folder.glob(f"{sha256}.*"))

    def path_for(self, sha256: str) -> Path:
        """The stored file for a hash, whatever its extension."""
        for candidate in self._files_for(sha256):
            return candidate
        raise PhotoNotFound(f"Photo {sha256[:12]}… is not in the photo store at {self.root}.")

    def get(self, sha256: str, *, verify: bool = False) -> bytes:
        data = self._open(self.path_for(sha256).read_bytes(), sha256)
        if verify and sha256_hex(data) != sha256:
            raise PhotoNotFound(f"Photo {sha256[:12]}… in the photo store is damaged (hash differs).")
        return data

    def read(self, relative_path: str) -> bytes:
        """Read by the path the database stored (never outside the store root)."""
        return self._open(self.read_raw(relative_path), Path(relative_path).name.split(".")[0])

    def _inside(self, relative_path: str) -> Path:
        path = (self.root / relative_path).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise PhotoNotFound(f"Stored path {relative_path!r} points outside the photo store.")
        return path

    def read_raw(self, relative_path: str) -> bytes:
        """The file as stored (sealed when encrypted)."""
        try:
            return self._inside(relative_path).read_bytes()
        except FileNotFoundError:
            raise PhotoNotFound(
                f"Photo file {relative_path} is missing from the photo store at {self.root}."
            ) from None

    def write_raw(self, relative_path: str, blob: bytes) -> None:
        """Replace a stored file atomically (key rotation); only content-addressed paths."""
        if parse_content_path(relative_path) is None:
            raise PhotoNotFound(f"Stored path {relative_path!r} is not a photo path of the store.")
        self._write(self._inside(relative_path), blob)

    def exists(self, sha256: str) -> bool:
        return bool(self._files_for(sha256))

    def delete(self, sha256: str) -> int:
        """Remove every stored file of this hash; the number removed (0 when there was none)."""
        removed = 0
        for path in self._files_for(sha256):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def iterate(self) -> Iterator[StoredEntry]:
        """Every stored photo (hash, relative path, size) in path order; temporary files skipped."""
        if not self.root.is_dir():
            return
        for first in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for second in sorted(p for p in first.iterdir() if p.is_dir()):
                for path in sorted(second.iterdir()):
                    rel = f"{first.name}/{second.name}/{path.name}"
                    sha = parse_content_path(rel)
                    if sha is not None and path.is_file():
                        yield StoredEntry(sha, rel, path.stat().st_size)
