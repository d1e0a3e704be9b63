"""Encryption at rest: rewriting every photo of a store under the current key.

rotate_store(store, dry_run=False) -> RotationReport     what `faceverify store rotate-key` runs
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import FaceVerifyError
from core.storage import encryption
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend, sha256_hex


@dataclass
class RotationReport:
    rewritten: int = 0
    unchanged: int = 0  # already under the current key (or plain, with encryption off)
    failed: list[str] = field(default_factory=list)  # "sha…: reason"


def rotate_store(store: PhotoStoreBackend, *, dry_run: bool = False) -> RotationReport:
    """Rewrite every photo under the current key (PHOTO_ENCRYPTION_KEY), or plain when none is set.

    Old keys (PHOTO_ENCRYPTION_OLD_KEYS) open what they sealed. One photo at a time, each an atomic
    replace (a rename on disk, one PUT on S3): interrupted, every photo still opens with the keys
    configured; run again, it continues. A photo that does not open is reported and left alone.
    """
    report = RotationReport()
    current = store.keys.current
    for entry in store.iterate():
        try:
            blob = store.read_raw(entry.relative_path)
            if encryption.sealed_key_id(blob) == (current.key_id if current else None):
                report.unchanged += 1
                continue
            plain = encryption.unseal(blob, entry.sha256, store.keys)
            if sha256_hex(plain) != entry.sha256:
                raise PhotoNotFound("the plain photo does not match its hash (damaged)")
            if not dry_run:
                sealed = plain if current is None else encryption.seal(plain, entry.sha256, current)
                store.write_raw(entry.relative_path, sealed)
            report.rewritten += 1
        except (FaceVerifyError, OSError) as exc:
            report.failed.append(f"{entry.sha256[:12]}…: {exc}")
    return report
