"""GET /health: liveness and readiness, no key needed."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from core.api.deps import State
from core.api.schemas import (
    HealthOut,
)
from core.api.settings import API_VERSION, NO_ENGINE
from core.errors import ModelError
from core.workflows import search, self_measurement

router = APIRouter(tags=["service"])


def _public(error: str | None, message: str) -> str | None:
    if not error or error == NO_ENGINE:
        return error
    return message


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(state: State):
    """Liveness and readiness: 200 when the model is loaded and the database answers, else 503."""
    database = "ok"
    try:
        with state.factory() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        database = f"unreachable: {type(getattr(exc, 'orig', exc)).__name__}"
    enrolled = dup = None
    if state.engine is not None and database == "ok":
        try:
            index = search.index_for(state.factory.kw["bind"], state.engine.model_version)
            enrolled, dup = len(index), index.duplicate_threshold
        except (SQLAlchemyError, ModelError):
            pass
    model_loaded = state.engine is not None
    status = "ok" if model_loaded and database == "ok" else ("starting" if state.loading else "degraded")
    body = {
        "status": status,
        "model_loaded": model_loaded,
        "model_version": state.engine.model_version if model_loaded else None,
        # Load failures name files and folders: the log has them, this page is open to anyone.
        "model_error": _public(state.model_error, "the model could not be loaded; see the server log"),
        "database": database,
        "enrolled": enrolled,
        "duplicate_threshold": dup,
        "api_version": API_VERSION,
        "model_reload_error": _public(
            state.reload_error, "a new model version could not be loaded; see the server log"
        ),
        "worker_pid": os.getpid(),
        "self_measurement": self_measurement.health_field(state.factory) if database == "ok" else None,
    }
    return JSONResponse(body, status_code=200 if status == "ok" else 503)
