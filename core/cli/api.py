"""faceverify api serve | create-key | list-keys | revoke-key

create-key prints the key once (exit 1 when refused); revoke-key exits 1 when no key had the name.
"""

from __future__ import annotations

import logging
import sys

from core.cli import add_url, command, group


def register(subparsers) -> None:
    from core.api.settings import API_ROLES, MAX_BODY_BYTES

    commands = group(subparsers, "api", "the HTTP API: serve it, manage its keys")
    serve = command(commands, "serve", "serve the HTTP API", run_serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 1024 / 1024)
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (each loads the model, ~1 GB; default 1)",
    )
    create = command(commands, "create-key", "create an API key (printed once)", run_create_key)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=API_ROLES)
    command(commands, "list-keys", "list API keys (names, roles, prefixes; never the keys)", run_list_keys)
    revoke = command(commands, "revoke-key", "revoke every active key with this name", run_revoke_key)
    revoke.add_argument("--name", required=True)
    for parser in commands.choices.values():
        add_url(parser)


def _factory(url: str | None):
    from core.storage.db import init_db, session_factory

    db = init_db(url)
    return db, session_factory(db)


def run_serve(args) -> int:
    from core.api.app import create_app
    from core.api.server import serve, serve_workers

    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    max_body = int(args.max_body_mb * 1024 * 1024)
    db, factory = _factory(args.url)
    if args.workers > 1:
        db.dispose()  # each worker process opens its own
        serve_workers(
            args.workers,
            args.host,
            args.port,
            args.log_level,
            database_url=args.url,
            max_body_bytes=max_body,
        )
        return 0
    app = create_app(factory, max_body_bytes=max_body)
    serve(app, args.host, args.port, args.log_level)  # header, connection and slow-client limits
    return 0


def run_create_key(args) -> int:
    from core.api.keys import create_key

    _, factory = _factory(args.url)
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


def run_list_keys(args) -> int:
    from core.api.keys import list_keys

    _, factory = _factory(args.url)
    with factory() as session:
        for row in list_keys(session):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            used = f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
            print(f"{row.name:<24} {row.role:<8} {row.key_prefix}…  {state:<18} {used}")
    return 0


def run_revoke_key(args) -> int:
    from core.api.keys import revoke_key

    _, factory = _factory(args.url)
    with factory() as session:
        n = revoke_key(session, args.name)
    print(f"revoked {n} key(s) named {args.name!r}")
    return 0 if n else 1
