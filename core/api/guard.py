"""Middleware: the API key first, then the body limit (pure ASGI, before anything reads the body)."""

from __future__ import annotations

import json
import logging

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.api.errors import error_body
from core.api.keys import lookup_key, roles_for
from core.api.settings import KEY_HEADER, MAX_PHOTO_BYTES, megabytes
from core.api.state import AppState

log = logging.getLogger(__name__)


async def _send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    for k, v in (headers or {}).items():
        raw.append((k.lower().encode(), str(v).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(StarletteHTTPException):
    """Raised from receive(): FastAPI passes HTTPExceptions through its body reading unchanged."""

    def __init__(self, size: int, limit: int):
        super().__init__(413, too_large_body(size, limit)["message"])


class GuardMiddleware:
    """API key and role for /v1/ paths, then the request body limit."""

    def __init__(self, app, state: AppState, max_body_bytes: int):
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if path.startswith("/v1/") or path == "/v1":
            key = headers.get(KEY_HEADER.lower(), "").strip()
            if not key:
                return await _send_json(
                    send,
                    401,
                    error_body("missing_api_key", f"Send your API key in the {KEY_HEADER} header."),
                    {"WWW-Authenticate": KEY_HEADER},
                )
            try:
                caller = await anyio.to_thread.run_sync(lookup_key, self.state.factory, key)
            except SQLAlchemyError as exc:
                log.warning("API key lookup failed: %s", exc)
                return await _send_json(
                    send,
                    503,
                    error_body("database_unavailable", "The database cannot be reached; try again."),
                )
            if caller is None or caller == "revoked":
                message = "This API key has been revoked." if caller else "This API key is not valid."
                return await _send_json(
                    send, 401, error_body("invalid_api_key", message), {"WWW-Authenticate": KEY_HEADER}
                )
            roles = roles_for(scope["method"], path)
            if caller.role not in roles:
                return await _send_json(
                    send,
                    403,
                    error_body(
                        "forbidden",
                        f"The key {caller.name!r} has the role {caller.role!r}; this needs "
                        f"{' or '.join(repr(r) for r in roles)}.",
                    ),
                )
            scope.setdefault("state", {})["caller"] = caller

        limit = self.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(
                    send, 400, error_body("bad_request", "Content-Length is not a number.")
                )
            if int(length) > limit:
                return await _send_json(send, 413, too_large_body(int(length), limit))
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(received, limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await _send_json(send, 413, too_large_body(received, limit))


def too_large_body(size: int, limit: int) -> dict:
    return error_body(
        "request_too_large",
        f"The request body is {megabytes(size)} MB or more; the limit is {megabytes(limit)} MB per request "
        f"(and {megabytes(MAX_PHOTO_BYTES)} MB per photo).",
    )
