"""faceverify audit verify [--url URL]: exit code 0 when the hash chain is intact, 1 when broken.

An intact full walk is stored as the checkpoint, so the Users page then checks only what was
written since (run it once after an upgrade of a large database: a first walk of 200,000
entries takes about 40 s)."""

from __future__ import annotations

from core.cli import add_url, command, group


def register(subparsers) -> None:
    commands = group(subparsers, "audit", "the audit log: verify its hash chain")
    verify = command(
        commands, "verify", "check the audit log's hash chain; exit code 1 and the first broken link", run
    )
    add_url(verify)


def run(args) -> int:
    from core.storage.audit import save_checkpoint, verify_chain
    from core.storage.db import init_db, session_factory

    with session_factory(init_db(args.url))() as session:
        report = verify_chain(session)
        if save_checkpoint(session, report):
            session.commit()
    print(report.summary())
    return 0 if report.ok else 1
