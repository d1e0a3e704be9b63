"""create_app(): the FastAPI application with its middleware, error handlers and routers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from sqlalchemy.orm import sessionmaker

from core import config
from core.api.docs import OPENAPI_URL, add_docs, docs_enabled
from core.api.errors import add_error_handlers
from core.api.guard import GuardMiddleware
from core.api.routers import challenges, health, members, photo_checks, privacy, profile, verifications
from core.api.routers import search as search_routes
from core.api.settings import API_VERSION, MAX_BODY_BYTES, NO_ENGINE
from core.api.state import AppState, load_engine_in_background, watch_promotions
from core.storage.photostore import PhotoStoreBackend
from core.storage.stores import open_photo_store

log = logging.getLogger(__name__)


def _in_flight() -> int:
    return max(1, config.get("API_MAX_IN_FLIGHT"))


def _admission_bytes() -> int:
    return int(config.get("API_ADMISSION_MB") * 1024 * 1024)


def create_app(
    session_factory: sessionmaker | None = None,
    engine=None,
    *,
    photo_store: PhotoStoreBackend | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    load_engine: bool = True,
    max_in_flight: int | None = None,
    admission_bytes: int | None = None,
) -> FastAPI:
    """The API. Without a session factory: the configured database (migrated on start).
    Without an engine: core.verification.engine.Engine.load() in the background (503 until it is ready)."""
    if session_factory is None:
        from core.storage.db import init_db
        from core.storage.db import session_factory as make_factory

        session_factory = make_factory(init_db())
    state = AppState(session_factory, photo_store or open_photo_store())
    docs = docs_enabled()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine is not None:
            await anyio.to_thread.run_sync(state.set_engine, engine)
        elif load_engine:
            load_engine_in_background(state)
            watch_promotions(state)  # a promotion made anywhere reaches this process by itself
        else:
            state.model_error = NO_ENGINE
        yield
        state.stopping.set()
        if state.worker is not None:
            await anyio.to_thread.run_sync(state.worker.stop)

    app = FastAPI(
        title="Face verification service API",
        version=API_VERSION,
        description=(
            "Verifications for the app backend: submit a member's photos, get the same result the "
            "dashboard shows (stored; flagged results go to the review queue), read a result and a "
            "member's history, search enrolled members by photo. Send the API key as X-API-Key."
        ),
        lifespan=lifespan,
        # Served by core.api.docs from installed files (not a CDN), or not at all (API_DOCS=off).
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_URL if docs else None,
    )
    if docs:
        add_docs(app)
    app.state.api = state
    app.add_middleware(
        GuardMiddleware,
        state=state,
        max_body_bytes=max_body_bytes,
        max_in_flight=max_in_flight or _in_flight(),
        admission_bytes=admission_bytes or _admission_bytes(),
    )

    add_error_handlers(app)
    for router in (
        health.router,
        verifications.router,
        challenges.router,
        members.router,
        profile.router,
        privacy.router,
        search_routes.router,
        photo_checks.router,
    ):
        app.include_router(router)
    return app


def app_from_settings() -> FastAPI:
    """The app each process of `faceverify api serve --workers N` serves, from the settings
    (DATABASE_URL, PHOTO_STORE_URL, MODELS_DIR; API_MAX_BODY_BYTES); the parent migrated the database."""
    from core.api.server import size_decode_budget
    from core.storage.db import make_engine

    size_decode_budget()
    from core.storage.db import session_factory as make_factory

    max_body = config.get("API_MAX_BODY_BYTES")
    return create_app(make_factory(make_engine()), max_body_bytes=max_body)
