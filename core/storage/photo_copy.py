"""Copy a photo store into another one (a folder into a bucket, or back), resumable, checked by hash.

    faceverify store copy --from data/runtime/photos --to s3://faceverify-photos/photos
    faceverify store copy --from s3://faceverify-photos/photos --to /srv/photos-restore

The relative paths the database keeps are the same in every backend, so after the copy pointing
PHOTO_STORE_URL at the destination is all the switch takes. Each photo is read from the source,
its hash checked against its name, written, read back from the destination and checked again.
Photos already in the destination with the right size are skipped, so a copy that stopped (a
network failure, Ctrl-C) resumes where it was when run again; --verify-existing re-reads and
re-hashes those too and replaces any that are damaged. The source is never changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from core.storage.photostore import (
    PhotoNotFound,
    PhotoStoreBackend,
    StoredEntry,
    sha256_hex,
)

COPIED, SKIPPED, REPLACED, DAMAGED_SOURCE, FAILED = (
    "copied",
    "skipped",
    "replaced",
    "damaged_source",
    "failed",
)


@dataclass
class CopyReport:
    source: str
    destination: str
    seen: int = 0
    copied: int = 0
    skipped: int = 0  # already in the destination
    replaced: int = 0  # in the destination but damaged, written again (--verify-existing)
    damaged_source: list[str] = field(default_factory=list)  # not copied: bytes differ from the hash
    failed: dict[str, str] = field(default_factory=dict)  # relative path -> why
    bytes_copied: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.damaged_source


def _copy_one(
    source: PhotoStoreBackend, destination: PhotoStoreBackend, entry: StoredEntry, present: bool, verify: bool
) -> tuple[str, int, str]:
    """(outcome, bytes written, detail) for one photo."""
    ext = entry.relative_path.rsplit(".", 1)[-1]
    if present:
        if not verify:
            return SKIPPED, 0, ""
        try:
            if sha256_hex(destination.read(entry.relative_path)) == entry.sha256:
                return SKIPPED, 0, ""
        except PhotoNotFound:
            pass
        destination.delete(entry.sha256)  # damaged copy: remove it so the write below is not skipped
    data = source.read(entry.relative_path)
    if sha256_hex(data) != entry.sha256:
        return DAMAGED_SOURCE, 0, "the source file's bytes do not match its hash"
    stored = destination.put(data, ext)
    if stored.relative_path != entry.relative_path:
        return FAILED, 0, f"stored under {stored.relative_path}"
    if sha256_hex(destination.read(entry.relative_path)) != entry.sha256:
        return FAILED, 0, "read back from the destination with a different hash"
    return (REPLACED if present else COPIED), len(data), ""


def copy_store(
    source: PhotoStoreBackend,
    destination: PhotoStoreBackend,
    *,
    verify_existing: bool = False,
    workers: int = 4,
    progress: Callable[[CopyReport], None] | None = None,
) -> CopyReport:
    """Copy every photo of `source` that `destination` lacks. Raises PhotoStoreUnavailable when
    either store stops answering (what was copied stays copied: run again to resume)."""
    started = time.perf_counter()
    report = CopyReport(source.url, destination.url)
    # One listing of the destination instead of a request per photo.
    present = {e.relative_path: e.size_bytes for e in destination.iterate()}

    def one(entry: StoredEntry):
        already = present.get(entry.relative_path) == entry.size_bytes
        try:
            return entry, _copy_one(source, destination, entry, already, verify_existing)
        except PhotoNotFound as exc:
            return entry, (FAILED, 0, str(exc))

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="photo-copy") as pool:
        # Bounded: at most 4 x workers photos in memory at once.
        window = max(1, workers) * 4
        pending = []
        entries = iter(source.iterate())
        while True:
            for entry in entries:
                pending.append(pool.submit(one, entry))
                if len(pending) >= window:
                    break
            if not pending:
                break
            entry, (outcome, size, detail) = pending.pop(0).result()  # PhotoStoreUnavailable propagates
            report.seen += 1
            if outcome == COPIED:
                report.copied += 1
            elif outcome == REPLACED:
                report.replaced += 1
            elif outcome == SKIPPED:
                report.skipped += 1
            elif outcome == DAMAGED_SOURCE:
                report.damaged_source.append(entry.relative_path)
            else:
                report.failed[entry.relative_path] = detail
            report.bytes_copied += size
            if progress and report.seen % 100 == 0:
                progress(report)
    report.seconds = round(time.perf_counter() - started, 2)
    return report
