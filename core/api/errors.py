"""Errors as JSON: ApiError, the error body, and the error responses the OpenAPI description lists."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.api.schemas import ErrorOut
from core.errors import FaceVerifyError, ImageError, ModelError
from core.storage.retry import DatabaseBusy, is_lock_conflict

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = (
            status,
            code,
            message,
            details,
            headers,
        )


def error_body(code: str, message: str, details: list | None = None) -> dict:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return body


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


INTERNAL_ERROR = "Something went wrong on the server; nothing was stored."
MODEL_UNAVAILABLE = "The model is not available right now; try again shortly."
PHOTO_STORE_DOWN = "The photo store cannot be reached right now; nothing was stored. Try again."


def hidden(status: int, code: str, message: str, exc: BaseException, headers=None) -> ApiError:
    """An ApiError with a fixed message; the exception (paths, hosts, drivers) goes to the log only."""
    log.warning("%s: %s", code, exc, exc_info=exc)
    return ApiError(status, code, message, headers=headers)


_IMAGE_STATUS = {"too_large": 413, "too_many_pixels": 413, "not_an_image": 415, "busy": 503}


def image_error(which: str, exc: ImageError) -> ApiError:
    status = _IMAGE_STATUS.get(exc.code, 422)
    return ApiError(status, exc.code, f"The {which} photo cannot be used: {exc}")


ERRORS = {
    400: {"model": ErrorOut, "description": "malformed JSON or multipart body"},
    401: {"model": ErrorOut, "description": "missing, unknown or revoked API key"},
    403: {"model": ErrorOut, "description": "the key's role may not do this"},
    404: {"model": ErrorOut, "description": "unknown member, result or stored photo"},
    409: {
        "model": ErrorOut,
        "description": "refused: gallery not replaceable, challenge already used, conflict",
    },
    410: {"model": ErrorOut, "description": "the pose challenge expired"},
    413: {"model": ErrorOut, "description": "request or photo too large"},
    415: {"model": ErrorOut, "description": "not an image, or the wrong content type"},
    422: {"model": ErrorOut, "description": "well-formed but unusable request"},
    429: {
        "model": ErrorOut,
        "description": "a wrong key, after many from this address or with this key prefix; see Retry-After",
    },
    503: {"model": ErrorOut, "description": "model loading, engine busy or database unavailable"},
}


def error_responses(*codes: int) -> dict:
    """The documented error answers of an endpoint. Every endpoint that takes a key (401) can also
    answer 429 to a wrong key: the guard throttles wrong keys by address and key prefix, whatever the
    path (a valid key is never throttled)."""
    if 401 in codes:
        codes = (*codes, 429)
    return {code: ERRORS[code] for code in sorted(set(codes))}


def add_error_handlers(app) -> None:
    """Every failure becomes the JSON error body; nothing internal (paths, tracebacks) is sent."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "request_too_large"}
        message = {
            404: "There is no such endpoint; see /openapi.json.",
            405: f"{request.method} is not allowed on this endpoint; see /openapi.json.",
        }.get(exc.status_code, str(exc.detail))
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "error"),
            message,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            e = next(e for e in errors if e.get("type") == "json_invalid")
            detail = (e.get("ctx") or {}).get("error", "JSON decode error")
            return error_response(400, "malformed_json", f"The request body is not valid JSON: {detail}.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        is_upload = request.url.path.endswith("/upload")
        if request.method == "POST":
            if is_upload and content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
                return error_response(
                    415, "unsupported_media_type", "Send multipart/form-data to this endpoint."
                )
            if not is_upload and content_type != "application/json" and not content_type.endswith("+json"):
                return error_response(
                    415,
                    "unsupported_media_type",
                    "Send JSON (Content-Type: application/json), or files as multipart/form-data to the /upload endpoint.",
                )
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg", "")}
            for e in errors
        ]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['problem']}" for d in details[:5])
        return error_response(422, "invalid_request", f"The request is not valid: {summary}.", details)

    @app.exception_handler(DatabaseBusy)
    async def _db_busy(request: Request, exc: DatabaseBusy):
        return error_response(503, exc.code, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(SQLAlchemyError)
    async def _db_error(request: Request, exc: SQLAlchemyError):
        if is_lock_conflict(exc):  # a deadlock outside a retried block: busy, not down
            return error_response(503, DatabaseBusy.code, str(DatabaseBusy()), headers={"Retry-After": "1"})
        log.exception("database error", exc_info=exc)
        return error_response(
            503,
            "database_unavailable",
            "The database failed or cannot be reached; nothing was stored. Try again.",
        )

    @app.exception_handler(FaceVerifyError)
    async def _core_error(request: Request, exc: FaceVerifyError):
        log.exception("core error", exc_info=exc)
        if isinstance(exc, ImageError):  # about the photo sent, written for the caller
            headers = {"Retry-After": "2"} if exc.code == "busy" else None
            status = _IMAGE_STATUS.get(exc.code, 422)
            return error_response(status, exc.code, str(exc), headers=headers)
        # Anything else may name files, hosts or drivers: the detail is in the log only.
        if isinstance(exc, OSError):  # the photo store cannot be reached
            return error_response(503, exc.code, PHOTO_STORE_DOWN, headers={"Retry-After": "2"})
        if isinstance(exc, ModelError):
            return error_response(503, exc.code, MODEL_UNAVAILABLE, headers={"Retry-After": "5"})
        return error_response(500, exc.code, INTERNAL_ERROR)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", INTERNAL_ERROR)

    @app.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError):
        return error_response(
            503, "engine_timeout", "The engine did not answer in time; nothing was stored. Try again."
        )
