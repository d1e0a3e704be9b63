"""faceverify store copy --from SRC --to DST | new-key | rotate-key [--dry-run]

copy: exit 0 when every photo is there intact, 1 when some failed, 2 when the store went away
(what was copied is kept: run it again to resume). rotate-key: exit 1 when a photo did not open.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from core.cli import command, group


def register(subparsers) -> None:
    commands = group(subparsers, "store", "the photo store: copy it, its encryption key")
    copy = command(
        commands, "copy", "copy every photo from one store to another, checking each hash", run_copy
    )
    copy.add_argument("--from", dest="source", required=True, help="folder path or s3://BUCKET/PREFIX")
    copy.add_argument("--to", dest="destination", required=True, help="folder path or s3://BUCKET/PREFIX")
    copy.add_argument("--verify-existing", action="store_true", help="re-hash photos already copied")
    copy.add_argument("--create-bucket", action="store_true", help="create the destination bucket if missing")
    copy.add_argument("--workers", type=int, default=4, help="photos copied at once (default 4)")
    copy.add_argument("--json", help="write the report to this file as well")
    copy.set_defaults(parser=copy)
    command(commands, "new-key", "print a new photo encryption key (PHOTO_ENCRYPTION_KEY=...)", run_new_key)
    rotate = command(
        commands,
        "rotate-key",
        "rewrite every photo of the store under the current encryption key (or plain without one)",
        run_rotate_key,
    )
    rotate.add_argument("--dry-run", action="store_true", help="count only, rewrite nothing")


def run_copy(args) -> int:
    from core.storage.photo_copy import CopyReport, copy_store
    from core.storage.photostore import PhotoStoreUnavailable
    from core.storage.stores import open_photo_store

    parser = args.parser
    try:
        source, destination = open_photo_store(args.source), open_photo_store(args.destination)
    except ValueError as exc:
        parser.error(str(exc))
    if source.url.rstrip("/") == destination.url.rstrip("/"):
        parser.error("--from and --to name the same store")
    if args.create_bucket and hasattr(destination, "create_bucket"):
        destination.create_bucket()

    def show(report: CopyReport) -> None:
        print(f"{report.seen} seen, {report.copied} copied, {report.skipped} already there", file=sys.stderr)

    try:
        report = copy_store(
            source, destination, verify_existing=args.verify_existing, workers=args.workers, progress=show
        )
    except PhotoStoreUnavailable as exc:
        print(
            f"Stopped: {exc} What was copied is kept; run the same command again to resume.", file=sys.stderr
        )
        return 2
    out = json.dumps(asdict(report), indent=2)
    print(out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(out + "\n")
    return 0 if report.ok else 1


def run_new_key(args) -> int:
    from core.storage.encryption import KEY_SETTING, new_key_text

    print(f"{KEY_SETTING}={new_key_text()}")
    print("Keep it with the other secrets: without it the encrypted photos cannot be read.", file=sys.stderr)
    return 0


def run_rotate_key(args) -> int:
    from core.errors import FaceVerifyError
    from core.storage.key_rotation import rotate_store
    from core.storage.stores import open_photo_store

    try:
        store = open_photo_store()
        report = rotate_store(store, dry_run=args.dry_run)
    except FaceVerifyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    target = f"under key {store.keys.current.label}" if store.keys.current else "plain (no key set)"
    verb = "would rewrite" if args.dry_run else "rewrote"
    print(f"photo store {store.url}: {verb} {report.rewritten}, {report.unchanged} already {target}")
    for line in report.failed:
        print(f"  failed {line}", file=sys.stderr)
    return 1 if report.failed else 0
