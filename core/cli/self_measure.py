"""self-measure: measure the active model on the members of the configured database, now.

    python -m core self-measure [--version V] [--url DATABASE_URL] [--json OUT]

The same work as the queue's self_measure job (core.workflows.self_measurement): a measurement of
the same version on the same day resumes or is returned, never counted twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core.cli import command

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def register(subparsers) -> argparse.ArgumentParser:
    parser = command(
        subparsers, "self-measure", "false-match rate at approve_at on the members' own pairs", run
    )
    parser.add_argument("--version", default=None, help="model version (default: the active one)")
    parser.add_argument("--url", default=None, help="SQLAlchemy URL (default: the DATABASE_URL setting)")
    parser.add_argument("--actor", default="cli")
    parser.add_argument("--json", dest="json_out", default=None, help="write the summary here")
    return parser


def run(args) -> int:
    from core.errors import FaceVerifyError
    from core.workflows import self_measurement as sm

    try:
        summary = sm.run_job(args.actor, args.version, args.url)
    except FaceVerifyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    overall = summary["all"]["at_approve"]
    print(
        f"model {summary['model_version']} on {summary['members']:,} members ({summary['photos']:,} photos): "
        f"{overall['k']:,} of {overall['n']:,} cross-member pairs at or above approve_at "
        f"{summary['approve_at']:.4f}; false-match rate at most {overall['upper']} (95%) -> {summary['alert']}"
    )
    for gender, figures in summary["genders"].items():
        rate = figures["at_approve"]
        print(
            f"  {gender}: {rate['k']:,} of {rate['n']:,} (at most {rate['upper']}); {figures['near']:,} near"
        )
    fnmr = summary["fnmr"]
    print(
        f"  reviewed same-person pairs below reject_below: {fnmr['k']} of {fnmr['n']} (at most {fnmr['upper']})"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    return 0
