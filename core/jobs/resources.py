"""What jobs need, made once per process: the database, the photo store, loaded engines.

A worker keeps the engine of the active model version, and of the version a batch was created
for (after a promotion both may be needed while old batches finish); at most MAX_ENGINES.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

from core import config

MAX_ENGINES = 2

_lock = threading.Lock()
_engines: OrderedDict[str, object] = OrderedDict()


@lru_cache(maxsize=4)
def _factory(url: str):
    from core.storage.db import init_db
    from core.storage.db import session_factory as make_factory

    return make_factory(init_db(url))


def session_factory():
    return _factory(config.database_url())


@lru_cache(maxsize=4)
def _store(url: str):
    from core.storage.stores import open_photo_store

    return open_photo_store(url)


def photo_store():
    from core.storage.stores import photo_store_url

    return _store(photo_store_url())


def engine(version: str | None = None, factory=None):
    """The engine of a model version (default: the version active in the database of `factory`,
    or of this process's own), loaded once."""
    from core.training import registry
    from core.verification.engine import Engine

    version = version or registry.current_version(factory or session_factory(), config.models_dir())
    with _lock:  # one load at a time: two threads asking for the same version load it once
        if version in _engines:
            _engines.move_to_end(version)
            return _engines[version]
        loaded = Engine.load(version, config.models_dir())
        _engines[version] = loaded
        while len(_engines) > MAX_ENGINES:
            _engines.popitem(last=False)
        return loaded


def loaded_versions() -> list[str]:
    with _lock:
        return list(_engines)
