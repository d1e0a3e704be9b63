"""faceverify import FILE [--zip PHOTOS.zip] [--base-dir DIR] [--allow-outside] [--url URL]

Exit code 0 when every row was imported, 1 when a row was rejected, 2 when the file was not read.
"""

from __future__ import annotations

import sys
import time

from core.cli import add_url, command


def register(subparsers) -> None:
    parser = command(subparsers, "import", "import members and their photos from .xlsx or .csv", run)
    parser.add_argument("file", help="table with member_id, gender, gallery_photo, verification_photo")
    parser.add_argument("--zip", dest="zip_path", help="ZIP holding the photos named in the table")
    parser.add_argument("--base-dir", help="folder for relative photo paths (default: the table's folder)")
    parser.add_argument(
        "--allow-outside",
        action="store_true",
        help="read photo paths outside the base folder too (../, absolute)",
    )
    add_url(parser)
    parser.add_argument("--actor", default="cli", help="name recorded in the audit log")
    parser.add_argument("--only-problems", action="store_true", help="print only rejected rows and warnings")


def run(args) -> int:
    from core import jobs
    from core.storage.db import init_db, session_factory
    from core.workflows.importer import (
        IMPORTED,
        REJECTED,
        UPDATED,
        ImportFileError,
        format_report,
        import_members,
        summarize,
    )

    engine = init_db(args.url)
    start = time.perf_counter()
    with session_factory(engine)() as session:
        try:
            reports = import_members(
                session,
                args.file,
                zip_bytes=args.zip_path,
                base_dir=args.base_dir,
                actor=args.actor,
                allow_outside=args.allow_outside,
            )
        except ImportFileError as exc:
            print("The file was not imported:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
            return 2
    print(format_report(reports, only_problems=args.only_problems))
    counts = summarize(reports)
    print(
        f"\n{len(reports)} rows in {time.perf_counter() - start:.1f} s: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
    )
    if jobs.configured() and (counts[IMPORTED] or counts[UPDATED]):
        # The new members join the 1:N index now, not only when they are first verified.
        print(f"enrolment queued ({jobs.submit_enrolment()})")
    return 1 if counts[REJECTED] else 0
