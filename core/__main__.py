"""Command line: python -m core verify GALLERY.jpg VERIFICATION.jpg [--gender M|F] [--model VERSION]

Prints the verification result as JSON (exit code 0 when a decision was made, 2 when a photo
could not be used, 1 on usage errors).

Privacy (core.workflows.privacy; the database and photo store from the settings, or --url):
    python -m core erase MEMBER_ID [--yes]          erase a member's photos and embeddings
    python -m core retention [--dry-run]            apply the retention settings
    python -m core export MEMBER_ID --out FILE.zip  the member's data for an administrator
    python -m core photo-key new | rotate [--dry-run]   encryption at rest: a key, rewrite the store
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify that two photos show the same person")
    verify.add_argument("gallery", help="the member's gallery photo")
    verify.add_argument("verification", help="the fresh verification photo")
    verify.add_argument("--gender", help="registered gender of the member (M/F)")
    verify.add_argument("--model", help="model version (default: models/DEFAULT)")
    erase = sub.add_parser("erase", help="erase a member's biometric data (photos, embeddings, analyses)")
    erase.add_argument("member_id")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    erase.add_argument("--actor", default=None, help="who asked (default: the login name)")
    retention = sub.add_parser("retention", help="remove what the retention settings say is past its time")
    retention.add_argument("--dry-run", action="store_true", help="report only, remove nothing")
    export = sub.add_parser("export", help="a member's photos, decisions and views as a ZIP")
    export.add_argument("member_id")
    export.add_argument("--out", required=True, help="the ZIP file to write")
    export.add_argument("--actor", default=None)
    photo_key = sub.add_parser("photo-key", help="encryption at rest of the photo store")
    photo_key.add_argument("action", choices=["new", "rotate"])
    photo_key.add_argument("--dry-run", action="store_true")
    for command in (erase, retention, export, photo_key):
        command.add_argument("--url", help="SQLAlchemy URL (default: the DATABASE_URL setting)")
    args = parser.parse_args(argv)
    if args.command != "verify":
        from core.workflows.privacy import run_command

        return run_command(args)

    from core.errors import FaceVerifyError
    from core.verification.engine import Engine
    from core.verification.genders import optional_gender

    try:
        gender = optional_gender(args.gender)
    except ValueError as exc:
        parser.error(str(exc))
    for path in (args.gallery, args.verification):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    try:
        engine = Engine.load(args.model)
    except FaceVerifyError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    result = engine.verify(args.gallery, args.verification, gender)
    print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    return 0 if result.same_person is not None else 2


if __name__ == "__main__":
    sys.exit(main())
