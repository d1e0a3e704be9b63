"""faceverify train [--images DIR --people PEOPLE.csv --json OUT.json ...]   a new model version
faceverify train capture-check [--set ...]                                   the capture check's models

Training a model version is core.training.pipeline's own command line (its arguments are passed
on unchanged); its exit codes are that command's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import command, program_name

HELP = "train a model version (or `train capture-check`: the capture check's models)"


def register(subparsers) -> None:
    parser = command(subparsers, "train", HELP, run, pass_on=True)
    parser.epilog = (
        "Every other argument goes to the training pipeline (`train --help-pipeline` lists them); "
        "`train capture-check --help` lists the capture check's."
    )
    parser.add_argument("--help-pipeline", action="store_true", help="the training pipeline's own --help")


def capture_check_parser() -> argparse.ArgumentParser:
    from core.benchmarks.capture import DEFAULT_EXTRA, DEFAULT_SET

    parser = argparse.ArgumentParser(
        prog=f"{program_name()} train capture-check",
        description="train the capture check's occlusion network and blur model, and choose every "
        "limit on training people (models/pretrained/capture_check.json)",
    )
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="the set made by `bench capture build`")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the occlusion network")
    parser.add_argument(
        "--calibration-share", type=float, default=0.25, help="share of training people in fold 0"
    )
    parser.add_argument(
        "--extra",
        type=Path,
        default=DEFAULT_EXTRA,
        help="extra training photos (bench capture build --extra-of)",
    )
    parser.add_argument(
        "--keep-network",
        action="store_true",
        help="keep the shipped occlusion network (made by this command): rescore fold 0, refit the rest",
    )
    return parser


def run(args) -> int:
    if args.passed_on and args.passed_on[0] == "capture-check":
        from core.training.capture_check import fit

        options = capture_check_parser().parse_args(args.passed_on[1:] + (["--help"] if args.help else []))
        fit(options.set, options.epochs, options.calibration_share, options.extra, options.keep_network)
        return 0
    if args.help:
        args.parser.print_help()
        return 0
    from core.training.pipeline import main as train_version

    return train_version(["--help"] if args.help_pipeline else args.passed_on)
