"""faceverify users create-admin --username NAME | create-user --username NAME --role ROLE | list

The password comes from a prompt, or from FACEVERIFY_ADMIN_PASSWORD for scripts. Exit code 1 when
refused (the name exists, no terminal and no password setting).
"""

from __future__ import annotations

import getpass
import os
import sys

from core.cli import add_url, command, group


def register(subparsers) -> None:
    from core.storage.schema import ROLES

    commands = group(subparsers, "users", "dashboard users: create-admin, create-user, list")
    admin = command(commands, "create-admin", "create an administrator of the dashboard", run)
    admin.add_argument("--username", required=True)
    user = command(commands, "create-user", "create a dashboard user with a role", run)
    user.add_argument("--username", required=True)
    user.add_argument("--role", required=True, choices=ROLES)
    command(commands, "list", "list dashboard users and their roles", run)
    for parser in commands.choices.values():
        add_url(parser)


def read_new_password() -> str:
    from core.storage.users import ADMIN_PASSWORD_ENV, AuthError

    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        raise AuthError(f"No terminal to ask for a password: set {ADMIN_PASSWORD_ENV} instead.")
    first = getpass.getpass("New password: ")
    if first != getpass.getpass("Repeat it: "):
        raise AuthError("The two passwords differ.")
    return first


def run(args) -> int:
    from core.storage.db import init_db, session_factory
    from core.storage.schema import ADMIN
    from core.storage.users import AuthError, create_user, list_users

    with session_factory(init_db(args.url))() as session:
        try:
            if args.users_command in ("create-admin", "create-user"):
                role = ADMIN if args.users_command == "create-admin" else args.role
                created = create_user(session, args.username, read_new_password(), role, actor="cli")
                print(f"Created {created.role} {created.username!r}.")
            else:
                for u in list_users(session):
                    print(f"{u.username:<24} {u.role:<16} {'active' if u.active else 'inactive'}")
        except AuthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0
