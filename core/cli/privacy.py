"""faceverify erase MEMBER_ID [--yes] | export MEMBER_ID --out FILE.zip | retention [--dry-run]

export streams the ZIP to disk photo by photo; past PRIVACY_EXPORT_MAX_MB it is refused and no file
is left.

Exit code 0 when done, 1 when refused (no such member, not confirmed, a privacy error).
"""

from __future__ import annotations

import json
import sys

from core.cli import add_url, command


def register(subparsers) -> None:
    erase = command(
        subparsers, "erase", "erase a member's biometric data (photos, embeddings, analyses)", run_erase
    )
    erase.add_argument("member_id")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    erase.add_argument("--actor", default=None, help="who asked (default: the login name)")
    export = command(
        subparsers, "export", "write a member's photos, decisions and views to a ZIP", run_export
    )
    export.add_argument("member_id")
    export.add_argument("--out", required=True, help="the ZIP file to write")
    export.add_argument("--actor", default=None, help="who asked (default: the login name)")
    retention = command(
        subparsers, "retention", "remove what the retention settings say is past its time", run_retention
    )
    retention.add_argument("--dry-run", action="store_true", help="report only, remove nothing")
    for parser in (erase, export, retention):
        add_url(parser)


def login_name() -> str:
    """The actor recorded for a command run by hand: the login name, marked as the command line."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in a container: still say it came from the command line
        return "cli"


def _open(url: str | None):
    from core.storage.db import init_db, session_factory
    from core.storage.stores import open_photo_store

    return session_factory(init_db(url)), open_photo_store()


def _refusing(run):
    """A privacy or storage error is a message and exit code 1, not a traceback."""

    def guarded(args) -> int:
        from core.errors import FaceVerifyError

        try:
            return run(args)
        except FaceVerifyError as exc:
            print(str(exc), file=sys.stderr)
            return 1

    return guarded


@_refusing
def run_erase(args) -> int:
    from sqlalchemy import func, select

    from core.storage.schema import Member, Photo
    from core.workflows.privacy import erase_member

    factory, store = _open(args.url)
    with factory() as session:
        member = session.get(Member, args.member_id)
        if member is None:
            print(f"There is no member {args.member_id!r}.", file=sys.stderr)
            return 1
        n_photos = session.scalar(select(func.count(Photo.id)).where(Photo.member_id == member.id))
    if not args.yes:
        if not sys.stdin.isatty():
            print("Refusing to erase without --yes (no terminal to confirm on).", file=sys.stderr)
            return 1
        answer = input(
            f"Erase member {member.id} ({n_photos} photos, their embeddings and analyses)? "
            "Decisions and the audit log are kept. Type the member ID to confirm: "
        )
        if answer.strip() != member.id:
            print("Not confirmed; nothing erased.", file=sys.stderr)
            return 1
    report = erase_member(factory, store, member.id, actor=args.actor or login_name(), via="cli")
    print(json.dumps(report.to_dict(), indent=2))
    return 0


@_refusing
def run_export(args) -> int:
    import os
    from pathlib import Path

    from core.workflows.privacy import export_member_file

    out = Path(args.out)
    factory, store = _open(args.url)
    # Written beside the target and renamed into place: a refused or interrupted export leaves no
    # partial file under the name asked for.
    with factory() as session:
        path = export_member_file(
            session, store, args.member_id, args.actor or login_name(), why="cli", directory=out.parent
        )
    try:
        os.replace(path, out)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


@_refusing
def run_retention(args) -> int:
    from core.workflows.privacy import apply_retention

    factory, store = _open(args.url)
    report = apply_retention(factory, store, dry_run=args.dry_run)
    for line in report.lines():
        print(line)
    return 0
