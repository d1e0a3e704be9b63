"""Command line: python -m core verify GALLERY.jpg VERIFICATION.jpg [--gender M|F] [--model VERSION]

Prints the verification result as JSON (exit code 0 when a decision was made, 2 when a photo
could not be used, 1 on usage errors).
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
    args = parser.parse_args(argv)

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
