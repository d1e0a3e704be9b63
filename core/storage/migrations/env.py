"""Alembic environment: runs against the engine core.storage.db hands over, or the configured URL.

Called programmatically by core.storage.db.init_db()/upgrade(); also works with the plain `alembic`
command through alembic.ini at the project root.
"""

from __future__ import annotations

from alembic import context

from core.storage import schema_guards  # noqa: F401  (its tables join Base.metadata)
from core.storage.schema import Base

target_metadata = Base.metadata


def _engine():
    from core.storage.db import make_engine

    engine = context.config.attributes.get("engine")
    if engine is not None:
        return engine, False
    return make_engine(context.config.get_main_option("sqlalchemy.url") or None), True


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine, owned = _engine()
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things; batch mode rebuilds tables when a revision needs it.
                render_as_batch=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
