"""faceverify verify GALLERY.jpg VERIFICATION.jpg [--gender M|F] [--model VERSION]

Prints the result as JSON. Exit code 0 when a decision was made, 2 when a photo could not be
used, 1 when no model could be loaded (argparse's 2 on usage errors).
"""

from __future__ import annotations

import json
import os
import sys

from core.cli import command


def register(subparsers) -> None:
    parser = command(subparsers, "verify", "verify that two photos show the same person (JSON)", run)
    parser.add_argument("gallery", help="the member's gallery photo")
    parser.add_argument("verification", help="the fresh verification photo")
    parser.add_argument("--gender", help="registered gender of the member (M/F)")
    parser.add_argument("--model", help="model version (default: models/DEFAULT)")
    parser.set_defaults(parser=parser)


def run(args) -> int:
    from core.errors import FaceVerifyError
    from core.verification.engine import Engine
    from core.verification.genders import optional_gender

    parser = args.parser
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
