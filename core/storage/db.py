"""Database engine, sessions and schema upgrades.

make_engine(url=None) -> Engine          SQLite (default, a file under data/runtime) or MySQL/MariaDB
get_engine(url=None) -> Engine           one shared engine per URL for the process
session_factory(url=None) -> sessionmaker
init_db(url=None) -> Engine              creates or upgrades the schema to the newest revision (Alembic)

The URL comes from core.config.database_url() (DATABASE_URL in the environment or in
.streamlit/secrets.toml). Command line: faceverify db upgrade|current|history|stamp [--url URL]
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core import config
from core.errors import FaceVerifyError
from core.storage import schema_guards  # noqa: F401  (its tables join Base.metadata)
from core.storage.schema import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HEAD = "head"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


class SchemaError(FaceVerifyError):
    """The database holds tables this application did not create, or a migration failed."""

    code = "schema_error"


def is_sqlite(url_or_engine) -> bool:
    url = url_or_engine.url if isinstance(url_or_engine, Engine) else make_url(str(url_or_engine))
    return url.get_backend_name() == "sqlite"


def _normalise_url(url: str | None) -> str:
    raw = url or config.database_url()
    parsed = make_url(raw)
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        # utf8mb4: Korean names and notes need 4-byte-safe UTF-8 (MySQL's "utf8" is 3-byte).
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed.render_as_string(hide_password=False)


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # SQLite ignores foreign keys unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets pages read while the batch runner writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str | None = None, **kwargs) -> Engine:
    """A new engine for the URL (default: the configured one). Callers own and dispose it."""
    url = _normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # a server restart must not break the next page view
    kwargs.setdefault("pool_recycle", 3600)  # below MySQL's default wait_timeout
    # READ COMMITTED: a reviewer who loses a race must see the winner's row, not an old snapshot.
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    return create_engine(url, **kwargs)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for this URL, created once."""
    key = _normalise_url(url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
        return engine


def session_factory(url: str | Engine | None = None) -> sessionmaker[Session]:
    engine = url if isinstance(url, Engine) else get_engine(url)
    # expire_on_commit=False: pages keep using loaded rows after the transaction ends.
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(engine_or_url: Engine | str | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if isinstance(engine_or_url, Engine):
        cfg.attributes["engine"] = engine_or_url
    else:
        # Percent signs in passwords would be read as interpolation by ConfigParser.
        cfg.set_main_option("sqlalchemy.url", _normalise_url(engine_or_url).replace("%", "%%"))
    return cfg


def _check_not_foreign(engine: Engine) -> None:
    """Refuse to run migrations over tables someone else created (they would fail halfway)."""
    names = set(inspect(engine).get_table_names())
    if "alembic_version" in names:
        return
    ours = names & set(Base.metadata.tables)
    if ours:
        raise SchemaError(
            f"The database already has tables {sorted(ours)} but no alembic_version table, so its "
            "schema version is unknown. Use an empty database, or stamp it with "
            "`faceverify db stamp REVISION` after checking which revision it matches."
        )


def upgrade(engine_or_url: Engine | str | None = None, revision: str = HEAD) -> None:
    from alembic import command

    engine = engine_or_url if isinstance(engine_or_url, Engine) else get_engine(engine_or_url)
    _check_not_foreign(engine)
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine_or_url: Engine | str | None = None) -> str | None:
    from alembic.migration import MigrationContext

    engine = engine_or_url if isinstance(engine_or_url, Engine) else get_engine(engine_or_url)
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def init_db(url: str | Engine | None = None) -> Engine:
    """Create or upgrade the schema to the newest revision and return the engine."""
    engine = url if isinstance(url, Engine) else get_engine(url)
    # The usual case (already at head) is told without importing alembic: that import was 0.3 s
    # of the dashboard's first page. Anything else goes through alembic itself.
    head = _head_in_files()
    if head is not None and _stored_revision(engine) == head:
        return engine
    if current_revision(engine) != head_revision():
        upgrade(engine, HEAD)
    return engine


_REVISION_LINE = re.compile(r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:["']([^"']+)["']|None)""", re.M)


def _head_in_files() -> str | None:
    """The one revision no migration file builds on (alembic's head, read from the files);
    None unless the files make a single chain."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict((m.group(1), m.group(2)) for m in _REVISION_LINE.finditer(path.read_text()))
        if not found.get("revision"):
            return None
        revisions.add(found["revision"])
        parents.add(found.get("down_revision"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database's alembic_version table, or None (no table, or
    not exactly one row)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except SQLAlchemyError:
        return None
    return rows[0][0] if len(rows) == 1 else None
