"""Dependencies every router declares once: the application state and the calling API key.

The key itself is checked by core.api.guard before the body is read; these only hand the result
to the endpoint, and `secured` makes the key show in the OpenAPI description.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from core.api.errors import ApiError
from core.api.keys import Caller
from core.api.settings import KEY_HEADER
from core.api.state import AppState

api_key_scheme = APIKeyHeader(name=KEY_HEADER, auto_error=False, description="backend or reader key")
secured = [Security(api_key_scheme)]


def app_state(request: Request) -> AppState:
    return request.app.state.api


def current_caller(request: Request) -> Caller:
    caller = getattr(request.state, "caller", None)
    if caller is None:  # the middleware always sets it on /v1/ paths; never trust its absence
        raise ApiError(401, "missing_api_key", f"Send your API key in the {KEY_HEADER} header.")
    return caller


State = Annotated[AppState, Depends(app_state)]
CallerKey = Annotated[Caller, Depends(current_caller)]
