"""faceverify settings [--markdown]: every setting with its value in force (secrets masked)."""

from __future__ import annotations

from core.cli import command


def register(subparsers) -> None:
    parser = command(subparsers, "settings", "list every setting: its value in force, type and meaning", run)
    parser.add_argument(
        "--markdown", action="store_true", help="print the settings table of docs/operations.md instead"
    )


def run(args) -> int:
    from core import config

    if args.markdown:
        print(config.settings_table(), end="")
        return 0
    width = max(len(item.name) for item in config.SETTINGS)
    for item in config.SETTINGS:
        print(f"{item.name:<{width}}  {config.shown_value(item)}\n{'':<{width}}  {item.meaning}")
    return 0
