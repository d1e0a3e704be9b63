"""The command line: `python -m core <command>`, installed as the `faceverify` console script.

One module per group of commands; each has register(subparsers), which adds its commands and
sets `run` (args -> exit code) on each. The library modules hold plain functions; the argument
parsing lives here. Library imports happen inside the run functions, so `--help` stays quick.

    verify              verify that two photos show the same person
    import              import members from .xlsx or .csv
    db                  schema upgrades (upgrade, current, history, stamp)
    train               train a model version (or the capture check: train capture-check)
    bench               the benchmarks, one subcommand each
    api                 serve the HTTP API, manage API keys
    worker              a queue worker process
    run-job             internal: one job in this process (core.jobs starts it for training)
    erase, export, retention    members' biometric data
    search              the 1:N index (stats, enrol-missing)
    users               dashboard users (create-admin, create-user, list)
    audit               the audit log's hash chain (verify)
    store               the photo store (copy, new-key, rotate-key)
    settings            every setting with its value in force
    self-measure        the false-match rate on the members' own pairs, now
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order of the groups in `--help`.
COMMAND_MODULES = [
    "verify",
    "members_import",
    "db",
    "train",
    "bench",
    "api",
    "worker",
    "privacy",
    "search",
    "users",
    "audit",
    "store",
    "settings",
    "self_measure",
]


def program_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "faceverify" if name.startswith("faceverify") else "python -m core"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(), description="Face verification: the product's command line."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args, passed_on = parser.parse_known_args(argv)
    if passed_on and not getattr(args, "pass_on", False):
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    args.passed_on = passed_on
    return args.run(args)


def group(subparsers, name: str, help: str) -> argparse._SubParsersAction:
    """A command with subcommands of its own (`db upgrade`, `api serve`): its subparsers."""
    parser = subparsers.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def command(subparsers, name: str, help: str, run, pass_on: bool = False) -> argparse.ArgumentParser:
    """One command: its one-line help, also shown as the description of its own --help.

    pass_on: the arguments it does not know go to `args.passed_on` (a command that hands them to
    another module's own parser) instead of being refused.
    """
    parser = subparsers.add_parser(name, help=help, description=help, add_help=not pass_on)
    if pass_on:  # its --help may be for the command it hands over to: run() decides
        parser.add_argument("-h", "--help", action="store_true", help="show this help message and exit")
    parser.set_defaults(run=run, pass_on=pass_on, parser=parser)
    return parser


def add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="SQLAlchemy database URL (default: the DATABASE_URL setting)")
