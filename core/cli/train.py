"""faceverify train --images DIR --people PEOPLE.csv --json OUT.json [...]   a new model version
faceverify train capture-check [--set ...]                                   the capture check's models

`train` parses its own arguments into a DataChoice and TrainParams and calls
core.training.pipeline.train_version. Exit codes: 0 trained, 2 the arguments or the data cannot
give an honest run (said on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli import command, program_name

HELP = "train a model version (or `train capture-check`: the capture check's models)"


def register(subparsers) -> None:
    parser = command(subparsers, "train", HELP, run, pass_on=True)
    parser.epilog = (
        "`train --help-pipeline` lists the training arguments; "
        "`train capture-check --help` lists the capture check's."
    )
    parser.add_argument("--help-pipeline", action="store_true", help="the training arguments")


def training_parser() -> argparse.ArgumentParser:
    """The arguments of a training run (every default is TrainParams')."""
    from core.training.fitting import GENDER_BALANCES, TrainParams

    parser = argparse.ArgumentParser(
        prog=f"{program_name()} train",
        description="train a model version: choose data, features (cached), train both heads, "
        "evaluate by person, register (core.training.pipeline)",
    )
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--people", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--promote", action="store_true", help="make the new version the active one")
    parser.add_argument("--seed", type=int, default=TrainParams.seed)
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs)
    parser.add_argument("--loss", choices=["contrastive", "triplet"], default=TrainParams.loss)
    parser.add_argument("--augment", default=TrainParams.augment, help="comma list of blur,jitter,gray")
    parser.add_argument("--augment-views", type=int, default=TrainParams.augment_views)
    parser.add_argument("--reviewed", action="store_true", help="add the reviewed decisions in the database")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--no-compare", action="store_true", help="skip the comparison with the active model")
    gender = parser.add_argument_group("gender head")
    gender.add_argument(
        "--gender-only",
        type=Path,
        help="CSV file,gender of face photos without identities (each its own person)",
    )
    gender.add_argument(
        "--gender-only-images", type=Path, help="their folder (default: beside the CSV, named like it)"
    )
    gender.add_argument("--gender-balance", choices=GENDER_BALANCES, default=TrainParams.gender_balance)
    gender.add_argument(
        "--gender-raw-inputs",
        action="store_true",
        help="do not standardise the gender head's inputs (the versions before standardising)",
    )
    gender.add_argument("--gender-l2", type=float, default=TrainParams.gender_l2)
    gender.add_argument("--gender-max-false-flags", type=float, default=TrainParams.gender_max_false_flags)
    parser.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("IMAGES", "PEOPLE"),
        help="another labelled set (its people split apart, set_holdout_fraction held out)",
    )
    parser.add_argument(
        "--cohort", type=Path, action="append", default=[], help="a folder of faces of other people"
    )
    parser.add_argument(
        "--cohort-labels",
        type=Path,
        action="append",
        default=[],
        help="CSV file,gender[,age] of cohort faces",
    )
    parser.add_argument("--cohort-top-k", type=int, default=TrainParams.cohort_top_k)
    return parser


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


def session_factory_for(no_cache: bool):
    """The configured database (for the cache and the registry), or None when it cannot be reached."""
    if no_cache:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from core.storage.db import init_db, session_factory

    try:
        return session_factory(init_db())
    except (SQLAlchemyError, OSError) as exc:
        print(f"Database not reachable ({exc}); running without the embedding cache.", file=sys.stderr)
        return None


def train_main(argv: list[str]) -> int:
    """Parse a training run's arguments, train, print the figures and write the JSON."""
    from core.training.data import DataChoice, check_sources
    from core.training.fitting import TrainParams
    from core.training.pipeline import train_version

    parser = training_parser()
    args = parser.parse_args(argv)
    params = TrainParams(
        seed=args.seed,
        epochs=args.epochs,
        loss=args.loss,
        augment=args.augment,
        augment_views=args.augment_views,
        gender_balance=args.gender_balance,
        gender_standardise=not args.gender_raw_inputs,
        gender_l2=args.gender_l2,
        gender_max_false_flags=args.gender_max_false_flags,
        cohort_top_k=args.cohort_top_k,
    )
    choice = DataChoice(
        args.images,
        args.people,
        reviewed=args.reviewed,
        gender_only=args.gender_only,
        gender_only_images=args.gender_only_images,
        sets=[(Path(images), Path(people)) for images, people in args.set],
        cohort=args.cohort,
        cohort_labels=args.cohort_labels,
    )
    try:
        params.validate()
        check_sources(choice)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    factory = session_factory_for(args.no_cache)
    if args.reviewed and factory is None:
        parser.error("--reviewed needs the database")
    last = {"stage": None}

    def show(stage, fraction, logs):
        if stage == "features" and "total" in logs:
            sys.stderr.write(f"\rfeatures {logs['done']}/{logs['total']}")
            if logs["done"] == logs["total"]:
                sys.stderr.write("\n")
        elif stage != last["stage"]:
            sys.stderr.write(f"{stage}\n")
        last["stage"] = stage

    try:
        outcome, out = train_version(
            choice,
            params,
            session_factory=factory,
            promote=args.promote,
            compare_with_active=not args.no_compare,
            progress=show,
        )
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if out.get("by_group"):
        from core.verification.policy import group_table

        print(group_table(out["by_group"], "Held-out people, group by group:"), file=sys.stderr)
    for note in outcome.features.notes:
        print(note, file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps(out, indent=2, default=float))
    t = outcome.timings
    print(
        f"retrain time: features {t['features_seconds']} s ({t['photos_cached']} photos from the cache, "
        f"{t['photos_computed']} computed), training {t['training_seconds']} s, comparison "
        f"{t.get('compare_seconds', 0)} s, total {t.get('total_seconds')} s",
        file=sys.stderr,
    )
    return 0


def run(args) -> int:
    if args.passed_on and args.passed_on[0] == "capture-check":
        from core.training.capture_check import fit

        options = capture_check_parser().parse_args(args.passed_on[1:] + (["--help"] if args.help else []))
        fit(options.set, options.epochs, options.calibration_share, options.extra, options.keep_network)
        return 0
    if args.help:
        args.parser.print_help()
        return 0
    return train_main(["--help"] if args.help_pipeline else args.passed_on)
