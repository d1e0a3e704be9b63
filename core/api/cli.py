"""python -m core.api: serve the API, or create, list and revoke API keys."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sqlalchemy import select

from core.api.app import create_app
from core.api.keys import create_key, revoke_key
from core.api.settings import API_ROLES, MAX_BODY_BYTES
from core.storage.schema import (
    ApiKey,
)

THREAD_SETTINGS = (
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",
)


def share_cores(workers: int) -> int:
    """Threads per network library in each of `workers` API processes: cores // workers (at least 1).

    Each library (TensorFlow, OpenMP, OpenCV) otherwise starts a thread per core in every process,
    and N processes x cores threads fight over the cores. Settings already given are kept.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(1, workers))
    for name in THREAD_SETTINGS:
        os.environ.setdefault(name, str(threads))
    return threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.api", description="Serve the API, or manage API keys."
    )
    parser.add_argument("--url", help="SQLAlchemy URL (default: DATABASE_URL setting)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 1024 / 1024)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (each loads the model, ~1 GB; default 1)",
    )
    sub = parser.add_subparsers(dest="cmd")
    create = sub.add_parser("create-key", help="create an API key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=API_ROLES)
    sub.add_parser("list-keys", help="list API keys (names, roles, prefixes; never the keys)")
    revoke = sub.add_parser("revoke-key", help="revoke every active key with this name")
    revoke.add_argument("--name", required=True)
    args = parser.parse_args(argv)

    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory

    db = init_db(args.url)
    factory = make_factory(db)
    if args.cmd == "create-key":
        with factory() as session:
            try:
                key, row = create_key(session, args.name, args.role)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        print(key)
        print(
            f"Created {row.role} key {row.name!r} ({row.key_prefix}…). It is shown only now; store it safely.",
            file=sys.stderr,
        )
        return 0
    if args.cmd == "list-keys":
        with factory() as session:
            for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                state_ = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                used = f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
                print(f"{row.name:<24} {row.role:<8} {row.key_prefix}…  {state_:<18} {used}")
        return 0
    if args.cmd == "revoke-key":
        with factory() as session:
            n = revoke_key(session, args.name)
        print(f"revoked {n} key(s) named {args.name!r}")
        return 0 if n else 1

    from core.api.server import limits, serve

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    max_body = int(args.max_body_mb * 1024 * 1024)
    if args.workers > 1:
        share_cores(args.workers)
        # Each worker process builds its own app from the settings: pass ours on to them.
        if args.url:
            os.environ["DATABASE_URL"] = args.url
        os.environ["API_MAX_BODY_BYTES"] = str(max_body)
        db.dispose()
        import uvicorn

        uvicorn.run(
            "core.api.app:app_from_settings",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            **limits(),
        )
        return 0
    app = create_app(factory, max_body_bytes=max_body)
    serve(app, args.host, args.port, args.log_level)  # header, connection and slow-client limits
    return 0


if __name__ == "__main__":
    sys.exit(main())
