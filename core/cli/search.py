"""faceverify search stats | enrol-missing [--limit N]  [--url URL]"""

from __future__ import annotations

from core.cli import add_url, command, group


def register(subparsers) -> None:
    commands = group(subparsers, "search", "the 1:N face search index: stats, enrol-missing")
    command(commands, "stats", "enrolled photos with an embedding, and the duplicate threshold", run_stats)
    enrol = command(
        commands, "enrol-missing", "embed current gallery photos that have no embedding yet", run_enrol
    )
    enrol.add_argument("--limit", type=int, default=None, help="at most this many photos")
    for parser in commands.choices.values():
        add_url(parser)


def run_stats(args) -> int:
    from core.storage.db import init_db
    from core.workflows.search import index_stats

    for line in index_stats(init_db(args.url)):
        print(line)
    return 0


def run_enrol(args) -> int:
    from core.storage.db import init_db, session_factory
    from core.verification.engine import Engine
    from core.workflows.search import enrol_missing

    factory = session_factory(init_db(args.url))
    n = enrol_missing(factory, Engine.load(), limit=args.limit)
    print(f"stored {n} new embedding(s)")
    return 0
