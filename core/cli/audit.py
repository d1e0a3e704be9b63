"""faceverify audit verify [--url URL]: exit code 0 when the hash chain is intact, 1 when broken."""

from __future__ import annotations

from core.cli import add_url, command, group


def register(subparsers) -> None:
    commands = group(subparsers, "audit", "the audit log: verify its hash chain")
    verify = command(
        commands, "verify", "check the audit log's hash chain; exit code 1 and the first broken link", run
    )
    add_url(verify)


def run(args) -> int:
    from core.storage.audit import verify_chain
    from core.storage.db import init_db, session_factory

    with session_factory(init_db(args.url))() as session:
        report = verify_chain(session)
    print(report.summary())
    return 0 if report.ok else 1
