"""What a dashboard process holds once: the database's session factory, the photo store, the loaded
face engine (warmed in the background), the background batches.

This module, and only this one of ui/, builds core's resources itself (core.storage's database and
stores, core.training's registry, core.verification's engine): pages and the other ui modules reach
core through core.dashboard.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from core import config
from core.errors import ModelError

if TYPE_CHECKING:
    from core.dashboard.page_batches import BatchJobs
    from core.storage.photostore import PhotoStoreBackend

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _clean_after_script_run() -> None:
    """Streamlit's cleanup after every script run, without its keras.backend.clear_session().

    Streamlit clears Keras after each run for apps that build a model per run. This process loads
    its models once and shares them, and with them loaded the clear costs most of a second of every
    rerun (py-spy: more than the verification itself), so only the matplotlib part is kept.
    """
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def _skip_keras_clear_after_runs() -> None:
    from streamlit.runtime.scriptrunner import script_runner

    # A private hook of Streamlit 1.60: if a later release drops it, there is nothing to skip.
    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = _clean_after_script_run


_skip_keras_clear_after_runs()


# Cached resources: one per process (keyed by their settings, so tests with another database
# or model folder get their own)


@st.cache_resource(show_spinner=False)
def _session_factory(url: str):
    from core.storage.db import init_db, session_factory

    return session_factory(init_db(url))


def get_session_factory():
    """The database's session factory; raises when the database cannot be reached (ui.page says so)."""
    return _session_factory(config.database_url())


def database_reachable(session_factory) -> bool:
    """One cheap round trip: a database that went down after start is caught before sign-in."""
    from sqlalchemy.exc import SQLAlchemyError

    from core.dashboard.access import database_answers

    try:
        with session_factory() as session:
            return database_answers(session)
    except SQLAlchemyError:
        return False


@st.cache_resource(show_spinner=False)
def _photo_store(url: str) -> PhotoStoreBackend:
    from core.storage.stores import open_photo_store

    return open_photo_store(url)


def get_store() -> PhotoStoreBackend:
    """The photo store PHOTO_STORE_URL names (a folder by default, or an S3 bucket), once per process."""
    from core.storage.stores import photo_store_url

    return _photo_store(photo_store_url())


@st.cache_resource(show_spinner=False, max_entries=2)
def _engine(models_dir: str, version: str):
    from core.verification.engine import Engine

    return Engine.load(version, Path(models_dir))


def active_model_version() -> str:
    """The registry's active version (re-read every 2 s, so a promotion is noticed); ModelError if none."""
    from core.training import registry

    return registry.current_version(get_session_factory(), config.models_dir())


def get_engine():
    """The active model version, loaded once per process. Raises ModelError when there is none."""
    return _engine(str(config.models_dir()), active_model_version())


@st.cache_resource(show_spinner=False)
def get_jobs() -> BatchJobs:
    from core.dashboard.page_batches import BatchJobs  # here: pandas and the batch runner load slowly

    return BatchJobs()


_warm_lock = threading.Lock()
_warm_started: set[str] = set()
_warm_loading: set[str] = set()


def engine_warming() -> bool:
    """Whether the models are still loading in the background (the Verify page says so)."""
    with _warm_lock:
        return bool(_warm_loading)


def warm_engine_in_background() -> None:
    """Load the model on a background thread once per process, so the first pair is answered fast.

    Called once a page has been drawn (the end of Home) or by the Verify page: importing
    TensorFlow holds the interpreter for seconds, so a page it starts before waits (the sign-in
    form drew in 30 s instead of 4 under load when it started the loading).
    FACEVERIFY_WARM_ENGINE=0 turns it off (the tests load the model only where they need it)."""
    if not config.get("FACEVERIFY_WARM_ENGINE"):
        return
    try:
        key = f"{config.models_dir()}:{active_model_version()}"
    except ModelError:
        return
    with _warm_lock:
        if key in _warm_started:
            return
        _warm_started.add(key)
        _warm_loading.add(key)

    def load():
        try:
            get_engine()
        except Exception:  # the page that needs the model shows the reason
            with _warm_lock:
                _warm_started.discard(key)
        finally:
            with _warm_lock:
                _warm_loading.discard(key)

    threading.Thread(target=load, name="engine-warmup", daemon=True).start()
