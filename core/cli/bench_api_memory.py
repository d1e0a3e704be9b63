"""bench api-memory: peak resident memory of the API under bursts of 99 MP 16-bit PNGs."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    from core.cli import command

    parser = command(
        subparsers,
        "api-memory",
        "start the API, send concurrent 99 MP PNGs to each photo endpoint, print the peak RSS",
        run,
    )
    parser.add_argument("--concurrency", type=int, default=40, help="requests at once per endpoint")
    parser.add_argument("--db-url", help="database for the server (default: a fresh SQLite file)")
    parser.add_argument("--json", type=Path, help="also write the figures here")


def run(args) -> int:
    from core.benchmarks import api_memory

    figures = api_memory.run(concurrency=max(1, min(args.concurrency, 200)), db_url=args.db_url)
    print(api_memory.report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = figures["peak_rss_mb"] < figures["limit_mb"] and figures["server_survived"]
    return 0 if ok else 1
