"""faceverify db upgrade [REVISION] | current | history | stamp REVISION  [--url URL]"""

from __future__ import annotations

from core.cli import add_url, command, group


def register(subparsers) -> None:
    commands = group(subparsers, "db", "the database schema: upgrade, current, history, stamp")
    up = command(commands, "upgrade", "create or upgrade the database schema (default: to the newest)", run)
    up.add_argument("revision", nargs="?", default="head")
    command(commands, "current", "print the schema revision of the database", run)
    command(commands, "history", "list the schema revisions", run)
    stamp = command(commands, "stamp", "record a schema revision without running migrations", run)
    stamp.add_argument("revision")
    for parser in commands.choices.values():
        add_url(parser)


def run(args) -> int:
    from alembic import command as alembic

    from core.storage.db import alembic_config, current_revision, get_engine, head_revision, upgrade

    engine = get_engine(args.url)
    shown = engine.url.render_as_string(hide_password=True)
    if args.db_command == "upgrade":
        upgrade(engine, args.revision)
        print(f"{shown}: at revision {current_revision(engine)}")
    elif args.db_command == "current":
        print(f"{shown}: revision {current_revision(engine)} (head is {head_revision()})")
    elif args.db_command == "history":
        alembic.history(alembic_config(engine))
    else:
        alembic.stamp(alembic_config(engine), args.revision)
        print(f"{shown}: stamped {args.revision}")
    return 0
