"""Photos stored once per content hash: <store>/ab/cd/<sha256>.<ext>.

The database keeps only the hash and the relative path. Writing is atomic (temporary file, then
rename) and idempotent (same bytes, same file), so a crash never leaves a half-written photo under
its final name, and two imports of the same photo share one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core import config
from core.errors import FaceVerifyError

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT_RE = re.compile(r"^[a-z0-9]{1,8}$")


class PhotoNotFound(FaceVerifyError):
    code = "photo_not_found"


@dataclass(frozen=True)
class StoredPhoto:
    sha256: str
    relative_path: str  # with forward slashes, relative to the store root
    size_bytes: int
    created: bool  # False when the file was already there


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PhotoStore:
    def __init__(self, root: str | Path | None = None, *, fsync: bool = True):
        self.root = Path(root) if root is not None else config.photo_store_dir()
        self.fsync = fsync

    def relative_path(self, sha256: str, ext: str) -> str:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        ext = ext.lower().lstrip(".") or "bin"
        if not _EXT_RE.match(ext):
            raise ValueError(f"unusable file extension: {ext!r}")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"

    def put(self, data: bytes, ext: str = "jpg") -> StoredPhoto:
        sha = sha256_hex(data)
        rel = self.relative_path(sha, ext)
        final = self.root / rel
        if final.exists() and final.stat().st_size == len(data):
            return StoredPhoto(sha, rel, len(data), created=False)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            # os.replace is atomic; a concurrent writer of the same bytes just wins the same name.
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredPhoto(sha, rel, len(data), created=True)

    def path_for(self, sha256: str) -> Path:
        """The stored file for a hash, whatever its extension."""
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        folder = self.root / sha256[:2] / sha256[2:4]
        for candidate in sorted(folder.glob(f"{sha256}.*")):
            return candidate
        raise PhotoNotFound(f"Photo {sha256[:12]}… is not in the photo store at {self.root}.")

    def get(self, sha256: str, *, verify: bool = False) -> bytes:
        data = self.path_for(sha256).read_bytes()
        if verify and sha256_hex(data) != sha256:
            raise PhotoNotFound(f"Photo {sha256[:12]}… in the photo store is damaged (hash differs).")
        return data

    def read(self, relative_path: str) -> bytes:
        """Read by the path the database stored (never outside the store root)."""
        path = (self.root / relative_path).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise PhotoNotFound(f"Stored path {relative_path!r} points outside the photo store.")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise PhotoNotFound(
                f"Photo file {relative_path} is missing from the photo store at {self.root}."
            ) from None

    def exists(self, sha256: str) -> bool:
        try:
            self.path_for(sha256)
            return True
        except PhotoNotFound:
            return False
